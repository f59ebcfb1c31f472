//! The module as a PKCS#11 application sees it (through cryptoki, as the workers do) over a copy
//! of the dev token: the real module's answers while healthy; a removed device while the control
//! file says `down`; after `up` in a new generation, the sessions from before refused and the
//! login gone, new sessions working once logged in.
//!
//! One test in the binary: PKCS#11 is initialised once per process, and SoftHSM2 reads its
//! configuration from the environment set here.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use shomei_testkit::{hsm_dir, hsm_fault, own_token_copy, services, HsmFault};

/// The PKCS#11 error a call answered (it must have failed).
fn rv<T>(result: Result<T, Error>) -> RvError {
    match result {
        Err(Error::Pkcs11(rv, _)) => rv,
        Err(other) => panic!("not a PKCS#11 error: {other}"),
        Ok(_) => panic!("the call succeeded"),
    }
}

fn sign(session: &Session, key: ObjectHandle) -> Result<Vec<u8>, Error> {
    session.sign(&Mechanism::RsaPkcs, key, b"shomei-hsm-fault")
}

fn signing_key(session: &Session) -> ObjectHandle {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label("shomei-dev-rsa".into()),
        ])
        .unwrap()[0]
}

#[test]
fn the_module_forwards_then_removes_the_device_and_resets_sessions_on_command() {
    let dir = services::scratch("hsm-fault");
    std::env::set_var("SOFTHSM2_CONF", own_token_copy(hsm_dir(), &dir));
    let fault = HsmFault::new(&dir.join("control"));
    for (name, value) in fault.env() {
        std::env::set_var(name, value);
    }
    let pin = std::fs::read_to_string(hsm_dir().join("user-pin")).unwrap();
    let pin = AuthPin::from(pin.trim().to_owned());

    let pkcs11 = Pkcs11::new(hsm_fault::module()).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|&slot| pkcs11.get_token_info(slot).unwrap().label().trim_end() == "shomei-dev")
        .expect("the dev token through the module");
    let before = pkcs11.open_ro_session(slot).unwrap();
    before.login(UserType::User, Some(&pin)).unwrap();
    let key = signing_key(&before);
    assert_eq!(
        sign(&before, key).unwrap().len(),
        256,
        "an RSA-2048 signature"
    );

    // The device is gone: its sessions answer that it was removed, the slot has no token.
    fault.down();
    assert_eq!(rv(before.get_session_info()), RvError::DeviceRemoved);
    assert_eq!(rv(sign(&before, key)), RvError::DeviceRemoved);
    assert_eq!(rv(pkcs11.open_ro_session(slot)), RvError::TokenNotPresent);
    assert_eq!(rv(pkcs11.get_token_info(slot)), RvError::TokenNotPresent);
    assert_eq!(pkcs11.get_slots_with_token().unwrap(), []);
    assert!(pkcs11.get_all_slots().unwrap().contains(&slot));
    assert!(!pkcs11.get_slot_info(slot).unwrap().token_present());

    // Back after a reset: the session from before is invalid (and can still be closed); a new
    // one starts logged out and works once logged in.
    fault.up();
    assert!(pkcs11.get_slot_info(slot).unwrap().token_present());
    assert_eq!(rv(before.get_session_info()), RvError::SessionHandleInvalid);
    assert_eq!(rv(sign(&before, key)), RvError::SessionHandleInvalid);
    let after = pkcs11.open_ro_session(slot).unwrap();
    assert_eq!(
        after.get_session_info().unwrap().session_state(),
        SessionState::RoPublic
    );
    after.login(UserType::User, Some(&pin)).unwrap();
    // SoftHSM2 lets go of the handles of private objects at a logout: the key is looked up
    // again (as `Hsm::sign_digest` does after CKR_OBJECT_HANDLE_INVALID).
    assert_eq!(rv(sign(&after, key)), RvError::ObjectHandleInvalid);
    let key = signing_key(&after);
    sign(&after, key).unwrap();
    before.close().unwrap();
    sign(&after, key).unwrap();

    // A reset alone, with no outage, does the same.
    fault.reset_sessions();
    assert_eq!(rv(sign(&after, key)), RvError::SessionHandleInvalid);
    let again = pkcs11.open_ro_session(slot).unwrap();
    assert_eq!(
        again.get_session_info().unwrap().session_state(),
        SessionState::RoPublic
    );
    again.login(UserType::User, Some(&pin)).unwrap();
    sign(&again, signing_key(&again)).unwrap();

    drop((after, again));
    pkcs11.finalize().unwrap();
}
