//! Limits of PDF intake, and the pass over a file's raw bytes that enforces them before lopdf
//! parses anything.
//!
//! Why a pass of our own: lopdf 0.47 bounds each object and cross-reference stream it inflates
//! while loading (`LoadOptions::max_decompressed_size`), but not their sum, and it parses every
//! object an object stream's index names, wherever the index points, as often as it is named.
//! Likewise every in-use cross-reference entry is parsed at its offset, however many entries
//! share that offset. A file of a few kilobytes can so make it parse gigabytes. `prescan`
//! therefore, on the raw bytes:
//!
//! - counts indirect objects (headers, cross-reference entries, object stream members);
//! - refuses cross-reference data that points two objects at one offset, and object stream
//!   indexes whose entries share an offset or point inside another object;
//! - inflates every stream into a counter (never into memory), from its first data byte to the
//!   natural end of its deflate data, whatever its `/Length` says: an upper bound of what any
//!   reader inflating it can get.
//!
//! `check_loaded` then bounds, on the loaded document, the object and page counts and the
//! streams whose filters the pass does not decode (LZW, run-length, ASCII85, Brotli, and
//! chains), through lopdf's bounded decoder. `count_pages` walks the page tree and refuses one
//! that loops or lists a node twice: lopdf's own walk stops after as many steps as the file has
//! objects, so on such a tree its count would change once a revision adds objects.
//!
//! Must never panic, and never allocate more than a limit allows.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use flate2::{Decompress, FlushDecompress, Status};
use lopdf::{DecompressError, Document, Object};
use shomei_config::PdfConfig;

use crate::error::PdfError;

/// What a PDF may hold before intake refuses it. Defaults: [`PdfConfig::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PdfLimits {
    pub max_pages: u32,
    pub max_objects: u64,
    pub max_stream_bytes: u64,
    pub max_total_stream_bytes: u64,
}

impl Default for PdfLimits {
    fn default() -> Self {
        Self::from_config(&PdfConfig::default())
    }
}

static INSTALLED: OnceLock<PdfLimits> = OnceLock::new();

impl PdfLimits {
    pub fn from_config(config: &PdfConfig) -> Self {
        Self {
            max_pages: config.max_pages,
            max_objects: config.max_objects,
            max_stream_bytes: config.max_stream_bytes,
            max_total_stream_bytes: config.max_total_stream_bytes,
        }
    }

    /// Makes these the limits of every PDF this process reads ([`inspect_pdf`](crate::inspect_pdf),
    /// [`sign_pdf`](crate::sign_pdf), [`verify_pdf`](crate::verify_pdf), ...). Call once at
    /// start-up, from the configuration; the first call wins. `false` if limits were already
    /// installed (then they stay).
    pub fn install(self) -> bool {
        INSTALLED.set(self).is_ok()
    }

    /// The installed limits, or the defaults.
    pub fn current() -> Self {
        INSTALLED.get().copied().unwrap_or_default()
    }

    fn stream_limit(&self) -> usize {
        usize::try_from(self.max_stream_bytes).unwrap_or(usize::MAX)
    }
}

/// What the raw pass counted, carried into the checks on the loaded document.
#[derive(Debug, Default)]
pub(crate) struct Prescan {
    /// Bytes the streams inflated to.
    stream_bytes: u64,
}

/// Bytes of deflate input all inflations may read, beyond the file itself: streams do not
/// overlap in a real file, so each byte is read about once.
const OVERLAP_ALLOWANCE: u64 = 1 << 20;
/// How far before its `stream` keyword a stream's dictionary may begin.
const DICT_WINDOW: usize = 1 << 20;
/// Nesting the dictionary reader follows (lopdf follows 100; stream dictionaries need few).
const MAX_DEPTH: usize = 32;

