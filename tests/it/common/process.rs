//! `lathe` as a child process, for the tests of real processes (replicas,
//! workers, a Ray control plane, faults): started with the test's admin
//! key, on a free port, logging JSON lines that are kept (and read to
//! their end, so the child never blocks on a full pipe); its address is
//! taken from its log. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::{ADMIN_KEY, Channel, connect};

pub struct LatheProcess {
    name: String,
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl LatheProcess {
    /// Starts `lathe ARGS` with `env` (over the defaults: the admin key,
    /// port 0, JSON logs at info) and waits for it to log its address.
    pub async fn start(name: &str, args: &[String], env: &[(&str, String)]) -> LatheProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(args)
            .env("LATHE_ADMIN_KEY", ADMIN_KEY)
            .env("LATHE_LISTEN", "127.0.0.1:0")
            .env("LATHE_LOG_JSON", "true")
            .env("LATHE_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lathe");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v.get("addr").and_then(|a| a.as_str())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(120), rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                let status = child.wait().unwrap();
                panic!("{name} exited ({status}):\n{}", log.lock().unwrap().join("\n"));
            }
            Err(_) => panic!("{name} never logged its address"),
        };
        LatheProcess {
            name: name.to_string(),
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    /// A client connection with the admin key.
    pub async fn channel(&self) -> Channel {
        connect(&self.url, ADMIN_KEY).await
    }

    /// Its log so far, a JSON object per line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The worker id it claims work under (from its log).
    pub fn worker_id(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("worker").and_then(|w| w.as_str()).map(str::to_string))
            .unwrap_or_else(|| panic!("{} logged no worker id", self.name))
    }

    /// What gRPC health says of `service` ("" for the server itself,
    /// "lathe.database", "lathe.object_store", "lathe.ray").
    pub async fn health(&self, service: &str) -> ServingStatus {
        let channel = tonic::transport::Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service}: {e}"));
        ServingStatus::try_from(answer.into_inner().status).unwrap()
    }

    /// Waits (up to `within`) for `service`'s health to be `status`.
    pub async fn health_becomes(&self, service: &str, status: ServingStatus, within: Duration) {
        let began = Instant::now();
        while self.health(service).await != status {
            assert!(
                began.elapsed() < within,
                "{}: {service} was not {status:?} within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills it (-9) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with `signal` and waits.
    pub fn stop(mut self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().unwrap();
    }
}

impl Drop for LatheProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
