//! Intake on arbitrary bytes: never a panic, never more memory than the limits allow
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = shomei_signing::inspect_pdf(data) {
        assert!(info.pages > 0, "accepted a PDF without pages");
    }
});
