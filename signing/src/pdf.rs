//! PDF side of signing: intake checks, the incremental revision carrying the
//! signature (or document time-stamp) field with fixed-size placeholders, the
//! document security store (DSS), and patching the final /ByteRange and
//! /Contents into the written bytes.
//!
//! Never rewrites a byte of the input: everything goes into an appended revision.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use chrono::{DateTime, Utc};
use lopdf::xref::XrefEntry;
use lopdf::{
    dictionary, Dictionary, Document, IncrementalDocument, LoadOptions, Object, ObjectId, Stream,
    StringFormat,
};
use sha2::{Digest, Sha256};

use crate::error::{PdfError, SignError};
use crate::intake::{self, find, PdfLimits};
use crate::ValidationData;

/// What the intake check learned about a PDF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfInfo {
    pub pages: u32,
    /// Signature fields that already carry a signature.
    pub signatures: usize,
}

/// Intake check: is this a readable, unencrypted, complete PDF with pages, within the
/// process's [`PdfLimits`]?
///
/// Never panics, whatever the bytes.
pub fn inspect_pdf(bytes: &[u8]) -> Result<PdfInfo, PdfError> {
    inspect_pdf_with(bytes, &PdfLimits::current())
}

/// [`inspect_pdf`] with the given limits.
pub fn inspect_pdf_with(bytes: &[u8], limits: &PdfLimits) -> Result<PdfInfo, PdfError> {
    let (doc, pages) = load_counting_pages(bytes, limits, RawScan::Run)?;
    guarded(|| {
        Ok(PdfInfo {
            pages: u32::try_from(pages).unwrap_or(u32::MAX),
            signatures: count_signatures(&doc),
        })
    })
}

/// Header search window; ISO 32000-2 §7.5.2 lets readers accept junk before it.
const HEADER_WINDOW: usize = 1024;
/// Trailing bytes searched for the end-of-file marker.
const EOF_WINDOW: usize = 1024;

/// Parses `bytes` within the process's limits, classifying every way a document can be
/// unusable.
pub(crate) fn load(bytes: &[u8]) -> Result<Document, PdfError> {
    load_with(bytes, &PdfLimits::current())
}

pub(crate) fn load_with(bytes: &[u8], limits: &PdfLimits) -> Result<Document, PdfError> {
    load_counting_pages(bytes, limits, RawScan::Run).map(|(doc, _)| doc)
}

/// [`load`] for a stored revision ([`Original::Hashed`]): a file that passed intake on its way
/// in, or that this library appended a revision to after it did, read back and checked against
/// its recorded digest. Intake's pass over its raw bytes (`intake::prescan`, which keeps lopdf
/// from files made to parse or inflate far more than their size) is not run again: it is most
/// of intake's cost, and its verdict on these bytes was given when they were stored. The
/// checks on the loaded document (encryption, the cross-reference, object and page counts,
/// the page tree, streams other than deflated ones) still run.
pub(crate) fn load_stored(bytes: &[u8]) -> Result<Document, PdfError> {
    load_counting_pages(bytes, &PdfLimits::current(), RawScan::Skip).map(|(doc, _)| doc)
}

/// Whether [`load_counting_pages`] runs intake's pass over the raw bytes first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawScan {
    Run,
    /// A stored revision (see [`load_stored`]).
    Skip,
}

