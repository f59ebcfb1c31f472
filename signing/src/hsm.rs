//! PKCS#11 access: module initialisation, a pool of logged-in sessions and
//! cached signing identities (key handle + certificate + chain).
//!
//! A module that loses its device (a network HSM's client whose connection broke, p11-kit's
//! client when its server went away) keeps answering `CKR_DEVICE_ERROR` until the application
//! finalises and initialises it again. [`Hsm`] does that itself when an operation or a new
//! session reports the device gone (at most once a second), so a process outlives an HSM
//! outage instead of needing a restart. Sessions of an earlier initialisation are never closed:
//! their handles may name someone else's session in the new one.
//!
//! Every [`Hsm`] on one module shares its initialisation (one per process) but not its recovery:
//! the guard around calls, the generation and the lost flag are each `Hsm`'s own. The binaries
//! open one per process; two that both lost their device would each finalise the module under
//! the other's calls.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use der::{Decode, Encode};
use secrecy::SecretString;
use shomei_telemetry::metrics;
use x509_cert::Certificate;

use crate::error::HsmError;

mod calls;
use calls::Calls;

/// How long a caller waits for a free session before the job is retried later.
const SESSION_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Guards against issuer loops among the token's certificates.
const MAX_CHAIN_DEPTH: usize = 8;
/// Least time between two re-initialisations of a module whose device is gone.
const REINIT_PAUSE: Duration = Duration::from_secs(1);
/// How long a re-initialisation waits for the calls in flight before it abandons them.
const CALLS_PATIENCE: Duration = Duration::from_secs(15);
/// How often a caller waiting for a session looks whether the pool found the device gone.
const CHECKOUT_SLICE: Duration = Duration::from_millis(250);

/// Connection parameters for [`Hsm::connect`].
#[derive(Clone)]
pub struct HsmSettings {
    pub module_path: PathBuf,
    pub token_label: String,
    pub user_pin: SecretString,
    pub pool_size: u32,
}

impl HsmSettings {
    /// The settings the process configuration names (`SHOMEI_HSM_*`).
    pub fn from_config(config: &shomei_config::HsmConfig) -> Self {
        Self {
            module_path: config.module_path.clone(),
            token_label: config.token_label.clone(),
            user_pin: config.user_pin.clone(),
            pool_size: config.pool_size,
        }
    }
}

impl fmt::Debug for HsmSettings {
    // Spelled out so that adding a field can never leak the PIN by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmSettings")
            .field("module_path", &self.module_path)
            .field("token_label", &self.token_label)
            .field("user_pin", &"[REDACTED]")
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Signature scheme of a key; both use SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA with PKCS#1 v1.5 padding.
    Rsa,
    /// ECDSA on NIST P-256.
    EcdsaP256,
}

/// A private key in the token together with its certificate and chain.
pub struct SigningIdentity {
    label: String,
    key: ObjectHandle,
    /// The module initialisation `key` belongs to; handles do not survive a re-initialisation.
    generation: u64,
    algorithm: KeyAlgorithm,
    certificate: Certificate,
    chain: Vec<Certificate>,
}

impl SigningIdentity {
    pub fn certificate(&self) -> &x509_cert::Certificate {
        &self.certificate
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Issuer certificates found in the token, nearest issuer first.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }
}

impl fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("label", &self.label)
            .field("algorithm", &self.algorithm)
            .field(
                "subject",
                &self.certificate.tbs_certificate().subject().to_string(),
            )
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Handle to the token: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HsmSettings,
    /// The module's current initialisation; replaced when the device was lost.
    link: RwLock<Arc<Link>>,
    /// Counts initialisations. A session remembers the one it was opened in and is closed only
    /// if that is still the current one.
    generation: Arc<AtomicU64>,
    /// Set when opening a session failed because the device is gone.
    device_lost: Arc<AtomicBool>,
    /// Serialises re-initialisations and spaces them out.
    last_reinit: Mutex<Option<Instant>>,
    /// Held by every call into the module, and closed by a re-initialisation (see [`calls`]).
    calls: Calls,
    identities: Mutex<HashMap<String, Arc<SigningIdentity>>>,
}

