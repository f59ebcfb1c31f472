//! A process opening the HSM while SoftHSM2 cannot see the token (another process held its
//! files at that moment; here: the token's directory is moved away) finds it once it is back:
//! SoftHSM2 reads its token directory only in `C_Initialize`, so `Hsm::connect` initialises the
//! module again when the first look found no token.
//!
//! One test in the binary: PKCS#11 is initialised once per process, and SoftHSM2 reads its
//! configuration from the environment set here.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shomei_signing::{Hsm, HsmSettings};
use shomei_testkit::{hsm_dir, own_token_copy, services};

#[test]
fn a_token_missing_when_the_module_starts_is_found_once_it_is_back() {
    let dir = services::scratch("hsm-start");
    std::env::set_var("SOFTHSM2_CONF", own_token_copy(hsm_dir(), &dir));
    let tokens = dir.join("softhsm-tokens");
    let token = std::fs::read_dir(&tokens)
        .unwrap()
        .next()
        .expect("the copied token")
        .unwrap()
        .path();
    let away = dir.join("token-away");
    std::fs::rename(&token, &away).unwrap();

    // Back while `connect` is still looking (it looks for about a second, then initialises
    // the module again).
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::rename(&away, &token).unwrap();
    });
    let pin = std::fs::read_to_string(hsm_dir().join("user-pin")).unwrap();
    let settings = HsmSettings {
        module_path: services::SOFTHSM2.into(),
        token_label: "shomei-dev".into(),
        user_pin: secrecy::SecretString::from(pin.trim().to_owned()),
        pool_size: 1,
    };
    let started = Instant::now();
    let hsm = Hsm::connect(&settings).expect("the token, once back");
    back.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "connected before the token was back: the test moved nothing"
    );

    let identity = hsm.identity("shomei-dev-rsa").unwrap();
    let digest: [u8; 32] = Sha256::digest(b"shomei-hsm-start").into();
    assert_eq!(hsm.sign_digest(&identity, &digest).unwrap().len(), 256);
}
