//! A real S3 API for tests: moto's `moto_server` (PyPI `moto[server]`),
//! one process per test on a free loopback port. `LATHE_TEST_MOTO_SERVER`
//! names the executable; `.ci/run` installs it and sets it, so CI always
//! runs these tests. Elsewhere, without it, they print a notice and pass.

use std::process::Stdio;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ACCESS_KEY: &str = "lathe-test-key";
pub const SECRET_KEY: &str = "lathe-test-secret";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// A fresh moto, or None (after a notice) when the test environment has
    /// none; CI must have one.
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// With extra environment for moto itself (`INITIAL_NO_AUTH_ACTION_COUNT=0`
    /// makes it check credentials, and know none).
    pub async fn start_with(env: &[(&str, &str)]) -> Option<Self> {
        let Ok(exe) = std::env::var("LATHE_TEST_MOTO_SERVER") else {
            assert!(
                std::env::var("CI").is_err(),
                "LATHE_TEST_MOTO_SERVER must be set in CI so the S3 tests run"
            );
            eprintln!("skipping: LATHE_TEST_MOTO_SERVER is not set (pip install 'moto[server]')");
            return None;
        };
        // moto cannot take port 0: take a free port, let it go, and try
        // again should another process grab it first.
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match Self::spawn(&exe, port, env).await {
                Ok(moto) => return Some(moto),
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    async fn spawn(exe: &str, port: u16, env: &[(&str, &str)]) -> Result<Self, String> {
        let mut child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{exe}: {e}"))?;
        // It says "Running on http://..." once it listens; what it logs
        // after that (a line per request) is drained so it never blocks.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Running on") {
                    return Ok(());
                }
                seen.push(line);
            }
            Err(seen.join("\n"))
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(output)) => return Err(format!("moto_server exited: {output}")),
            Err(_) => return Err("moto_server did not listen within 60 s".into()),
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The `AWS_*` settings that reach this server, for a child process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The same settings for an in-process client.
    pub fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_allow_http(true)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let status = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("create bucket")
            .status();
        assert!(status.is_success(), "creating bucket {bucket}: {status}");
    }

    /// Every object's key in `bucket`.
    pub async fn objects(&self, bucket: &str) -> Vec<String> {
        let s3 = self.builder().with_bucket_name(bucket).build().unwrap();
        let metas: Vec<_> = s3.list(None).try_collect().await.expect("list the bucket");
        metas.into_iter().map(|m| m.location.to_string()).collect()
    }

    /// The bytes stored at `key`.
    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let s3 = self.builder().with_bucket_name(bucket).build().unwrap();
        let object = s3.get(&key.into()).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        object.bytes().await.expect("read the object").to_vec()
    }

    /// The multipart uploads begun in `bucket` and neither completed nor
    /// aborted, as (upload id, key): S3's ListMultipartUploads, which
    /// `object_store` has no call for (moto answers it unsigned).
    pub async fn open_uploads(&self, bucket: &str) -> Vec<(String, String)> {
        let xml = reqwest::get(format!("{}/{bucket}?uploads", self.endpoint))
            .await
            .expect("list multipart uploads")
            .text()
            .await
            .expect("read the listing");
        let tag = |xml: &str, name: &str| -> String {
            let open = format!("<{name}>");
            let start = xml
                .find(&open)
                .map(|i| i + open.len())
                .unwrap_or_else(|| panic!("no {open}"));
            let len = xml[start..].find('<').unwrap();
            xml[start..start + len].to_string()
        };
        xml.split("<Upload>")
            .skip(1)
            .map(|upload| (tag(upload, "UploadId"), tag(upload, "Key")))
            .collect()
    }

    /// Writes `bytes` at `key`, as another process sharing the bucket would.
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        let s3 = self.builder().with_bucket_name(bucket).build().unwrap();
        s3.put(&key.into(), bytes.into()).await.expect("put");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
