//! The store on an S3-compatible bucket: a real S3 server on loopback (moto's, started per test
//! by `shomei_testkit::s3::S3Server`), a real keyring (PostgreSQL, a copy of the dev SoftHSM2
//! token). What the bucket holds is read back with the server's own S3 API, not through the
//! store under test. The local store's own read path (files read directly, not through
//! `object_store`) is checked here too, with the same keyring.

use std::sync::OnceLock;

use bytes::Bytes;
use diesel::{Connection, PgConnection, RunQueryDsl};
use futures::TryStreamExt;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use shomei_config::{S3Config, S3Credentials};
use shomei_signing::{Hsm, HsmSettings};
use shomei_storage::{Storage, StorageError, StoredObject};
use shomei_testkit::s3::{S3Server, ACCESS_KEY_ID};
use shomei_testkit::{hsm_dir, own_token_copy, workspace_root};
use shomei_vault::Keyring;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
/// The store's key prefix inside the bucket (so the prefix handling is exercised too).
const PREFIX: &str = "shomei/test";

/// One HSM for the test binary, on its own copy of the dev token (the tests make KEKs in it).
fn hsm() -> Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let hsm = hsm_dir();
        let dir = workspace_root()
            .join("target/tmp/storage-tests")
            .join(Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let conf = own_token_copy(hsm, &dir);
        // Before the first PKCS#11 call of this process, which reads it.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let pin = std::fs::read_to_string(hsm.join("user-pin")).unwrap();
        Hsm::connect(&HsmSettings {
            module_path: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "shomei-dev".into(),
            user_pin: SecretString::from(pin.trim().to_owned()),
            pool_size: 2,
        })
        .expect("the dev token")
    })
    .clone()
}

/// A database of its own (migrated, with one tenant), dropped at the end of the test.
struct Db {
    name: String,
}

fn admin_sql(statement: &str) {
    let mut conn = PgConnection::establish(&format!("{POSTGRES}/postgres")).unwrap();
    diesel::sql_query(statement).execute(&mut conn).unwrap();
}

impl Drop for Db {
    fn drop(&mut self) {
        admin_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Everything a test needs: the S3 server with its bucket, the store on it, and a tenant.
struct Fixture {
    s3: S3Server,
    storage: Storage,
    keys: Keyring,
    tenant: Uuid,
    _db: Db,
}

impl Fixture {
    async fn new() -> Fixture {
        let s3 = S3Server::start().await;
        let tenant = Uuid::new_v4();
        let (keys, db) = tokio::task::spawn_blocking(move || {
            let db = Db {
                name: format!("shomei_s_{}", Uuid::new_v4().simple()),
            };
            admin_sql(&format!("CREATE DATABASE {}", db.name));
            let pool = shomei_schema::connect(&format!("{POSTGRES}/{}", db.name), 4);
            shomei_schema::run_migrations(&pool).unwrap();
            diesel::sql_query(format!(
                "INSERT INTO tenants (id, name) VALUES ('{tenant}', 'S3 test')"
            ))
            .execute(&mut **pool.get().unwrap())
            .unwrap();
            (Keyring::new(pool, hsm()), db)
        })
        .await
        .unwrap();
        let storage = Storage::s3(&config(&s3), keys.clone()).unwrap();
        Fixture {
            s3,
            storage,
            keys,
            tenant,
            _db: db,
        }
    }

    /// Stores `bytes` as the revision that extends `base`.
    async fn revision(&self, document: Uuid, base: &StoredObject, bytes: &[u8]) -> StoredObject {
        put_revision(&self.storage, self.tenant, document, base, bytes).await
    }

    /// The bucket key of a store key.
    fn in_bucket(key: &str) -> String {
        format!("{PREFIX}/{key}")
    }
}

/// Stores `bytes` as the revision that extends `base` in `storage`, as a job does: on a blocking
/// thread, through `Storage::blocking`.
async fn put_revision(
    storage: &Storage,
    tenant: Uuid,
    document: Uuid,
    base: &StoredObject,
    bytes: &[u8],
) -> StoredObject {
    let (storage, base, bytes) = (storage.clone(), base.clone(), bytes.to_vec());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        storage.blocking(&runtime).put_pdf_revision(
            tenant,
            document,
            &base,
            &bytes[..base.size as usize],
            &bytes[base.size as usize..],
            sha256(&bytes),
        )
    })
    .await
    .unwrap()
    .unwrap()
}