pub(crate) fn prescan(bytes: &[u8], limits: &PdfLimits) -> Result<Prescan, PdfError> {
    let mut objects = ObjectCount {
        limit: limits.max_objects,
        headers: count_object_headers(bytes),
        ..Default::default()
    };
    objects.check()?;

    let mut offsets = OffsetOwners::default();
    classic_xref_tables(bytes, &mut offsets, &mut objects)?;

    let mut scan = Prescan::default();
    let mut dictionaries = Dictionaries::new(bytes);
    let mut inflater = Inflater::new();
    let mut input_read = 0u64;
    let input_allowed = 2 * bytes.len() as u64 + OVERLAP_ALLOWANCE;
    for (keyword, data) in stream_keywords(bytes) {
        let dict = dictionaries.of(keyword);
        let at = || format!("at byte {keyword}");
        // A stream whose dictionary cannot be read may still say it is deflated.
        let flate = match &dict {
            Ok(dict) => dict.names_filter(b"FlateDecode"),
            Err(region) => find(region, b"Fl").is_some() || find(region, b"#").is_some(),
        };

        let per_stream = limits
            .max_stream_bytes
            .min(limits.max_total_stream_bytes - scan.stream_bytes);
        let inflated = inflater.measure(&bytes[data..], flate, per_stream, None);
        input_read += inflated.read;
        if input_read > input_allowed {
            return Err(PdfError::Unreadable(
                "its streams overlap one another".into(),
            ));
        }
        if inflated.written > per_stream {
            return Err(too_large(limits, at(), per_stream));
        }
        scan.stream_bytes += inflated.written;

        let dict = match dict {
            Ok(dict) => dict,
            // lopdf might read what we cannot: refuse what it could take for an object or
            // cross-reference stream.
            Err(region) => {
                if ["First", "XRef"]
                    .iter()
                    .any(|w| find(region, w.as_bytes()).is_some())
                {
                    return Err(PdfError::Unreadable(format!(
                        "the dictionary of the stream {} cannot be read",
                        at()
                    )));
                }
                continue;
            }
        };
        let is_object_stream = dict.get(b"First").is_some();
        let is_xref_stream = dict.get(b"W").is_some();
        if !is_object_stream && !is_xref_stream {
            continue;
        }
        let content =
            structure_content(bytes, data, &dict, limits, &mut inflater).map_err(|e| match e {
                Structure::TooLarge => too_large(limits, at(), limits.max_stream_bytes),
                Structure::Unsupported(what) => {
                    PdfError::Unreadable(format!("the object stream {} uses {what}", at()))
                }
            })?;
        if is_object_stream {
            objects.members +=
                check_object_stream(&content, &dict, limits.max_objects).map_err(|e| match e {
                    ObjStmError::TooMany(found) => PdfError::TooManyObjects {
                        found,
                        limit: limits.max_objects,
                    },
                    ObjStmError::Bad(why) => {
                        PdfError::Unreadable(format!("object stream {}: {why}", at()))
                    }
                })?;
            objects.check()?;
        }
        if is_xref_stream {
            xref_stream_entries(&content, &dict, &mut offsets, &mut objects)
                .map_err(|e| e.into_error(|| format!("cross-reference stream {}", at())))?;
        }
    }
    Ok(scan)
}

fn too_large(limits: &PdfLimits, at: String, bound: u64) -> PdfError {
    if bound < limits.max_stream_bytes {
        PdfError::StreamsTooLarge {
            limit: limits.max_total_stream_bytes,
        }
    } else {
        PdfError::StreamTooLarge {
            stream: at,
            limit: limits.max_stream_bytes,
        }
    }
}

/// Checks on the document lopdf loaded: its objects and pages, and the streams whose filters
/// the raw pass left alone, through lopdf's bounded decoder.
pub(crate) fn check_loaded(
    doc: &Document,
    scan: &Prescan,
    limits: &PdfLimits,
) -> Result<(), PdfError> {
    let found = doc.objects.len() as u64;
    if found > limits.max_objects {
        return Err(PdfError::TooManyObjects {
            found,
            limit: limits.max_objects,
        });
    }
    let mut total = scan.stream_bytes;
    for (id, object) in &doc.objects {
        let Object::Stream(stream) = object else {
            continue;
        };
        let Ok(filters) = stream.filters() else {
            continue;
        };
        // A single zlib layer was measured on the raw bytes; image codecs are decoded by
        // nobody here, and their data is bounded by the body size.
        let decodable = |f: &&[u8]| {
            !matches!(
                *f,
                b"DCTDecode" | b"JPXDecode" | b"JBIG2Decode" | b"CCITTFaxDecode" | b"Crypt"
            )
        };
        let measured = filters == [b"FlateDecode".as_slice()] && zlib_header(&stream.content);
        if measured || filters.iter().all(|f| !decodable(f)) {
            continue;
        }
        let bound = limits
            .max_stream_bytes
            .min(limits.max_total_stream_bytes.saturating_sub(total));
        let at = format!("{} {} obj", id.0, id.1);
        let size = match stream
            .decompressed_content_with_limit(usize::try_from(bound).unwrap_or(usize::MAX))
        {
            Ok(content) => content.len() as u64,
            Err(lopdf::Error::Decompress(DecompressError::MemoryLimitExceeded { .. })) => {
                return Err(too_large(limits, at, bound))
            }
            // Not decodable (an image codec in the chain, damaged data): what a reader gets is
            // then its own business, and the stored bytes are bounded by the body size.
            Err(_) => 0,
        };
        total = total.saturating_add(size);
    }
    Ok(())
}

