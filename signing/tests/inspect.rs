//! Intake classification of good and bad inputs; no HSM needed.

mod common;

use common::sample;
use shomei_signing::{inspect_pdf, PdfError};

#[test]
fn samples_are_accepted() {
    for name in [
        "contract.pdf",
        "contract-objstm.pdf",
        "contract-incremental.pdf",
    ] {
        let info = inspect_pdf(&sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.pages, 2, "{name}");
        assert_eq!(info.signatures, 0, "{name}");
    }
}

#[test]
fn non_pdf_is_rejected() {
    let err = inspect_pdf(b"PK\x03\x04 this is a zip file, not a PDF").unwrap_err();
    assert!(matches!(err, PdfError::NotPdf), "{err:?}");
    assert!(matches!(inspect_pdf(b"").unwrap_err(), PdfError::NotPdf));
    assert!(err.is_permanent());
}

#[test]
fn truncated_pdf_is_rejected() {
    for name in ["contract.pdf", "contract-objstm.pdf"] {
        let bytes = sample(name);
        let err = inspect_pdf(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, PdfError::Truncated), "{name}: {err:?}");
    }
}

#[test]
fn encrypted_pdf_is_rejected() {
    let err = inspect_pdf(&sample("contract-encrypted.pdf")).unwrap_err();
    assert!(matches!(err, PdfError::Encrypted), "{err:?}");
}

#[test]
fn garbage_with_header_never_panics() {
    // Deterministic xorshift so a failure is reproducible.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let len = 16 + (next() % 4096) as usize;
        let mut bytes = b"%PDF-1.7\n".to_vec();
        bytes.extend((0..len).map(|_| next() as u8));
        if round % 2 == 0 {
            bytes.extend_from_slice(b"\nstartxref\n9\n%%EOF\n");
        }
        assert!(
            inspect_pdf(&bytes).is_err(),
            "round {round} accepted garbage"
        );
    }
}

#[test]
fn mutated_samples_never_panic() {
    // Byte flips in a real file reach much deeper into the parser than noise.
    let original = sample("contract-objstm.pdf");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state as usize) % bytes.len();
            bytes[at] = (state >> 32) as u8;
        }
        let _ = inspect_pdf(&bytes);
    }
}
