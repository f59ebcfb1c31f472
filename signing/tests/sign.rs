//! End-to-end signing against the SoftHSM2 dev token, checked with external
//! validators (pdfsig, qpdf, openssl).

mod common;

use common::{assert_externally_valid, hsm, request, sample, Expected, EC_KEY, RSA_KEY};
use shomei_signing::{
    inspect_pdf, sign_pdf, sign_pdf_hashed, Hsm, HsmError, HsmSettings, KeyAlgorithm, PdfError,
    SignError,
};

fn sign_and_check(sample_name: &str, key: &str) {
    let original = sample(sample_name);
    let signed = sign_pdf(hsm(), &original, &request(key), None).unwrap();
    assert!(signed.starts_with(&original), "original bytes must be kept");
    assert_externally_valid(&format!("{sample_name}-{key}"), &signed, Expected::basic(1));
    let info = inspect_pdf(&signed).unwrap();
    assert_eq!(info.signatures, 1);
    assert_eq!(info.pages, inspect_pdf(&original).unwrap().pages);
}

#[test]
fn rsa_signs_contract() {
    sign_and_check("contract.pdf", RSA_KEY);
}

#[test]
fn ec_signs_contract() {
    sign_and_check("contract.pdf", EC_KEY);
}

#[test]
fn signs_object_stream_sample() {
    sign_and_check("contract-objstm.pdf", RSA_KEY);
    sign_and_check("contract-objstm.pdf", EC_KEY);
}

#[test]
fn signs_incremental_sample() {
    sign_and_check("contract-incremental.pdf", RSA_KEY);
    sign_and_check("contract-incremental.pdf", EC_KEY);
}

#[test]
fn every_unencrypted_sample_signs() {
    let dir = common::workspace_root().join("samples");
    let mut signed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".pdf") && !name.contains("encrypted") {
            sign_and_check(&name, EC_KEY);
            signed += 1;
        }
    }
    assert!(signed >= 3);
}

#[test]
fn a_signer_named_like_the_placeholder_does_not_take_its_place() {
    // The /Contents placeholder is a literal string of zeros, found by its first bytes: a
    // signer whose name and reason are runs of zeros (written before it) must not be mistaken
    // for it.
    let mut zeros = request(RSA_KEY);
    zeros.signer_name = "0".repeat(40);
    zeros.reason = Some("0".repeat(400));
    let signed = sign_pdf(hsm(), &sample("contract.pdf"), &zeros, None).unwrap();
    assert_externally_valid("zeros-signer", &signed, Expected::basic(1));
}

#[test]
fn second_signature_keeps_first_valid() {
    for name in [
        "contract.pdf",
        "contract-objstm.pdf",
        "contract-incremental.pdf",
    ] {
        let first = sign_pdf(hsm(), &sample(name), &request(RSA_KEY), None).unwrap();
        let second = sign_pdf(hsm(), &first, &request(EC_KEY), None).unwrap();
        assert!(second.starts_with(&first));
        assert_externally_valid(&format!("{name}-twice"), &second, Expected::basic(2));
        assert_eq!(inspect_pdf(&second).unwrap().signatures, 2);
    }
}

#[test]
fn encrypted_sample_is_refused_permanently() {
    let err = sign_pdf(
        hsm(),
        &sample("contract-encrypted.pdf"),
        &request(RSA_KEY),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, SignError::Pdf(PdfError::Encrypted)),
        "{err:?}"
    );
    assert!(err.is_permanent());
}

/// A stored revision skips intake's raw pass (`sign_pdf_hashed`), not the checks on the parsed
/// document: an encrypted file is still refused, for good.
#[test]
fn a_stored_revision_that_is_encrypted_is_refused_permanently() {
    use sha2::{Digest, Sha256};
    let encrypted = sample("contract-encrypted.pdf");
    let hashed = Sha256::new_with_prefix(&encrypted);
    let err = sign_pdf_hashed(hsm(), &encrypted, &hashed, &request(RSA_KEY), None).unwrap_err();
    assert!(
        matches!(err, SignError::Pdf(PdfError::Encrypted)),
        "{err:?}"
    );
    assert!(err.is_permanent());
}

#[test]
fn signing_on_from_the_original_hash_gives_a_valid_file_and_its_digest() {
    use sha2::{Digest, Sha256};
    // A file with two revisions already, so the state covers more than one revision.
    let original = sign_pdf(hsm(), &sample("contract.pdf"), &request(EC_KEY), None).unwrap();
    let hashed = Sha256::new_with_prefix(&original);
    let signed = sign_pdf_hashed(hsm(), &original, &hashed, &request(RSA_KEY), None).unwrap();
    let whole = [&original[..], &signed.appended].concat();
    assert_eq!(signed.sha256, <[u8; 32]>::from(Sha256::digest(&whole)));
    assert_externally_valid("hashed-on", &whole, Expected::basic(2));
}