/// One initialisation of the module: its session pool, and what the rare read-write sessions
/// (creating and destroying KEKs) are opened on, on the spot: the pool's sessions are read-only.
struct Link {
    pool: r2d2::Pool<SessionManager>,
    pkcs11: Pkcs11,
    slot: Slot,
    generation: u64,
    /// Written while a token object is created or destroyed ([`Hsm::with_rw_session`]), read by
    /// every other call on a session ([`Hsm::with_session`]), each taken before a pooled
    /// session so that no thread waits for it holding one. SoftHSM2's file store fails to
    /// create a token object while other threads create one or read the token's objects
    /// (softhsm/SoftHSMv2#573: `C_GenerateKey` fails with `CKR_GENERAL_ERROR` or
    /// `CKR_TEMPLATE_INCONSISTENT`; `signing/tests/kek.rs`). Creations and destructions are
    /// rare (a data key's KEK, its rotation); the other calls share the lock and do not wait
    /// for each other. One per initialisation: a call abandoned inside the module (see
    /// [`calls`]) keeps its read for good, and the next initialisation must not wait for it.
    token_objects: RwLock<()>,
}

impl Link {
    /// Finds the token, checks the PIN once and builds the session pool.
    fn open(
        pkcs11: Pkcs11,
        settings: &HsmSettings,
        generation: &Arc<AtomicU64>,
        device_lost: &Arc<AtomicBool>,
        calls: &Calls,
    ) -> Result<Link, HsmError> {
        let slot = find_token(&pkcs11, &settings.token_label)?;
        let manager = SessionManager {
            pkcs11: pkcs11.clone(),
            slot,
            pin: settings.user_pin.clone(),
            generation: generation.clone(),
            device_lost: device_lost.clone(),
            calls: calls.clone(),
        };

        // One explicit attempt before the pool exists: r2d2 keeps retrying
        // failed connects in the background, and with a wrong PIN that would
        // burn through the token's retry counter and lock it.
        let probe = manager.open().map_err(|e| match e {
            CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired,
                _,
            )
            | CkError::Pkcs11(_, Function::Login) => HsmError::Login(e),
            other => HsmError::Pkcs11 {
                operation: "C_OpenSession",
                source: other,
            },
        })?;

        // Built while the probe is still open so the pool's first session
        // inherits the login instead of sending the PIN again.
        // No reaper (idle timeout, maximum lifetime): its job runs every 30 s for as long as
        // the pool's threads live, and so kept them alive after the pool was dropped: three
        // threads lost per re-initialisation. Sessions need no recycling; a broken one is
        // found at checkout.
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size.max(1))
            .min_idle(Some(1))
            .idle_timeout(None)
            .max_lifetime(None)
            .connection_timeout(SESSION_CHECKOUT_TIMEOUT)
            .test_on_check_out(true)
            .build(manager)?;
        drop(probe);
        Ok(Link {
            pool,
            pkcs11,
            slot,
            generation: generation.load(Ordering::SeqCst),
            token_objects: RwLock::new(()),
        })
    }
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.inner.settings.token_label)
            .field("pool", &self.link().pool.state())
            .finish()
    }
}

