//! Python graders: `grade(sample, item) -> float` in sandboxed, reused worker processes.
//!
//! A worker is a long-lived `python3` speaking JSON lines (`worker.py`), confined by
//! `sandbox.rs` (namespaces, an allowlist root, seccomp; see there). The worker itself
//! never runs user code: it compiles each source once, imports the packages the source
//! names, and runs every grade in a forked child that loses the worker's protocol
//! descriptors before user code starts and answers through a fresh pipe, read until the
//! child exits and accepted only as exactly one result. So a grader cannot forge the
//! worker's replies, and whatever it forks or leaves behind is killed after its grade
//! (the worker is pid 1 of its PID namespace). Top-level code of a source runs in each
//! grade's child. The next call's child is forked right after each reply, so a warm call
//! costs two pipe round trips (pool to worker, worker to its waiting child), not a fork.
//!
//! Each pool slot serves one trust domain at a time: the python sources of one grader (a
//! `multi` grader's python sub-graders share theirs, as one author's code in one grader
//! JSON); a worker that served one domain is replaced rather than handed another's. Each
//! grade has a wall-clock limit (the worker kills it and says so; the pool's own timeout,
//! a little longer, is the backstop that replaces a stuck worker) and a CPU limit.
//!
//! A call waits at most `queue_timeout` for a free slot, then fails with the server
//! error kind `resource_exhausted` instead of queueing forever. Calls carry an owner (the
//! project whose grader it is; [`DEFAULT_OWNER`] for calls without one), and an owner
//! holds at most `per_owner_slots` workers at once (default: all but one), so one
//! project's burst of slow graders cannot take every worker from the others.

pub mod env;
mod sandbox;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use sandbox::{Limits, Plan};
pub use sandbox::{SandboxLevel, SandboxReport};

/// The owner of calls made on no project's behalf (see the module docs).
pub const DEFAULT_OWNER: &str = "server";

/// How much longer than a grade's wall-clock limit the pool waits for the worker's
/// answer before replacing it (the worker enforces the limit itself).
const BACKSTOP: Duration = Duration::from_secs(5);

const WORKER_SOURCE: &str = include_str!("worker.py");

/// The NLTK corpora's directory inside a grader environment.
pub const NLTK_DATA_DIR: &str = "nltk_data";

/// Which isolation the pool insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxPolicy {
    /// Root level, else user namespaces; refuse to run code otherwise.
    Required,
    /// As `Required`, but fall back to rlimits only (development machines).
    AllowUnsandboxed,
}

#[derive(Debug, Clone)]
pub struct PythonPoolConfig {
    /// Must be executable by the sandbox uid: a system interpreter, not one under /root.
    /// Used when there is no `env`.
    pub python: PathBuf,
    /// A grader environment (a virtualenv with OpenAI's grader packages, from
    /// `lathe graders setup-python`): workers run its interpreter, mounted read-only in
    /// their sandbox, with `NLTK_DATA` pointing at its corpora.
    pub env: Option<PathBuf>,
    pub workers: usize,
    /// Per grade, enforced by the worker (which kills the grade's processes).
    pub wall_timeout: Duration,
    /// Longest wait for a free worker before a call fails with `resource_exhausted`.
    pub queue_timeout: Duration,
    /// Slots one owner (a project) may hold at once; None: all but one when there are
    /// several, so another project's call always finds one free or soon free.
    pub per_owner_slots: Option<usize>,
    pub cpu_seconds_per_call: u64,
    pub memory_bytes: u64,
    pub scratch_bytes: u64,
    pub max_processes: u64,
    /// Largest reply line accepted from a worker.
    pub max_reply_bytes: usize,
    pub sandbox: SandboxPolicy,
    /// Slot `i` runs as uid `uid_base + i` at the root level.
    pub uid_base: u32,
    /// Holds an empty directory per slot, the mount point of the slot's root (or, without
    /// namespaces, the slot's scratch directory).
    pub scratch_root: PathBuf,
}

