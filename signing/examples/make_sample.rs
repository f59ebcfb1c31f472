//! Regenerates `samples/contract.pdf` and `samples/contract-incremental.pdf`.
//!
//! The other samples are derived from these with qpdf; see `samples/README.md`.
//! Run from the workspace root: `cargo run -p shomei-signing --example make_sample`.

use std::io::Write as _;
use std::path::Path;

use lopdf::content::{Content, Operation};
use lopdf::{dictionary, Document, Object, Stream, StringFormat};

const PAGES: [&[&str]; 2] = [
    &[
        "SERVICE AGREEMENT",
        "",
        "This Service Agreement is made between Example Buyer Ltd. (the Client)",
        "and Example Supplier GmbH (the Provider).",
        "",
        "1. Services. The Provider shall deliver the document processing services",
        "   described in Annex A with reasonable skill and care.",
        "2. Fees. The Client shall pay the fees stated in Annex B within 30 days",
        "   of receipt of a correct invoice.",
        "3. Term. This Agreement starts on the date of the last signature and",
        "   runs for twelve (12) months.",
    ],
    &[
        "4. Confidentiality. Each party keeps the other party's confidential",
        "   information secret and uses it only to perform this Agreement.",
        "5. Governing law. This Agreement is governed by the laws of Japan.",
        "",
        "Signed electronically by the parties.",
    ],
];

fn page_content(lines: &[&str]) -> Content {
    let mut operations = vec![
        Operation::new("BT", vec![]),
        Operation::new("Tf", vec!["F1".into(), 12.into()]),
        Operation::new("TL", vec![16.into()]),
        Operation::new("Td", vec![72.into(), 760.into()]),
    ];
    for line in lines {
        operations.push(Operation::new("Tj", vec![Object::string_literal(*line)]));
        operations.push(Operation::new("T*", vec![]));
    }
    operations.push(Operation::new("ET", vec![]));
    Content { operations }
}

fn contract() -> lopdf::Result<Vec<u8>> {
    let mut doc = Document::with_version("1.7");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
    });
    let resources_id = doc.add_object(dictionary! {
        "Font" => dictionary! { "F1" => font_id },
    });

    let mut kids = Vec::new();
    for lines in PAGES {
        let content_id = doc.add_object(Stream::new(dictionary! {}, page_content(lines).encode()?));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => content_id,
        });
        kids.push(page_id.into());
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids,
            "Count" => count,
            "Resources" => resources_id,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    let info_id = doc.add_object(dictionary! {
        "Title" => Object::String("Service Agreement".into(), StringFormat::Literal),
        "Producer" => Object::string_literal("shomei make_sample"),
    });
    doc.trailer.set("Root", catalog_id);
    doc.trailer.set("Info", info_id);

    let mut out = Vec::new();
    doc.save_to(&mut out)?;
    Ok(out)
}

/// Appends a hand-written revision (new /Info) so the sample does not depend on
/// lopdf's incremental writer, which is what the signer itself uses.
fn with_incremental_update(base: &[u8]) -> lopdf::Result<Vec<u8>> {
    let doc = Document::load_mem(base)?;
    let prev_startxref = doc.xref_start;
    let size = doc.max_id + 1;
    let root = doc.trailer.get(b"Root")?.as_reference()?;

    let mut out = base.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let info_offset = out.len();
    write!(
        out,
        "{size} 0 obj\n<< /Title (Service Agreement, revised) /Producer (shomei make_sample) >>\nendobj\n"
    )?;
    let xref_offset = out.len();
    write!(
        out,
        "xref\n{size} 1\n{info_offset:010} 00000 n \ntrailer\n<< /Size {} /Root {} {} R /Info {size} 0 R /Prev {prev_startxref} >>\nstartxref\n{xref_offset}\n%%EOF\n",
        size + 1,
        root.0,
        root.1,
    )?;
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    std::fs::create_dir_all(&dir)?;
    let base = contract()?;
    std::fs::write(dir.join("contract.pdf"), &base)?;
    std::fs::write(
        dir.join("contract-incremental.pdf"),
        with_incremental_update(&base)?,
    )?;
    Ok(())
}