fn config(s3: &S3Server) -> S3Config {
    S3Config {
        bucket: s3.bucket().to_owned(),
        prefix: PREFIX.to_owned(),
        endpoint: Some(s3.endpoint().to_owned()),
        region: "us-east-1".to_owned(),
        credentials: Some(S3Credentials {
            access_key_id: ACCESS_KEY_ID.to_owned(),
            secret_access_key: SecretString::from(s3.secret_access_key().to_owned()),
        }),
        virtual_hosted: false,
        allow_http: true,
    }
}

/// A PDF-like plaintext: a header, then bytes from a seeded generator (incompressible, and
/// every 32-byte window distinct with overwhelming likelihood).
fn plaintext(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = b"%PDF-1.7\n".to_vec();
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The error of a read that must fail (without printing the bytes of one that did not).
fn refused(read: Result<Bytes, StorageError>) -> StorageError {
    match read {
        Ok(bytes) => panic!("{} bytes read from a changed object", bytes.len()),
        Err(e) => e,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_round_trips_through_the_bucket_which_holds_only_ciphertext() {
    let f = Fixture::new().await;
    let document = Uuid::new_v4();
    let pdf = plaintext(300 * 1024, 1);
    let stored = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(pdf.clone()))
        .await
        .unwrap();
    assert_eq!(stored.size, pdf.len() as u64);
    assert_eq!(stored.sha256, <[u8; 32]>::from(Sha256::digest(&pdf)));
    assert!(stored
        .key
        .starts_with(&Storage::document_prefix(f.tenant, document)));

    // In the bucket, under the prefix, and sealed: no header, no piece of the plaintext.
    let in_bucket = Fixture::in_bucket(&stored.key);
    assert_eq!(f.s3.list("").await, vec![in_bucket.clone()]);
    let raw = f.s3.get(&in_bucket).await;
    assert!(raw.len() > pdf.len());
    assert!(!contains(&raw, b"%PDF"));
    for piece in pdf[9..].chunks(64 * 1024).map(|c| &c[..32]) {
        assert!(!contains(&raw, piece), "plaintext in the stored object");
    }
    // Named by the SHA-256 of what is stored.
    assert!(stored
        .key
        .ends_with(&format!("/{}.sealed", hex::encode(Sha256::digest(&raw)))));

    // Read back whole, and as a stream.
    let read = f
        .storage
        .get_verified(&stored.key, &stored.sha256)
        .await
        .unwrap();
    assert_eq!(read, pdf);
    let (size, stream) = f.storage.stream(&stored.key).await.unwrap();
    assert_eq!(size, pdf.len() as u64);
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), pdf);

    // The deletion evidence describes the bytes in the bucket.
    let fingerprint = f.storage.fingerprint(&stored.key).await.unwrap().unwrap();
    assert_eq!(fingerprint.sha256, <[u8; 32]>::from(Sha256::digest(&raw)));
    assert_eq!(fingerprint.size, raw.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_archive_larger_than_a_part_is_uploaded_in_parts_and_streams_back() {
    let f = Fixture::new().await;
    let key = Storage::export_key(f.tenant, Uuid::new_v4(), 1);
    // 12 MiB: with 5 MiB parts, the upload has three.
    let archive = plaintext(12 * 1024 * 1024, 2);
    let mut writer = f.storage.writer(f.tenant, &key).await.unwrap();
    for chunk in archive.chunks(100 * 1000) {
        writer.write_all(chunk).await.unwrap();
    }
    // Nothing is visible before the writer is shut down.
    assert!(f.s3.list("").await.is_empty());
    writer.shutdown().await.unwrap();

    let in_bucket = Fixture::in_bucket(&key);
    assert_eq!(f.s3.list("").await, vec![in_bucket.clone()]);
    let etag = f.s3.etag(&in_bucket).await;
    assert!(
        etag.ends_with("-3"),
        "a multipart upload of three parts gives the ETag <md5>-3, not {etag}"
    );
    assert!(f.s3.open_multipart_uploads().await.is_empty());
    assert!(!contains(&f.s3.get(&in_bucket).await, b"%PDF"));

    let (size, stream) = f.storage.stream(&key).await.unwrap();
    assert_eq!(size, archive.len() as u64);
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert!(chunks.len() > 1, "streamed in chunks, not whole");
    assert!(
        chunks.concat() == archive,
        "the archive streams back intact"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_listed_by_prefix_and_removed_for_good() {
    let f = Fixture::new().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut keys = Vec::new();
    for (document, seed) in [(a, 3), (a, 4), (b, 5)] {
        let pdf = Bytes::from(plaintext(10 * 1024, seed));
        keys.push(
            f.storage
                .put_pdf(f.tenant, document, pdf)
                .await
                .unwrap()
                .key,
        );
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let of_a = f
        .storage
        .list(&Storage::document_prefix(f.tenant, a))
        .await
        .unwrap();
    assert_eq!(sorted(of_a), sorted(keys[..2].to_vec()));
    let of_tenant = f
        .storage
        .list(&Storage::tenant_prefix(f.tenant))
        .await
        .unwrap();
    assert_eq!(sorted(of_tenant), sorted(keys.clone()));

    f.storage.remove(&keys[0]).await.unwrap();
    // Gone already: not an error.
    f.storage.remove(&keys[0]).await.unwrap();
    assert_eq!(f.storage.fingerprint(&keys[0]).await.unwrap(), None);
    assert_eq!(
        f.storage
            .list(&Storage::document_prefix(f.tenant, a))
            .await
            .unwrap(),
        vec![keys[1].clone()]
    );
    let in_bucket = sorted(f.s3.list(PREFIX).await);
    assert_eq!(
        in_bucket,
        sorted(keys[1..].iter().map(|k| Fixture::in_bucket(k)).collect())
    );
    assert!(matches!(
        f.storage.get_verified(&keys[0], &[0; 32]).await,
        Err(StorageError::Backend(object_store::Error::NotFound { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_changed_in_the_bucket_is_refused_on_read() {
    let f = Fixture::new().await;
    let document = Uuid::new_v4();
    let first = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(plaintext(200 * 1024, 6)))
        .await
        .unwrap();
    let second = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(plaintext(200 * 1024, 7)))
        .await
        .unwrap();
    let first_in_bucket = Fixture::in_bucket(&first.key);

    // One byte flipped in the middle of the ciphertext: the GCM tag catches it, whole or
    // streamed.
    let mut raw = f.s3.get(&first_in_bucket).await;
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    f.s3.put(&first_in_bucket, raw.clone()).await;
    assert!(
        f.s3.get(&first_in_bucket).await == raw,
        "the bucket holds the changed object"
    );
    let err = refused(f.storage.get_verified(&first.key, &first.sha256).await);
    assert!(
        matches!(err, StorageError::Sealed { .. }) && err.is_permanent(),
        "{err:?}"
    );
    let (_, stream) = f.storage.stream(&first.key).await.unwrap();
    let streamed: Result<Vec<Bytes>, _> = stream.try_collect().await;
    assert!(streamed.is_err(), "a tampered object streamed out");

    // Another sound object of the same tenant put in its place: opens, but is not the
    // revision recorded.
    let other = f.s3.get(&Fixture::in_bucket(&second.key)).await;
    f.s3.put(&first_in_bucket, other).await;
    let err = refused(f.storage.get_verified(&first.key, &first.sha256).await);
    assert!(
        matches!(err, StorageError::Corrupt { .. }) && err.is_permanent(),
        "{err:?}"
    );
    // The untouched one still reads.
    assert!(f
        .storage
        .get_verified(&second.key, &second.sha256)
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_key_never_shows_in_the_stores_debug_output() {
    let f = Fixture::new().await;
    let shown = format!("{:?}", f.storage);
    assert!(shown.contains(f.s3.bucket()), "{shown}");
    assert!(!shown.contains(f.s3.secret_access_key()), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_on_a_missing_bucket_fails_with_a_backend_error() {
    let f = Fixture::new().await;
    let mut wrong = config(&f.s3);
    wrong.bucket = "no-such-bucket".into();
    let keys = Keyring::new(
        shomei_schema::connect(&format!("{POSTGRES}/{}", f._db.name), 1),
        hsm(),
    );
    let storage = Storage::s3(&wrong, keys).unwrap();
    let err = storage
        .put_pdf(f.tenant, Uuid::new_v4(), Bytes::from_static(b"%PDF-1.7\n"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Backend(_)) && !err.is_permanent(),
        "{err:?}"
    );
}

/// A revision that appends `len` bytes to `base` (as an incremental update does).
fn extended(base: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = base.to_vec();
    bytes.extend_from_slice(&plaintext(len, seed)[9..]);
    bytes
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revision_that_extends_another_is_stored_as_what_it_appends_and_reads_back_whole() {
    let f = Fixture::new().await;
    let document = Uuid::new_v4();
    let original = plaintext(200 * 1024, 8);
    let base = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(original.clone()))
        .await
        .unwrap();
    let signed = extended(&original, 20 * 1024, 9);
    let first = f.revision(document, &base, &signed).await;
    assert_eq!(first.size, signed.len() as u64);
    assert_eq!(first.sha256, sha256(&signed));
    assert!(first.key.ends_with(".a1.sealed"), "{}", first.key);

    // The bucket holds the appended bytes with a short header, sealed: not the whole again.
    let raw = f.s3.get(&Fixture::in_bucket(&first.key)).await;
    assert!(
        raw.len() > 20 * 1024 && raw.len() < 21 * 1024,
        "{} bytes stored for 20 KiB appended",
        raw.len()
    );
    assert!(
        !contains(&raw, &signed[signed.len() - 32..]),
        "plaintext in the stored object"
    );
    assert!(first
        .key
        .ends_with(&format!("/{}.a1.sealed", hex::encode(Sha256::digest(&raw)))));

    // A revision on top of that one, and both read back whole, the hash state with them.
    let countersigned = extended(&signed, 30 * 1024, 10);
    let second = f.revision(document, &first, &countersigned).await;
    assert!(second.key.ends_with(".a2.sealed"), "{}", second.key);
    for (stored, plain) in [(&first, &signed), (&second, &countersigned)] {
        let (read, state) = f
            .storage
            .get_verified_hashing(&stored.key, &stored.sha256)
            .await
            .unwrap();
        assert!(read == *plain, "{} reads back whole", stored.key);
        assert_eq!(<[u8; 32]>::from(state.finalize()), stored.sha256);
        // A wrong digest is still refused.
        let err = refused(f.storage.get_verified(&stored.key, &[0; 32]).await);
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    }
    // Streaming is for objects stored whole.
    assert!(matches!(
        f.storage.stream(&second.key).await.map(|_| ()),
        Err(StorageError::Backend(
            object_store::Error::NotSupported { .. }
        ))
    ));
    // The deletion evidence describes what the bucket holds for the object itself.
    let fingerprint = f.storage.fingerprint(&first.key).await.unwrap().unwrap();
    assert_eq!(fingerprint.size, raw.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_appended_revisions_is_cut_by_a_whole_one() {
    let f = Fixture::new().await;
    let document = Uuid::new_v4();
    let mut plain = plaintext(4 * 1024, 11);
    let mut stored = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(plain.clone()))
        .await
        .unwrap();
    let mut depths = Vec::new();
    for seed in 0..17 {
        plain = extended(&plain, 100, 100 + seed);
        stored = f.revision(document, &stored, &plain).await;
        let name = stored.key.rsplit_once('/').unwrap().1.to_owned();
        depths.push(name.split('.').nth(1).unwrap().to_owned());
        let read = f
            .storage
            .get_verified(&stored.key, &stored.sha256)
            .await
            .unwrap();
        assert!(read == plain, "revision {seed} reads back");
    }
    let expected: Vec<String> = (1..=15)
        .map(|d| format!("a{d}"))
        .chain(["sealed".to_owned(), "a1".to_owned()])
        .collect();
    assert_eq!(depths, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_appended_revision_whose_base_changed_or_went_is_refused() {
    let f = Fixture::new().await;
    let document = Uuid::new_v4();
    let original = plaintext(100 * 1024, 12);
    let base = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(original.clone()))
        .await
        .unwrap();
    let signed = extended(&original, 10 * 1024, 13);
    let top = f.revision(document, &base, &signed).await;
    let countersigned = extended(&signed, 10 * 1024, 15);
    let above = f.revision(document, &top, &countersigned).await;
    // Another sound object of the same length and tenant in the base's place: it opens, but
    // it is not the base the appended objects recorded. The error names the object whose
    // recorded base does not match, not the one read.
    let other = f
        .storage
        .put_pdf(f.tenant, document, Bytes::from(plaintext(100 * 1024, 14)))
        .await
        .unwrap();
    let base_in_bucket = Fixture::in_bucket(&base.key);
    let saved = f.s3.get(&base_in_bucket).await;
    f.s3.put(
        &base_in_bucket,
        f.s3.get(&Fixture::in_bucket(&other.key)).await,
    )
    .await;
    for read in [&top, &above] {
        let err = refused(f.storage.get_verified(&read.key, &read.sha256).await);
        match &err {
            StorageError::Corrupt { key } => assert_eq!(key, &top.key),
            other => panic!("{other:?}"),
        }
        assert!(err.is_permanent());
    }

    // A byte of the appended object flipped: its GCM tag catches it.
    f.s3.put(&base_in_bucket, saved).await;
    let top_in_bucket = Fixture::in_bucket(&top.key);
    let mut raw = f.s3.get(&top_in_bucket).await;
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    f.s3.put(&top_in_bucket, raw.clone()).await;
    let err = refused(f.storage.get_verified(&top.key, &top.sha256).await);
    assert!(matches!(err, StorageError::Sealed { .. }), "{err:?}");
    raw[middle] ^= 0x01;
    f.s3.put(&top_in_bucket, raw).await;
    assert!(f.storage.get_verified(&top.key, &top.sha256).await.is_ok());

    // A revision that names a base in another document's folder (a caller's mistake) is
    // stored, but never read as that document's.
    let elsewhere = f.revision(Uuid::new_v4(), &base, &signed).await;
    let err = refused(
        f.storage
            .get_verified(&elsewhere.key, &elsewhere.sha256)
            .await,
    );
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");

    // The base removed: the appended revision cannot be read.
    f.storage.remove(&base.key).await.unwrap();
    let err = refused(f.storage.get_verified(&top.key, &top.sha256).await);
    assert!(
        matches!(
            err,
            StorageError::Backend(object_store::Error::NotFound { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_store_writes_and_reads_its_files_directly_and_refuses_a_changed_or_missing_one() {
    let f = Fixture::new().await;
    let dir = workspace_root()
        .join("target/tmp/storage-tests")
        .join(Uuid::new_v4().simple().to_string());
    let local = Storage::local(&dir, f.keys.clone()).unwrap();
    let document = Uuid::new_v4();
    let original = plaintext(100 * 1024, 16);
    let base = local
        .put_pdf(f.tenant, document, Bytes::from(original.clone()))
        .await
        .unwrap();
    let signed = extended(&original, 10 * 1024, 17);
    let top = put_revision(&local, f.tenant, document, &base, &signed).await;
    let (read, state) = local
        .get_verified_hashing(&top.key, &top.sha256)
        .await
        .unwrap();
    assert!(read == signed, "the appended revision reads back whole");
    assert_eq!(<[u8; 32]>::from(state.finalize()), top.sha256);
    let err = refused(local.get_verified(&top.key, &[0; 32]).await);
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");

    // Written (folders created on the way) where `LocalFileSystem` looks: its listing finds
    // both objects, and no staging file is left beside them.
    let prefix = Storage::document_prefix(f.tenant, document);
    let mut listed = local.list(&prefix).await.unwrap();
    listed.sort();
    let mut written = vec![base.key.clone(), top.key.clone()];
    written.sort();
    assert_eq!(listed, written);
    let in_folder = std::fs::read_dir(dir.join(&prefix)).unwrap().count();
    assert_eq!(
        in_folder, 2,
        "only the two objects are in the document's folder"
    );

    // A byte of the base's file flipped: its GCM tag catches it, through the revision above.
    let file = dir.join(&base.key);
    let mut raw = std::fs::read(&file).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    std::fs::write(&file, &raw).unwrap();
    let err = refused(local.get_verified(&top.key, &top.sha256).await);
    assert!(matches!(err, StorageError::Sealed { .. }), "{err:?}");

    // The base's file gone: the backend's NotFound, as `object_store` names it.
    std::fs::remove_file(&file).unwrap();
    let err = refused(local.get_verified(&top.key, &top.sha256).await);
    assert!(
        matches!(
            err,
            StorageError::Backend(object_store::Error::NotFound { .. })
        ) && !err.is_permanent(),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