/// [`load_with`], with the page count intake found.
fn load_counting_pages(
    bytes: &[u8],
    limits: &PdfLimits,
    raw: RawScan,
) -> Result<(Document, usize), PdfError> {
    let head = &bytes[..bytes.len().min(HEADER_WINDOW)];
    if find(head, b"%PDF-").is_none() {
        return Err(PdfError::NotPdf);
    }
    // A cut-off upload is by far the most common damage; name it as such
    // instead of letting the parser's recovery paper over it.
    let tail = &bytes[bytes.len().saturating_sub(EOF_WINDOW)..];
    if find(tail, b"%%EOF").is_none() {
        return Err(PdfError::Truncated);
    }

    // What lopdf would parse is checked before it parses it (see `intake`).
    let scan = match raw {
        RawScan::Run => guarded(|| intake::prescan(bytes, limits))?,
        RawScan::Skip => intake::Prescan::default(),
    };
    let options = LoadOptions {
        max_decompressed_size: Some(usize::try_from(limits.max_stream_bytes).unwrap_or(usize::MAX)),
        ..LoadOptions::default()
    };
    let doc = guarded(|| {
        Document::load_mem_with_options(bytes, options).map_err(|e| classify_load_error(e, limits))
    })?;
    if doc.trailer.has(b"Encrypt") || doc.encryption_state.is_some() {
        return Err(PdfError::Encrypted);
    }
    // The revision we append must chain to a cross-reference section that
    // describes the file; one rebuilt by scanning does not.
    if doc.xref_recovery.is_some() || doc.xref_start == 0 {
        return Err(PdfError::Truncated);
    }
    // lopdf skips an object it cannot read at its entry's offset; what is left is another
    // document than the one described, and one that reads differently once a revision is
    // appended (found by fuzzing: the page count changed on signing).
    let unread = doc
        .reference_table
        .entries
        .iter()
        .any(|(&id, entry)| match entry {
            XrefEntry::Normal { generation, .. } => !doc.objects.contains_key(&(id, *generation)),
            XrefEntry::Compressed { .. } => !doc.objects.contains_key(&(id, 0)),
            _ => false,
        });
    if unread {
        return Err(PdfError::Truncated);
    }
    guarded(|| intake::check_loaded(&doc, &scan, limits))?;
    let pages = guarded(|| intake::count_pages(&doc))?;
    if pages == 0 {
        return Err(PdfError::NoPages);
    }
    intake::check_pages(pages, limits)?;
    Ok((doc, pages))
}

fn classify_load_error(error: lopdf::Error, limits: &PdfLimits) -> PdfError {
    match error {
        lopdf::Error::Decompress(lopdf::DecompressError::MemoryLimitExceeded { .. }) => {
            PdfError::StreamTooLarge {
                stream: "an object or cross-reference stream".into(),
                limit: limits.max_stream_bytes,
            }
        }
        lopdf::Error::Decryption(_)
        | lopdf::Error::InvalidPassword
        | lopdf::Error::AlreadyEncrypted => PdfError::Encrypted,
        lopdf::Error::IO(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => PdfError::Truncated,
        lopdf::Error::InvalidOffset(_) | lopdf::Error::MissingXrefEntry => PdfError::Truncated,
        other => PdfError::Unreadable(other.to_string()),
    }
}

/// lopdf is not panic-free on hostile input; a panic must become an error,
/// never take a worker thread down.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, PdfError>) -> Result<T, PdfError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(PdfError::Unreadable("PDF structure is malformed".into())))
}

/// Bounds recursion through /Kids of hostile form trees.
const MAX_FIELD_DEPTH: usize = 32;

fn acroform(doc: &Document) -> Option<&Dictionary> {
    let catalog = doc.catalog().ok()?;
    let form = catalog.get(b"AcroForm").ok()?;
    doc.dereference(form).ok()?.1.as_dict().ok()
}

/// Visits every terminal and intermediate field of the AcroForm.
pub(crate) fn for_each_field(doc: &Document, mut visit: impl FnMut(&Dictionary)) {
    fn walk(
        doc: &Document,
        fields: &Object,
        depth: usize,
        seen: &mut HashSet<ObjectId>,
        visit: &mut dyn FnMut(&Dictionary),
    ) {
        if depth > MAX_FIELD_DEPTH {
            return;
        }
        let Ok((_, Object::Array(fields))) = doc.dereference(fields) else {
            return;
        };
        for field in fields {
            if let Object::Reference(id) = field {
                if !seen.insert(*id) {
                    continue;
                }
            }
            let Ok((_, Object::Dictionary(dict))) = doc.dereference(field) else {
                continue;
            };
            visit(dict);
            if let Ok(kids) = dict.get(b"Kids") {
                walk(doc, kids, depth + 1, seen, visit);
            }
        }
    }
    if let Some(fields) = acroform(doc).and_then(|form| form.get(b"Fields").ok()) {
        walk(doc, fields, 0, &mut HashSet::new(), &mut visit);
    }
}