impl Default for PythonPoolConfig {
    fn default() -> Self {
        PythonPoolConfig {
            python: default_python(),
            env: None,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            wall_timeout: Duration::from_secs(120),
            // Long enough for a full RFT step's grades queued behind slow graders, short
            // enough that a flood of stuck graders surfaces as an error, not a hang.
            queue_timeout: Duration::from_secs(300),
            per_owner_slots: None,
            cpu_seconds_per_call: 120,
            memory_bytes: 2 << 30,
            scratch_bytes: 1 << 30,
            max_processes: 64,
            max_reply_bytes: 1 << 20,
            sandbox: SandboxPolicy::Required,
            uid_base: 61000,
            scratch_root: std::env::temp_dir().join(format!("lathe-python-graders-{}", std::process::id())),
        }
    }
}

fn default_python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// What a python grading call produced.
#[derive(Debug, Clone, PartialEq)]
pub enum PythonOutcome {
    Reward(f64),
    /// The user's code failed, timed out, or returned something that is not a float.
    RuntimeError(String),
    /// The pool could not run the code at all (no sandbox, interpreter missing, no free
    /// worker within the queue timeout: kind `resource_exhausted`, ...).
    ServerError {
        kind: String,
        details: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no python sandbox is available here: {0}")]
    SandboxUnavailable(String),
    #[error("cannot prepare the python scratch directory: {0}")]
    Scratch(#[source] std::io::Error),
}

/// A call's hold on the pool: one of its owner's slots and one worker.
struct PoolPermit<'a> {
    _own: tokio::sync::OwnedSemaphorePermit,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// Lifetime CPU per worker; a worker past half of it is replaced between calls.
const LIFETIME_CPU_SECONDS: u64 = 3600;

pub struct PythonPool {
    config: PythonPoolConfig,
    level: SandboxLevel,
    slots: Mutex<Vec<Slot>>,
    permits: Semaphore,
    /// Each owner's own cap on the slots it holds at once (`per_owner_slots`).
    owners: Mutex<HashMap<String, Arc<Semaphore>>>,
}

#[derive(Default)]
struct Slot {
    busy: bool,
    worker: Option<Worker>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The trust domain this worker has run code of, and the sources it has compiled.
    domain: Option<[u8; 32]>,
    loaded: HashSet<[u8; 32]>,
    cpu_used: f64,
}

/// A source's key in a worker, and a standalone python grader's trust domain (its
/// source alone).
pub fn source_hash(source: &str) -> [u8; 32] {
    Sha256::digest(source.as_bytes()).into()
}

impl PythonPool {
    /// Probes the strongest sandbox level that works here by starting one worker.
    pub async fn start(config: PythonPoolConfig) -> Result<PythonPool, PoolError> {
        std::fs::create_dir_all(&config.scratch_root).map_err(PoolError::Scratch)?;
        // SAFETY: geteuid cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        let mut candidates = Vec::new();
        if is_root {
            candidates.push(SandboxLevel::Root);
        }
        candidates.push(SandboxLevel::UserNamespace);
        if config.sandbox == SandboxPolicy::AllowUnsandboxed {
            candidates.push(SandboxLevel::Unsandboxed);
        }
        let workers = config.workers.max(1);
        let mut failures = Vec::new();
        for level in candidates {
            let mut pool = PythonPool {
                level,
                slots: Mutex::new((0..workers).map(|_| Slot::default()).collect()),
                permits: Semaphore::new(workers),
                owners: Mutex::new(HashMap::new()),
                config: config.clone(),
            };
            match pool.spawn(0).await {
                Ok(mut worker) => match worker.request(&json!({"op": "ping"}), &pool.config).await {
                    Ok(_) => {
                        if let Ok(slots) = pool.slots.get_mut() {
                            slots[0].worker = Some(worker);
                        }
                        if level == SandboxLevel::Unsandboxed {
                            tracing::warn!("python graders run WITHOUT namespace isolation (rlimits only)");
                        }
                        tracing::info!(?level, workers, "python grader pool started");
                        return Ok(pool);
                    }
                    Err(e) => failures.push(format!("{level:?}: worker did not answer: {e}")),
                },
                Err(e) => failures.push(format!("{level:?}: {e}")),
            }
        }
        Err(PoolError::SandboxUnavailable(failures.join("; ")))
    }

    pub fn sandbox(&self) -> SandboxReport {
        SandboxReport::for_level(self.level, self.config.uid_base)
    }

    pub fn config(&self) -> &PythonPoolConfig {
        &self.config
    }

    fn scratch_dir(&self, slot: usize) -> PathBuf {
        self.config.scratch_root.join(format!("slot-{slot}"))
    }

    fn uid(&self, slot: usize) -> u32 {
        self.config.uid_base.saturating_add(slot as u32)
    }

    async fn spawn(&self, slot: usize) -> Result<Worker, String> {
        let dir = self.scratch_dir(slot);
        prepare_scratch(&dir, self.level).map_err(|e| format!("scratch dir: {e}"))?;
        let c = &self.config;
        let limits = Limits {
            address_space_bytes: c.memory_bytes,
            cpu_seconds_hard: LIFETIME_CPU_SECONDS,
            file_size_bytes: c.scratch_bytes,
            processes: c.max_processes,
            open_files: 256,
        };
        let env = c
            .env
            .as_deref()
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| format!("grader environment: {e}"))?;
        let sandboxed = self.level != SandboxLevel::Unsandboxed;
        let extra_dirs = if sandboxed {
            interpreter_prefixes(&c.python, env.as_deref())
        } else {
            Vec::new()
        };
        let plan = Plan::new(
            self.level,
            limits,
            self.uid(slot),
            &dir,
            c.scratch_bytes,
            &extra_dirs,
            env.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let grade_filter = sandbox::grade_filter().map_err(|e| format!("seccomp filter: {e}"))?;
        // Paths as the worker sees them: in its own root, or in place without namespaces.
        let (env_dir, scratch) = if sandboxed {
            (
                env.as_ref().map(|_| PathBuf::from(sandbox::ENV_MOUNT)),
                PathBuf::from(sandbox::SCRATCH),
            )
        } else {
            (env.clone(), dir.clone())
        };
        let python = match &env_dir {
            Some(dir) => dir.join("bin").join("python3"),
            None => c.python.clone(),
        };
        let mut cmd = Command::new(&python);
        // HOME and TMPDIR point at the scratch only in grades (the worker sets them there):
        // the worker itself reads nothing a grade could have written.
        cmd.args(["-I", "-B", "-c", WORKER_SOURCE])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/")
            .env("LATHE_SCRATCH", &scratch)
            .env("LATHE_GRADE_FILTER", hex::encode(grade_filter))
            .env("LANG", "C.UTF-8")
            .env("OMP_NUM_THREADS", "2")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &env_dir {
            cmd.env("NLTK_DATA", dir.join(NLTK_DATA_DIR));
        }
        // SAFETY: `Plan::apply` only makes async-signal-safe syscalls on memory the plan
        // owns; the closure owns the plan.
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("worker pipes missing".into());
        };
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            domain: None,
            loaded: HashSet::new(),
            cpu_used: 0.0,
        })
    }

    /// Kills a worker together with everything it forked. With namespaces, SIGTERM to the
    /// sandbox's middle process makes it kill pid 1 (whose death empties the PID namespace)
    /// and reap it before exiting (see `sandbox.rs`); failing that, and without namespaces,
    /// SIGKILL to the whole process group.
    async fn destroy(&self, mut worker: Worker) {
        if let Some(pid) = worker.child.id() {
            if self.level != SandboxLevel::Unsandboxed {
                // SAFETY: signalling our own child; a stale id is harmless.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
                if tokio::time::timeout(Duration::from_secs(2), worker.child.wait())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            // SAFETY: signalling a process group we created; a stale id is harmless.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        let _ = worker.child.kill().await;
    }

    /// A free slot, preferring one whose worker already serves `domain`, waiting at most
    /// `queue_timeout` in all (FIFO): first for one of `owner`'s own slots (a project
    /// holds at most `per_owner_slots` at once, so its burst cannot take them all), then
    /// for a free worker.
    async fn acquire(
        &self,
        owner: &str,
        domain: Option<&[u8; 32]>,
    ) -> Result<(PoolPermit<'_>, usize, Option<Worker>), PythonOutcome> {
        let closed = || server_error("pool_closed", "python grader pool is shutting down");
        let workers = self.config.workers.max(1);
        let exhausted = || {
            tracing::warn!(owner, workers, "python grader queue timed out");
            server_error(
                "resource_exhausted",
                &format!(
                    "all {workers} python grader workers stayed busy for {:?}; try again later",
                    self.config.queue_timeout
                ),
            )
        };
        let cap = self
            .config
            .per_owner_slots
            .unwrap_or(if workers > 1 { workers - 1 } else { 1 })
            .clamp(1, workers);
        let own = {
            let mut owners = self.owners.lock().map_err(|_| closed())?;
            Arc::clone(
                owners
                    .entry(owner.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(cap))),
            )
        };
        let waiting = async {
            let own = own.acquire_owned().await.map_err(|_| closed())?;
            let permit = self.permits.acquire().await.map_err(|_| closed())?;
            Ok::<_, PythonOutcome>(PoolPermit {
                _own: own,
                _permit: permit,
            })
        };
        let permit = match tokio::time::timeout(self.config.queue_timeout, waiting).await {
            Ok(permit) => permit?,
            Err(_) => return Err(exhausted()),
        };
        let mut slots = self.slots.lock().map_err(|_| closed())?;
        let free = |s: &&mut Slot| !s.busy;
        let pick = slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| free(s))
            .min_by_key(|(_, s)| match (&s.worker, domain) {
                (Some(w), Some(h)) if w.domain.as_ref() == Some(h) => 0,
                (Some(_), None) => 0,
                (None, _) => 1,
                (Some(w), Some(_)) if w.domain.is_none() => 1,
                _ => 2,
            })
            .map(|(i, _)| i)
            .ok_or_else(closed)?;
        slots[pick].busy = true;
        let worker = slots[pick].worker.take();
        Ok((permit, pick, worker))
    }

    fn release(&self, slot: usize, worker: Option<Worker>) {
        if let Ok(mut slots) = self.slots.lock() {
            slots[slot].busy = false;
            slots[slot].worker = worker;
        }
    }

    /// Runs `grade(sample, item)` from `source`, a standalone grader (its own domain).
    pub async fn grade(&self, source: &str, sample: &Value, item: &Value) -> PythonOutcome {
        let hash = source_hash(source);
        self.grade_keyed(DEFAULT_OWNER, &hash, hash, source, sample, item).await
    }

    /// Runs `grade(sample, item)` from `source`, in a worker of trust domain `domain`
    /// (see the module's docs).
    pub async fn grade_in(&self, domain: &[u8; 32], source: &str, sample: &Value, item: &Value) -> PythonOutcome {
        self.grade_keyed(DEFAULT_OWNER, domain, source_hash(source), source, sample, item)
            .await
    }

    /// `grade_in` on `owner`'s behalf (a project): it holds at most its share of the slots.
    pub async fn grade_for(
        &self,
        owner: &str,
        domain: &[u8; 32],
        source: &str,
        sample: &Value,
        item: &Value,
    ) -> PythonOutcome {
        self.grade_keyed(owner, domain, source_hash(source), source, sample, item)
            .await
    }

    /// `grade_in` with the source's hash already taken.
    async fn grade_keyed(
        &self,
        owner: &str,
        domain: &[u8; 32],
        hash: [u8; 32],
        source: &str,
        sample: &Value,
        item: &Value,
    ) -> PythonOutcome {
        let (_permit, slot, worker) = match self.acquire(owner, Some(domain)).await {
            Ok(acquired) => acquired,
            Err(outcome) => return outcome,
        };
        let worker = match worker {
            Some(w) if w.domain.as_ref() == Some(domain) || w.domain.is_none() => Some(w),
            Some(w) => {
                self.destroy(w).await;
                None
            }
            None => None,
        };
        let mut worker = match worker {
            Some(w) => w,
            None => match self.spawn(slot).await {
                Ok(w) => w,
                Err(e) => {
                    self.release(slot, None);
                    tracing::error!(error = %e, "cannot start a python worker");
                    return server_error(
                        "worker_start_failed",
                        "cannot start a python worker (the server log says why)",
                    );
                }
            },
        };
        let mut request = json!({
            "op": "grade",
            "key": hex::encode(hash),
            "sample": sample,
            "item": item,
            "cpu_seconds": self.config.cpu_seconds_per_call,
            "wall_seconds": self.config.wall_timeout.as_secs_f64(),
        });
        if !worker.loaded.contains(&hash) {
            request["source"] = Value::String(source.to_string());
        }
        worker.domain = Some(*domain);
        let reply = worker.request(&request, &self.config).await;
        let (outcome, keep) = match reply {
            Ok(reply) => {
                worker.loaded.insert(hash);
                let outcome = match reply.get("reward").and_then(Value::as_f64) {
                    Some(r) if reply.get("ok") == Some(&Value::Bool(true)) => PythonOutcome::Reward(r),
                    _ => PythonOutcome::RuntimeError(
                        reply
                            .get("error")
                            .and_then(Value::as_str)
                            .unwrap_or("grader failed without details")
                            .to_string(),
                    ),
                };
                // User code never ran in the worker process (only in its grade's
                // child), so a failed grade leaves it fit for the next.
                (outcome, worker.cpu_used < (LIFETIME_CPU_SECONDS / 2) as f64)
            }
            Err(WorkerFailure::TimedOut) => (
                PythonOutcome::RuntimeError(format!(
                    "grader timed out after {:?} (wall-clock limit)",
                    self.config.wall_timeout
                )),
                false,
            ),
            Err(WorkerFailure::Died) => {
                let status = tokio::time::timeout(Duration::from_secs(1), worker.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                (PythonOutcome::RuntimeError(describe_death(status)), false)
            }
            Err(WorkerFailure::Protocol(why)) => (PythonOutcome::RuntimeError(why), false),
        };
        if keep {
            self.release(slot, Some(worker));
        } else {
            self.destroy(worker).await;
            self.release(slot, None);
        }
        outcome
    }

    /// Parses `source` with Python's `ast` (no user code runs) and checks that it defines
    /// `grade(sample, item)`.
    pub async fn check_source(&self, source: &str) -> Result<(), String> {
        let (_permit, slot, worker) = match self.acquire(DEFAULT_OWNER, None).await {
            Ok(acquired) => acquired,
            Err(PythonOutcome::ServerError { details, .. }) => return Err(details),
            Err(other) => return Err(format!("{other:?}")),
        };
        let mut worker = match worker {
            Some(w) => w,
            None => match self.spawn(slot).await {
                Ok(w) => w,
                Err(e) => {
                    self.release(slot, None);
                    // The cause names the interpreter's and scratch's server paths.
                    tracing::error!(error = %e, "cannot start a python worker");
                    return Err("cannot start a python worker (the server log says why)".into());
                }
            },
        };
        match worker
            .request(&json!({"op": "check", "source": source}), &self.config)
            .await
        {
            Ok(reply) => {
                self.release(slot, Some(worker));
                match reply.get("error").and_then(Value::as_str) {
                    Some(problem) => Err(problem.to_string()),
                    None => Ok(()),
                }
            }
            Err(e) => {
                self.destroy(worker).await;
                self.release(slot, None);
                Err(format!("source check failed: {e}"))
            }
        }
    }
}

