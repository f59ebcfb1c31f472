//! Revisions stored as what they append to the revision before them.
//!
//! A signature or a document time-stamp is a PDF incremental update: the new revision is the
//! previous one, byte for byte, and a few tens of kilobytes after it. Such a revision is stored
//! as those appended bytes behind a header that names the object holding the revision it
//! extends (its *base*), with the base's plaintext length and SHA-256:
//!
//! ```text
//! "shomei-appended/1\n"   magic (18 bytes)
//! u16 BE                  length of the base's key
//! base key                UTF-8, in the same document's folder
//! u64 BE                  length of the base's plaintext
//! [u8; 32]                SHA-256 of the base's plaintext
//! appended bytes          the rest
//! ```
//!
//! The whole is sealed like any object, so the header is as protected as the bytes. A base
//! may be appended itself; the objects of a chain are `depth` links long, and the key of an
//! appended object says its depth: `{sha256 of the ciphertext}.a{depth}.sealed`, where a whole
//! object is `{sha256 of the ciphertext}.sealed`. Past [`MAX_DEPTH`] a revision is stored whole,
//! so a read never opens more than `MAX_DEPTH + 1` objects.

use std::path::Path;

use sha2::{Digest, Sha256};
use shomei_vault::Keyring;

use crate::StorageError;

/// The most appended objects above a whole one.
pub(crate) const MAX_DEPTH: u32 = 15;

const MAGIC: &[u8] = b"shomei-appended/1\n";

/// What an appended object's header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    pub base_key: &'a str,
    pub base_size: u64,
    pub base_sha256: [u8; 32],
}

impl Header<'_> {
    /// The plaintext of an appended object: this header, then `appended`.
    pub(crate) fn with(&self, appended: &[u8]) -> Vec<u8> {
        let key = self.base_key.as_bytes();
        let key_len = u16::try_from(key.len()).expect("object keys are far shorter than 64 KiB");
        let mut plain = Vec::with_capacity(MAGIC.len() + 2 + key.len() + 8 + 32 + appended.len());
        plain.extend_from_slice(MAGIC);
        plain.extend_from_slice(&key_len.to_be_bytes());
        plain.extend_from_slice(key);
        plain.extend_from_slice(&self.base_size.to_be_bytes());
        plain.extend_from_slice(&self.base_sha256);
        plain.extend_from_slice(appended);
        plain
    }
}

/// The header of an appended object's plaintext and where the appended bytes start; `None`
/// if it is not one.
pub(crate) fn parse(plain: &[u8]) -> Option<(Header<'_>, usize)> {
    let rest = plain.strip_prefix(MAGIC)?;
    let (key_len, rest) = rest.split_first_chunk::<2>()?;
    let key_len = u16::from_be_bytes(*key_len) as usize;
    let base_key = std::str::from_utf8(rest.get(..key_len)?).ok()?;
    let rest = &rest[key_len..];
    let (base_size, rest) = rest.split_first_chunk::<8>()?;
    let (base_sha256, rest) = rest.split_first_chunk::<32>()?;
    let header = Header {
        base_key,
        base_size: u64::from_be_bytes(*base_size),
        base_sha256: *base_sha256,
    };
    Some((header, plain.len() - rest.len()))
}

/// How many appended objects a key names above a whole one: 0 for a whole object; `None` for
/// a key no revision has.
pub(crate) fn depth_of(key: &str) -> Option<u32> {
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let stem = name.strip_suffix(".sealed")?;
    match stem.rsplit_once('.') {
        None => Some(0),
        Some((_, suffix)) => suffix.strip_prefix('a')?.parse().ok(),
    }
}

/// The key of an object in `folder` whose ciphertext hashes to `sha256_hex`, at `depth`.
pub(crate) fn key(folder: &str, sha256_hex: &str, depth: u32) -> String {
    match depth {
        0 => format!("{folder}/{sha256_hex}.sealed"),
        _ => format!("{folder}/{sha256_hex}.a{depth}.sealed"),
    }
}

/// The folder of a key (everything before its last `/`).
pub(crate) fn folder_of(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(folder, _)| folder)
}

/// A revision being put together from the objects of its chain, without I/O of its own: the
/// caller reads and opens the object [`wanted`](Chain::wanted) and hands it to
/// [`add`](Chain::add) until nothing is wanted, then [`finish`](Chain::finish)es. The chain is
/// read down to the whole object at its bottom, then put together from there up, each base
/// checked against the length and SHA-256 its successor recorded: one pass of the hash over
/// the whole, as for a whole object.
pub(crate) struct Chain {
    /// The key of the next object to read; `None` once the whole one at the bottom is read.
    wanted: Option<String>,
    /// The appended objects read so far, from the top.
    above: Vec<Link>,
    bottom: Vec<u8>,
}

