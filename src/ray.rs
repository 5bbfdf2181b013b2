//! A client of the Ray Jobs REST API (the dashboard's `/api/jobs/`): the
//! seam through which Lathe hands work to a Ray cluster, on Kubernetes
//! (KubeRay) or anywhere else.
//!
//! Architecture invariant: this module knows Ray's wire, nothing of Lathe's
//! jobs: it submits an entrypoint with a submission id, reads a Ray job's
//! status and logs, stops it, and lists what was submitted. What a
//! submission means, and when to make one, is `jobs::ray`'s. A submission
//! id is unique in a cluster, so submitting one again is answered
//! [`Submitted::Exists`] rather than starting a second Ray job: that is
//! what makes submission idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What went wrong talking to Ray.
#[derive(Debug, thiserror::Error)]
pub enum RayError {
    /// No answer: the head is down, restarting or unreachable.
    #[error("the Ray Jobs API at {address} cannot be reached: {cause}")]
    Unreachable { address: String, cause: String },
    /// Ray answered with an error.
    #[error("the Ray Jobs API answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// Ray answered something this client does not understand.
    #[error("the Ray Jobs API answered something unexpected: {0}")]
    Unexpected(String),
}

impl RayError {
    /// Whether the head could not be reached at all (rather than refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RayError::Unreachable { .. })
    }
}

/// A Ray job's status, as Ray names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RayStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
}

impl RayStatus {
    /// Whether the Ray job has ended (it never changes again).
    pub fn is_terminal(self) -> bool {
        matches!(self, RayStatus::Stopped | RayStatus::Succeeded | RayStatus::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RayStatus::Pending => "PENDING",
            RayStatus::Running => "RUNNING",
            RayStatus::Stopped => "STOPPED",
            RayStatus::Succeeded => "SUCCEEDED",
            RayStatus::Failed => "FAILED",
        }
    }
}

/// A submitted Ray job, as `GET /api/jobs/{id}` describes it (the fields
/// Lathe reads).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RayJob {
    pub submission_id: String,
    pub status: RayStatus,
    /// Ray's words on the status ("Job entrypoint command failed with exit
    /// code 7, last available logs ...").
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub entrypoint: String,
    /// What the submitter attached; Ray keeps strings only.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub driver_exit_code: Option<i32>,
}

impl RayJob {
    /// A metadata value the submitter attached.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key).map(String::as_str)
    }
}

/// A Ray job to submit (`POST /api/jobs/`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Submission {
    /// The shell command the Ray job runs.
    pub entrypoint: String,
    /// Unique in the cluster: submitting it again starts nothing.
    pub submission_id: String,
    pub metadata: BTreeMap<String, String>,
    /// Environment variables of the entrypoint (`runtime_env.env_vars`).
    #[serde(skip)]
    pub env_vars: BTreeMap<String, String>,
    /// CPUs and GPUs Ray reserves for the entrypoint.
    #[serde(rename = "entrypoint_num_cpus")]
    pub num_cpus: f64,
    #[serde(rename = "entrypoint_num_gpus")]
    pub num_gpus: f64,
}

/// How a submission went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// A new Ray job was started.
    New,
    /// A Ray job with this submission id already exists (submitted earlier,
    /// perhaps by another replica or before a restart); nothing was started.
    Exists,
}

/// How much of a Ray job's log [`RayClient::log_tail`] keeps.
const LOG_TAIL_LINES: usize = 20;
const LOG_TAIL_BYTES: usize = 4096;

/// A client of one Ray cluster's Jobs API.
#[derive(Clone, Debug)]
pub struct RayClient {
    /// `http://host:port`, without a trailing slash.
    address: String,
    http: reqwest::Client,
}

