//! The two sealed formats, both AES-256-GCM under a [`DataKey`](crate::DataKey) whose id they
//! carry, so a reader needs nothing but the bytes and the keyring.
//!
//! **Objects** (document revisions, export archives) are sealed in segments, so they can be
//! written and read as streams of any size (the STREAM construction of Hoang, Reyhanitabar,
//! Rogaway and Vizár, as implemented by the `aead` crate's `StreamBE32`):
//!
//! ```text
//! "SHOMEIE1" | data key id (16) | nonce prefix (7) | segment 0 | … | last segment
//! ```
//!
//! Every segment but the last holds [`SEGMENT`] bytes of plaintext plus a 16-byte tag; the last
//! holds 0 to `SEGMENT` bytes and is sealed with the "last" flag, so cutting an object short,
//! reordering or dropping segments fails to decrypt. The header is the associated data of
//! every segment.
//!
//! **Fields** (names, e-mail addresses) are one GCM message:
//!
//! ```text
//! "SHF1" | data key id (16) | nonce (12) | ciphertext | tag (16)
//! ```
//!
//! with the first 20 bytes as associated data.

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{Aead, Payload};
use rand::RngCore;
use uuid::Uuid;

use crate::keyring::DataKey;
use crate::VaultError;

pub(crate) const OBJECT_MAGIC: &[u8; 8] = b"SHOMEIE1";
pub(crate) const PREFIX_LEN: usize = 7;
pub(crate) const OBJECT_HEADER: usize = OBJECT_MAGIC.len() + 16 + PREFIX_LEN;
/// Plaintext bytes per sealed segment.
pub const SEGMENT: usize = 64 * 1024;
pub(crate) const TAG: usize = 16;

const FIELD_MAGIC: &[u8; 4] = b"SHF1";
const FIELD_HEADER: usize = FIELD_MAGIC.len() + 16;
const NONCE: usize = 12;

pub(crate) fn object_header(key_id: Uuid) -> [u8; OBJECT_HEADER] {
    let mut header = [0u8; OBJECT_HEADER];
    header[..8].copy_from_slice(OBJECT_MAGIC);
    header[8..24].copy_from_slice(key_id.as_bytes());
    rand::rngs::OsRng.fill_bytes(&mut header[24..]);
    header
}

/// The data key an object or field names in its header.
pub(crate) fn key_id_of(sealed: &[u8]) -> Result<Uuid, VaultError> {
    let id = if sealed.starts_with(OBJECT_MAGIC) && sealed.len() >= OBJECT_HEADER {
        &sealed[8..24]
    } else if sealed.starts_with(FIELD_MAGIC) && sealed.len() >= FIELD_HEADER + NONCE + TAG {
        &sealed[4..20]
    } else {
        return Err(VaultError::Corrupt("no sealed header"));
    };
    Ok(Uuid::from_slice(id).expect("16 bytes"))
}

pub(crate) fn encryptor(
    key: &DataKey,
    header: &[u8; OBJECT_HEADER],
) -> EncryptorBE32<aes_gcm::Aes256Gcm> {
    EncryptorBE32::from_aead(
        key.cipher().clone(),
        GenericArray::from_slice(&header[24..]),
    )
}

pub(crate) fn decryptor(key: &DataKey, header: &[u8]) -> DecryptorBE32<aes_gcm::Aes256Gcm> {
    DecryptorBE32::from_aead(
        key.cipher().clone(),
        GenericArray::from_slice(&header[24..OBJECT_HEADER]),
    )
}

/// The nonce of segment `position` of an object: the STREAM construction's, as `StreamBE32`
/// makes it (the header's prefix, the position as a big-endian u32, 1 for the last segment).
fn segment_nonce(prefix: &[u8], position: usize, last: bool) -> ring::aead::Nonce {
    let mut nonce = [0u8; NONCE];
    nonce[..PREFIX_LEN].copy_from_slice(prefix);
    let position = u32::try_from(position).expect("an object in memory has < 2^32 segments");
    nonce[PREFIX_LEN..NONCE - 1].copy_from_slice(&position.to_be_bytes());
    nonce[NONCE - 1] = u8::from(last);
    ring::aead::Nonce::assume_unique_for_key(nonce)
}

