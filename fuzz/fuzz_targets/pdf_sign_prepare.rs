//! What signing and time-stamping do to a PDF that passed intake, short of the HSM and TSA
//! calls: the incremental revision, its placeholders, the DSS merge, the digest and the
//! embedding. A file we signed must start with the original bytes and pass intake again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shomei_signing::fuzzing::{prepare_signature, prepare_timestamp};
use shomei_signing::inspect_pdf;

fuzz_target!(|data: &[u8]| {
    let Ok(before) = inspect_pdf(data) else {
        return;
    };
    if let Ok(signed) = prepare_signature(data) {
        assert!(signed.starts_with(data), "the signed file changed the original bytes");
        let _ = inspect_pdf(&signed);
        if let Ok(after) = inspect_pdf(&signed) {
            assert_eq!(after.pages, before.pages, "signing changed the page count");
        }
    }
    if let Ok(stamped) = prepare_timestamp(data) {
        assert!(stamped.starts_with(data), "the time-stamped file changed the original bytes");
    }
});
