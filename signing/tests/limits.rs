//! Intake limits against hostile files: each is refused with an error naming the limit, quickly
//! and without inflating or parsing more than the limit allows. No HSM needed.

use std::io::Read;
use std::time::{Duration, Instant};

use shomei_signing::{inspect_pdf, inspect_pdf_with, PdfError, PdfLimits};
use shomei_testkit::hostile::{self, PdfBuilder};
use shomei_testkit::sample;

const MIB: u64 = 1024 * 1024;

fn small() -> PdfLimits {
    PdfLimits {
        max_pages: 10,
        max_objects: 200,
        max_stream_bytes: MIB,
        max_total_stream_bytes: 3 * MIB,
    }
}

/// Refused, within `seconds`, and the message is the error's own.
fn refused(bytes: &[u8], limits: &PdfLimits, seconds: u64) -> PdfError {
    let started = Instant::now();
    let err = inspect_pdf_with(bytes, limits).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(seconds),
        "took {:?}: {err}",
        started.elapsed()
    );
    err
}

#[test]
fn the_bomb_generator_makes_real_zlib_streams() {
    let data = hostile::zlib(b"abc", 10_000);
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&data[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(&out[..3], b"abc");
    assert_eq!(out.len(), 10_003);
    assert!(out[3..].iter().all(|&b| b == 0));
    assert!(
        hostile::zlib_zeros(1 << 30).len() < 1_100_000,
        "1 GiB from about 1 MB"
    );
}

#[test]
fn documents_within_the_limits_are_accepted() {
    for name in [
        "contract.pdf",
        "contract-objstm.pdf",
        "contract-incremental.pdf",
        "contract-160k.pdf",
    ] {
        inspect_pdf_with(&sample(name), &small()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let info = inspect_pdf_with(&hostile::many_pages(10), &small()).unwrap();
    assert_eq!(info.pages, 10);
    inspect_pdf_with(&hostile::many_objects(150), &small()).unwrap();
    inspect_pdf_with(&hostile::content_bomb(MIB - 100), &small()).unwrap();
    inspect_pdf_with(&hostile::many_streams(2, MIB - 100), &small()).unwrap();
}

#[test]
fn too_many_pages_are_refused_with_the_count() {
    let err = refused(&hostile::many_pages(11), &small(), 10);
    assert!(
        matches!(
            err,
            PdfError::TooManyPages {
                pages: 11,
                limit: 10
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "PDF has 11 pages, more than the limit of 10 pages"
    );

    let err = refused(&hostile::many_pages(2_001), &PdfLimits::default(), 30);
    assert!(
        err.to_string()
            .contains("2001 pages, more than the limit of 2000"),
        "{err}"
    );
}

#[test]
fn too_many_objects_are_refused_before_parsing() {
    let err = refused(&hostile::many_objects(300), &small(), 10);
    assert!(
        matches!(err, PdfError::TooManyObjects { limit: 200, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("more than the limit of 200 objects"),
        "{err}"
    );
}

#[test]
fn objects_in_object_streams_count_too() {
    // 150 members of one object stream, each its own number.
    let mut b = PdfBuilder::default();
    let root = hostile::document(&mut b, 1, None);
    let objects: Vec<String> = (0..250).map(|i| format!("{i}")).collect();
    let mut index = String::new();
    let mut offset = 0;
    for (i, o) in objects.iter().enumerate() {
        index.push_str(&format!("{} {offset} ", 1000 + i));
        offset += o.len() + 1;
    }
    let mut content = index.clone();
    for o in &objects {
        content.push_str(o);
        content.push(' ');
    }
    b.add_stream(
        &format!("/Type /ObjStm /N 250 /First {}", index.len()),
        content.as_bytes(),
    );
    let err = refused(&b.finish(root), &small(), 10);
    assert!(
        matches!(
            err,
            PdfError::TooManyObjects {
                found: 201..,
                limit: 200
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_deflate_bomb_in_a_content_stream_is_refused_without_inflating_it() {
    let err = refused(&hostile::content_bomb(8 * MIB), &small(), 10);
    assert!(
        matches!(err, PdfError::StreamTooLarge { limit, .. } if limit == MIB),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("per-stream limit of 1048576 bytes"),
        "{err}"
    );

    // About 1 MB that inflates to 4 GiB, against the default limits.
    let bomb = hostile::content_bomb(4 << 30);
    assert!(bomb.len() < 5_000_000);
    let err = refused(&bomb, &PdfLimits::default(), 30);
    assert!(
        matches!(err, PdfError::StreamTooLarge { limit, .. } if limit == 64 * MIB),
        "{err:?}"
    );
}

#[test]
fn a_deflate_bomb_in_an_object_stream_is_refused_before_lopdf_inflates_it() {
    let err = refused(&hostile::object_stream_bomb(8 * MIB), &small(), 10);
    assert!(matches!(err, PdfError::StreamTooLarge { .. }), "{err:?}");
    let err = refused(
        &hostile::object_stream_bomb(4 << 30),
        &PdfLimits::default(),
        30,
    );
    assert!(matches!(err, PdfError::StreamTooLarge { .. }), "{err:?}");
}

#[test]
fn streams_over_the_total_are_refused() {
    let err = refused(&hostile::many_streams(4, MIB - 100), &small(), 10);
    assert!(
        matches!(err, PdfError::StreamsTooLarge { limit } if limit == 3 * MIB),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("total limit of 3145728 bytes"),
        "{err}"
    );
}

#[test]
fn a_bomb_behind_another_filter_is_refused_on_the_loaded_document() {
    // ASCIIHex of a zlib bomb: the raw pass cannot inflate it, lopdf's bounded decoder does.
    let zlib = hostile::zlib_zeros(8 * MIB);
    let hex: String = zlib.iter().map(|b| format!("{b:02x}")).collect();
    let mut b = PdfBuilder::default();
    let content = b.add_stream(
        "/Filter [/ASCIIHexDecode /FlateDecode]",
        format!("{hex}>").as_bytes(),
    );
    let root = hostile::document(&mut b, 1, Some(content));
    let err = refused(&b.finish(root), &small(), 10);
    assert!(
        matches!(err, PdfError::StreamTooLarge { ref stream, .. } if stream.contains("obj")),
        "{err:?}"
    );
}

#[test]
fn object_stream_entries_sharing_an_offset_are_refused() {
    // 20,000 entries on one array of 20,000 numbers: parsed one by one, 400 million numbers.
    let bytes = hostile::aliased_object_stream(20_000, 20_000);
    let limits = PdfLimits {
        max_objects: 100_000,
        ..PdfLimits::default()
    };
    let err = refused(&bytes, &limits, 10);
    assert!(err.to_string().contains("two objects at offset"), "{err}");
}

#[test]
fn object_stream_entries_inside_another_object_are_refused() {
    let mut b = PdfBuilder::default();
    let root = hostile::document(&mut b, 1, None);
    let content = b"1000 0 1001 3 [ [ 1 2 ] ]";
    b.add_stream("/Type /ObjStm /N 2 /First 14", content);
    let err = refused(&b.finish(root), &small(), 10);
    assert!(err.to_string().contains("inside another object"), "{err}");
}

#[test]
fn cross_reference_entries_sharing_an_offset_are_refused() {
    let mut bytes = hostile::many_objects(3);
    // Point the last entry at the offset of the one before it.
    let table = bytes.windows(6).rposition(|w| w == b"\nxref\n").unwrap() + 1;
    let entries: Vec<usize> = (0..bytes.len() - table)
        .filter(|&i| bytes[table..].get(i..i + 4) == Some(b" n \n"))
        .map(|i| table + i - 16)
        .collect();
    let [.., before, last] = entries[..] else {
        panic!()
    };
    let copy = bytes[before..before + 10].to_vec();
    bytes[last..last + 10].copy_from_slice(&copy);
    let err = refused(&bytes, &small(), 10);
    assert!(err.to_string().contains("are both at byte"), "{err}");
}

#[test]
fn installed_limits_apply_to_inspect_pdf() {
    // No test in this binary installs limits: the defaults apply.
    assert_eq!(PdfLimits::current(), PdfLimits::default());
    inspect_pdf(&hostile::many_pages(11)).unwrap();
}

/// An input a fuzz target found, kept under `tests/data/`.
fn fuzz_find(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn objects_the_cross_reference_data_lists_but_that_do_not_load_are_damage() {
    // Found by fuzzing pdf_sign_prepare: lopdf skipped the objects it could not read, and the
    // signed file then read as four pages instead of three.
    let err = inspect_pdf(&fuzz_find("fuzz-sign-page-count.pdf")).unwrap_err();
    assert!(matches!(err, PdfError::Truncated), "{err:?}");
}

/// A PDF with one page under a page tree root whose /Kids `kids` writes, given the root's and
/// the page's object numbers and the builder (for more nodes).
fn page_tree(kids: impl FnOnce(u32, u32, &mut PdfBuilder) -> String) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let tree = b.reserve();
    let page = b.add(format!(
        "<< /Type /Page /Parent {tree} 0 R /MediaBox [0 0 595 842] >>"
    ));
    let kids = kids(tree, page, &mut b);
    b.set(tree, format!("<< /Type /Pages /Kids [{kids}] /Count 2 >>"));
    let root = b.add(format!("<< /Type /Catalog /Pages {tree} 0 R >>"));
    b.finish(root)
}

#[test]
fn a_page_tree_that_loops_is_refused() {
    // Found by fuzzing pdf_sign_prepare: lopdf's walk of the page tree stops after as many
    // steps as the file has objects, so on a tree whose inner node lists the root among its
    // kids the count grew with the objects a signature adds (the signed file read as more pages
    // than the original).
    let looping = page_tree(|tree, page, b| {
        let inner = b.add(format!(
            "<< /Type /Pages /Parent {tree} 0 R /Kids [{tree} 0 R] /Count 1 >>"
        ));
        format!("{page} 0 R {inner} 0 R")
    });
    let err = refused(&looping, &PdfLimits::default(), 10);
    assert!(matches!(err, PdfError::Unreadable(_)), "{err:?}");
    assert!(err.to_string().contains("page tree"), "{err}");
}

#[test]
fn a_page_listed_twice_in_the_page_tree_is_refused() {
    let twice = page_tree(|_, page, _| format!("{page} 0 R {page} 0 R"));
    let err = refused(&twice, &PdfLimits::default(), 10);
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[test]
fn a_signature_takes_object_numbers_no_reference_of_the_file_uses() {
    // Found by fuzzing pdf_sign_prepare: the page tree lists object 25, which the file lacks
    // (its cross-reference entry is damaged, its /Size says 12); the signature dictionary took
    // number 25, and the signed file read as three pages instead of four.
    let bytes = fuzz_find("fuzz-sign-missing-kid.pdf");
    let before = inspect_pdf(&bytes).unwrap();
    // The preparations give what they append to the file.
    let signed = [
        &bytes[..],
        &shomei_signing::fuzzing::prepare_signature(&bytes).unwrap(),
    ]
    .concat();
    assert_eq!(inspect_pdf(&signed).unwrap().pages, before.pages);
    let stamped = [
        &bytes[..],
        &shomei_signing::fuzzing::prepare_timestamp(&bytes).unwrap(),
    ]
    .concat();
    assert_eq!(inspect_pdf(&stamped).unwrap().pages, before.pages);
}
