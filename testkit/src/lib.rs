#![doc = include_str!("../README.md")]

mod app;
pub mod hostile;
pub mod hsm_fault;
pub mod s3;
pub mod services;
pub mod smtp;
pub mod validate;
pub mod webhook_receiver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use app::{bin, own_token_copy, TestApp, TestAppOptions, TestStorage, S3_PREFIX};
pub use hsm_fault::HsmFault;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(workspace_root().join("samples").join(name)).unwrap()
}

/// Directory of the dev token and CA, created on first use by `scripts/dev-hsm.sh` (which
/// takes a file lock, so test binaries running at once do not race).
pub fn hsm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("SHOMEI_TEST_HSM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/dev-hsm"));
        let status = Command::new(workspace_root().join("scripts/dev-hsm.sh"))
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/dev-hsm.sh");
        assert!(status.success(), "scripts/dev-hsm.sh failed");
        dir
    })
}