impl Hsm {
    /// Initialises the PKCS#11 module (once per process), checks the PIN and
    /// builds the session pool.
    pub fn connect(settings: &HsmSettings) -> Result<Hsm, HsmError> {
        let (mut pkcs11, fresh) = initialised_module(&settings.module_path)?;
        let generation = Arc::new(AtomicU64::new(0));
        let device_lost = Arc::new(AtomicBool::new(false));
        let calls = Calls::default();
        // SoftHSM2 reads its token directory once, in C_Initialize, and rewrites a token's
        // file on every login: a process starting beside another one may read it while it is
        // rewritten and see no token, or a token whose user PIN is not set (both seen as one of
        // several processes starting together failing). Reading again takes a new
        // initialisation; done only when this call made the first one, so no other user of the
        // module in this process loses its sessions.
        let mut reinitialised = 0;
        let link = loop {
            match Link::open(pkcs11.clone(), settings, &generation, &device_lost, &calls) {
                Err(e) if fresh && reinitialised < 3 && read_while_rewritten(&e) => {
                    tracing::warn!(error = %e, "initialising the module again to read the token again");
                    reinitialised += 1;
                    pkcs11 = reinitialised_module(&settings.module_path, pkcs11)?;
                }
                other => break other?,
            }
        };

        tracing::info!(
            token = %settings.token_label,
            pool_size = settings.pool_size,
            "connected to HSM"
        );
        Ok(Hsm {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                link: RwLock::new(Arc::new(link)),
                generation,
                device_lost,
                last_reinit: Mutex::new(None),
                calls,
                identities: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn link(&self) -> Arc<Link> {
        self.inner
            .link
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Finalises and initialises the module again after `failed` lost its device, unless
    /// another thread did already or did less than [`REINIT_PAUSE`] ago. The operation that
    /// noticed still fails (transiently); the next one uses the new initialisation.
    fn reinitialise(&self, failed: &Arc<Link>) {
        let mut last = self
            .inner
            .last_reinit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&self.link(), failed) || last.is_some_and(|t| t.elapsed() < REINIT_PAUSE) {
            return;
        }
        *last = Some(Instant::now());
        {
            // Every call in flight returns first, the pool's own threads' included, or is
            // abandoned (see `calls`); none starts until the module is initialised again.
            let exclusive = self.inner.calls.exclusive(CALLS_PATIENCE);
            if exclusive.abandoned > 0 {
                tracing::error!(
                    calls = exclusive.abandoned,
                    patience_s = CALLS_PATIENCE.as_secs(),
                    "calls into the HSM module did not return; initialising it again without \
                     them (each keeps its thread blocked; restart the process when convenient)"
                );
                metrics::HSM_CALLS_ABANDONED.inc_by(exclusive.abandoned as u64);
            }
            self.inner.device_lost.store(true, Ordering::SeqCst);
            // From here on the old initialisation's sessions are left unclosed (see the module
            // doc).
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = failed.pkcs11.clone().finalize() {
                tracing::debug!(error = %e, "C_Finalize of the lost HSM module");
            }
            match failed
                .pkcs11
                .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "HSM module cannot be initialised again yet");
                    return;
                }
            }
        }
        // Outside the exclusive guard: opening the pool makes calls, on this thread and on the
        // pool's. Callers meanwhile wait for `last_reinit` (the device is still marked lost).
        match Link::open(
            failed.pkcs11.clone(),
            &self.inner.settings,
            &self.inner.generation,
            &self.inner.device_lost,
            &self.inner.calls,
        ) {
            Ok(link) => {
                *self
                    .inner
                    .link
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(link);
                self.inner.device_lost.store(false, Ordering::SeqCst);
                self.inner
                    .identities
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clear();
                tracing::info!(token = %self.inner.settings.token_label, "reconnected to HSM");
            }
            Err(e) => tracing::warn!(error = %e, "HSM still unreachable"),
        }
    }

    /// Readiness probe: proves a logged-in session can be obtained and the
    /// token answers.
    pub fn check(&self) -> Result<(), HsmError> {
        self.with_session("C_GetSessionInfo", require_login)
    }