impl Drop for PythonPool {
    fn drop(&mut self) {
        if let Ok(slots) = self.slots.get_mut() {
            for worker in slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
                if let Some(pid) = worker.child.id() {
                    // SAFETY: signalling a process group this pool created.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
            }
        }
        // The roots lived in the workers' mount namespaces; only empty directories remain.
        let _ = std::fs::remove_dir_all(&self.config.scratch_root);
    }
}

fn server_error(kind: &str, details: &str) -> PythonOutcome {
    PythonOutcome::ServerError {
        kind: kind.to_string(),
        details: details.to_string(),
    }
}

fn describe_death(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.and_then(|s| s.signal()) {
        Some(libc::SIGXCPU) => "grader exceeded its CPU time limit".to_string(),
        Some(libc::SIGKILL) => "grader process was killed (memory or process limit)".to_string(),
        Some(sig) => format!("grader process died with signal {sig}"),
        None => "grader process exited unexpectedly".to_string(),
    }
}

/// Host directories an interpreter needs beyond the sandbox's system directories: the
/// prefix of `python` (or of the environment's base interpreter, its `pyvenv.cfg` home)
/// when it lives outside `/usr`, as a pyenv or uv python does. Bound at the same path.
fn interpreter_prefixes(python: &Path, env: Option<&Path>) -> Vec<PathBuf> {
    let base = match env {
        Some(env) => std::fs::read_to_string(env.join("pyvenv.cfg")).ok().and_then(|cfg| {
            cfg.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == "home")
                .map(|(_, v)| PathBuf::from(v.trim()).join("python3"))
        }),
        None => Some(python.to_path_buf()),
    };
    let system = |p: &Path| ["/usr", "/bin", "/lib", "/lib64"].iter().any(|d| p.starts_with(d));
    base.and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|real| real.parent()?.parent().map(Path::to_path_buf))
        .filter(|prefix| !system(prefix) && prefix != Path::new("/"))
        .into_iter()
        .collect()
}

