#!/usr/bin/env bash
# Regenerates every sample PDF. Run from anywhere; needs cargo and qpdf.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo run -q -p shomei-signing --example make_sample
qpdf --object-streams=generate samples/contract.pdf samples/contract-objstm.pdf
qpdf --encrypt user owner 256 -- samples/contract.pdf samples/contract-encrypted.pdf
# Written by poppler (pdfunite): another producer's object layout, four pages.
pdfunite samples/contract.pdf samples/contract-objstm.pdf samples/contract-poppler.pdf
qpdf --check samples/contract.pdf >/dev/null
qpdf --check samples/contract-objstm.pdf >/dev/null
qpdf --check samples/contract-incremental.pdf >/dev/null
python3 samples/make-large-sample.py >/dev/null