/// Seals a whole object held in memory: the format of [`encryptor`], through ring.
pub(crate) fn seal_object(key: &DataKey, plaintext: &[u8]) -> Vec<u8> {
    let header = object_header(key.id());
    let segments = plaintext.len() / SEGMENT + 1;
    let mut out = Vec::with_capacity(OBJECT_HEADER + plaintext.len() + segments * TAG);
    out.extend_from_slice(&header);
    // Every segment but the last is full; the last holds 0 to SEGMENT bytes.
    let count = plaintext.len().div_ceil(SEGMENT).max(1);
    let mut chunks = plaintext.chunks(SEGMENT);
    for position in 0..count {
        let last = position + 1 == count;
        let segment = chunks.next().unwrap_or_default();
        let start = out.len();
        out.extend_from_slice(segment);
        let tag = key
            .objects()
            .seal_in_place_separate_tag(
                segment_nonce(&header[24..], position, last),
                ring::aead::Aad::from(&header),
                &mut out[start..],
            )
            .expect("AES-GCM sealing cannot fail for a segment this size");
        out.extend_from_slice(tag.as_ref());
    }
    out
}

/// Opens a whole object held in memory with the key its header names (sealed by
/// [`seal_object`] or streamed through [`encryptor`]).
pub(crate) fn open_object(key: &DataKey, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    open_object_owned(key, sealed.to_vec())
}

/// [`open_object`] in the buffer that holds the object: each segment is opened straight to its
/// place in the plaintext, at the front of the buffer, which is then cut to it (no second
/// buffer, no copy of the ciphertext).
pub(crate) fn open_object_owned(key: &DataKey, mut sealed: Vec<u8>) -> Result<Vec<u8>, VaultError> {
    if key_id_of(&sealed)? != key.id() || !sealed.starts_with(OBJECT_MAGIC) {
        return Err(VaultError::Corrupt("sealed for another key"));
    }
    let header: [u8; OBJECT_HEADER] = sealed[..OBJECT_HEADER]
        .try_into()
        .expect("the header was checked above");
    let count = (sealed.len() - OBJECT_HEADER).div_ceil(SEGMENT + TAG);
    // An empty object still has its last segment (a tag alone).
    if count == 0 {
        return Err(VaultError::Corrupt("the last segment fails its tag"));
    }
    let mut opened = 0;
    for position in 0..count {
        let last = position + 1 == count;
        let start = OBJECT_HEADER + position * (SEGMENT + TAG);
        let end = (start + SEGMENT + TAG).min(sealed.len());
        opened += key
            .objects()
            .open_within(
                segment_nonce(&header[24..], position, last),
                ring::aead::Aad::from(&header),
                &mut sealed[opened..end],
                start - opened..,
            )
            .map_err(|_| {
                VaultError::Corrupt(if last {
                    "the last segment fails its tag"
                } else {
                    "a segment fails its tag"
                })
            })?
            .len();
    }
    sealed.truncate(opened);
    Ok(sealed)
}

/// The plaintext length of a sealed object of `sealed` bytes, or `None` if no object has that
/// length.
pub fn plaintext_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(OBJECT_HEADER as u64)?;
    let full = (SEGMENT + TAG) as u64;
    // Every object ends with a last segment of at least a tag.
    let segments = body.div_ceil(full).max(1);
    body.checked_sub(segments * TAG as u64)
}

pub(crate) fn seal_field(key: &DataKey, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIELD_HEADER + NONCE + text.len() + TAG);
    out.extend_from_slice(FIELD_MAGIC);
    out.extend_from_slice(key.id().as_bytes());
    let mut nonce = [0u8; NONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    out.extend_from_slice(&nonce);
    let sealed = key
        .cipher()
        .encrypt(
            GenericArray::from_slice(&nonce),
            Payload {
                msg: text.as_bytes(),
                aad: &out[..FIELD_HEADER],
            },
        )
        .expect("AES-GCM sealing cannot fail for a field");
    out.extend_from_slice(&sealed);
    out
}