    /// Looks up (once, then cached) the private key labelled `key_label`, its
    /// certificate and the issuing certificates stored in the token.
    pub fn identity(&self, key_label: &str) -> Result<Arc<SigningIdentity>, HsmError> {
        if let Some(identity) = self.cached_identity(key_label) {
            return Ok(identity);
        }
        let identity = Arc::new(self.load_identity(key_label)?);
        // Two threads may both miss and load; either result is equally valid.
        self.inner
            .identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key_label.to_owned(), Arc::clone(&identity));
        Ok(identity)
    }

    /// Signs a SHA-256 digest with the identity's key inside the HSM.
    ///
    /// Returns the signature as CMS expects it: the raw PKCS#1 v1.5 block for
    /// RSA, a DER `ECDSA-Sig-Value` for ECDSA.
    pub fn sign_digest(
        &self,
        identity: &SigningIdentity,
        sha256_digest: &[u8; 32],
    ) -> Result<Vec<u8>, HsmError> {
        match self.sign_digest_once(identity, sha256_digest) {
            // The module was initialised again meanwhile: once more, with the key looked up
            // in the new initialisation.
            Err(HsmError::Reinitialised) => self.sign_digest_once(identity, sha256_digest),
            done => done,
        }
    }

    fn sign_digest_once(
        &self,
        identity: &SigningIdentity,
        sha256_digest: &[u8; 32],
    ) -> Result<Vec<u8>, HsmError> {
        // The caller may hold an identity from before the module was initialised again, or
        // about to be (the device is known gone): recover first, then compare.
        self.recover_if_lost();
        let refreshed;
        let identity = if identity.generation == self.link().generation {
            identity
        } else {
            refreshed = self.identity(&identity.label)?;
            &*refreshed
        };
        let key = match identity.algorithm {
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::EcdsaP256 => "ec",
        };
        let timer = metrics::HSM_SIGN_DURATION
            .with_label_values(&[key])
            .start_timer();
        let result = match identity.algorithm {
            KeyAlgorithm::Rsa => {
                // CKM_RSA_PKCS only pads, so the DigestInfo has to be built here.
                let mut digest_info = Vec::with_capacity(SHA256_DIGEST_INFO_PREFIX.len() + 32);
                digest_info.extend_from_slice(&SHA256_DIGEST_INFO_PREFIX);
                digest_info.extend_from_slice(sha256_digest);
                self.with_session_in(Some(identity.generation), "C_Sign", |session| {
                    session.sign(&Mechanism::RsaPkcs, identity.key, &digest_info)
                })
            }
            KeyAlgorithm::EcdsaP256 => self
                .with_session_in(Some(identity.generation), "C_Sign", |session| {
                    session.sign(&Mechanism::Ecdsa, identity.key, sha256_digest)
                })
                .and_then(|raw| ecdsa_raw_to_der(&identity.label, &raw)),
        };
        if let Err(HsmError::Pkcs11 {
            source: CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _),
            ..
        }) = &result
        {
            // The key was replaced in the token; look it up afresh next time.
            self.forget_identity(&identity.label);
        }
        if result.is_ok() {
            timer.observe_duration();
        } else {
            timer.stop_and_discard();
        }
        result
    }

    fn cached_identity(&self, key_label: &str) -> Option<Arc<SigningIdentity>> {
        self.inner
            .identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key_label)
            .cloned()
    }

    fn forget_identity(&self, key_label: &str) {
        self.inner
            .identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key_label);
    }

    fn load_identity(&self, key_label: &str) -> Result<SigningIdentity, HsmError> {
        let generation = self.link().generation;
        let found = self.with_session("C_FindObjects", |session| {
            let Some(key) = find_one(
                session,
                ObjectClass::PRIVATE_KEY,
                Attribute::Label(key_label.into()),
            )?
            else {
                // A session that lost its login sees no private objects: not a missing key.
                require_login(session)?;
                return Ok(None);
            };
            let attributes =
                session.get_attributes(key, &[AttributeType::KeyType, AttributeType::Id])?;
            let mut key_type = None;
            let mut key_id = None;
            for attribute in attributes {
                match attribute {
                    Attribute::KeyType(t) => key_type = Some(t),
                    Attribute::Id(id) => key_id = Some(id),
                    _ => {}
                }
            }
            // Same label first; the CKA_ID link is the PKCS#11 convention
            // for tokens provisioned by other tools.
            let mut cert = find_one(
                session,
                ObjectClass::CERTIFICATE,
                Attribute::Label(key_label.into()),
            )?;
            if cert.is_none() {
                if let Some(id) = key_id.clone().filter(|id| !id.is_empty()) {
                    cert = find_one(session, ObjectClass::CERTIFICATE, Attribute::Id(id))?;
                }
            }
            let cert_der = match cert {
                Some(handle) => Some(certificate_value(session, handle)?),
                None => None,
            };
            let others = session
                .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])?
                .into_iter()
                .filter(|handle| Some(*handle) != cert)
                .map(|handle| certificate_value(session, handle))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some((key, key_type, cert_der, others)))
        })?;

        let Some((key, key_type, cert_der, others)) = found else {
            return Err(HsmError::KeyNotFound(key_label.to_owned()));
        };
        let cert_der =
            cert_der.ok_or_else(|| HsmError::CertificateNotFound(key_label.to_owned()))?;
        let certificate =
            Certificate::from_der(&cert_der).map_err(|source| HsmError::BadCertificate {
                label: key_label.to_owned(),
                source,
            })?;
        let algorithm = key_algorithm(key_label, key_type, &certificate)?;
        // Unrelated or malformed certificates elsewhere in the token must not
        // make this key unusable.
        let others: Vec<Certificate> = others
            .iter()
            .filter_map(|der| Certificate::from_der(der).ok())
            .collect();
        let chain = build_chain(&certificate, &others);

        tracing::debug!(
            key = key_label,
            ?algorithm,
            chain_len = chain.len(),
            "loaded signing identity"
        );
        Ok(SigningIdentity {
            label: key_label.to_owned(),
            key,
            generation,
            algorithm,
            certificate,
            chain,
        })
    }

    /// Publishes the pool's state (sessions idle and in use) as gauges.
    pub fn report_pool(&self) {
        let link = self.link();
        let state = link.pool.state();
        metrics::HSM_POOL_MAX.set(i64::from(link.pool.max_size()));
        metrics::HSM_POOL_SESSIONS
            .with_label_values(&["idle"])
            .set(i64::from(state.idle_connections));
        metrics::HSM_POOL_SESSIONS
            .with_label_values(&["in_use"])
            .set(i64::from(state.connections - state.idle_connections));
    }

    /// While the device is known gone, every caller tries to bring it back (at most once a
    /// second, see `reinitialise`).
    fn recover_if_lost(&self) {
        if self.inner.device_lost.load(Ordering::SeqCst) {
            self.reinitialise(&self.link());
        }
    }

    /// Runs `op` on a pooled session, flagging the session as broken when
    /// the error says the session (rather than the request) is at fault, so
    /// the pool discards it instead of handing it out again. When the device is gone, the
    /// module is initialised again for the next caller.
    pub(crate) fn with_session<T>(
        &self,
        operation: &'static str,
        op: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.with_session_in(None, operation, op)
    }

    /// [`Hsm::with_session`] on a session of the initialisation `generation`, when `op` uses
    /// object handles found in it: handles are numbers, and the same number may name another
    /// object once the module was initialised again.
    fn with_session_in<T>(
        &self,
        generation: Option<u64>,
        operation: &'static str,
        op: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.recover_if_lost();
        let link = self.link();
        let result = self.on_pooled_session(&link, generation, operation, op);
        // After the call guard is released: a re-initialisation waits for every call in flight.
        let device_gone = match &result {
            Ok(_) => false,
            Err(HsmError::Pkcs11 { source, .. }) => loses_device(source),
            // No session could be checked out: was that because the device is gone?
            Err(_) => self.inner.device_lost.load(Ordering::SeqCst),
        };
        if device_gone {
            self.reinitialise(&link);
        }
        result
    }

    fn on_pooled_session<T>(
        &self,
        link: &Link,
        generation: Option<u64>,
        operation: &'static str,
        op: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let _objects = link
            .token_objects
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let waited = std::time::Instant::now();
        let checked_out = self.checkout(link);
        metrics::HSM_SESSION_WAIT.observe(waited.elapsed().as_secs_f64());
        self.report_pool();
        let mut pooled = checked_out.inspect_err(|_| metrics::HSM_ERRORS.inc())?;
        let _in_flight = self.current_call(&pooled, generation)?;
        op(pooled.session()).map_err(|source| {
            metrics::HSM_ERRORS.inc();
            if breaks_session(&source) {
                tracing::warn!(operation, error = %source, "discarding HSM session");
                pooled.broken = true;
            }
            HsmError::Pkcs11 { operation, source }
        })
    }

    /// A session from `link`'s pool, waiting up to [`SESSION_CHECKOUT_TIMEOUT`] for one, but
    /// no longer once the device is known gone (the pool's own attempts to open a session may
    /// be what found it gone): the caller then brings it back instead of waiting for sessions
    /// the old initialisation can no longer open.
    fn checkout(&self, link: &Link) -> Result<r2d2::PooledConnection<SessionManager>, r2d2::Error> {
        let deadline = Instant::now() + SESSION_CHECKOUT_TIMEOUT;
        loop {
            let slice = CHECKOUT_SLICE.min(deadline.saturating_duration_since(Instant::now()));
            match link.pool.get_timeout(slice) {
                Err(e)
                    if Instant::now() < deadline
                        && !self.inner.device_lost.load(Ordering::SeqCst) =>
                {
                    tracing::trace!(error = %e, "still waiting for an HSM session");
                }
                checked_out => return checked_out,
            }
        }
    }

    /// The call guard (see [`calls`]), held by a caller for its calls on `session`, which it
    /// checked out before: waiting for a session takes no guard, or a re-initialisation would
    /// wait for every caller waiting for a session (up to [`SESSION_CHECKOUT_TIMEOUT`]) while
    /// the pool's sessions can only fail. A session of an earlier initialisation is refused, and
    /// so is one of another than `generation`, the one the caller's object handles come from.
    fn current_call(
        &self,
        session: &PooledSession,
        generation: Option<u64>,
    ) -> Result<calls::InFlight<'_>, HsmError> {
        let guard = self.inner.calls.enter();
        let current = self.inner.generation.load(Ordering::SeqCst);
        if session.generation != current || generation.is_some_and(|g| g != current) {
            return Err(HsmError::Reinitialised);
        }
        Ok(guard)
    }

    /// Runs `op` on a fresh read-write session (logged in through the pool's login), closed
    /// afterwards.
    pub(crate) fn with_rw_session<T>(
        &self,
        operation: &'static str,
        op: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let pkcs11_error = |source| {
            metrics::HSM_ERRORS.inc();
            HsmError::Pkcs11 { operation, source }
        };
        let link = self.link();
        let _alone = link
            .token_objects
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Held so the token stays logged in while the new session works.
        let pooled = self.checkout(&link)?;
        let _in_flight = self.current_call(&pooled, None)?;
        let session = link
            .pkcs11
            .open_rw_session(link.slot)
            .map_err(pkcs11_error)?;
        op(&session).map_err(pkcs11_error)
    }
}

