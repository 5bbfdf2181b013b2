//! The server's one typed configuration, parsed once from flags and env.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use lathe_engine::device::DeviceChoice;

use crate::datasets::manager::DatasetLimits;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "LATHE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory for the embedded database and blobs.
    #[arg(long, env = "LATHE_DATA_DIR", default_value = "./lathe-data")]
    pub data_dir: PathBuf,
    /// Database URL; defaults to sqlite://DATA_DIR/lathe.db.
    #[arg(long, env = "LATHE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Largest dataset upload in bytes (one stream: DatasetService's upload,
    /// REST's POST /v1/files).
    #[arg(long, env = "LATHE_MAX_UPLOAD_BYTES", default_value_t = 512 << 20)]
    pub max_upload_bytes: u64,
    /// Largest file sent in parts through REST's Uploads API (/v1/uploads).
    #[arg(long, env = "LATHE_MAX_ASSEMBLED_UPLOAD_BYTES", default_value_t = 8 << 30)]
    pub max_assembled_upload_bytes: u64,
    /// Largest part of a file sent through the Uploads API.
    #[arg(long, env = "LATHE_MAX_UPLOAD_PART_BYTES", default_value_t = 64 << 20)]
    pub max_upload_part_bytes: u64,
    /// Seconds an upload sent in parts may take before it expires (its
    /// parts are then removed).
    #[arg(long, env = "LATHE_UPLOAD_EXPIRY_SECS", default_value_t = 3600)]
    pub upload_expiry_secs: u64,
    /// Longest single JSONL line in bytes.
    #[arg(long, env = "LATHE_MAX_LINE_BYTES", default_value_t = 16 << 20)]
    pub max_line_bytes: usize,
    /// Per-example token limit; longer examples get a warning.
    #[arg(long, env = "LATHE_TOKEN_LIMIT", default_value_t = 65_536)]
    pub token_limit: u64,
    /// Uploads validated at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LATHE_MAX_CONCURRENT_UPLOADS", default_value_t = 8)]
    pub max_concurrent_uploads: usize,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    #[arg(long, env = "LATHE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Fine-tuning jobs this server runs at once.
    #[arg(long, env = "LATHE_MAX_CONCURRENT_JOBS", default_value_t = 1)]
    pub max_concurrent_jobs: usize,
    /// Seconds a worker's claim on a job lasts without a heartbeat; a job
    /// whose worker vanished is re-queued after this.
    #[arg(long, env = "LATHE_JOB_LEASE_SECS", default_value_t = 15)]
    pub job_lease_secs: u64,
    /// How often (s) this process checks that the database, the object
    /// store and the Ray cluster answer (gRPC health `lathe.database`,
    /// `lathe.object_store`, `lathe.ray`; `lathe_dependency_up`).
    #[arg(long, env = "LATHE_HEALTH_CHECK_SECS", default_value_t = 5)]
    pub health_check_secs: u64,
    /// How often (ms) the scheduler and watchers look for work and events
    /// they were not told about (other replicas).
    #[arg(long, env = "LATHE_JOB_POLL_MILLIS", default_value_t = 1000)]
    pub job_poll_millis: u64,
    /// JSON file listing OpenAI-compatible model providers (model graders,
    /// embeddings): [{"name", "base_url", "api_key_env", ...}].
    #[arg(long, env = "LATHE_PROVIDERS")]
    pub providers: Option<PathBuf>,
    /// The python grader environment (from `lathe graders setup-python`); default:
    /// DATA_DIR/python-env when it was set up there, else the system python3 with the
    /// standard library only.
    #[arg(long, env = "LATHE_GRADER_PYTHON_ENV")]
    pub grader_python_env: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "LATHE_LOG_JSON")]
    pub log_json: bool,
    /// Most prompts the local engine decodes together in one batch.
    #[arg(long, env = "LATHE_MAX_GENERATION_BATCH", default_value_t = 32)]
    pub max_generation_batch: usize,
    /// Most generations the local engine holds at once, waiting or being
    /// decoded; more are refused with RESOURCE_EXHAUSTED and a retry delay.
    #[arg(long, env = "LATHE_MAX_QUEUED_GENERATIONS", default_value_t = 256)]
    pub max_queued_generations: usize,
    /// The weights the local engine generates with on the CPU: a GGUF's
    /// own quantization (fast; activations rounded to 8 bits as llama.cpp
    /// does) or the f32 weights training uses (exact, slower).
    #[arg(long, env = "LATHE_GENERATION_WEIGHTS", value_enum, default_value_t = GenerationWeights::Quantized)]
    pub generation_weights: GenerationWeights,
    /// A directory base models may be registered from (repeatable; the
    /// environment variable takes a colon-separated list). A path that does
    /// not resolve under one is refused. Default: DATA_DIR/models (where
    /// `quickstart --base tiny` writes) and ./models (where `lathe models
    /// pull` and `quickstart` fetch to), relative to where the server starts.
    #[arg(
        long = "model-root",
        env = "LATHE_MODEL_ROOTS",
        value_name = "DIR",
        value_delimiter = ':'
    )]
    pub model_roots: Vec<PathBuf>,
    /// Deliver job webhooks over plain http:// too; by default only https://
    /// URLs are accepted.
    #[arg(long, env = "LATHE_WEBHOOK_ALLOW_HTTP")]
    pub webhook_allow_http: bool,
    /// Deliver job webhooks to loopback, private (RFC 1918, CGNAT, ULA),
    /// link-local and other non-public addresses too; by default they are
    /// refused, at create time for literal addresses and at send time for
    /// names that resolve to them.
    #[arg(long, env = "LATHE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES")]
    pub webhook_allow_private_addresses: bool,
    /// An admin API key (sk-lathe- and 32 or more characters) recorded for the
    /// `default` project at start: how a server listening beyond loopback gets
    /// its first key. Prefer the environment variable to the flag, which other
    /// users of the machine can read in the process list.
    #[arg(long, env = "LATHE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
    /// The key (64 hex characters) that seals secrets the server keeps, such
    /// as webhook signing secrets; without it, DATA_DIR/secrets.key, made at
    /// first start. Replicas sharing a database need the same key.
    #[arg(long, env = "LATHE_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<Secret>,
    /// What this process does: `all` serves the API and runs queued work
    /// (the embedded default); `api` serves the API and leaves queued work
    /// to workers; `worker` runs queued work and serves only health. `api`
    /// and `worker` share state through Postgres (--database-url).
    #[arg(long, env = "LATHE_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// Run only this fine-tuning job, then exit (`lathe worker --job`).
    #[arg(skip)]
    pub only_job: Option<String>,
    /// Where the local engine trains and generates: cpu, cuda (GPU 0) or
    /// cuda:N. A GPU needs a build with the `cuda` cargo feature
    /// (deploy/docker/Dockerfile.cuda).
    #[arg(long, env = "LATHE_DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,
    /// The Ray cluster's Jobs API (its dashboard's URL, e.g.
    /// http://127.0.0.1:8265). When set, this process trains no jobs itself:
    /// it submits each queued fine-tuning job to Ray as a Ray job that runs
    /// --ray-entrypoint, and follows it. Start-up stops when Ray cannot be
    /// reached.
    #[arg(long, env = "LATHE_RAY_ADDRESS")]
    pub ray_address: Option<String>,
    /// The command a job's Ray job runs: a Lathe worker for that one job, as
    /// the cluster's nodes start it; {job_id} is replaced by the job's id.
    #[arg(long, env = "LATHE_RAY_ENTRYPOINT", default_value = DEFAULT_RAY_ENTRYPOINT)]
    pub ray_entrypoint: String,
    /// Names of environment variables of this process that each Ray job's
    /// worker gets too (comma-separated, e.g.
    /// LATHE_DATABASE_URL,LATHE_SECRETS_KEY). Ray shows a job's environment
    /// to whoever can read its dashboard: give secrets to the cluster's
    /// nodes instead where that matters.
    #[arg(long, env = "LATHE_RAY_FORWARD_ENV", value_delimiter = ',', value_name = "NAME")]
    pub ray_forward_env: Vec<String>,
    /// CPUs Ray reserves for each job's worker.
    #[arg(long, env = "LATHE_RAY_NUM_CPUS", default_value_t = 1.0)]
    pub ray_num_cpus: f64,
    /// GPUs Ray reserves for each job's worker (fractions allowed).
    #[arg(long, env = "LATHE_RAY_NUM_GPUS", default_value_t = 0.0)]
    pub ray_num_gpus: f64,
    /// Ray jobs that may fail before they start their job (per attempt)
    /// before the job fails with Ray's message.
    #[arg(long, env = "LATHE_RAY_MAX_FAILURES", default_value_t = 3)]
    pub ray_max_failures: u32,
    /// Ray jobs this process keeps pending or running at once; more queued
    /// jobs wait in Lathe's queue, in its claim order.
    #[arg(long, env = "LATHE_RAY_MAX_SUBMITTED", default_value_t = 64)]
    pub ray_max_submitted: usize,
    /// Where blobs (dataset files, checkpoints, stored models) live:
    /// file:///abs/path or s3://bucket[/prefix]; default DATA_DIR/blobs. S3
    /// takes its endpoint, credentials and region from the standard AWS_*
    /// variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ALLOW_HTTP) and is probed at start-up. Replicas and
    /// workers sharing a database need the same store.
    #[arg(long, env = "LATHE_BLOB_URL", value_name = "URL")]
    pub blob_url: Option<crate::blobs::BlobUrl>,
    #[command(flatten)]
    pub tls: TlsConfig,
}