/// An appended object of a chain: its key, the base's length and SHA-256 it recorded, its
/// plaintext and where the appended bytes start in it.
struct Link {
    key: String,
    base_size: u64,
    base_sha256: [u8; 32],
    plain: Vec<u8>,
    start: usize,
}

impl Chain {
    pub(crate) fn new(key: &str) -> Chain {
        Chain {
            wanted: Some(key.to_owned()),
            above: Vec::new(),
            bottom: Vec::new(),
        }
    }

    pub(crate) fn wanted(&self) -> Option<&str> {
        self.wanted.as_deref()
    }

    /// The plaintext of the object [`wanted`](Chain::wanted).
    pub(crate) fn add(&mut self, plain: Vec<u8>) -> Result<(), StorageError> {
        let Some(at) = self.wanted.take() else {
            return Ok(());
        };
        let depth = depth_of(&at).unwrap_or(0);
        if depth == 0 {
            self.bottom = plain;
            return Ok(());
        }
        let Some((header, start)) = parse(&plain).filter(|(header, _)| {
            folder_of(header.base_key) == folder_of(&at)
                && depth_of(header.base_key) == Some(depth - 1)
        }) else {
            return Err(StorageError::Corrupt { key: at });
        };
        let (base, base_size, base_sha256) = (
            header.base_key.to_owned(),
            header.base_size,
            header.base_sha256,
        );
        self.above.push(Link {
            key: at,
            base_size,
            base_sha256,
            plain,
            start,
        });
        self.wanted = Some(base);
        Ok(())
    }

    /// The revision's plaintext and the SHA-256 state after it (not finalised).
    pub(crate) fn finish(self) -> Result<(Vec<u8>, Sha256), StorageError> {
        let mut plain = self.bottom;
        let mut state = Sha256::new_with_prefix(&plain);
        for link in self.above.into_iter().rev() {
            if link.base_size != plain.len() as u64
                || state.clone().finalize()[..] != link.base_sha256
            {
                return Err(StorageError::Corrupt { key: link.key });
            }
            let appended = &link.plain[link.start..];
            plain.extend_from_slice(appended);
            state.update(appended);
        }
        Ok((plain, state))
    }
}

/// The plaintext of the revision in the sealed file `file`, an operator's copy of a stored
/// object (`shomei-api storage open`): an appended revision's bases are read from the files
/// of the same name in the same directory.
pub async fn open_revision_file(
    keys: &Keyring,
    file: &std::path::Path,
) -> Result<Vec<u8>, StorageError> {
    async fn open(keys: &Keyring, dir: &Path, key: &str) -> Result<Vec<u8>, StorageError> {
        let path = dir.join(key.rsplit_once('/').map_or(key, |(_, name)| name));
        let sealed = std::fs::read(&path).map_err(|source| StorageError::Open {
            path: path.display().to_string(),
            source,
        })?;
        keys.open_owned(sealed)
            .await
            .map_err(|source| StorageError::Sealed {
                key: key.to_owned(),
                source,
            })
    }
    let dir = file.parent().unwrap_or(Path::new(""));
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let top = open(keys, dir, &name).await?;
    // The chain names its objects by their keys in the store: the top one's is its name in the
    // folder of the base it names.
    let key = match (depth_of(&name), parse(&top)) {
        (Some(1..), Some((header, _))) => format!("{}/{name}", folder_of(header.base_key)),
        _ => name.into_owned(),
    };
    let mut chain = Chain::new(&key);
    chain.add(top)?;
    while let Some(key) = chain.wanted() {
        let plain = open(keys, dir, key).await?;
        chain.add(plain)?;
    }
    Ok(chain.finish()?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_and_the_appended_bytes_follow_it() {
        let header = Header {
            base_key: "tenants/t/documents/d/00ff.sealed",
            base_size: 160_868,
            base_sha256: [7; 32],
        };
        let plain = header.with(b"appended");
        let (read, start) = parse(&plain).unwrap();
        assert_eq!(read, header);
        assert_eq!(&plain[start..], b"appended");
        // Cut anywhere inside the header, or without the magic, it is not one.
        for cut in 0..start {
            assert_eq!(parse(&plain[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(b"%PDF-1.7\n"), None);
    }

    #[test]
    fn keys_say_their_depth() {
        let whole = key("tenants/t/documents/d", "ab12", 0);
        assert_eq!(whole, "tenants/t/documents/d/ab12.sealed");
        assert_eq!(depth_of(&whole), Some(0));
        let appended = key("tenants/t/documents/d", "ab12", 3);
        assert_eq!(appended, "tenants/t/documents/d/ab12.a3.sealed");
        assert_eq!(depth_of(&appended), Some(3));
        assert_eq!(folder_of(&appended), "tenants/t/documents/d");
        assert_eq!(depth_of("tenants/t/exports/e/part-1.zip.sealed"), None);
        assert_eq!(depth_of("tenants/t/documents/d/ab12"), None);
        assert_eq!(depth_of("prefix.v2/ab12.sealed"), Some(0));
    }
}