/// DER prefix of `DigestInfo { sha256, OCTET STRING (32 bytes) }` (RFC 8017 §9.2).
const SHA256_DIGEST_INFO_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

#[derive(der::Sequence)]
struct EcdsaSigValue<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

/// PKCS#11 returns ECDSA signatures as `r || s`; CMS wants `ECDSA-Sig-Value`.
fn ecdsa_raw_to_der(label: &str, raw: &[u8]) -> Result<Vec<u8>, HsmError> {
    let unexpected = || HsmError::UnsupportedKey {
        label: label.to_owned(),
        reason: format!(
            "token returned a {}-byte ECDSA signature, expected 64",
            raw.len()
        ),
    };
    if raw.len() != 64 {
        return Err(unexpected());
    }
    let (r, s) = raw.split_at(32);
    let value = EcdsaSigValue {
        r: der::asn1::UintRef::new(r).map_err(|_| unexpected())?,
        s: der::asn1::UintRef::new(s).map_err(|_| unexpected())?,
    };
    value.to_der().map_err(|_| unexpected())
}

fn find_one(
    session: &Session,
    class: ObjectClass,
    selector: Attribute,
) -> Result<Option<ObjectHandle>, CkError> {
    Ok(session
        .find_objects(&[Attribute::Class(class), selector])?
        .into_iter()
        .next())
}