/// Deepest page tree accepted; real ones are a handful of levels deep.
const MAX_PAGE_TREE_DEPTH: usize = 64;

/// The number of pages, walking the page tree as lopdf's `get_pages` does (a kid that is not
/// a typed dictionary counts as a page, one of another type as none), but refusing a tree in
/// which a node is reached twice or that nests deeper than [`MAX_PAGE_TREE_DEPTH`], and one
/// whose count lopdf's bounded walk does not reach: on those, which page is "page 1" and how
/// many there are would depend on the number of objects in the file, and so change on signing.
pub(crate) fn count_pages(doc: &Document) -> Result<usize, PdfError> {
    let malformed = |why: String| PdfError::Unreadable(format!("the page tree {why}"));
    let Ok(root) = doc
        .catalog()
        .and_then(|catalog| catalog.get(b"Pages"))
        .and_then(Object::as_reference)
    else {
        return Ok(0);
    };
    let kids = |node| {
        doc.get_dictionary(node)
            .and_then(|tree| tree.get_deref(b"Kids", doc))
            .and_then(Object::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let mut reached = HashSet::from([root]);
    let mut nodes = vec![(root, 0)];
    let mut pages = 0;
    while let Some((node, depth)) = nodes.pop() {
        for kid in kids(node).iter().filter_map(|kid| kid.as_reference().ok()) {
            if !reached.insert(kid) {
                return Err(malformed(format!(
                    "reaches object {} {} more than once",
                    kid.0, kid.1
                )));
            }
            match doc.get_dictionary(kid).and_then(|d| d.get_type()) {
                Ok(b"Pages") if depth + 1 >= MAX_PAGE_TREE_DEPTH => {
                    return Err(malformed(format!(
                        "is nested more than {MAX_PAGE_TREE_DEPTH} levels deep"
                    )))
                }
                Ok(b"Pages") => nodes.push((kid, depth + 1)),
                Ok(b"Page") | Err(_) => pages += 1,
                Ok(_) => {}
            }
        }
    }
    if doc.page_iter().count() != pages {
        return Err(malformed(format!(
            "holds {pages} pages among more entries than the parser walks"
        )));
    }
    Ok(pages)
}

/// The page limit, checked where the pages are counted.
pub(crate) fn check_pages(pages: usize, limits: &PdfLimits) -> Result<(), PdfError> {
    if pages as u64 > u64::from(limits.max_pages) {
        return Err(PdfError::TooManyPages {
            pages: pages as u64,
            limit: limits.max_pages,
        });
    }
    Ok(())
}

#[derive(Debug, Default)]
struct ObjectCount {
    limit: u64,
    headers: u64,
    /// Distinct objects the cross-reference data lists as in use.
    listed: u64,
    members: u64,
}

impl ObjectCount {
    fn check(&self) -> Result<(), PdfError> {
        // An object stream's members are listed in the cross-reference data too, and an
        // incrementally updated file holds several versions of an object: take the largest
        // of the counts that cannot overlap.
        let found = self.headers.max(self.listed).max(self.members);
        if found > self.limit {
            return Err(PdfError::TooManyObjects {
                found,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// Which object each offset in the cross-reference data belongs to: one offset, one object.
#[derive(Default)]
struct OffsetOwners(HashMap<u64, u32>);

impl OffsetOwners {
    /// Records that object `id` is at `offset`, and counts the objects listed so far.
    fn claim(&mut self, offset: u64, id: u32, objects: &mut ObjectCount) -> Result<(), Claim> {
        if let Some(other) = self.0.insert(offset, id) {
            if other != id {
                return Err(Claim::Shared(format!(
                    "objects {other} and {id} are both at byte {offset}"
                )));
            }
        }
        objects.listed = self.0.len() as u64;
        objects.check().map_err(Claim::Limit)
    }
}

enum Claim {
    Shared(String),
    Limit(PdfError),
}

impl Claim {
    fn into_error(self, what: impl FnOnce() -> String) -> PdfError {
        match self {
            Claim::Limit(e) => e,
            Claim::Shared(why) => PdfError::Unreadable(format!("{}: {why}", what())),
        }
    }
}

fn is_white(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\0')
}

fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%'
    )
}

fn is_regular(b: u8) -> bool {
    !is_white(b) && !is_delimiter(b)
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Position of the `obj` of each `N G obj` header. (memchr's search, not a byte-by-byte walk:
/// the prescan runs on every document a worker signs, and this walk was its largest part.)
fn object_headers(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    memchr::memmem::find_iter(bytes, b"obj").filter(move |&i| {
        bytes.get(i + 3).is_none_or(|&b| !is_regular(b)) && header_before(bytes, i)
    })
}

/// Whether `N G ` precedes `bytes[end]`.
fn header_before(bytes: &[u8], end: usize) -> bool {
    let mut i = end;
    let skip = |pred: fn(u8) -> bool, i: &mut usize| {
        let from = *i;
        while *i > 0 && pred(bytes[*i - 1]) {
            *i -= 1;
        }
        from - *i
    };
    skip(is_white, &mut i) > 0
        && skip(|b| b.is_ascii_digit(), &mut i) > 0
        && skip(is_white, &mut i) > 0
        && skip(|b| b.is_ascii_digit(), &mut i) > 0
        && (i == 0 || !is_regular(bytes[i - 1]))
}

fn count_object_headers(bytes: &[u8]) -> u64 {
    object_headers(bytes).count() as u64
}

/// `(keyword, data)`: where each `stream` keyword is and where its data begins.
fn stream_keywords(bytes: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    memchr::memmem::find_iter(bytes, b"stream").filter_map(move |i| {
        if i > 0 && is_regular(bytes[i - 1]) {
            return None;
        }
        // lopdf accepts CRLF, LF and a lone CR after the keyword.
        let data = match (bytes.get(i + 6), bytes.get(i + 7)) {
            (Some(b'\r'), Some(b'\n')) => i + 8,
            (Some(b'\n'), _) | (Some(b'\r'), _) => i + 7,
            _ => return None,
        };
        Some((i, data.min(bytes.len())))
    })
}

struct Inflated {
    /// Input bytes the decoder read.
    read: u64,
    /// Bytes it wrote, up to `limit + 1`.
    written: u64,
}

/// One inflater for every stream of a file: its state is tens of kilobytes, too much to
/// allocate afresh for each `stream` keyword of a hostile file.
struct Inflater {
    state: Decompress,
    scratch: Vec<u8>,
}

impl Inflater {
    fn new() -> Self {
        Self {
            state: Decompress::new(true),
            scratch: vec![0; 32 * 1024],
        }
    }

    /// Inflates `data` as zlib (`zlib`) or raw deflate, stopping at its end, at an error or at
    /// `limit + 1` bytes; the bytes go to `keep` if given.
    fn run(
        &mut self,
        data: &[u8],
        zlib: bool,
        limit: u64,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Inflated {
        if zlib && !zlib_header(data) {
            return Inflated {
                read: 0,
                written: 0,
            };
        }
        self.state.reset(zlib);
        loop {
            let read = self.state.total_in() as usize;
            let written = self.state.total_out();
            let room = (limit.saturating_add(1) - written).min(self.scratch.len() as u64) as usize;
            if room == 0 {
                break;
            }
            let status = self.state.decompress(
                &data[read..],
                &mut self.scratch[..room],
                FlushDecompress::None,
            );
            let produced = (self.state.total_out() - written) as usize;
            if let Some(keep) = keep.as_deref_mut() {
                keep.extend_from_slice(&self.scratch[..produced]);
            }
            let progressed = produced > 0 || self.state.total_in() as usize > read;
            match status {
                Ok(Status::Ok) if progressed => {}
                _ => break,
            }
        }
        Inflated {
            read: self.state.total_in(),
            written: self.state.total_out(),
        }
    }

    /// Like lopdf: zlib, and if that yields nothing, raw deflate after the two header bytes
    /// (`fallback`: for streams that say they are deflated).
    fn measure(
        &mut self,
        data: &[u8],
        fallback: bool,
        limit: u64,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Inflated {
        let first = self.run(data, true, limit, keep.as_deref_mut());
        if first.written > 0 || !fallback || data.len() <= 2 {
            return first;
        }
        let second = self.run(&data[2..], false, limit, keep);
        Inflated {
            read: first.read + second.read,
            written: second.written,
        }
    }
}

/// Whether `data` starts with a zlib header announcing deflate (RFC 1950 §2.2).
pub(crate) fn zlib_header(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// The few object kinds stream dictionaries are made of.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Other,
    Name(Vec<u8>),
    Array(Vec<Value>),
    Dict(Dict),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Dict(Vec<(Vec<u8>, Value)>);

impl Dict {
    /// The last value of `key`, as lopdf keeps it.
    fn get(&self, key: &[u8]) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn int(&self, key: &[u8]) -> Option<i64> {
        match self.get(key)? {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    fn filters(&self) -> Vec<&[u8]> {
        match self.get(b"Filter") {
            Some(Value::Name(name)) => vec![name.as_slice()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Name(n) => Some(n.as_slice()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether any `/Filter` entry names `filter`.
    fn names_filter(&self, filter: &[u8]) -> bool {
        self.0.iter().any(|(k, v)| {
            k == b"Filter"
                && match v {
                    Value::Name(n) => n == filter,
                    Value::Array(items) => items.contains(&Value::Name(filter.to_vec())),
                    _ => false,
                }
        })
    }
}

/// A reader of direct objects, enough for stream dictionaries.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while let Some(&b) = self.bytes.get(self.at) {
            if is_white(b) {
                self.at += 1;
            } else if b == b'%' {
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|&b| b != b'\n' && b != b'\r')
                {
                    self.at += 1;
                }
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, token: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn regular_run(&mut self) -> &[u8] {
        let from = self.at;
        while self.bytes.get(self.at).is_some_and(|&b| is_regular(b)) {
            self.at += 1;
        }
        &self.bytes[from..self.at]
    }

    fn name(&mut self) -> Option<Vec<u8>> {
        if !self.eat(b"/") {
            return None;
        }
        let raw = self.regular_run();
        let mut name = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (raw[i], hex) {
                (b'#', Some(byte)) => {
                    name.push(byte);
                    i += 3;
                }
                (b, _) => {
                    name.push(b);
                    i += 1;
                }
            }
        }
        Some(name)
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_space();
        match *self.bytes.get(self.at)? {
            b'/' => self.name().map(Value::Name),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    if self.eat(b"]") {
                        return Some(Value::Array(items));
                    }
                    items.push(self.value(depth + 1)?);
                }
            }
            b'<' if self.bytes.get(self.at + 1) == Some(&b'<') => self.dict(depth).map(Value::Dict),
            b'<' => {
                let end = self.bytes[self.at..].iter().position(|&b| b == b'>')?;
                self.at += end + 1;
                Some(Value::Other)
            }
            b'(' => {
                self.at = literal_string_end(self.bytes, self.at)?;
                Some(Value::Other)
            }
            b if is_regular(b) => {
                let token = self.regular_run().to_vec();
                let Ok(n) = std::str::from_utf8(&token).unwrap_or("").parse::<i64>() else {
                    return Some(Value::Other);
                };
                // `N G R` is one value, a reference.
                let save = self.at;
                self.skip_space();
                let generation = self.regular_run().to_vec();
                self.skip_space();
                if generation.iter().all(u8::is_ascii_digit)
                    && !generation.is_empty()
                    && self.eat(b"R")
                    && self.bytes.get(self.at).is_none_or(|&b| !is_regular(b))
                {
                    return Some(Value::Other);
                }
                self.at = save;
                Some(Value::Int(n))
            }
            _ => None,
        }
    }

    fn dict(&mut self, depth: usize) -> Option<Dict> {
        if !self.eat(b"<<") {
            return None;
        }
        let mut dict = Dict::default();
        loop {
            self.skip_space();
            if self.eat(b">>") {
                return Some(dict);
            }
            let key = self.name()?;
            let value = self.value(depth + 1)?;
            dict.0.push((key, value));
        }
    }
}

/// Index just past the literal string that opens at `bytes[at]`.
fn literal_string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = at;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Finds the dictionary of each stream: the one right after the object header before its
/// `stream` keyword, read once per header.
struct Dictionaries<'a> {
    bytes: &'a [u8],
    headers: Vec<usize>,
    read: HashMap<usize, Option<(Dict, usize)>>,
    /// End of the region the previous keyword searched, so that regions never overlap.
    searched: usize,
}

impl<'a> Dictionaries<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            headers: object_headers(bytes).collect(),
            read: HashMap::new(),
            searched: 0,
        }
    }

    /// The dictionary of the stream whose keyword is at `keyword`, or `Err(region)`, the bytes
    /// before the keyword where it would have been.
    fn of(&mut self, keyword: usize) -> Result<Dict, &'a [u8]> {
        let bytes = self.bytes;
        let since = self.searched;
        self.searched = keyword;
        let before = self.headers.partition_point(|&h| h < keyword);
        let Some(&header) = before.checked_sub(1).and_then(|i| self.headers.get(i)) else {
            return Err(&bytes[since..keyword]);
        };
        let region = &bytes[since.max(header)..keyword];
        // Objects do not nest: a dictionary ends before the next header, which also keeps
        // the parses of all headers together linear in the file.
        let next = self.headers.get(before).copied().unwrap_or(bytes.len());
        let read = self.read.entry(header).or_insert_with(|| {
            let end = next.min(header + 3 + DICT_WINDOW);
            let mut parser = Parser {
                bytes: &bytes[..end],
                at: header + 3,
            };
            parser.skip_space();
            let dict = parser.dict(0)?;
            Some((dict, parser.at))
        });
        match read {
            Some((dict, end))
                if *end <= keyword && bytes[*end..keyword].iter().all(|&b| is_white(b)) =>
            {
                Ok(dict.clone())
            }
            _ => Err(region),
        }
    }
}

enum Structure {
    TooLarge,
    Unsupported(String),
}

/// The decoded content of an object or cross-reference stream, as lopdf will see it (or
/// more: deflate data is inflated to its own end, not to `/Length`).
fn structure_content(
    bytes: &[u8],
    data: usize,
    dict: &Dict,
    limits: &PdfLimits,
    inflater: &mut Inflater,
) -> Result<Vec<u8>, Structure> {
    let limit = limits.stream_limit();
    let raw = &bytes[data..];
    let mut content = match dict.filters().as_slice() {
        [] => {
            // Unfiltered: as far as `/Length` says, else to `endstream`.
            let end = dict
                .int(b"Length")
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= raw.len())
                .or_else(|| find(raw, b"endstream"))
                .unwrap_or(raw.len());
            if end > limit {
                return Err(Structure::TooLarge);
            }
            raw[..end].to_vec()
        }
        [b"FlateDecode"] => {
            let mut content = Vec::new();
            inflater.measure(raw, true, limit as u64, Some(&mut content));
            if content.len() > limit {
                return Err(Structure::TooLarge);
            }
            content
        }
        other => {
            let names: Vec<_> = other.iter().map(|f| String::from_utf8_lossy(f)).collect();
            return Err(Structure::Unsupported(format!(
                "the filters {names:?}, which are not supported there"
            )));
        }
    };
    let params = match dict.get(b"DecodeParms") {
        Some(Value::Dict(params)) => Some(params),
        Some(Value::Array(items)) => match items.first() {
            Some(Value::Dict(params)) => Some(params),
            _ => None,
        },
        _ => None,
    };
    if let Some(params) = params {
        match params.int(b"Predictor").unwrap_or(1) {
            1 => {}
            10..=15 => {
                let columns = params.int(b"Columns").unwrap_or(1);
                let colors = params.int(b"Colors").unwrap_or(1);
                let bits = params.int(b"BitsPerComponent").unwrap_or(8);
                let row = columns
                    .saturating_mul(colors)
                    .saturating_mul(bits)
                    .saturating_add(7)
                    / 8;
                let pixel = (colors.saturating_mul(bits).saturating_add(7) / 8).max(1);
                match (usize::try_from(row), usize::try_from(pixel)) {
                    (Ok(row), Ok(pixel)) if row > 0 && row < 1 << 20 => {
                        content = png_unpredict(&content, row, pixel);
                    }
                    _ => return Err(Structure::Unsupported("a bad /Columns".into())),
                }
            }
            other => {
                return Err(Structure::Unsupported(format!(
                    "predictor {other}, which is not supported there"
                )))
            }
        }
    }
    Ok(content)
}

/// Reverses the PNG row filters (RFC 2083 §6); a short last row is dropped, as lopdf does.
fn png_unpredict(data: &[u8], row: usize, pixel: usize) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(data.len());
    let mut prev = vec![0u8; row];
    for chunk in data.chunks_exact(row + 1) {
        let (kind, line) = (chunk[0], &chunk[1..]);
        let mut current = line.to_vec();
        for i in 0..row {
            let left = if i >= pixel { current[i - pixel] } else { 0 };
            let up = prev[i];
            let up_left = if i >= pixel { prev[i - pixel] } else { 0 };
            let add = match kind {
                1 => left,
                2 => up,
                3 => ((u16::from(left) + u16::from(up)) / 2) as u8,
                4 => paeth(left, up, up_left),
                _ => 0,
            };
            current[i] = current[i].wrapping_add(add);
        }
        out.extend_from_slice(&current);
        prev = current;
    }
    out
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Checks an object stream's index as lopdf reads it (pairs of numbers before `/First`), and
/// returns how many objects it names. Every entry must point at its own object, at the top
/// level of the content: then lopdf parses each byte once.
fn check_object_stream(content: &[u8], dict: &Dict, limit: u64) -> Result<u64, ObjStmError> {
    let Some(first) = dict.int(b"First").and_then(|n| usize::try_from(n).ok()) else {
        return Ok(0);
    };
    let Some(index) = content.get(..first) else {
        return Ok(0); // lopdf refuses it
    };
    let text = String::from_utf8_lossy(index);
    // lopdf collects every token of the index: so many cannot be fewer objects.
    let tokens = text.split(['\r', '\n']).flat_map(|line| {
        line.split('%')
            .next()
            .unwrap_or_default()
            .split_whitespace()
    });
    let mut numbers: Vec<Option<u32>> = Vec::new();
    for token in tokens {
        if numbers.len() as u64 >= 2 * limit + 2 {
            return Err(ObjStmError::TooMany(numbers.len() as u64 / 2 + 1));
        }
        numbers.push(token.parse().ok());
    }
    let starts = TopLevel::scan(&content[first..]);
    let mut seen = HashSet::new();
    let mut named = 0u64;
    for pair in numbers.chunks_exact(2) {
        let (Some(_id), Some(offset)) = (pair[0], pair[1]) else {
            continue;
        };
        let offset = offset as usize;
        if first + offset >= content.len() {
            continue; // lopdf skips it
        }
        named += 1;
        if !seen.insert(offset) {
            return Err(ObjStmError::Bad(format!("two objects at offset {offset}")));
        }
        if !starts.allows(offset) {
            return Err(ObjStmError::Bad(format!(
                "an object at offset {offset}, inside another object"
            )));
        }
    }
    Ok(named)
}

enum ObjStmError {
    TooMany(u64),
    Bad(String),
}

/// Which offsets of an object stream's objects are at the top level, between tokens.
struct TopLevel(Vec<u64>);

impl TopLevel {
    fn scan(content: &[u8]) -> Self {
        let mut bits = vec![0u64; content.len() / 64 + 1];
        let mut depth = 0usize;
        let mut i = 0;
        while i < content.len() {
            let b = content[i];
            let boundary = i == 0 || !is_regular(content[i - 1]) || !is_regular(b);
            if depth == 0 && boundary {
                bits[i / 64] |= 1 << (i % 64);
            }
            match b {
                b'(' => {
                    i = literal_string_end(content, i).unwrap_or(content.len());
                    continue;
                }
                b'%' => {
                    while i < content.len() && content[i] != b'\n' && content[i] != b'\r' {
                        i += 1;
                    }
                    continue;
                }
                b'<' if content.get(i + 1) == Some(&b'<') => {
                    depth += 1;
                    i += 2;
                    continue;
                }
                b'>' if content.get(i + 1) == Some(&b'>') => {
                    depth = depth.saturating_sub(1);
                    i += 2;
                    continue;
                }
                b'<' => {
                    i += content[i..]
                        .iter()
                        .position(|&b| b == b'>')
                        .map_or(content.len(), |p| p + 1);
                    continue;
                }
                b'[' => depth += 1,
                b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        Self(bits)
    }

    fn allows(&self, offset: usize) -> bool {
        self.0
            .get(offset / 64)
            .is_some_and(|w| w & (1 << (offset % 64)) != 0)
    }
}

/// Reads a cross-reference stream's entries as lopdf does (`/W`, `/Index`, `/Size`), claiming
/// the offset of each object in use.
fn xref_stream_entries(
    content: &[u8],
    dict: &Dict,
    offsets: &mut OffsetOwners,
    objects: &mut ObjectCount,
) -> Result<(), Claim> {
    let ints = |v: Option<&Value>| -> Option<Vec<i64>> {
        match v? {
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::Int(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    let Some(widths) = ints(dict.get(b"W")) else {
        return Ok(()); // lopdf refuses it
    };
    let widths: Vec<usize> = widths
        .iter()
        .take(3)
        .map(|&w| usize::try_from(w).unwrap_or(usize::MAX))
        .collect();
    if widths.len() < 3 || widths.iter().any(|&w| w > 8) || widths.iter().sum::<usize>() == 0 {
        return Ok(()); // lopdf refuses it
    }
    let size = dict.int(b"Size").unwrap_or(0);
    let index = ints(dict.get(b"Index")).unwrap_or_else(|| vec![0, size]);
    let row = widths.iter().sum::<usize>();
    let field = |bytes: &[u8]| bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
    let mut rows = content.chunks_exact(row);
    for section in index.chunks_exact(2) {
        let (Ok(start), Ok(count)) = (u32::try_from(section[0]), u64::try_from(section[1])) else {
            continue;
        };
        for k in 0..count {
            let Some(entry) = rows.next() else {
                return Ok(());
            };
            let (kind, rest) = entry.split_at(widths[0]);
            let (offset, _) = rest.split_at(widths[1]);
            let kind = if widths[0] == 0 { 1 } else { field(kind) };
            if kind == 1 {
                let id = start.wrapping_add(k as u32);
                offsets.claim(field(offset), id, objects)?;
            }
        }
    }
    Ok(())
}

/// Reads every classic cross-reference table (`xref`, subsections of 20-byte entries),
/// claiming the offset of each object in use.
fn classic_xref_tables(
    bytes: &[u8],
    offsets: &mut OffsetOwners,
    objects: &mut ObjectCount,
) -> Result<(), PdfError> {
    let mut from = 0;
    while let Some(found) = find(&bytes[from..], b"xref") {
        let at = from + found;
        from = at + 4;
        if (at > 0 && is_regular(bytes[at - 1]))
            || bytes.get(at + 4).is_some_and(|&b| is_regular(b))
        {
            continue; // startxref, /XRef, XRefStm
        }
        let mut p = Parser { bytes, at: from };
        'sections: loop {
            p.skip_space();
            let start = std::str::from_utf8(p.regular_run())
                .ok()
                .and_then(|s| s.parse::<u32>().ok());
            p.skip_space();
            let count = std::str::from_utf8(p.regular_run())
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let (Some(start), Some(count)) = (start, count) else {
                break;
            };
            for k in 0..count {
                p.skip_space();
                let offset = std::str::from_utf8(p.regular_run())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                p.skip_space();
                let generation = p.regular_run().to_vec();
                p.skip_space();
                let kind = p.regular_run().to_vec();
                let Some(offset) = offset else {
                    break 'sections;
                };
                if generation.is_empty() || !matches!(kind.as_slice(), b"n" | b"f") {
                    break 'sections;
                }
                if kind == b"n" {
                    offsets
                        .claim(offset, start.wrapping_add(k as u32), objects)
                        .map_err(|e| e.into_error(|| "cross-reference table".into()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(text: &[u8]) -> Option<Dict> {
        Parser { bytes: text, at: 0 }.dict(0)
    }

    #[test]
    fn stream_dictionaries_are_read_with_escaped_names_and_references() {
        let d = dict(b"<< /Type /Obj#53tm /N 2 /First 9 /Length 12 0 R /Filter [/FlateDecode] >>")
            .unwrap();
        assert_eq!(d.get(b"Type"), Some(&Value::Name(b"ObjStm".to_vec())));
        assert_eq!(d.int(b"First"), Some(9));
        assert_eq!(d.get(b"Length"), Some(&Value::Other));
        assert_eq!(d.filters(), vec![b"FlateDecode".as_slice()]);
    }

    #[test]
    fn object_headers_are_counted_only_where_they_are_headers() {
        assert_eq!(
            count_object_headers(b"1 0 obj\n<<>>\nendobj\n12 3 obj 4 endobj"),
            2
        );
        assert_eq!(count_object_headers(b"1 0 objx x1 0 obj 0 obj"), 0);
    }

    #[test]
    fn top_level_offsets_exclude_the_inside_of_objects() {
        let content = b"<< /A [1 2] >> (a(b)c) 42";
        let top = TopLevel::scan(content);
        assert!(top.allows(0));
        assert!(!top.allows(3), "inside the dictionary");
        assert!(!top.allows(16), "inside the string");
        assert!(top.allows(23));
        assert!(!top.allows(24), "inside a number");
    }

    #[test]
    fn png_up_rows_are_undone() {
        let rows = [2, 1, 2, 2, 1, 1];
        assert_eq!(png_unpredict(&rows, 2, 1), vec![1, 2, 2, 3]);
    }
}