impl RayClient {
    /// A client of the Jobs API at `address` (the dashboard's URL, e.g.
    /// `http://127.0.0.1:8265`). Checks the address's shape only; see
    /// [`RayClient::version`] to reach it.
    pub fn new(address: &str) -> Result<Self, String> {
        let trimmed = address.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(trimmed).map_err(|e| format!("{address:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{address:?} is not an http:// or https:// URL of the Ray dashboard"
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            address: trimmed.to_string(),
            http,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Ray's version (`GET /api/version`): whether the Jobs API answers.
    pub async fn version(&self) -> Result<String, RayError> {
        let body: serde_json::Value = self.get_json("/api/version").await?.ok_or_else(|| RayError::Refused {
            status: 404,
            message: "no /api/version: not a Ray dashboard".into(),
        })?;
        Ok(body
            .get("ray_version")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string())
    }

    /// Submits a Ray job; a submission id that exists already starts
    /// nothing and is answered [`Submitted::Exists`].
    pub async fn submit(&self, submission: &Submission) -> Result<Submitted, RayError> {
        let mut body = serde_json::to_value(submission).map_err(|e| RayError::Unexpected(e.to_string()))?;
        if !submission.env_vars.is_empty() {
            body["runtime_env"] = serde_json::json!({ "env_vars": submission.env_vars });
        }
        let response = self
            .http
            .post(self.url("/api/jobs/"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(Submitted::New);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        // Ray answers a duplicate submission id with an error whose words
        // have changed between versions; the job's existence is the answer.
        if self.job(&submission.submission_id).await?.is_some() {
            return Ok(Submitted::Exists);
        }
        Err(RayError::Refused {
            status,
            message: last_line(&text),
        })
    }

    /// A Ray job by its submission id; None when Ray knows no such job.
    pub async fn job(&self, submission_id: &str) -> Result<Option<RayJob>, RayError> {
        self.get_json(&format!("/api/jobs/{submission_id}")).await
    }

    /// Every Ray job the cluster remembers, submitted by anyone.
    pub async fn list(&self) -> Result<Vec<RayJob>, RayError> {
        Ok(self.get_json("/api/jobs/").await?.unwrap_or_default())
    }

    /// The last lines the Ray job's entrypoint wrote (at most 20 lines and
    /// 4 KiB), without Ray's preamble (which repeats the command line).
    pub async fn log_tail(&self, submission_id: &str) -> Result<String, RayError> {
        #[derive(Deserialize)]
        struct Logs {
            logs: String,
        }
        let logs: Option<Logs> = self.get_json(&format!("/api/jobs/{submission_id}/logs")).await?;
        Ok(logs
            .map(|l| tail(&entrypoint_output(&l.logs), LOG_TAIL_LINES, LOG_TAIL_BYTES))
            .unwrap_or_default())
    }

    /// Asks Ray to stop a Ray job (SIGTERM to its entrypoint, then SIGKILL
    /// after Ray's grace period); false when Ray knows no such job.
    pub async fn stop(&self, submission_id: &str) -> Result<bool, RayError> {
        let response = self
            .http
            .post(self.url(&format!("/api/jobs/{submission_id}/stop")))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => Err(RayError::Refused {
                status: s.as_u16(),
                message: last_line(&response.text().await.unwrap_or_default()),
            }),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    fn unreachable(&self, e: reqwest::Error) -> RayError {
        // reqwest's Display stops at the outermost cause ("error sending
        // request"); the innermost says why (connection refused, timeout).
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        RayError::Unreachable {
            address: self.address.clone(),
            cause,
        }
    }

    /// GETs JSON; None on 404.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, RayError> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(RayError::Refused {
                status: status.as_u16(),
                message: last_line(&String::from_utf8_lossy(&bytes)),
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RayError::Unexpected(format!("GET {path}: {e}")))
    }
}

/// The last non-empty line of an error body: Ray answers a refused request
/// with a Python traceback whose last line says what was wrong.
fn last_line(text: &str) -> String {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    truncate(line, 500).to_string()
}

/// A Ray job's log without Ray's own lines (its job manager's, and the one
/// that repeats the command line): what the entrypoint wrote. (A fast
/// entrypoint's first lines may come before Ray's, so each line is judged.)
fn entrypoint_output(log: &str) -> String {
    log.lines()
        .filter(|l| !l.starts_with("Running entrypoint for job ") && !l.contains(" job_manager.py:"))
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        })
}

/// The last `lines` lines of `text`, at most `bytes` of them (cut at a
/// character boundary).
fn tail(text: &str, lines: usize, bytes: usize) -> String {
    let text = text.trim_end();
    let start = text
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let mut kept = &text[start..];
    if kept.len() > bytes {
        let mut cut = kept.len() - bytes;
        while !kept.is_char_boundary(cut) {
            cut += 1;
        }
        kept = &kept[cut..];
    }
    kept.to_string()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    //! The client against a real Ray is tested in `tests/it/ray.rs` (it
    //! needs a cluster); here, what needs none.

    use super::*;

    #[test]
    fn an_address_must_be_an_http_url() {
        assert_eq!(
            RayClient::new("http://127.0.0.1:8265/").unwrap().address(),
            "http://127.0.0.1:8265"
        );
        assert!(RayClient::new("https://ray.example:443").is_ok());
        for bad in ["127.0.0.1:8265", "ray://head:10001", "", "http://"] {
            assert!(RayClient::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_submission_is_rays_wire_shape() {
        let mut s = Submission {
            entrypoint: "lathe worker --job job_1".into(),
            submission_id: "lathe-job_1-0-1".into(),
            num_cpus: 1.0,
            num_gpus: 0.5,
            ..Default::default()
        };
        s.metadata.insert("lathe_job_id".into(), "job_1".into());
        let body = serde_json::to_value(&s).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "entrypoint": "lathe worker --job job_1",
                "submission_id": "lathe-job_1-0-1",
                "metadata": {"lathe_job_id": "job_1"},
                "entrypoint_num_cpus": 1.0,
                "entrypoint_num_gpus": 0.5,
            })
        );
    }

    #[test]
    fn a_ray_job_reads_from_rays_answer() {
        let job: RayJob = serde_json::from_str(
            r#"{"type": "SUBMISSION", "job_id": null, "submission_id": "s1", "status": "FAILED",
                "entrypoint": "exit 7", "message": "Job entrypoint command failed with exit code 7",
                "error_type": "JOB_ENTRYPOINT_COMMAND_ERROR", "metadata": {"lathe_job_id": "job_1"},
                "runtime_env": null, "driver_exit_code": 7}"#,
        )
        .unwrap();
        assert_eq!(job.status, RayStatus::Failed);
        assert!(job.status.is_terminal() && !RayStatus::Pending.is_terminal());
        assert_eq!(job.meta("lathe_job_id"), Some("job_1"));
        assert_eq!(job.driver_exit_code, Some(7));
        let bare: RayJob =
            serde_json::from_str(r#"{"submission_id": "s2", "status": "PENDING", "metadata": null}"#).unwrap();
        assert_eq!(bare.meta("lathe_job_id"), None);
    }

    #[test]
    fn tails_and_last_lines() {
        let log = (1..=30).map(|n| format!("line {n}")).collect::<Vec<_>>().join("\n") + "\n\n";
        let t = tail(&log, 20, 4096);
        assert!(t.starts_with("line 11\n") && t.ends_with("line 30"), "{t}");
        assert_eq!(tail("short", 20, 4096), "short");
        let ray_log = "2026-12-07 10:49:59,917\tINFO job_manager.py:581 -- Runtime env is setting up.\n\
                       early\nRunning entrypoint for job s1: /opt/lathe worker --job j\nfirst\nsecond";
        assert_eq!(entrypoint_output(ray_log), "early\nfirst\nsecond\n");
        assert_eq!(tail("é".repeat(10).as_str(), 20, 5), "éé");
        assert_eq!(
            last_line("Traceback\n  File x\nValueError: Job with submission_id s1 already exists.\n\n"),
            "ValueError: Job with submission_id s1 already exists."
        );
    }
}