fn count_signatures(doc: &Document) -> usize {
    let mut count = 0;
    for_each_field(doc, |field| {
        let signed = field
            .get(b"V")
            .ok()
            .and_then(|v| doc.dereference(v).ok())
            .and_then(|(_, v)| v.as_dict().ok())
            .is_some_and(|v| v.has(b"ByteRange") && v.has(b"Contents"));
        if signed {
            count += 1;
        }
    });
    count
}

/// Values shown in the signature dictionary.
pub(crate) struct SignatureFields<'a> {
    pub name: &'a str,
    pub email: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub location: Option<&'a str>,
    pub signing_time: DateTime<Utc>,
}

/// What the new field's value dictionary is.
pub(crate) enum FieldKind<'a> {
    /// `/Type /Sig`, `ETSI.CAdES.detached`: a signer's signature.
    Signature(&'a SignatureFields<'a>),
    /// `/Type /DocTimeStamp`, `ETSI.RFC3161`: /Contents is a time-stamp token
    /// over the byte ranges (ETSI EN 319 142-1 §5.4, ISO 32000-2 §12.8.5).
    DocTimeStamp,
}

/// The /Contents of every signature and document time-stamp in `doc`, as
/// stored (a DER value possibly followed by zero padding).
pub(crate) fn signature_contents(doc: &Document) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for_each_field(doc, |field| {
        let contents = field
            .get(b"V")
            .ok()
            .and_then(|v| doc.dereference(v).ok())
            .and_then(|(_, v)| v.as_dict().ok())
            .filter(|v| v.has(b"ByteRange"))
            .and_then(|v| v.get(b"Contents").ok())
            .and_then(|c| doc.dereference(c).ok())
            .and_then(|(_, c)| c.as_str().ok());
        if let Some(contents) = contents {
            found.push(contents.to_vec());
        }
    });
    found
}

/// An incremental revision written out with placeholders, waiting for its CMS: only the bytes
/// appended to the original file, never a copy of the file itself.
pub(crate) struct PreparedRevision {
    /// What follows the original file's bytes.
    appended: Vec<u8>,
    /// The length of the file the revision is appended to (where `appended` starts).
    original_len: usize,
    /// Over the whole signed file: the original and then `appended`.
    byte_range: [usize; 4],
    /// Capacity of /Contents in bytes of DER (the hex string holds twice as many digits).
    capacity: usize,
}

/// The /ByteRange placeholder: every number is ten digits wide so the real
/// values (padded with spaces) always fit in place.
const BYTE_RANGE_SENTINEL: i64 = 9_999_999_999;

/// Where lopdf's incremental writer saves to: it writes the original file first, then the
/// revision. The original's bytes are checked against it and dropped; only the revision is kept.
struct AfterOriginal<'a> {
    original: &'a [u8],
    seen: usize,
    changed: bool,
    appended: Vec<u8>,
}

impl<'a> AfterOriginal<'a> {
    fn new(original: &'a [u8], capacity: usize) -> Self {
        AfterOriginal {
            original,
            seen: 0,
            changed: false,
            appended: Vec::with_capacity(capacity),
        }
    }
}

