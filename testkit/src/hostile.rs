//! Small hostile PDFs, made in the test instead of committed: too many pages or objects,
//! decompression bombs in a content stream and in an object stream, object streams whose
//! index makes a parser read one object many times.
//!
//! Every file has a classic cross-reference table with the right offsets, so each is refused
//! for what it is meant to show, not for damage.

/// Builds a PDF object by object.
#[derive(Default)]
pub struct PdfBuilder {
    objects: Vec<Vec<u8>>,
}

impl PdfBuilder {
    /// Adds an object (its text between `N 0 obj` and `endobj`); returns its number.
    pub fn add(&mut self, body: impl Into<Vec<u8>>) -> u32 {
        self.objects.push(body.into());
        self.objects.len() as u32
    }

    /// Reserves a number, for an object that refers to objects added after it.
    pub fn reserve(&mut self) -> u32 {
        self.add(b"null".to_vec())
    }

    pub fn set(&mut self, id: u32, body: impl Into<Vec<u8>>) {
        self.objects[id as usize - 1] = body.into();
    }

    /// A stream object with `dict` (without `/Length`) and `data`.
    pub fn add_stream(&mut self, dict: &str, data: &[u8]) -> u32 {
        let mut body = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\nendstream");
        self.add(body)
    }

    /// The file, with `root` as the catalog.
    pub fn finish(&self, root: u32) -> Vec<u8> {
        let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let mut offsets = Vec::with_capacity(self.objects.len());
        for (i, body) in self.objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n", self.objects.len() + 1).as_bytes());
        out.extend_from_slice(b"0000000000 65535 f \n");
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root {root} 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                self.objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }
}

/// A catalog and a page tree of `pages` empty pages, the first with `content` if given.
pub fn document(builder: &mut PdfBuilder, pages: usize, content: Option<u32>) -> u32 {
    let tree = builder.reserve();
    let kids: Vec<String> = (0..pages)
        .map(|i| {
            let contents = match content {
                Some(id) if i == 0 => format!(" /Contents {id} 0 R"),
                _ => String::new(),
            };
            let page = builder.add(format!(
                "<< /Type /Page /Parent {tree} 0 R /MediaBox [0 0 595 842]{contents} >>"
            ));
            format!("{page} 0 R")
        })
        .collect();
    builder.set(
        tree,
        format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} >>",
            kids.join(" ")
        ),
    );
    builder.add(format!("<< /Type /Catalog /Pages {tree} 0 R >>"))
}

/// A PDF of `pages` empty pages.
pub fn many_pages(pages: usize) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let root = document(&mut b, pages, None);
    b.finish(root)
}

/// A one-page PDF with `extra` more objects (integers nobody refers to).
pub fn many_objects(extra: usize) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let root = document(&mut b, 1, None);
    for i in 0..extra {
        b.add(i.to_string());
    }
    b.finish(root)
}

/// A one-page PDF whose page content is a deflate stream of `inflated` zero bytes.
pub fn content_bomb(inflated: u64) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let content = b.add_stream("/Filter /FlateDecode", &zlib_zeros(inflated));
    let root = document(&mut b, 1, Some(content));
    b.finish(root)
}

/// A one-page PDF with `count` content streams, each inflating to `each` zero bytes.
pub fn many_streams(count: usize, each: u64) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let bomb = zlib_zeros(each);
    let streams: Vec<String> = (0..count)
        .map(|_| format!("{} 0 R", b.add_stream("/Filter /FlateDecode", &bomb)))
        .collect();
    let array = b.add(format!("[{}]", streams.join(" ")));
    let root = document(&mut b, 1, Some(array));
    b.finish(root)
}

/// A one-page PDF holding an object stream whose deflated content inflates to `inflated`
/// bytes (its index first, then zeros).
pub fn object_stream_bomb(inflated: u64) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let root = document(&mut b, 1, None);
    let index = b"900 0 ";
    let data = zlib(index, inflated.saturating_sub(index.len() as u64));
    b.add_stream(
        &format!(
            "/Type /ObjStm /N 1 /First {} /Filter /FlateDecode",
            index.len()
        ),
        &data,
    );
    b.finish(root)
}