fn prepare_scratch(dir: &Path, level: SandboxLevel) -> std::io::Result<()> {
    // Without namespaces the scratch directory is real and must start empty.
    if level == SandboxLevel::Unsandboxed && dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

#[derive(Debug)]
enum WorkerFailure {
    TimedOut,
    Died,
    Protocol(String),
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerFailure::TimedOut => write!(f, "timed out"),
            WorkerFailure::Died => write!(f, "worker died"),
            WorkerFailure::Protocol(why) => write!(f, "{why}"),
        }
    }
}

impl Worker {
    async fn request(&mut self, request: &Value, config: &PythonPoolConfig) -> Result<Value, WorkerFailure> {
        let exchange = async {
            let mut line = request.to_string().into_bytes();
            line.push(b'\n');
            if self.stdin.write_all(&line).await.is_err() || self.stdin.flush().await.is_err() {
                return Err(WorkerFailure::Died);
            }
            let mut buf = Vec::new();
            let limit = config.max_reply_bytes as u64 + 1;
            match (&mut self.stdout).take(limit).read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return Err(WorkerFailure::Died),
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') {
                return Err(WorkerFailure::Protocol(format!(
                    "grader reply exceeded {} bytes",
                    config.max_reply_bytes
                )));
            }
            serde_json::from_slice::<Value>(&buf)
                .map_err(|_| WorkerFailure::Protocol("grader wrote something that is not a reply".into()))
        };
        let reply = match tokio::time::timeout(config.wall_timeout + BACKSTOP, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(WorkerFailure::TimedOut),
        };
        if let Some(cpu) = reply.get("cpu").and_then(Value::as_f64) {
            self.cpu_used = cpu;
        }
        Ok(reply)
    }
}
