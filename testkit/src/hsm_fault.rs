//! [`HsmFault`]: the switch of processes that reach the HSM through the fault-injection PKCS#11
//! module (`shomei-hsm-fault`, `testkit/hsm-fault/`), which forwards to SoftHSM2 until told
//! the device is gone.
//!
//! The module reads its control file on every call; this side only ever writes a whole new file
//! and renames it into place, so no call reads half a command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::services::SOFTHSM2;

/// The built module, `libshomei_hsm_fault.so`, beside the binaries [`crate::bin`] finds: in
/// their `deps/` when cargo built it as this crate's dependency (any build of the tests does),
/// else in the directory itself (`cargo build -p shomei-hsm-fault`).
pub fn module() -> PathBuf {
    let dir = crate::app::bin_dir();
    let name = "libshomei_hsm_fault.so";
    [dir.join("deps").join(name), dir.join(name)]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is in neither {} nor its deps/: run `cargo build -p shomei-hsm-fault` \
                 (with --release for release binaries) first",
                dir.display()
            )
        })
}

/// One control file, shared by every process started with [`HsmFault::env`].
#[derive(Debug)]
pub struct HsmFault {
    file: PathBuf,
    generation: AtomicU64,
}

impl HsmFault {
    /// A switch whose control file is `file`, healthy (generation 0).
    pub fn new(file: &Path) -> HsmFault {
        let fault = HsmFault {
            file: file.to_owned(),
            generation: AtomicU64::new(0),
        };
        fault.write("0 up");
        fault
    }

    /// What a process needs to load the module, over SoftHSM2 (its `SOFTHSM2_CONF` as ever),
    /// with this switch.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SHOMEI_HSM_MODULE".into(), module().display().to_string()),
            ("SHOMEI_HSM_FAULT_MODULE".into(), SOFTHSM2.into()),
            (
                "SHOMEI_HSM_FAULT_FILE".into(),
                self.file.display().to_string(),
            ),
        ]
    }

    /// The HSM is gone: calls on sessions answer `CKR_DEVICE_REMOVED`, the token is not present
    /// (`CKR_TOKEN_NOT_PRESENT`, no slot with a token).
    pub fn down(&self) {
        self.write(&format!("{} down", self.generation()));
    }

    /// The HSM is back after a reset: the next generation, in which every session opened
    /// before answers `CKR_SESSION_HANDLE_INVALID` and the login is gone.
    pub fn up(&self) {
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.write(&format!("{next} up"));
    }

    /// A reset alone, with no outage: [`HsmFault::up`] while up.
    pub fn reset_sessions(&self) {
        self.up();
    }

    /// The current generation (0 until the first [`HsmFault::up`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn write(&self, command: &str) {
        let staged = self.file.with_extension("new");
        std::fs::write(&staged, format!("{command}\n")).unwrap();
        std::fs::rename(&staged, &self.file).unwrap();
    }
}
