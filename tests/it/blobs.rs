//! The blob suite, run against every backend (as `store_suite!` runs the
//! storage suite): the data directory's own blobs, a directory named by
//! `--blob-url file://` (which other processes may share, so sweeps wait
//! for leftovers to settle) and an S3 bucket under a prefix on a real S3
//! server (moto). Then what a wrong S3 setting says at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use lathe::blobs::{BlobUrl, Blobs};
use sha2::{Digest, Sha256};

use crate::common::moto::Moto;

const BUCKET: &str = "lathe-blobs";

/// A backend under test and a raw view of everything it holds.
struct Backend {
    blobs: Blobs,
    /// Whether other processes may share it (sweeps then take only
    /// leftovers a day old).
    shared: bool,
    raw: Raw,
}

enum Raw {
    Dir(#[allow(dead_code)] tempfile::TempDir, PathBuf),
    S3(Moto),
}

impl Backend {
    fn own_dir() -> Option<Backend> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        Some(Backend {
            blobs: Blobs::local(&root).unwrap(),
            shared: false,
            raw: Raw::Dir(dir, root),
        })
    }

    async fn file_url() -> Option<Backend> {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shared-blobs");
        let url: BlobUrl = format!("file://{}", root.display()).parse().unwrap();
        Some(Backend {
            blobs: Blobs::open(Some(&url), Path::new("/nonexistent")).await.unwrap(),
            shared: true,
            raw: Raw::Dir(dir, root),
        })
    }

    async fn s3() -> Option<Backend> {
        let moto = Moto::start().await?;
        moto.create_bucket(BUCKET).await;
        let blobs = Blobs::s3(moto.builder(), BUCKET, "lathe/test").await.unwrap();
        assert_eq!(blobs.name(), "s3://lathe-blobs/lathe/test");
        Some(Backend {
            blobs,
            shared: true,
            raw: Raw::S3(moto),
        })
    }

    /// Every file or object the backend holds, whatever its name.
    async fn leftovers(&self) -> Vec<String> {
        match &self.raw {
            Raw::Dir(_, root) => walk(root),
            Raw::S3(moto) => moto.objects(BUCKET).await,
        }
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path().display().to_string());
        }
    }
    files
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes that do not repeat at any part size.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn store(blobs: &Blobs, bytes: &[u8]) -> String {
    let mut w = blobs.writer().await.unwrap();
    w.write(bytes).await.unwrap();
    w.finish().await.unwrap().commit().await.unwrap()
}

macro_rules! blob_suite {
    ($backend:ident, $make:expr) => {
        blob_suite!(@tests $backend, $make;
            staged_blob_is_invisible_until_commit,
            large_blobs_stream_in_parts,
            same_content_is_one_blob,
            aborted_and_discarded_writes_leave_nothing,
            sweeps_take_only_settled_leftovers,
            missing_blobs_are_not_found
        );
    };
    (@tests $backend:ident, $make:expr; $($name:ident),*) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(backend) = $make {
                        super::$name(backend).await;
                    }
                }
            )*
        }
    };
}

blob_suite!(own_dir, super::Backend::own_dir());
blob_suite!(file_url, super::Backend::file_url().await);
blob_suite!(s3, super::Backend::s3().await);

async fn staged_blob_is_invisible_until_commit(b: Backend) {
    let blobs = &b.blobs;
    let mut w = blobs.writer().await.unwrap();
    w.write(b"hello ").await.unwrap();
    w.put(bytes::Bytes::from_static(b"world")).await.unwrap();
    assert_eq!(w.size(), 11);
    let staged = w.finish().await.unwrap();
    let sha = staged.sha256.clone();
    assert_eq!(sha, self::sha(b"hello world"));
    assert!(blobs.list().await.unwrap().is_empty());
    staged.commit().await.unwrap();
    assert_eq!(blobs.list().await.unwrap(), vec![sha.clone()]);
    assert_eq!(blobs.size(&sha).await.unwrap(), 11);
    assert_eq!(&blobs.read_range(&sha, 6..11).await.unwrap()[..], b"world");
    let streamed: Vec<bytes::Bytes> = blobs.stream(&sha).await.unwrap().try_collect().await.unwrap();
    assert_eq!(streamed.concat(), b"hello world");
    blobs.delete(&sha).await.unwrap();
    blobs.delete(&sha).await.unwrap();
    assert!(blobs.list().await.unwrap().is_empty());
    assert_eq!(b.leftovers().await, Vec::<String>::new());
}

