//! What signing and time-stamping do to a PDF that passed intake, short of the HSM and TSA
//! calls: the incremental revision, its placeholders, the DSS merge, the digest and the
//! embedding. A file we signed must pass intake again with the same pages, and the writer must
//! never change the original's bytes (the preparation then fails with `SignError::Write`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shomei_signing::fuzzing::{prepare_signature, prepare_timestamp};
use shomei_signing::{inspect_pdf, SignError};

fuzz_target!(|data: &[u8]| {
    let Ok(before) = inspect_pdf(data) else {
        return;
    };
    match prepare_signature(data) {
        Ok(appended) => {
            let signed = [data, &appended].concat();
            if let Ok(after) = inspect_pdf(&signed) {
                assert_eq!(after.pages, before.pages, "signing changed the page count");
            }
        }
        Err(SignError::Write(message)) => panic!("signature revision: {message}"),
        Err(_) => {}
    }
    if let Err(SignError::Write(message)) = prepare_timestamp(data) {
        panic!("time-stamp revision: {message}");
    }
});
