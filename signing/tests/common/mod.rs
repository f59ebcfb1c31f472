//! Fixtures of the signing tests: one `Hsm` per test binary (PKCS#11 may be initialised only
//! once per process). The dev token and the external validators come from `shomei-testkit`.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::sync::OnceLock;

use secrecy::SecretString;
use shomei_signing::{Hsm, HsmSettings, SignatureRequest};
pub use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
pub use shomei_testkit::{hsm_dir, sample, workspace_root};

pub const RSA_KEY: &str = "shomei-dev-rsa";
pub const EC_KEY: &str = "shomei-dev-ec";

pub fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let dir = hsm_dir();
        // SoftHSM reads its configuration when the module is initialised,
        // which happens inside this OnceLock, before any other PKCS#11 use.
        std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        let pin = std::fs::read_to_string(dir.join("user-pin")).unwrap();
        Hsm::connect(&HsmSettings {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "shomei-dev".into(),
            user_pin: SecretString::from(pin.trim().to_owned()),
            pool_size: 4,
        })
        .expect("connect to dev HSM")
    })
}

pub fn request(key_label: &str) -> SignatureRequest {
    SignatureRequest {
        key_label: key_label.into(),
        signer_name: "Hanako Yamada".into(),
        signer_email: Some("hanako@example.com".into()),
        reason: Some("契約締結 / Contract approval".into()),
        location: Some("Tokyo".into()),
        signing_time: chrono::Utc::now(),
    }
}