/// More than a few parts of every backend (2 MiB on disk, 8 MiB on S3),
/// written in uneven pieces through both `write` and `put`.
async fn large_blobs_stream_in_parts(b: Backend) {
    let bytes = data(27 * (1 << 20) + 123);
    let mut w = b.blobs.writer().await.unwrap();
    for (i, piece) in bytes.chunks(1_000_003).enumerate() {
        if i % 2 == 0 {
            w.write(piece).await.unwrap();
        } else {
            w.put(bytes::Bytes::copy_from_slice(piece)).await.unwrap();
        }
    }
    let staged = w.finish().await.unwrap();
    assert_eq!(staged.size, bytes.len() as u64);
    let sha = staged.commit().await.unwrap();
    assert_eq!(sha, self::sha(&bytes));
    assert_eq!(b.blobs.size(&sha).await.unwrap(), bytes.len() as u64);
    let at = (8 << 20) - 5;
    assert_eq!(
        &b.blobs.read_range(&sha, at..at + 10).await.unwrap()[..],
        &bytes[at as usize..at as usize + 10]
    );
    let mut streamed = Sha256::new();
    let mut chunks = b.blobs.stream(&sha).await.unwrap();
    while let Some(chunk) = chunks.try_next().await.unwrap() {
        streamed.update(&chunk);
    }
    assert_eq!(hex::encode(streamed.finalize()), sha);
    b.blobs.delete(&sha).await.unwrap();
    assert_eq!(b.leftovers().await, Vec::<String>::new());
}

async fn same_content_is_one_blob(b: Backend) {
    let first = store(&b.blobs, b"same bytes").await;
    let second = store(&b.blobs, b"same bytes").await;
    assert_eq!(first, second);
    assert_eq!(b.blobs.list().await.unwrap(), vec![first.clone()]);
    b.blobs.delete(&first).await.unwrap();
    assert_eq!(b.leftovers().await, Vec::<String>::new());
}

async fn aborted_and_discarded_writes_leave_nothing(b: Backend) {
    let mut w = b.blobs.writer().await.unwrap();
    w.write(&data(9 << 20)).await.unwrap();
    w.abort().await;
    let mut w = b.blobs.writer().await.unwrap();
    w.write(b"refused").await.unwrap();
    w.finish().await.unwrap().discard().await;
    assert!(b.blobs.list().await.unwrap().is_empty());
    assert_eq!(b.leftovers().await, Vec::<String>::new());
}

/// What a killed process leaves (a staged object never committed, a blob
/// no record points at) goes at once from a store of one's own, and from a
/// shared store only once it is a day old: younger, it may be another
/// replica's upload in flight.
async fn sweeps_take_only_settled_leftovers(b: Backend) {
    let mut w = b.blobs.writer().await.unwrap();
    w.write(&data(3 << 20)).await.unwrap();
    std::mem::forget(w.finish().await.unwrap()); // killed between finish and commit
    let mut w = b.blobs.writer().await.unwrap();
    w.write(&data((2 << 20) + 10)).await.unwrap();
    std::mem::forget(w); // killed mid-write: no Drop, no abort
    let orphan = store(&b.blobs, b"no record points at me").await;
    if b.shared {
        assert_eq!(b.blobs.sweep_staging().await.unwrap(), 0);
        assert!(b.blobs.list_settled().await.unwrap().is_empty());
        assert!(!b.leftovers().await.is_empty());
        // A day later, as far as the sweep can tell.
        let later = b.blobs.clone().settling_for(Duration::ZERO);
        assert!(later.sweep_staging().await.unwrap() >= 1);
        assert_eq!(later.list_settled().await.unwrap(), vec![orphan.clone()]);
    } else {
        assert!(b.blobs.sweep_staging().await.unwrap() >= 1);
        assert_eq!(b.blobs.list_settled().await.unwrap(), vec![orphan.clone()]);
    }
    b.blobs.delete(&orphan).await.unwrap();
    assert_eq!(b.leftovers().await, Vec::<String>::new());
}