/// A one-page PDF holding an uncompressed object stream whose `members` index entries all
/// point at one array of `width` numbers: a reader that parses each entry on its own parses
/// that array `members` times.
pub fn aliased_object_stream(members: usize, width: usize) -> Vec<u8> {
    let mut b = PdfBuilder::default();
    let root = document(&mut b, 1, None);
    let index: String = (0..members).map(|i| format!("{} 0 ", 1000 + i)).collect();
    let mut content = index.clone().into_bytes();
    content.push(b'[');
    for _ in 0..width {
        content.extend_from_slice(b"0 ");
    }
    content.push(b']');
    b.add_stream(
        &format!("/Type /ObjStm /N {members} /First {}", index.len()),
        &content,
    );
    b.finish(root)
}

/// A zlib stream of `zeros` zero bytes, about a thousandth of that in size.
pub fn zlib_zeros(zeros: u64) -> Vec<u8> {
    zlib(&[], zeros)
}

/// A zlib stream of `prefix` then `zeros` zero bytes: one dynamic-Huffman deflate block in
/// which the zeros are matches of 258 bytes at distance 1, two bits each (RFC 1951).
pub fn zlib(prefix: &[u8], zeros: u64) -> Vec<u8> {
    let mut w = BitWriter::default();
    // Stored block with the prefix (not final).
    if !prefix.is_empty() {
        w.bits(0, 1);
        w.bits(0, 2);
        w.align();
        let len = prefix.len() as u32;
        assert!(len <= 0xffff);
        w.bits(len, 16);
        w.bits(!len & 0xffff, 16);
        for &b in prefix {
            w.bits(u32::from(b), 8);
        }
    }
    // Final dynamic block. Literal/length code: 285 → 0, literal 0 → 10, end → 11; distance
    // code 0 → 0. Code-length code: 18 → 0, 1 → 10, 2 → 11.
    w.bits(1, 1);
    w.bits(2, 2);
    w.bits(29, 5); // HLIT: 286 codes
    w.bits(0, 5); // HDIST: 1 code
    w.bits(14, 4); // HCLEN: 18 code-length codes
                   // In the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1.
    for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        w.bits(len, 3);
    }
    w.code(0b11, 2); // literal 0: length 2
    w.code(0b0, 1); // 138 zeros
    w.bits(127, 7);
    w.code(0b0, 1); // 117 zeros
    w.bits(106, 7);
    w.code(0b11, 2); // 256: length 2
    w.code(0b0, 1); // 28 zeros
    w.bits(17, 7);
    w.code(0b10, 2); // 285: length 1
    w.code(0b10, 2); // distance 0: length 1
    let mut left = zeros;
    if left > 0 {
        w.code(0b10, 2); // one literal zero, then copies of it
        left -= 1;
    }
    while left >= 258 {
        w.code(0, 1);
        w.code(0, 1);
        left -= 258;
    }
    for _ in 0..left {
        w.code(0b10, 2);
    }
    w.code(0b11, 2);
    w.align();

    let mut out = vec![0x78, 0x01];
    out.extend_from_slice(&w.bytes);
    // Adler-32 of the data: zeros add nothing to the first sum.
    let (mut a, mut b) = (1u64, 0u64);
    for &byte in prefix {
        a = (a + u64::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    b = (b + a * (zeros % 65521)) % 65521;
    out.extend_from_slice(&((b << 16 | a) as u32).to_be_bytes());
    out
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    bit: u32,
}

impl BitWriter {
    /// `n` bits of `value`, least significant first.
    fn bits(&mut self, value: u32, n: u32) {
        for i in 0..n {
            if self.bit == 0 {
                self.bytes.push(0);
            }
            let last = self.bytes.len() - 1;
            self.bytes[last] |= (((value >> i) & 1) as u8) << self.bit;
            self.bit = (self.bit + 1) % 8;
        }
    }

    /// A Huffman code of `n` bits, most significant first.
    fn code(&mut self, code: u32, n: u32) {
        for i in (0..n).rev() {
            self.bits((code >> i) & 1, 1);
        }
    }

    fn align(&mut self) {
        self.bit = 0;
    }
}
