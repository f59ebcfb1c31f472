//! KEKs made, used and destroyed from many threads at once, as the workers and the API make a
//! tenant's data keys: every one must work. SoftHSM2's file store loses attribute writes of
//! token objects created at the same moment from several threads (softhsm/SoftHSMv2#573:
//! `CKR_TEMPLATE_INCONSISTENT` or `CKR_GENERAL_ERROR` from `C_GenerateKey`, seen once in CI in
//! the storage tests); `Hsm` makes and destroys token objects one at a time.
//!
//! Its own test binary and token copy: PKCS#11 is initialised once per process, and the KEKs
//! made here stay out of the shared dev token.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use shomei_signing::Hsm;

const THREADS: usize = 8;
const KEKS_PER_THREAD: usize = 12;

fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let conf = shomei_testkit::own_token_copy(common::hsm_dir(), &common::scratch_dir("kek"));
        common::connect_dev_token(Path::new(&conf))
    })
}

#[test]
fn keks_made_and_destroyed_by_many_threads_at_once_all_work() {
    let hsm = hsm();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let hsm = hsm.clone();
            std::thread::spawn(move || {
                for k in 0..KEKS_PER_THREAD {
                    let id = format!("kek-test-{t}-{k}");
                    let label = format!("{id}-v1");
                    hsm.create_kek(id.as_bytes(), &label)
                        .unwrap_or_else(|e| panic!("creating {label}: {e}"));
                    let key = [t as u8 ^ k as u8; 32];
                    let wrapped = hsm
                        .wrap_with_kek(&label, &key, id.as_bytes())
                        .unwrap_or_else(|e| panic!("wrapping with {label}: {e}"));
                    let unwrapped = hsm
                        .unwrap_with_kek(&label, &wrapped, id.as_bytes())
                        .unwrap_or_else(|e| panic!("unwrapping with {label}: {e}"));
                    assert_eq!(&unwrapped[..], &key[..]);
                    if k % 2 == 1 {
                        let destroyed = hsm
                            .destroy_keks(id.as_bytes(), None)
                            .unwrap_or_else(|e| panic!("destroying {label}: {e}"));
                        assert_eq!(destroyed, 1, "{label}");
                        assert!(hsm.wrap_with_kek(&label, &key, id.as_bytes()).is_err());
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a thread's KEKs all worked");
    }
}