fn certificate_value(session: &Session, handle: ObjectHandle) -> Result<Vec<u8>, CkError> {
    let attributes = session.get_attributes(handle, &[AttributeType::Value])?;
    Ok(attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::Value(value) => Some(value),
            _ => None,
        })
        .unwrap_or_default())
}

const OID_RSA_ENCRYPTION: der::oid::ObjectIdentifier = const_oid::db::rfc5912::RSA_ENCRYPTION;
const OID_EC_PUBLIC_KEY: der::oid::ObjectIdentifier = const_oid::db::rfc5912::ID_EC_PUBLIC_KEY;
const OID_P256: der::oid::ObjectIdentifier = const_oid::db::rfc5912::SECP_256_R_1;

/// Decides the signature scheme and refuses key/certificate pairs that could
/// only ever produce signatures nobody can verify.
fn key_algorithm(
    label: &str,
    key_type: Option<KeyType>,
    certificate: &Certificate,
) -> Result<KeyAlgorithm, HsmError> {
    let unsupported = |reason: String| HsmError::UnsupportedKey {
        label: label.to_owned(),
        reason,
    };
    let spki = certificate.tbs_certificate().subject_public_key_info();
    match key_type {
        Some(KeyType::RSA) if spki.algorithm.oid == OID_RSA_ENCRYPTION => Ok(KeyAlgorithm::Rsa),
        Some(KeyType::EC) if spki.algorithm.oid == OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::oid::ObjectIdentifier>().ok());
            if curve == Some(OID_P256) {
                Ok(KeyAlgorithm::EcdsaP256)
            } else {
                Err(unsupported(format!(
                    "only P-256 EC keys are supported, certificate has {curve:?}"
                )))
            }
        }
        Some(KeyType::RSA | KeyType::EC) => Err(unsupported(format!(
            "certificate key algorithm {} does not match the private key type",
            spki.algorithm.oid
        ))),
        other => Err(unsupported(format!("unsupported key type {other:?}"))),
    }
}

