#!/usr/bin/env python3
"""Writes samples/contract-160k.pdf: the two pages of samples/contract.pdf plus a page with a
230x230 RGB scan (random pixels, so it does not compress), about 160 KB in all: the size of a
typical contract with a scanned seal, for load tests. Needs qpdf."""
import os, random, subprocess, tempfile

random.seed(2026)
w = h = 230
pixels = bytes(random.getrandbits(8) for _ in range(w * h * 3))
content = b"q 400 0 0 400 100 300 cm /Scan Do Q BT /F1 14 Tf 100 250 Td (Seal scan) Tj ET"
objects = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
    b"/Resources << /XObject << /Scan 5 0 R >> /Font << /F1 6 0 R >> >> >>",
    b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
    b"/BitsPerComponent 8 /Length %d >>\nstream\n" % (w, h, len(pixels)) + pixels + b"\nendstream",
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
]
out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
offsets = []
for i, body in enumerate(objects, 1):
    offsets.append(len(out))
    out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
xref = len(out)
out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
for off in offsets:
    out += b"%010d 00000 n \n" % off
out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)

root = os.path.join(os.path.dirname(os.path.abspath(__file__)))
with tempfile.TemporaryDirectory() as tmp:
    scan = os.path.join(tmp, "scan.pdf")
    with open(scan, "wb") as f:
        f.write(out)
    target = os.path.join(root, "contract-160k.pdf")
    subprocess.run(["qpdf", "--empty", "--pages", os.path.join(root, "contract.pdf"), scan, "--",
                    target], check=True)
    subprocess.run(["qpdf", "--check", target], check=True, stdout=subprocess.DEVNULL)
    print(target, os.path.getsize(target), "bytes")
