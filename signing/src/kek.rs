//! Key-encryption keys: AES-256 keys generated inside the token that never leave it.
//!
//! They wrap the data keys that encrypt documents and personal fields (`shomei-vault`): a data
//! key is encrypted with AES-256-GCM by the HSM (`C_Encrypt`, `CKM_AES_GCM`) and stored only in
//! that form. A KEK is found by its `CKA_ID` (the data key it protects) and `CKA_LABEL` (which
//! version); destroying every KEK of a data key makes every stored copy of that data key, in
//! the database or in any backup of it, useless.

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;

use crate::error::HsmError;
use crate::hsm::Hsm;

/// Nonce length of a wrapped key (the GCM standard 96 bits).
const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;

impl Hsm {
    /// Generates a new AES-256 KEK in the token: sensitive, never extractable, usable only to
    /// encrypt and decrypt. `id` groups the versions of one data key's KEK.
    pub fn create_kek(&self, id: &[u8], label: &str) -> Result<(), HsmError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(Ulong::from(32)),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Id(id.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        self.with_rw_session("C_GenerateKey", |session| {
            session.generate_key(&Mechanism::AesKeyGen, &template)
        })
        .map(|_| ())
    }

    /// Encrypts `key` (a data key) under the KEK labelled `label`, binding `aad` (who the data
    /// key belongs to). Returns `nonce || ciphertext || tag`.
    pub fn wrap_with_kek(&self, label: &str, key: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut iv = nonce;
        let sealed = self.with_session("C_Encrypt", |session| {
            let kek = find_kek(session, label)?;
            let params = GcmParams::new(&mut iv, aad, Ulong::from(TAG_BITS))?;
            session.encrypt(&Mechanism::AesGcm(params), kek, key)
        })?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts what [`wrap_with_kek`](Self::wrap_with_kek) made. A wrong KEK, a wrong `aad` or
    /// an edited value fails the GCM tag check.
    pub fn unwrap_with_kek(
        &self,
        label: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, HsmError> {
        if wrapped.len() <= NONCE_LEN {
            return Err(HsmError::UnsupportedKey {
                label: label.to_owned(),
                reason: "wrapped key is too short".into(),
            });
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(nonce);
        self.with_session("C_Decrypt", |session| {
            let kek = find_kek(session, label)?;
            let params = GcmParams::new(&mut iv, aad, Ulong::from(TAG_BITS))?;
            session.decrypt(&Mechanism::AesGcm(params), kek, sealed)
        })
        .map(zeroize::Zeroizing::new)
        .map_err(|e| match e {
            HsmError::Pkcs11 {
                source: CkError::Pkcs11(cryptoki::error::RvError::KeyHandleInvalid, _),
                ..
            } => HsmError::KeyNotFound(label.to_owned()),
            other => other,
        })
    }

    /// Destroys every KEK with this `id` whose label is not `keep` (all of them when `keep` is
    /// `None`). Returns how many were destroyed.
    pub fn destroy_keks(&self, id: &[u8], keep: Option<&str>) -> Result<usize, HsmError> {
        self.with_rw_session("C_DestroyObject", |session| {
            let found = session.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Id(id.to_vec()),
            ])?;
            let mut destroyed = 0;
            for handle in found {
                if let Some(keep) = keep {
                    if label_of(session, handle)?.as_deref() == Some(keep.as_bytes()) {
                        continue;
                    }
                }
                session.destroy_object(handle)?;
                destroyed += 1;
            }
            Ok(destroyed)
        })
    }
}

fn find_kek(session: &Session, label: &str) -> Result<ObjectHandle, CkError> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    match found.first() {
        Some(handle) => Ok(*handle),
        None => {
            // A session that lost its login sees no private objects: not a missing key.
            crate::hsm::require_login(session)?;
            // Reported as the PKCS#11 error for a missing key, so callers see one kind of
            // failure.
            Err(CkError::Pkcs11(
                cryptoki::error::RvError::KeyHandleInvalid,
                cryptoki::context::Function::FindObjects,
            ))
        }
    }
}

fn label_of(session: &Session, handle: ObjectHandle) -> Result<Option<Vec<u8>>, CkError> {
    Ok(session
        .get_attributes(handle, &[AttributeType::Label])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(label) => Some(label),
            _ => None,
        }))
}
