//! Fixtures of the signing tests: one `Hsm` per test binary (PKCS#11 may be initialised only
//! once per process). The dev token and the external validators come from `shomei-testkit`.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use secrecy::SecretString;
use shomei_signing::{Hsm, HsmSettings, SignatureRequest, TimestampError, Timestamper};
pub use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
pub use shomei_testkit::{hsm_dir, sample, workspace_root};

pub const RSA_KEY: &str = "shomei-dev-rsa";
pub const EC_KEY: &str = "shomei-dev-ec";

pub fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| connect_dev_token(&hsm_dir().join("softhsm2.conf")))
}

/// The dev token through the SoftHSM2 configuration `conf` (the shared one, or a test's own
/// copy). SoftHSM reads its configuration when the module is initialised: call this before any
/// other PKCS#11 use in the process.
pub fn connect_dev_token(conf: &Path) -> Hsm {
    std::env::set_var("SOFTHSM2_CONF", conf);
    let pin = std::fs::read_to_string(hsm_dir().join("user-pin")).unwrap();
    Hsm::connect(&HsmSettings {
        module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token_label: "shomei-dev".into(),
        user_pin: SecretString::from(pin.trim().to_owned()),
        pool_size: 4,
    })
    .expect("connect to dev HSM")
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

/// A fresh directory for one test's files, kept for inspection after a failure.
pub fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = workspace_root()
        .join("target/tmp/signing-tests")
        .join(format!(
            "{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a tool; panics with its output unless it succeeds. Returns its stdout.
pub fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The dev CA (certificate, key, CRL) of the dev HSM directory.
pub fn ca_dir() -> PathBuf {
    std::fs::canonicalize(hsm_dir()).unwrap().join("ca")
}

/// The DER of a PEM file holding one certificate.
pub fn pem_file_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let certificate = shomei_signing::certificates_from_pem(&pem)
        .unwrap()
        .remove(0);
    der::Encode::to_der(&certificate).unwrap()
}

/// The key of an [`OpenSslTsa`].
#[derive(Clone, Copy)]
pub enum TsaKey {
    Rsa,
    EcP256,
}

impl TsaKey {
    fn algorithm(self) -> &'static str {
        match self {
            TsaKey::Rsa => "RSA",
            TsaKey::EcP256 => "EC",
        }
    }

    fn parameter(self) -> &'static str {
        match self {
            TsaKey::Rsa => "rsa_keygen_bits:2048",
            TsaKey::EcP256 => "ec_paramgen_curve:P-256",
        }
    }
}

/// A TSA run by `openssl ts -reply`, with a throw-away key and a certificate issued by the dev
/// CA (critical EKU timeStamping, CRL distribution point of the dev CA).
pub struct OpenSslTsa {
    dir: PathBuf,
    /// `openssl ts -reply` keeps its serial number in a file.
    serial_lock: Mutex<()>,
    /// Tokens asked for so far.
    pub calls: AtomicUsize,
}

impl OpenSslTsa {
    /// `padding_names` subject alternative names make the certificate (and so every token)
    /// as large as wanted.
    pub fn new(name: &str, key: TsaKey, padding_names: usize) -> Self {
        let dir = scratch_dir(name);
        let ca = ca_dir();
        let mut extensions = format!(
            "[v3_tsa]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, nonRepudiation\n\
             extendedKeyUsage = critical, timeStamping\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n\
             crlDistributionPoints = URI:file://{}\n",
            ca.join("dev-ca.crl").display()
        );
        if padding_names > 0 {
            extensions.push_str("subjectAltName = @names\n[names]\n");
            for i in 0..padding_names {
                extensions.push_str(&format!("DNS.{i} = tsa-{i:05}.padding.shomei.invalid\n"));
            }
        }
        std::fs::write(dir.join("ext.cnf"), extensions).unwrap();
        run(Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                key.algorithm(),
                "-pkeyopt",
                key.parameter(),
                "-out",
            ])
            .arg(dir.join("tsa.key")));
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-subj",
                "/CN=Shomei Test TSA (OpenSSL)/O=Shomei Dev",
                "-key",
            ])
            .arg(dir.join("tsa.key"))
            .arg("-out")
            .arg(dir.join("tsa.csr")));
        let serial = format!(
            "0x{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        run(Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-sha256",
                "-days",
                "30",
                "-set_serial",
                &serial,
            ])
            .arg("-in")
            .arg(dir.join("tsa.csr"))
            .arg("-CA")
            .arg(ca.join("ca.pem"))
            .arg("-CAkey")
            .arg(ca.join("ca.key"))
            .arg("-extfile")
            .arg(dir.join("ext.cnf"))
            .args(["-extensions", "v3_tsa", "-out"])
            .arg(dir.join("tsa.pem")));
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        std::fs::write(
            dir.join("ts.cnf"),
            format!(
                "[tsa]\n\
                 default_tsa = test_tsa\n\
                 [test_tsa]\n\
                 dir = {dir}\n\
                 serial = $dir/serial\n\
                 crypto_device = builtin\n\
                 signer_cert = $dir/tsa.pem\n\
                 certs = {ca}\n\
                 signer_key = $dir/tsa.key\n\
                 signer_digest = sha256\n\
                 default_policy = 1.3.6.1.4.1.55555.1.1\n\
                 digests = sha256\n\
                 accuracy = secs:1\n\
                 clock_precision_digits = 0\n\
                 ordering = no\n\
                 tsa_name = yes\n\
                 ess_cert_id_chain = no\n\
                 ess_cert_id_alg = sha256\n",
                dir = dir.display(),
                ca = ca.join("ca.pem").display()
            ),
        )
        .unwrap();
        Self {
            dir,
            serial_lock: Mutex::new(()),
            calls: AtomicUsize::new(0),
        }
    }

    pub fn certificate_pem(&self) -> PathBuf {
        self.dir.join("tsa.pem")
    }

    pub fn certificate_der(&self) -> Vec<u8> {
        pem_file_der(&self.certificate_pem())
    }
}

impl Timestamper for OpenSslTsa {
    fn timestamp(&self, sha256_digest: &[u8; 32]) -> Result<Vec<u8>, TimestampError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let query = self.dir.join(format!("query{n}.tsq"));
        let token = self.dir.join(format!("token{n}.der"));
        run(Command::new("openssl")
            .args(["ts", "-query", "-sha256", "-cert", "-digest"])
            .arg(hex::encode(sha256_digest))
            .arg("-out")
            .arg(&query));
        let _serial = self.serial_lock.lock().unwrap();
        let reply = Command::new("openssl")
            .args(["ts", "-reply", "-token_out", "-queryfile"])
            .arg(&query)
            .arg("-config")
            .arg(self.dir.join("ts.cnf"))
            .arg("-out")
            .arg(&token)
            .output()
            .unwrap();
        if !reply.status.success() {
            return Err(TimestampError::Unavailable(
                String::from_utf8_lossy(&reply.stderr).into_owned(),
            ));
        }
        Ok(std::fs::read(token).unwrap())
    }
}