impl std::io::Write for AfterOriginal<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        if self.seen < self.original.len() {
            let n = rest.len().min(self.original.len() - self.seen);
            if rest[..n] != self.original[self.seen..self.seen + n] {
                self.changed = true;
                return Err(std::io::Error::other("the original's bytes changed"));
            }
            self.seen += n;
            rest = &rest[n..];
        }
        self.appended.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PreparedRevision {
    /// Appends a revision with an invisible signature field on page 1 whose
    /// /Contents can hold `capacity` bytes of DER, and first, if given, the
    /// validation data merged into the document security store.
    pub(crate) fn new(
        original: &[u8],
        doc: Document,
        kind: &FieldKind<'_>,
        validation: Option<&ValidationData>,
        capacity: usize,
    ) -> Result<Self, SignError> {
        let mut revision = IncrementalDocument::create_from(original.to_vec(), doc);
        revision.new_document.max_id = highest_object_number(revision.get_prev_documents())?;
        guarded(|| {
            if let Some(validation) = validation {
                add_to_dss(&mut revision, validation)?;
            }
            add_signature_field(&mut revision, kind, capacity)
        })?;

        let mut out = AfterOriginal::new(original, 2 * capacity + 4096);
        let saved = guarded(|| {
            revision
                .save_to(&mut out)
                .map_err(|e| PdfError::Unreadable(e.to_string()))
        });
        if out.changed {
            return Err(SignError::Write(
                "writer changed bytes of the original revision".into(),
            ));
        }
        saved?;
        if out.seen != original.len() {
            return Err(SignError::Write(
                "writer left out bytes of the original revision".into(),
            ));
        }
        let mut appended = out.appended;

        let at = original.len();
        // The placeholder is `(` and 2 × capacity + 1 zeros and `)`: found by its start (a
        // search for the whole run would first analyse a needle of tens of kilobytes), then
        // checked whole.
        let placeholder_len = 2 * capacity + 2;
        let is_placeholder = |at: &[u8]| {
            at.len() >= placeholder_len
                && at[0] == b'('
                && at[1..placeholder_len - 1].iter().all(|&b| b == b'0')
                && at[placeholder_len - 1] == b')'
        };
        let gap_start = memchr::memmem::find_iter(&appended, b"(0000000000000000")
            .find(|&i| is_placeholder(&appended[i..]))
            .ok_or_else(|| SignError::Write("signature /Contents placeholder not found".into()))?;
        let gap_end = gap_start + placeholder_len;
        appended[gap_start] = b'<';
        appended[gap_end - 1] = b'>';
        let byte_range = [0, at + gap_start, at + gap_end, appended.len() - gap_end];

        let sentinel = format!("[0 {s} {s} {s}]", s = BYTE_RANGE_SENTINEL);
        let range_at = find(&appended, sentinel.as_bytes())
            .ok_or_else(|| SignError::Write("signature /ByteRange placeholder not found".into()))?;
        let actual = format!(
            "[{} {} {} {}]",
            byte_range[0], byte_range[1], byte_range[2], byte_range[3]
        );
        let padded = format!("{actual:<width$}", width = sentinel.len());
        if padded.len() != sentinel.len() {
            return Err(SignError::Write(
                "document too large for /ByteRange placeholder".into(),
            ));
        }
        appended[range_at..range_at + sentinel.len()].copy_from_slice(padded.as_bytes());

        Ok(Self {
            appended,
            original_len: at,
            byte_range,
            capacity,
        })
    }

    /// SHA-256 over everything except the /Contents hex string. `original`: the file the
    /// revision is appended to, or the SHA-256 state after its bytes, so that only the
    /// revision is hashed.
    pub(crate) fn digest(&self, original: Original<'_>) -> [u8; 32] {
        let mut hasher = match original {
            Original::Hashed(state) => state.clone(),
            Original::Bytes(bytes) => Sha256::new_with_prefix(bytes),
        };
        let [_, b, c, _] = self.byte_range;
        hasher.update(&self.appended[..b - self.original_len]);
        hasher.update(&self.appended[c - self.original_len..]);
        hasher.finalize().into()
    }

    /// Writes the CMS into /Contents and returns the revision: the bytes to append to the
    /// original file. `Err(needed)` with the size that would fit if the placeholder was too
    /// small.
    pub(crate) fn embed(mut self, cms_der: &[u8]) -> Result<Vec<u8>, usize> {
        if cms_der.len() > self.capacity {
            return Err(cms_der.len());
        }
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        // Skip the '<'; the unused tail stays zeros, which DER-length-aware
        // readers ignore.
        let start = self.byte_range[1] - self.original_len + 1;
        for (i, byte) in cms_der.iter().enumerate() {
            self.appended[start + 2 * i] = HEX[usize::from(byte >> 4)];
            self.appended[start + 2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        Ok(self.appended)
    }
}

/// The file a revision is appended to, as [`PreparedRevision::digest`] needs it.
#[derive(Clone, Copy)]
pub(crate) enum Original<'a> {
    Bytes(&'a [u8]),
    /// SHA-256 updated with exactly the file's bytes, not finalised: the file is a stored
    /// revision, read back and checked against its digest (see [`load_stored`]).
    Hashed(&'a Sha256),
}

impl Original<'_> {
    /// Parses `pdf`, the file this is the original of: a hashed original is a stored revision,
    /// parsed with [`load_stored`]; bytes are anyone's, parsed with every check of [`load`].
    pub(crate) fn load(self, pdf: &[u8]) -> Result<Document, PdfError> {
        match self {
            Original::Bytes(_) => load(pdf),
            Original::Hashed(_) => load_stored(pdf),
        }
    }
}

/// Object numbers a revision may still add after the highest one a file mentions.
const OBJECT_NUMBERS_LEFT: u32 = 1 << 16;

/// The highest object number `doc` mentions anywhere: its objects, its cross-reference data, its
/// trailer's /Size and every reference. The objects a revision adds must come after all of them:
/// one that took the number of a reference to an object the file lacks (which reads as null)
/// would give that reference a meaning (found by fuzzing: a page tree's kid missing from the file
/// became the signature dictionary, and the signed file had one page less).
fn highest_object_number(doc: &Document) -> Result<u32, PdfError> {
    let size = doc
        .trailer
        .get(b"Size")
        .and_then(Object::as_i64)
        .map_or(0, |size| {
            // A /Size below 1 is damage that says nothing; one past the numbers is refused below.
            u32::try_from(size.max(1) - 1).unwrap_or(u32::MAX)
        });
    let listed = doc
        .reference_table
        .entries
        .keys()
        .copied()
        .max()
        .unwrap_or(0);
    let mut highest = doc.max_id.max(size).max(listed);
    let mut pending: Vec<&Object> = doc.objects.values().collect();
    pending.extend(doc.trailer.iter().map(|(_, value)| value));
    while let Some(object) = pending.pop() {
        match object {
            Object::Reference((id, _)) => highest = highest.max(*id),
            Object::Array(items) => pending.extend(items),
            Object::Dictionary(dict) => pending.extend(dict.iter().map(|(_, value)| value)),
            Object::Stream(stream) => pending.extend(stream.dict.iter().map(|(_, value)| value)),
            _ => {}
        }
    }
    if highest > u32::MAX - OBJECT_NUMBERS_LEFT {
        return Err(PdfError::Unreadable(format!(
            "object number {highest} leaves no room for a signature's objects"
        )));
    }
    Ok(highest)
}

fn add_signature_field(
    revision: &mut IncrementalDocument,
    kind: &FieldKind<'_>,
    capacity: usize,
) -> Result<(), PdfError> {
    let unreadable = |e: lopdf::Error| PdfError::Unreadable(e.to_string());
    let prev = revision.get_prev_documents();
    let catalog_id = prev
        .trailer
        .get(b"Root")
        .and_then(Object::as_reference)
        .map_err(unreadable)?;
    let page_id = *prev.get_pages().get(&1).ok_or(PdfError::NoPages)?;
    let field_name = unused_field_name(
        prev,
        match kind {
            FieldKind::Signature(_) => "Signature",
            FieldKind::DocTimeStamp => "Timestamp",
        },
    );

    let doc = &mut revision.new_document;
    // A hybrid file's /XRefStm and an xref stream's decoding parameters
    // describe the previous section, not the one appended here.
    for key in [
        &b"XRefStm"[..],
        b"DecodeParms",
        b"Filter",
        b"Length",
        b"W",
        b"Index",
        b"Type",
    ] {
        doc.trailer.remove(key);
    }

    let byte_range: Vec<Object> = vec![
        0.into(),
        BYTE_RANGE_SENTINEL.into(),
        BYTE_RANGE_SENTINEL.into(),
        BYTE_RANGE_SENTINEL.into(),
    ];
    // Written as a literal string of hex zeros, `(00…0)`, and turned into the hex string
    // `<00…0>` in place once the revision is written (`PreparedRevision::new`): lopdf writes
    // a hex string one formatted byte at a time, which was a tenth of a signature's CPU.
    let contents = Object::String(vec![b'0'; 2 * capacity], StringFormat::Literal);
    let sig = match kind {
        FieldKind::Signature(fields) => {
            let mut sig = dictionary! {
                "Type" => "Sig",
                "Filter" => "Adobe.PPKLite",
                "SubFilter" => "ETSI.CAdES.detached",
                "ByteRange" => byte_range,
                "Contents" => contents,
                "M" => Object::string_literal(pdf_date(fields.signing_time)),
                "Name" => text_string(fields.name),
            };
            if let Some(reason) = fields.reason {
                sig.set("Reason", text_string(reason));
            }
            if let Some(location) = fields.location {
                sig.set("Location", text_string(location));
            }
            if let Some(email) = fields.email {
                sig.set("ContactInfo", text_string(email));
            }
            sig
        }
        // The time is the token's genTime; nothing else belongs here.
        FieldKind::DocTimeStamp => dictionary! {
            "Type" => "DocTimeStamp",
            "Filter" => "Adobe.PPKLite",
            "SubFilter" => "ETSI.RFC3161",
            "ByteRange" => byte_range,
            "Contents" => contents,
        },
    };
    let sig_id = doc.add_object(sig);

    let widget_id = doc.add_object(dictionary! {
        "Type" => "Annot",
        "Subtype" => "Widget",
        "FT" => "Sig",
        "T" => text_string(&field_name),
        "V" => sig_id,
        "Rect" => vec![0.into(), 0.into(), 0.into(), 0.into()],
        // Print | Locked: invisible field that nobody can move or delete.
        "F" => 132,
        "P" => page_id,
    });

    append_to_array_entry(revision, page_id, b"Annots", widget_id)?;
    add_to_acroform(revision, catalog_id, widget_id)
}

/// Appends `item` to `owner[key]`, whether that array is direct, indirect or
/// missing, copying into the new revision only the object that changes.
fn append_to_array_entry(
    revision: &mut IncrementalDocument,
    owner_id: ObjectId,
    key: &[u8],
    item: ObjectId,
) -> Result<(), PdfError> {
    let unreadable = |e: lopdf::Error| PdfError::Unreadable(e.to_string());
    let not_array =
        || PdfError::Unreadable(format!("/{} is not an array", String::from_utf8_lossy(key)));
    let existing = if revision.new_document.has_object(owner_id) {
        revision.new_document.get_dictionary(owner_id)
    } else {
        revision.get_prev_documents().get_dictionary(owner_id)
    }
    .map_err(unreadable)?
    .get(key)
    .ok()
    .cloned();

    match existing {
        // Only the array changes; the owner stays as it was.
        Some(Object::Reference(array_id)) => {
            revision
                .opt_clone_object_to_new_document(array_id)
                .map_err(unreadable)?;
            match revision
                .new_document
                .get_object_mut(array_id)
                .map_err(unreadable)?
            {
                Object::Array(items) => items.push(item.into()),
                _ => return Err(not_array()),
            }
            Ok(())
        }
        Some(Object::Array(mut items)) => {
            items.push(item.into());
            set_in(revision, owner_id, key, Object::Array(items))
        }
        Some(Object::Null) | None => {
            set_in(revision, owner_id, key, Object::Array(vec![item.into()]))
        }
        Some(_) => Err(not_array()),
    }
}

/// Sets `key` in object `id`, copying the object into the new revision first.
fn set_in(
    revision: &mut IncrementalDocument,
    id: ObjectId,
    key: &[u8],
    value: Object,
) -> Result<(), PdfError> {
    revision
        .opt_clone_object_to_new_document(id)
        .map_err(|e| PdfError::Unreadable(e.to_string()))?;
    revision
        .new_document
        .get_dictionary_mut(id)
        .map_err(|e| PdfError::Unreadable(e.to_string()))?
        .set(key, value);
    Ok(())
}

/// Registers the field and sets /SigFlags 3 (SignaturesExist | AppendOnly),
/// creating the AcroForm if the document has none.
fn add_to_acroform(
    revision: &mut IncrementalDocument,
    catalog_id: ObjectId,
    field_id: ObjectId,
) -> Result<(), PdfError> {
    let unreadable = |e: lopdf::Error| PdfError::Unreadable(e.to_string());
    let form_ref = revision
        .get_prev_documents()
        .get_dictionary(catalog_id)
        .map_err(unreadable)?
        .get(b"AcroForm")
        .ok()
        .cloned();

    let form_id = match form_ref {
        Some(Object::Reference(form_id)) => form_id,
        Some(Object::Dictionary(_)) | Some(Object::Null) | None => {
            // Move a direct (or missing) form into its own object so the
            // same code path edits it; the catalog then points to it.
            let form = match form_ref {
                Some(Object::Dictionary(form)) => form,
                _ => Dictionary::new(),
            };
            let form_id = revision.new_document.add_object(form);
            set_in(
                revision,
                catalog_id,
                b"AcroForm",
                Object::Reference(form_id),
            )?;
            form_id
        }
        Some(_) => return Err(PdfError::Unreadable("/AcroForm is not a dictionary".into())),
    };

    append_to_array_entry(revision, form_id, b"Fields", field_id)?;
    set_in(revision, form_id, b"SigFlags", Object::Integer(3))
}

/// First `{prefix}N` not already used as a field name (names must be unique).
fn unused_field_name(doc: &Document, prefix: &str) -> String {
    let mut taken = HashSet::new();
    for_each_field(doc, |field| {
        if let Ok(Object::String(name, _)) = field.get(b"T") {
            taken.insert(name.clone());
        }
    });
    (1..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| !taken.contains(name.as_bytes()))
        .unwrap_or_else(|| prefix.into())
}

/// Largest DSS entry read back for de-duplication; a CRL of a big CA is a few
/// MiB, and a bigger (or a decompression bomb) is simply not matched.
const MAX_DSS_ITEM: usize = 32 << 20;

/// Merges `validation` into the catalog's /DSS (ETSI EN 319 142-1 §5.4.2,
/// ISO 32000-2 §12.8.4.3): a new DSS object keeps every entry of an existing
/// one (including /VRI) and appends to /Certs, /CRLs and /OCSPs one stream per
/// value not already stored.
fn add_to_dss(
    revision: &mut IncrementalDocument,
    validation: &ValidationData,
) -> Result<(), PdfError> {
    let unreadable = |e: lopdf::Error| PdfError::Unreadable(e.to_string());
    let prev = revision.get_prev_documents();
    let catalog_id = prev
        .trailer
        .get(b"Root")
        .and_then(Object::as_reference)
        .map_err(unreadable)?;
    let catalog = if revision.new_document.has_object(catalog_id) {
        revision.new_document.get_dictionary(catalog_id)
    } else {
        prev.get_dictionary(catalog_id)
    }
    .map_err(unreadable)?;
    let mut dss = match catalog.get(b"DSS").ok() {
        Some(dss) => match prev.dereference(dss).map_err(unreadable)?.1 {
            Object::Dictionary(dss) => dss.clone(),
            Object::Null => Dictionary::new(),
            _ => return Err(PdfError::Unreadable("/DSS is not a dictionary".into())),
        },
        None => Dictionary::new(),
    };

    let no_ocsps: &[Vec<u8>] = &[];
    let mut entries = Vec::new();
    for (key, values) in [
        (&b"Certs"[..], &validation.certificates[..]),
        (b"CRLs", &validation.crls[..]),
        (b"OCSPs", no_ocsps),
    ] {
        let items = match dss.get(key).ok() {
            Some(items) => match prev.dereference(items).map_err(unreadable)?.1 {
                Object::Array(items) => items.clone(),
                _ => {
                    return Err(PdfError::Unreadable(format!(
                        "/DSS /{} is not an array",
                        String::from_utf8_lossy(key)
                    )))
                }
            },
            None => Vec::new(),
        };
        let stored: HashSet<Vec<u8>> = items
            .iter()
            .filter_map(|item| prev.dereference(item).ok())
            .filter_map(|(_, item)| item.as_stream().ok())
            .filter_map(|stream| stream.get_plain_content_with_limit(MAX_DSS_ITEM).ok())
            .collect();
        entries.push((key, values, items, stored));
    }
    for (key, values, mut items, mut stored) in entries {
        for value in values {
            if stored.insert(value.clone()) {
                let id = revision
                    .new_document
                    .add_object(Stream::new(Dictionary::new(), value.clone()));
                items.push(id.into());
            }
        }
        dss.set(key, Object::Array(items));
    }
    dss.set("Type", "DSS");
    let dss_id = revision.new_document.add_object(dss);
    set_in(revision, catalog_id, b"DSS", Object::Reference(dss_id))
}

/// PDF date string (ISO 32000-1 §7.9.4), always in UTC.
fn pdf_date(time: DateTime<Utc>) -> String {
    time.format("D:%Y%m%d%H%M%S+00'00'").to_string()
}

/// PDF text string: PDFDocEncoding is ASCII-compatible, anything beyond
/// ASCII goes out as UTF-16BE with a byte order mark.
fn text_string(text: &str) -> Object {
    if text.is_ascii() {
        Object::String(text.as_bytes().to_vec(), StringFormat::Literal)
    } else {
        let mut bytes = vec![0xFE, 0xFF];
        bytes.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        Object::String(bytes, StringFormat::Hexadecimal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_text_is_utf16be() {
        let Object::String(bytes, StringFormat::Hexadecimal) = text_string("署名") else {
            panic!("expected hex string");
        };
        assert_eq!(bytes, [0xFE, 0xFF, 0x7F, 0x72, 0x54, 0x0D]);
    }

    #[test]
    fn pdf_date_is_utc() {
        let time = DateTime::parse_from_rfc3339("2024-05-06T07:08:09Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(pdf_date(time), "D:20240506070809+00'00'");
    }

    #[test]
    fn the_writer_keeps_only_what_follows_the_original_and_refuses_a_changed_original() {
        use std::io::Write;
        let original = b"%PDF-1.7 original bytes\n";
        let mut out = AfterOriginal::new(original, 0);
        // Written in pieces that straddle the end of the original, as a buffered writer may.
        out.write_all(&original[..5]).unwrap();
        out.write_all(&[&original[5..], &b"1 0 obj"[..]].concat())
            .unwrap();
        out.write_all(b" null endobj").unwrap();
        assert_eq!(out.seen, original.len());
        assert!(!out.changed);
        assert_eq!(out.appended, b"1 0 obj null endobj");

        let mut out = AfterOriginal::new(original, 0);
        let mut altered = original.to_vec();
        altered[3] = b'X';
        assert!(out.write_all(&altered).is_err());
        assert!(out.changed);
        assert!(out.appended.is_empty());
    }
}