#[test]
fn a_token_that_is_not_there_is_named_after_the_search() {
    hsm(); // the module initialised as the other tests have it
    let pin = std::fs::read_to_string(common::hsm_dir().join("user-pin")).unwrap();
    let err = Hsm::connect(&HsmSettings {
        module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token_label: "no-such-token".into(),
        user_pin: secrecy::SecretString::from(pin.trim().to_owned()),
        pool_size: 1,
    })
    .expect_err("no such token");
    assert!(
        matches!(err, HsmError::TokenNotFound(ref label) if label == "no-such-token"),
        "{err}"
    );
}

#[test]
fn unknown_key_is_permanent() {
    let err = sign_pdf(
        hsm(),
        &sample("contract.pdf"),
        &request("no-such-key"),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, SignError::Hsm(HsmError::KeyNotFound(_))),
        "{err:?}"
    );
    assert!(err.is_permanent());
}

#[test]
fn identities_carry_certificate_and_chain() {
    hsm().check().unwrap();
    let rsa = hsm().identity(RSA_KEY).unwrap();
    let ec = hsm().identity(EC_KEY).unwrap();
    assert_eq!(rsa.algorithm(), KeyAlgorithm::Rsa);
    assert_eq!(ec.algorithm(), KeyAlgorithm::EcdsaP256);
    for identity in [&rsa, &ec] {
        assert!(identity
            .certificate()
            .tbs_certificate()
            .subject()
            .to_string()
            .contains("Shomei Dev Signing"));
        assert_eq!(
            identity.chain().len(),
            1,
            "dev CA must be found in the token"
        );
        assert!(identity.chain()[0]
            .tbs_certificate()
            .subject()
            .to_string()
            .contains("Shomei Dev Root CA"));
    }
    // Cached: the same Arc comes back.
    assert!(std::sync::Arc::ptr_eq(
        &rsa,
        &hsm().identity(RSA_KEY).unwrap()
    ));
}

#[test]
fn raw_signatures_have_expected_shape() {
    let digest = [7u8; 32];
    let rsa = hsm()
        .sign_digest(&hsm().identity(RSA_KEY).unwrap(), &digest)
        .unwrap();
    assert_eq!(rsa.len(), 256);
    let ec = hsm()
        .sign_digest(&hsm().identity(EC_KEY).unwrap(), &digest)
        .unwrap();
    assert_eq!(ec[0], 0x30, "ECDSA signature must be DER");
}

#[test]
fn parallel_signing_shares_the_pool() {
    let original = sample("contract.pdf");
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let original = &original;
                scope.spawn(move || {
                    let key = if i % 2 == 0 { RSA_KEY } else { EC_KEY };
                    sign_pdf(hsm(), original, &request(key), None).unwrap()
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let signed = handle.join().unwrap();
            assert_externally_valid(&format!("parallel-{i}"), &signed, Expected::basic(1));
        }
    });
}

/// Structures the samples do not have: a direct /AcroForm dictionary with
/// other entries, and a page whose /Annots is an indirect array.
#[test]
fn signs_direct_acroform_and_indirect_annots() {
    use lopdf::{dictionary, Document, Object};

    let mut doc = Document::load_mem(&sample("contract.pdf")).unwrap();
    let annots_id = doc.add_object(Object::Array(vec![]));
    let page_id = doc.get_pages()[&1];
    doc.get_dictionary_mut(page_id)
        .unwrap()
        .set("Annots", annots_id);
    doc.catalog_mut().unwrap().set(
        "AcroForm",
        dictionary! { "Fields" => Vec::<Object>::new(), "DA" => Object::string_literal("/Helv 0 Tf 0 g") },
    );
    let mut original = Vec::new();
    doc.save_to(&mut original).unwrap();

    let signed = sign_pdf(hsm(), &original, &request(RSA_KEY), None).unwrap();
    assert_externally_valid("direct-acroform", &signed, Expected::basic(1));
    let twice = sign_pdf(hsm(), &signed, &request(EC_KEY), None).unwrap();
    assert_externally_valid("direct-acroform-twice", &twice, Expected::basic(2));

    let reloaded = Document::load_mem(&twice).unwrap();
    let form = reloaded.catalog().unwrap().get(b"AcroForm").unwrap();
    let form = reloaded.dereference(form).unwrap().1.as_dict().unwrap();
    assert!(form.has(b"DA"), "existing AcroForm entries must be kept");
    assert_eq!(form.get(b"SigFlags").unwrap().as_i64().unwrap(), 3);
}