async fn missing_blobs_are_not_found(b: Backend) {
    let missing = sha(b"never stored");
    assert!(matches!(
        b.blobs.size(&missing).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(matches!(
        b.blobs.read_range(&missing, 0..1).await,
        Err(object_store::Error::NotFound { .. })
    ));
    b.blobs.delete(&missing).await.unwrap();
}

/// A wrong bucket, wrong credentials or an endpoint that does not answer
/// stop `Blobs::open` (and so start-up) with a message naming the setting.
#[tokio::test]
async fn wrong_s3_settings_are_named() {
    let Some(moto) = Moto::start().await else { return };
    let err = Blobs::s3(moto.builder(), "no-such-bucket", "p")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("--blob-url s3://no-such-bucket/p:"), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    let checking = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
        .await
        .unwrap();
    let err = Blobs::s3(checking.builder(), BUCKET, "")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("--blob-url s3://lathe-blobs:"), "{err}");
    assert!(err.contains("refused the credentials (AWS_ACCESS_KEY_ID"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = moto.builder().with_endpoint(format!("http://{closed}"));
    let started = std::time::Instant::now();
    let err = Blobs::s3(nowhere, BUCKET, "").await.err().unwrap().to_string();
    assert!(err.starts_with("--blob-url s3://lathe-blobs:"), "{err}");
    assert!(err.contains("AWS_ENDPOINT_URL"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// Where the blob store is shared with other processes, replicas sweep
/// settled leftovers while they run (the `App`'s housekeeping, hourly):
/// here, with leftovers settled at once, an unused blob goes and the blob
/// of a stored dataset stays.
#[tokio::test]
async fn a_sweep_of_a_shared_store_takes_settled_leftovers_only() {
    let dir = tempfile::tempdir().unwrap();
    let records = lathe::store::open(&format!("sqlite://{}", dir.path().join("lathe.db").display()))
        .await
        .unwrap();
    let shared = Blobs::local(dir.path().join("shared"))
        .unwrap()
        .settling_for(Duration::ZERO)
        .shared();
    assert!(shared.is_shared());
    let datasets = lathe::datasets::manager::Datasets::new(
        records.clone(),
        shared.clone(),
        std::sync::Arc::new(lathe::datasets::O200k),
        lathe::config::ServeConfig::embedded(dir.path()).dataset_limits(),
    );
    let orphan = store(&shared, b"no record uses this").await;
    let caller = lathe::auth::model::Caller::system("default");
    let meta = lathe::datasets::manager::UploadMeta {
        filename: "train.jsonl".into(),
        purpose: Some(lathe::datasets::report::PurposeChoice::Exactly(
            lathe::datasets::report::Purpose::Sft,
        )),
        display_name: String::new(),
        metadata: Default::default(),
        label_field: None,
        on_invalid: lathe::datasets::manager::OnInvalid::Refuse,
    };
    let line = bytes::Bytes::from_static(
        br#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}
"#,
    );
    let kept = datasets
        .upload(&caller, meta, futures::stream::iter([Ok(line)]))
        .await
        .unwrap();
    datasets.sweep_leftovers().await.unwrap();
    assert_eq!(shared.list().await.unwrap(), [kept.sha256]);
    assert_ne!(orphan, shared.list().await.unwrap()[0]);
}