/// The weights the local engine generates with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GenerationWeights {
    /// The GGUF's quantized weights where the model has them.
    #[default]
    Quantized,
    /// The f32 weights.
    F32,
}

/// What a server process does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Serve the API and run queued work.
    #[default]
    All,
    /// Serve the API; queued work is left to workers.
    Api,
    /// Run queued work; serve only health.
    Worker,
}

impl Role {
    /// Whether the process serves the API's services.
    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }

    /// Whether the process claims queued work.
    pub fn runs_work(self) -> bool {
        self != Role::Api
    }
}

/// A listener's TLS settings (the gRPC API's; a REST API will take the
/// same). Checked together when the server starts (`tls::ServerTls::load`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM certificate chain to serve TLS with (needs --tls-key). Without
    /// it the server speaks plaintext HTTP/2.
    #[arg(long, env = "LATHE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LATHE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual
    /// TLS, on top of API keys). Needs --tls-cert and --tls-key.
    #[arg(long, env = "LATHE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// What a job's Ray job runs unless `--ray-entrypoint` says otherwise.
pub const DEFAULT_RAY_ENTRYPOINT: &str = "lathe worker --job {job_id}";

/// A secret setting: Debug output (logs, panics) never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl ServeConfig {
    /// The defaults with `data_dir` and `listen` set: for tests and embedding.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            database_url: None,
            max_upload_bytes: 512 << 20,
            max_assembled_upload_bytes: 8 << 30,
            max_upload_part_bytes: 64 << 20,
            upload_expiry_secs: 3600,
            max_line_bytes: 16 << 20,
            token_limit: 65_536,
            max_concurrent_uploads: 8,
            shutdown_grace_secs: 30,
            max_concurrent_jobs: 1,
            job_lease_secs: 15,
            health_check_secs: 5,
            job_poll_millis: 1000,
            providers: None,
            grader_python_env: None,
            log_json: false,
            max_generation_batch: 32,
            max_queued_generations: 256,
            generation_weights: GenerationWeights::Quantized,
            admin_key: None,
            secrets_key: None,
            tls: TlsConfig::default(),
            model_roots: Vec::new(),
            webhook_allow_http: false,
            webhook_allow_private_addresses: false,
            role: Role::All,
            only_job: None,
            device: DeviceChoice::Cpu,
            ray_address: None,
            ray_entrypoint: DEFAULT_RAY_ENTRYPOINT.into(),
            ray_forward_env: Vec::new(),
            ray_num_cpus: 1.0,
            ray_num_gpus: 0.0,
            ray_max_failures: 3,
            ray_max_submitted: 64,
            blob_url: None,
        }
    }

    /// Where base models may be registered from: the given roots, or the
    /// defaults. The data directory (database, blobs) is never one: only a
    /// root strictly inside it, like the default `DATA_DIR/models`, opens a
    /// part of it.
    pub fn model_roots(&self) -> crate::models::ModelRoots {
        let roots = if self.model_roots.is_empty() {
            vec![self.data_dir.join("models"), PathBuf::from("models")]
        } else {
            self.model_roots.clone()
        };
        let mut excluded = vec![self.data_dir.clone(), self.blob_dir()];
        if let Some(crate::blobs::BlobUrl::Dir(dir)) = &self.blob_url {
            excluded.push(dir.clone());
        }
        crate::models::ModelRoots::new(roots, excluded)
    }

    pub fn webhook_policy(&self) -> crate::jobs::webhook::WebhookPolicy {
        crate::jobs::webhook::WebhookPolicy {
            allow_http: self.webhook_allow_http,
            allow_private_addresses: self.webhook_allow_private_addresses,
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("lathe.db").display()))
    }

    /// `database_url` without its password, for messages.
    pub fn database_url_redacted(&self) -> String {
        let url = self.database_url();
        let Some((scheme, rest)) = url.split_once("://") else {
            return url;
        };
        match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                let hidden = if userinfo.contains(':') { ":<redacted>" } else { "" };
                format!("{scheme}://{user}{hidden}@{host}")
            }
            None => url,
        }
    }

    /// The data directory's own blob directory, used when no --blob-url
    /// names another store.
    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// How old leftovers (staged files, unreferenced blobs) must be before
    /// a start-up removes them: any age when this process has the store to
    /// itself (SQLite), a day when other processes share it (Postgres) and
    /// may be uploading right now.
    pub fn leftovers_age(&self) -> Option<Duration> {
        self.database_url()
            .starts_with("postgres")
            .then_some(crate::blobs::SHARED_SETTLE)
    }

    /// Refuses settings that cannot work together, naming them.
    pub fn check(&self) -> anyhow::Result<()> {
        let role = if self.role == Role::Api { "api" } else { "worker" };
        if self.role != Role::All && !self.database_url().starts_with("postgres") {
            anyhow::bail!(
                "--role {role} needs a database that other processes share: set --database-url \
                 (LATHE_DATABASE_URL) to a postgres:// URL"
            );
        }
        // What one process seals (webhook secrets) another must open.
        if self.role != Role::All && self.secrets_key.is_none() {
            anyhow::bail!(
                "--role {role} needs the secrets key every process shares: set --secrets-key \
                 (LATHE_SECRETS_KEY) to the same 64 hex characters on every replica and worker"
            );
        }
        Ok(())
    }

    pub fn jobs_config(&self) -> crate::jobs::manager::JobsConfig {
        crate::jobs::manager::JobsConfig {
            only: self.only_job.clone(),
            max_concurrent: self.max_concurrent_jobs,
            lease: Duration::from_secs(self.job_lease_secs.max(1)),
            poll: Duration::from_millis(self.job_poll_millis.max(10)),
            webhook: self.webhook_policy(),
            ..Default::default()
        }
    }

    /// With `--ray-address`: the Ray cluster's client and how jobs become
    /// Ray jobs, checked (not yet reached); the error names the setting.
    pub fn ray(&self) -> Result<Option<(crate::ray::RayClient, crate::jobs::ray::RayConfig)>, String> {
        let Some(address) = &self.ray_address else {
            return Ok(None);
        };
        let client =
            crate::ray::RayClient::new(address).map_err(|e| format!("--ray-address (LATHE_RAY_ADDRESS): {e}"))?;
        if !self.database_url().starts_with("postgres") {
            return Err(
                "--ray-address (LATHE_RAY_ADDRESS) needs a database the workers Ray starts share: set \
                 --database-url (LATHE_DATABASE_URL) to a postgres:// URL"
                    .into(),
            );
        }
        // The workers Ray starts open what this process seals (webhook secrets).
        if self.secrets_key.is_none() {
            return Err(
                "--ray-address (LATHE_RAY_ADDRESS) needs the secrets key the workers Ray starts share: set \
                 --secrets-key (LATHE_SECRETS_KEY) and give the workers the same"
                    .into(),
            );
        }
        if !self.ray_entrypoint.contains("{job_id}") {
            return Err(format!(
                "--ray-entrypoint (LATHE_RAY_ENTRYPOINT): {:?} has no {{job_id}} for the job the worker runs",
                self.ray_entrypoint
            ));
        }
        let mut env_vars = std::collections::BTreeMap::new();
        for name in self.ray_forward_env.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let value = std::env::var(name).map_err(|_| {
                format!("--ray-forward-env (LATHE_RAY_FORWARD_ENV): {name} is not set in this process's environment")
            })?;
            env_vars.insert(name.to_string(), value);
        }
        for (flag, value) in [
            ("--ray-num-cpus (LATHE_RAY_NUM_CPUS)", self.ray_num_cpus),
            ("--ray-num-gpus (LATHE_RAY_NUM_GPUS)", self.ray_num_gpus),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{flag}: {value} is not a number of CPUs or GPUs (0 or more)"));
            }
        }
        if self.ray_max_submitted == 0 {
            return Err("--ray-max-submitted (LATHE_RAY_MAX_SUBMITTED): must be 1 or more".into());
        }
        let config = crate::jobs::ray::RayConfig {
            entrypoint: self.ray_entrypoint.clone(),
            env_vars,
            num_cpus: self.ray_num_cpus,
            num_gpus: self.ray_num_gpus,
            max_failures: self.ray_max_failures.max(1),
            max_submitted: self.ray_max_submitted,
            poll: Duration::from_millis(self.job_poll_millis.max(10)),
        };
        Ok(Some((client, config)))
    }

    pub fn evals_config(&self) -> crate::evals::manager::EvalsConfig {
        crate::evals::manager::EvalsConfig {
            lease: Duration::from_secs(self.job_lease_secs.max(1)),
            poll: Duration::from_millis(self.job_poll_millis.max(10)),
            ..Default::default()
        }
    }

    pub fn dataset_limits(&self) -> DatasetLimits {
        DatasetLimits {
            max_upload_bytes: self.max_upload_bytes,
            max_assembled_bytes: self.max_assembled_upload_bytes,
            max_part_bytes: self.max_upload_part_bytes,
            upload_expiry: Duration::from_secs(self.upload_expiry_secs.max(1)),
            max_line_bytes: self.max_line_bytes,
            token_limit: self.token_limit,
            max_concurrent_uploads: self.max_concurrent_uploads,
            ..DatasetLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServeConfig;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        config: ServeConfig,
    }

    /// `lathe serve` with no flags: the embedded default the README promises.
    /// (The environment variables are checked against the real binary in
    /// tests/it/server.rs, where setting them cannot leak into other tests.)
    #[test]
    fn no_flags_is_the_embedded_default() {
        let c = Serve::try_parse_from(["serve"]).unwrap().config;
        assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.data_dir, std::path::PathBuf::from("./lathe-data"));
        assert_eq!(c.database_url(), "sqlite://./lathe-data/lathe.db");
        assert_eq!(c.database_url_redacted(), "sqlite://./lathe-data/lathe.db");
        let secret = Serve::try_parse_from(["serve", "--database-url", "postgres://lathe:hunter2@db:5432/lathe"])
            .unwrap()
            .config;
        assert_eq!(
            secret.database_url_redacted(),
            "postgres://lathe:<redacted>@db:5432/lathe"
        );
        assert_eq!(c.blob_dir(), std::path::PathBuf::from("./lathe-data/blobs"));
        assert_eq!(c.max_upload_bytes, 512 << 20);
        assert_eq!(c.max_queued_generations, 256);
        assert_eq!(c.generation_weights, super::GenerationWeights::Quantized);
        let f32 = Serve::try_parse_from(["serve", "--generation-weights", "f32"])
            .unwrap()
            .config;
        assert_eq!(f32.generation_weights, super::GenerationWeights::F32);
        assert!(!c.log_json);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            c.model_roots().roots(),
            [cwd.join("lathe-data/models"), cwd.join("models")]
        );
        assert!(!c.webhook_allow_http && !c.webhook_allow_private_addresses);
        assert!(c.tls.tls_cert.is_none() && c.tls.tls_key.is_none() && c.tls.tls_client_ca.is_none());
        assert_eq!(c.device, lathe_engine::device::DeviceChoice::Cpu);
        assert_eq!(c.blob_url, None);
    }

    /// A device the build cannot use is refused as the flag is read, naming it.
    #[test]
    fn device_names_are_checked_when_parsed() {
        let err = Serve::try_parse_from(["serve", "--device", "gpu"])
            .err()
            .expect("gpu refused")
            .to_string();
        assert!(
            err.contains("--device") && err.contains("expected cpu, cuda or cuda:N"),
            "{err}"
        );
        let cuda = Serve::try_parse_from(["serve", "--device", "cuda:1"]);
        if lathe_engine::device::CUDA_BUILT {
            assert_eq!(cuda.unwrap().config.device, lathe_engine::device::DeviceChoice::Cuda(1));
        } else {
            let err = cuda.err().expect("cuda refused").to_string();
            assert!(
                err.contains("--device") && err.contains("built without CUDA support"),
                "{err}"
            );
        }
    }

    #[test]
    fn ray_settings_are_checked_and_errors_name_the_setting() {
        const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let parse = |args: &[&str]| {
            let mut all = vec!["serve"];
            all.extend_from_slice(args);
            Serve::try_parse_from(all).unwrap().config
        };
        assert!(parse(&[]).ray().unwrap().is_none(), "no address, no Ray");
        let (client, ray) = parse(&[
            "--database-url",
            "postgres://db/lathe",
            "--secrets-key",
            KEY,
            "--ray-address",
            "http://head:8265/",
            "--ray-num-gpus",
            "0.5",
            "--ray-forward-env",
            "PATH",
        ])
        .ray()
        .unwrap()
        .unwrap();
        assert_eq!(client.address(), "http://head:8265");
        assert_eq!(ray.entrypoint, "lathe worker --job {job_id}");
        assert_eq!((ray.num_cpus, ray.num_gpus), (1.0, 0.5));
        assert_eq!((ray.max_failures, ray.max_submitted), (3, 64));
        assert_eq!(ray.env_vars.get("PATH"), std::env::var("PATH").ok().as_ref());
        let keyless = parse(&["--ray-address", "http://h:1", "--database-url", "postgres://db/lathe"]);
        let keyless = keyless.ray().unwrap_err();
        assert!(
            keyless.starts_with("--ray-address (LATHE_RAY_ADDRESS) needs the secrets key"),
            "{keyless}"
        );
        let sqlite = parse(&["--ray-address", "http://h:1"]).ray().unwrap_err();
        assert!(
            sqlite.starts_with("--ray-address (LATHE_RAY_ADDRESS) needs a database"),
            "{sqlite}"
        );
        for (args, setting) in [
            (&["--ray-address", "head:8265"][..], "--ray-address (LATHE_RAY_ADDRESS)"),
            (
                &["--ray-address", "http://h:1", "--ray-entrypoint", "lathe worker"],
                "--ray-entrypoint (LATHE_RAY_ENTRYPOINT)",
            ),
            (
                &[
                    "--ray-address",
                    "http://h:1",
                    "--ray-forward-env",
                    "PATH,LATHE_TEST_UNSET_VARIABLE",
                ],
                "--ray-forward-env (LATHE_RAY_FORWARD_ENV): LATHE_TEST_UNSET_VARIABLE",
            ),
            (&["--ray-address", "http://h:1", "--ray-num-cpus=-1"], "--ray-num-cpus"),
            (
                &["--ray-address", "http://h:1", "--ray-max-submitted", "0"],
                "--ray-max-submitted",
            ),
        ] {
            let mut on_postgres = vec!["--database-url", "postgres://db/lathe", "--secrets-key", KEY];
            on_postgres.extend_from_slice(args);
            let err = parse(&on_postgres).ray().unwrap_err();
            assert!(err.starts_with(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn flags_override_the_defaults() {
        let c = Serve::try_parse_from([
            "serve",
            "--listen",
            "0.0.0.0:6000",
            "--data-dir",
            "/srv/lathe",
            "--database-url",
            "postgres://db/lathe",
            "--max-upload-bytes",
            "1000",
            "--max-line-bytes",
            "2000",
            "--log-json",
            "--model-root",
            "/srv/models",
            "--model-root",
            "/opt/a:/opt/b",
            "--webhook-allow-http",
            "--tls-cert",
            "/etc/lathe/cert.pem",
            "--tls-key",
            "/etc/lathe/key.pem",
            "--tls-client-ca",
            "/etc/lathe/clients.pem",
            "--blob-url",
            "s3://lathe-blobs/prod",
        ])
        .unwrap()
        .config;
        assert_eq!(
            c.model_roots().roots(),
            ["/srv/models", "/opt/a", "/opt/b"].map(std::path::PathBuf::from)
        );
        assert!(c.webhook_allow_http && !c.webhook_allow_private_addresses);
        assert_eq!(c.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(c.blob_dir(), std::path::PathBuf::from("/srv/lathe/blobs"));
        assert_eq!(c.database_url(), "postgres://db/lathe");
        assert_eq!(c.dataset_limits().max_upload_bytes, 1000);
        assert_eq!(c.dataset_limits().max_line_bytes, 2000);
        assert!(c.log_json);
        assert_eq!(c.tls.tls_cert, Some("/etc/lathe/cert.pem".into()));
        assert_eq!(c.tls.tls_key, Some("/etc/lathe/key.pem".into()));
        assert_eq!(c.tls.tls_client_ca, Some("/etc/lathe/clients.pem".into()));
        assert_eq!(
            c.blob_url,
            Some(crate::blobs::BlobUrl::S3 {
                bucket: "lathe-blobs".into(),
                prefix: "prod".into()
            })
        );
        assert!(Serve::try_parse_from(["serve", "--listen", "nowhere"]).is_err());
        // A blob URL that does not parse stops start-up naming the setting.
        let err = Serve::try_parse_from(["serve", "--blob-url", "s3://"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--blob-url") && err.contains("bucket is missing"), "{err}");
    }
}