pub(crate) fn open_field(key: &DataKey, sealed: &[u8]) -> Result<String, VaultError> {
    if !sealed.starts_with(FIELD_MAGIC) || key_id_of(sealed)? != key.id() {
        return Err(VaultError::Corrupt("not a field sealed with this key"));
    }
    let (header, rest) = sealed.split_at(FIELD_HEADER);
    let (nonce, ciphertext) = rest.split_at(NONCE);
    let plain = key
        .cipher()
        .decrypt(
            GenericArray::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: header,
            },
        )
        .map_err(|_| VaultError::Corrupt("a field fails its tag"))?;
    String::from_utf8(plain).map_err(|_| VaultError::Corrupt("a field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_bytes(Uuid::now_v7(), &[7u8; 32])
    }

    #[test]
    fn objects_round_trip_at_every_segment_boundary() {
        let key = key();
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            3 * SEGMENT + 5,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal_object(&key, &plain);
            assert_eq!(
                plaintext_len(sealed.len() as u64),
                Some(len as u64),
                "len {len}"
            );
            assert_eq!(open_object(&key, &sealed).unwrap(), plain, "len {len}");
        }
    }

    /// Whole objects go through ring, streams through aes-gcm's STREAM: each reads the other's.
    #[test]
    fn whole_objects_and_streams_are_one_format() {
        let key = key();
        for len in [0, 10, SEGMENT, 2 * SEGMENT + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();

            let sealed = seal_object(&key, &plain);
            let (header, body) = sealed.split_at(OBJECT_HEADER);
            let mut segments: Vec<&[u8]> = body.chunks(SEGMENT + TAG).collect();
            let last = segments.pop().expect("a last segment");
            let mut decryptor = decryptor(&key, header);
            let mut opened = Vec::new();
            for segment in segments {
                let payload = Payload {
                    msg: segment,
                    aad: header,
                };
                opened.extend(decryptor.decrypt_next(payload).unwrap());
            }
            let payload = Payload {
                msg: last,
                aad: header,
            };
            opened.extend(decryptor.decrypt_last(payload).unwrap());
            assert_eq!(opened, plain, "len {len}: sealed whole, read as a stream");

            let header = object_header(key.id());
            let mut encryptor = encryptor(&key, &header);
            let mut streamed = header.to_vec();
            // Full segments, then a last one of 0 to SEGMENT bytes (as `seal_object` cuts).
            let full = len.saturating_sub(1) / SEGMENT;
            for chunk in plain.chunks(SEGMENT).take(full) {
                let payload = Payload {
                    msg: chunk,
                    aad: &header,
                };
                streamed.extend(encryptor.encrypt_next(payload).unwrap());
            }
            let payload = Payload {
                msg: &plain[full * SEGMENT..],
                aad: &header,
            };
            streamed.extend(encryptor.encrypt_last(payload).unwrap());
            assert_eq!(
                open_object(&key, &streamed).unwrap(),
                plain,
                "len {len}: streamed, opened whole"
            );
        }
    }

    #[test]
    fn truncated_reordered_or_edited_objects_fail() {
        let key = key();
        let plain = vec![42u8; 2 * SEGMENT + 10];
        let sealed = seal_object(&key, &plain);
        // Cut at a segment boundary: the new last segment was not sealed as last.
        let cut = &sealed[..OBJECT_HEADER + SEGMENT + TAG];
        assert!(open_object(&key, cut).is_err());
        let mut edited = sealed.clone();
        edited[OBJECT_HEADER + 5] ^= 1;
        assert!(open_object(&key, &edited).is_err());
        let mut header = sealed.clone();
        header[30] ^= 1;
        assert!(open_object(&key, &header).is_err());
        let other = DataKey::from_bytes(key.id(), &[8u8; 32]);
        assert!(open_object(&other, &sealed).is_err());
    }

    #[test]
    fn fields_round_trip_and_hide_their_text() {
        let key = key();
        let sealed = seal_field(&key, "hanako@example.jp");
        assert!(!sealed.windows(7).any(|w| w == b"example"));
        assert_eq!(open_field(&key, &sealed).unwrap(), "hanako@example.jp");
        assert_ne!(
            seal_field(&key, "hanako@example.jp"),
            sealed,
            "nonces differ"
        );
        let mut edited = sealed.clone();
        *edited.last_mut().unwrap() ^= 1;
        assert!(open_field(&key, &edited).is_err());
    }
}