/// Follows issuer links among the token's certificates, nearest issuer first.
fn build_chain(leaf: &Certificate, candidates: &[Certificate]) -> Vec<Certificate> {
    let mut chain: Vec<Certificate> = Vec::new();
    let mut current = leaf;
    while chain.len() < MAX_CHAIN_DEPTH {
        let tbs = current.tbs_certificate();
        if tbs.issuer() == tbs.subject() {
            break;
        }
        let Some(issuer) = candidates.iter().find(|c| {
            c.tbs_certificate().subject() == tbs.issuer() && !chain.contains(c) && *c != leaf
        }) else {
            break;
        };
        chain.push(issuer.clone());
        current = issuer;
    }
    chain
}

fn is_logged_in(state: SessionState) -> bool {
    matches!(state, SessionState::RoUser | SessionState::RwUser)
}

/// `Err(CKR_USER_NOT_LOGGED_IN)` (a broken session, a transient failure) unless the session is
/// logged in: said before a private object that was not found is reported missing for good.
pub(crate) fn require_login(session: &Session) -> Result<(), CkError> {
    if is_logged_in(session.get_session_info()?.session_state()) {
        Ok(())
    } else {
        Err(not_logged_in())
    }
}

fn not_logged_in() -> CkError {
    CkError::Pkcs11(RvError::UserNotLoggedIn, Function::GetSessionInfo)
}

/// Errors after which this session (or the whole login) cannot be trusted.
fn breaks_session(error: &CkError) -> bool {
    match error {
        CkError::Pkcs11(rv, _) => matches!(
            rv,
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::GeneralError
                | RvError::CryptokiNotInitialized
                | RvError::OperationActive
        ),
        _ => true,
    }
}

/// Errors after which the module must be initialised again: the device (or the connection to
/// it) is gone.
fn loses_device(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

// cryptoki permits one C_Initialize per process; every `Hsm` for the same
// module shares the context created here.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// The process's handle on the module at `path`, loaded and initialised on first use; `true`
/// when this call did that.
fn initialised_module(path: &Path) -> Result<(Pkcs11, bool), HsmError> {
    let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(pkcs11) = modules.get(&key) {
        return Ok((pkcs11.clone(), false));
    }
    let pkcs11 = Pkcs11::new(&key).map_err(module_error(path))?;
    initialise(&pkcs11, path)?;
    modules.insert(key, pkcs11.clone());
    Ok((pkcs11, true))
}

/// Finalises the module `initialised_module` just initialised and initialises it again, after a
/// pause for the other process to release the token's files.
fn reinitialised_module(path: &Path, pkcs11: Pkcs11) -> Result<Pkcs11, HsmError> {
    let again = pkcs11.clone();
    if let Err(e) = pkcs11.finalize() {
        tracing::debug!(error = %e, "C_Finalize before initialising again");
    }
    std::thread::sleep(Duration::from_millis(200));
    initialise(&again, path)?;
    Ok(again)
}

fn initialise(pkcs11: &Pkcs11, path: &Path) -> Result<(), HsmError> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in the process (another library) got there first.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(module_error(path)(e)),
    }
}

/// What a token file read while another process rewrote it looks like.
fn read_while_rewritten(error: &HsmError) -> bool {
    matches!(
        error,
        HsmError::TokenNotFound(_)
            | HsmError::Login(CkError::Pkcs11(RvError::UserPinNotInitialized, _))
            | HsmError::Pkcs11 {
                source: CkError::Pkcs11(RvError::GeneralError, _),
                ..
            }
    )
}

fn module_error(path: &Path) -> impl Fn(CkError) -> HsmError + '_ {
    move |source| HsmError::Module {
        path: path.to_owned(),
        source,
    }
}

/// The slot holding the token labelled `label`. Looked for a few times over about a second:
/// SoftHSM2 leaves out a token whose files another process holds locked at that moment, or
/// answers `C_GetTokenInfo` with `CKR_GENERAL_ERROR` (both seen as a worker failing to start
/// beside another one that was starting). The error of the last round, if it had one.
fn find_token(pkcs11: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let pkcs11_error = |source| HsmError::Pkcs11 {
        operation: "C_GetSlotList",
        source,
    };
    let mut last_error = None;
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        last_error = None;
        let slots = match pkcs11.get_slots_with_token() {
            Ok(slots) => slots,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        for slot in slots {
            match pkcs11.get_token_info(slot) {
                Ok(info) if info.label().trim_end() == label => return Ok(slot),
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
    }
    Err(last_error.map_or_else(|| HsmError::TokenNotFound(label.to_owned()), pkcs11_error))
}

struct SessionManager {
    pkcs11: Pkcs11,
    slot: Slot,
    pin: SecretString,
    generation: Arc<AtomicU64>,
    device_lost: Arc<AtomicBool>,
    calls: Calls,
}

/// A pooled session; `broken` is set by [`Hsm::with_session`] and read by
/// the pool so a failed session is closed rather than reused.
struct PooledSession {
    /// Always `Some` but while dropped.
    session: Option<Session>,
    broken: bool,
    /// The module initialisation the session was opened in.
    generation: u64,
    current: Arc<AtomicU64>,
    calls: Calls,
}

impl PooledSession {
    fn session(&self) -> &Session {
        self.session.as_ref().expect("a pooled session")
    }
}

impl Drop for PooledSession {
    fn drop(&mut self) {
        let _in_flight = self.calls.enter();
        if self.generation != self.current.load(Ordering::SeqCst) {
            // Opened before the module was initialised again: its handle may now name a
            // session of the new initialisation, which closing it would close.
            std::mem::forget(self.session.take());
        }
        // C_CloseSession, under the guard.
        drop(self.session.take());
    }
}

impl SessionManager {
    fn open(&self) -> Result<PooledSession, CkError> {
        let _in_flight = self.calls.enter();
        let generation = self.generation.load(Ordering::SeqCst);
        let session = self.pkcs11.open_ro_session(self.slot).inspect_err(|e| {
            if loses_device(e) {
                self.device_lost.store(true, Ordering::SeqCst);
            }
        })?;
        // Login is per application, not per session: a fresh session is
        // already logged in whenever another open session is.
        if !is_logged_in(session.get_session_info()?.session_state()) {
            match session.login(UserType::User, Some(&self.pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(PooledSession {
            session: Some(session),
            broken: false,
            generation,
            current: self.generation.clone(),
            calls: self.calls.clone(),
        })
    }
}

impl r2d2::ManageConnection for SessionManager {
    type Connection = PooledSession;
    type Error = CkError;

    fn connect(&self) -> Result<PooledSession, CkError> {
        self.open()
    }

    fn is_valid(&self, conn: &mut PooledSession) -> Result<(), CkError> {
        let _in_flight = self.calls.enter();
        if is_logged_in(conn.session().get_session_info()?.session_state()) {
            Ok(())
        } else {
            Err(not_logged_in())
        }
    }

    fn has_broken(&self, conn: &mut PooledSession) -> bool {
        conn.broken || conn.generation != self.generation.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_hides_pin() {
        let settings = HsmSettings {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "t".into(),
            user_pin: SecretString::from("s3cret-pin-1234"),
            pool_size: 2,
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret-pin-1234"), "{debug}");
        assert!(debug.contains("REDACTED"));
    }

    #[test]
    fn ecdsa_signature_is_der_encoded() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // high bit forces a leading zero in the INTEGER
        raw[63] = 1;
        let der = ecdsa_raw_to_der("k", &raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
    }
}
