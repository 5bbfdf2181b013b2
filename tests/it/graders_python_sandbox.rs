//! The python grader sandbox: hostile graders are stopped and the pool keeps working.
//!
//! They run at the root level (namespaces + uid drop) as root and at the user-namespace
//! level otherwise; without /usr/bin/python3 or namespaces they say why they skip. As
//! root, `hostile_graders_hold_when_the_server_is_not_root` also re-runs the hostile set
//! as an unprivileged uid (the user-namespace level).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lathe::graders::{GradeContext, PythonOutcome, PythonPool, PythonPoolConfig, Sample, SandboxLevel, parse, run};
use serde_json::{Value, json};

async fn pool(workers: usize) -> Option<PythonPool> {
    pool_in(workers, None).await
}

async fn pool_in(workers: usize, env: Option<std::path::PathBuf>) -> Option<PythonPool> {
    pool_with(workers, env, Duration::from_secs(60)).await
}

async fn pool_with(workers: usize, env: Option<std::path::PathBuf>, queue_timeout: Duration) -> Option<PythonPool> {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("skipping: needs /usr/bin/python3");
        return None;
    }
    let dir = std::env::temp_dir().join(format!(
        "lathe-sandbox-test-{}-{workers}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let config = PythonPoolConfig {
        workers,
        wall_timeout: Duration::from_secs(3),
        queue_timeout,
        cpu_seconds_per_call: 5,
        scratch_root: dir,
        uid_base: next_uid_base(),
        max_processes: 16,
        env,
        ..PythonPoolConfig::default()
    };
    // Root gets the full sandbox; anyone else the user-namespace one. Neither available
    // (a container without namespaces) is reported, not failed: CI images differ.
    let pool = match PythonPool::start(config).await {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    // SAFETY: geteuid cannot fail.
    let expected = if unsafe { libc::geteuid() } == 0 {
        SandboxLevel::Root
    } else {
        SandboxLevel::UserNamespace
    };
    assert_eq!(pool.sandbox().level, expected);
    Some(pool)
}

/// Each pool gets its own uids, so one test's fork bomb never counts against another's
/// process limit (RLIMIT_NPROC is per uid): a range per test process, from its whole pid.
fn next_uid_base() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    3_000_000 + (std::process::id() % 1_000_000) * 64 + NEXT.fetch_add(4, Ordering::SeqCst) % 64
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        % 100_000
}

const OK: &str = "def grade(sample, item):\n    return 1.0\n";

async fn grade(pool: &PythonPool, source: &str) -> PythonOutcome {
    pool.grade(source, &Sample::from_model_output("x").to_json(), &json!({}))
        .await
}

async fn assert_still_works(pool: &PythonPool) {
    assert_eq!(grade(pool, OK).await, PythonOutcome::Reward(1.0));
}

fn runtime_error(outcome: PythonOutcome) -> String {
    match outcome {
        PythonOutcome::RuntimeError(details) => details,
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

#[tokio::test]
async fn grades_with_sample_and_item() {
    let Some(pool) = pool(1).await else { return };
    let source = "def grade(sample, item):\n    return 1.0 if sample['output_json']['a'] == item['want'] else 0.25\n";
    let out = pool
        .grade(
            source,
            &Sample::from_model_output("{\"a\": 3}").to_json(),
            &json!({"want": 3}),
        )
        .await;
    assert_eq!(out, PythonOutcome::Reward(1.0));
    let out = pool
        .grade(
            source,
            &Sample::from_model_output("{\"a\": 4}").to_json(),
            &json!({"want": 3}),
        )
        .await;
    assert_eq!(out, PythonOutcome::Reward(0.25));
}

#[tokio::test]
async fn exceptions_and_non_floats_are_runtime_errors_with_tracebacks() {
    let Some(pool) = pool(1).await else { return };
    let details = runtime_error(grade(&pool, "def grade(s, i):\n    raise ValueError('boom')\n").await);
    assert!(
        details.contains("ValueError: boom") && details.contains("Traceback"),
        "{details}"
    );
    let details = runtime_error(grade(&pool, "def grade(s, i):\n    return 'high'\n").await);
    assert!(details.contains("must return a float"), "{details}");
    let details = runtime_error(grade(&pool, "def grade(s, i):\n    return float('nan')\n").await);
    assert!(details.contains("nan"), "{details}");
    let details = runtime_error(
        grade(
            &pool,
            "def grade(s, i):\n    print('x' * 10_000_000)\n    return None\n",
        )
        .await,
    );
    assert!(details.len() < 20_000, "details are capped");
    assert_still_works(&pool).await;
}

#[tokio::test]
async fn sockets_are_refused_inet_and_unix() {
    let Some(pool) = pool(1).await else { return };
    sockets_are_refused(&pool).await;
}

/// AF_INET to a listening port and AF_UNIX to a listening socket in the host's /tmp:
/// `socket()` itself is refused (seccomp), and nothing ever connects.
async fn sockets_are_refused(pool: &PythonPool) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().expect("addr").port();
    let source = format!(
        "import socket\ndef grade(s, i):\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    return 1.0\n"
    );
    let details = runtime_error(grade(pool, &source).await);
    assert!(details.contains("PermissionError"), "{details}");
    let path = std::env::temp_dir().join(format!("lathe-sock-{}-{}", std::process::id(), rand_suffix()));
    let unix = std::os::unix::net::UnixListener::bind(&path).expect("bind unix");
    unix.set_nonblocking(true).unwrap();
    let source = format!(
        "import socket\ndef grade(s, i):\n    c = socket.socket(socket.AF_UNIX)\n    c.connect({:?})\n    return 1.0\n",
        path.display().to_string()
    );
    let details = runtime_error(grade(pool, &source).await);
    assert!(
        details.contains("PermissionError") && details.contains("Operation not permitted"),
        "{details}"
    );
    assert!(
        listener.accept().is_err() && unix.accept().is_err(),
        "a grader connected"
    );
    let _ = std::fs::remove_file(&path);
    assert_still_works(pool).await;
}

#[tokio::test]
async fn filesystem_is_read_only_except_scratch() {
    let Some(pool) = pool(1).await else { return };
    // /usr is in the worker's root, read-only.
    let target = format!("/usr/lathe-escape-{}", rand_suffix());
    let source = format!("def grade(s, i):\n    open({target:?}, 'w').write('pwned')\n    return 1.0\n");
    let details = runtime_error(grade(&pool, &source).await);
    assert!(details.contains("Read-only file system"), "{details}");
    assert!(
        !std::path::Path::new(&target).exists(),
        "the grader wrote outside its scratch dir"
    );
    let scratch = "import os, tempfile\ndef grade(s, i):\n    p = os.path.join(tempfile.gettempdir(), 'f')\n    open(p, 'w').write('ok')\n    return float(open(p).read() == 'ok')\n";
    assert_eq!(grade(&pool, scratch).await, PythonOutcome::Reward(1.0));
    let home = "import os\ndef grade(s, i):\n    return float(os.path.exists('/root') or os.path.exists('/home'))\n";
    assert_eq!(
        grade(&pool, home).await,
        PythonOutcome::Reward(0.0),
        "home directories are not in the worker's root"
    );
}

#[tokio::test]
async fn files_outside_the_scratch_are_not_there() {
    let Some(pool) = pool(1).await else { return };
    reads_outside_scratch_fail(&pool).await;
}

/// A server's data dir (0700, with its database), in the host's /tmp and outside it,
/// /etc/passwd, /etc/shadow: none of them exists in the worker's root.
async fn reads_outside_scratch_fail(pool: &PythonPool) {
    use std::os::unix::fs::PermissionsExt;
    // The build's tmp dir, or /var/tmp for a uid that cannot write there.
    let outside = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .or_else(|_| tempfile::tempdir_in("/var/tmp"))
        .unwrap();
    for base in [std::env::temp_dir(), outside.path().to_path_buf()] {
        let data = tempfile::tempdir_in(&base).unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let db = data.path().join("lathe.db");
        std::fs::write(&db, "SECRET").unwrap();
        for path in [db, data.path().to_path_buf()] {
            let source = format!(
                "import os\ndef grade(s, i):\n    p = {:?}\n    return float(len(os.listdir(p)) if os.path.isdir(p) else len(open(p).read()))\n",
                path.display().to_string()
            );
            let details = runtime_error(grade(pool, &source).await);
            assert!(
                details.contains("No such file or directory"),
                "{}: {details}",
                path.display()
            );
        }
    }
    for path in ["/etc/passwd", "/etc/shadow", "/etc/hostname"] {
        let source = format!("def grade(s, i):\n    return float(len(open({path:?}).read()))\n");
        let details = runtime_error(grade(pool, &source).await);
        assert!(details.contains("No such file or directory"), "{path}: {details}");
    }
    assert_still_works(pool).await;
}

#[tokio::test]
async fn host_processes_are_invisible_and_the_server_cannot_be_signalled() {
    let Some(pool) = pool(1).await else { return };
    processes_are_out_of_reach(&pool, &[std::process::id()]).await;
}

/// Lists /proc, signals `pids` (the server's), then every process it can (`kill(-1)`) and
/// pid 1 (its own worker): the first two find nothing, the worker survives.
async fn processes_are_out_of_reach(pool: &PythonPool, pids: &[u32]) {
    let details = runtime_error(
        grade(
            pool,
            "import os\ndef grade(s, i):\n    return float(len(os.listdir('/proc')))\n",
        )
        .await,
    );
    assert!(details.contains("No such file or directory: '/proc'"), "{details}");
    for pid in pids {
        let source = format!("import os\ndef grade(s, i):\n    os.kill({pid}, 9)\n    return 1.0\n");
        let details = runtime_error(grade(pool, &source).await);
        assert!(details.contains("ProcessLookupError"), "{details}");
    }
    // Pid 1 (the worker) ignores it; -1 finds no one else (ESRCH).
    let everyone = "import os\ndef grade(s, i):\n    os.kill(1, 9)\n    try:\n        os.kill(-1, 9)\n    except ProcessLookupError:\n        pass\n    return 0.5\n";
    assert_eq!(grade(pool, everyone).await, PythonOutcome::Reward(0.5));
    assert_still_works(pool).await;
}

#[tokio::test]
async fn escapes_through_ctypes_are_refused() {
    let Some(pool) = pool(1).await else { return };
    escapes_are_refused(&pool).await;
}

/// Namespaces, mounts, root changes, ptrace, process_vm_readv, bpf, perf, userfaultfd,
/// io_uring, keyrings, personality through ctypes, and a subprocess: each answers an
/// errno; the grader reports them all in its error.
async fn escapes_are_refused(pool: &PythonPool) {
    let source = format!(
        r#"import ctypes, errno, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, fn):
    ctypes.set_errno(0)
    rc = fn()
    return "%s=%s" % (name, "ESCAPED" if rc != -1 else errno.errorcode.get(ctypes.get_errno(), "?"))
def grade(s, i):
    buf = ctypes.create_string_buffer(64)
    results = [
        attempt("unshare_user", lambda: libc.unshare(0x10000000)),
        attempt("unshare_mount", lambda: libc.unshare(0x20000)),
        attempt("clone_newuser", lambda: libc.syscall({clone}, 0x10000000 | 17, 0, 0, 0, 0)),
        attempt("setns", lambda: libc.setns(0, 0)),
        attempt("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        attempt("umount", lambda: libc.umount2(b"/usr", 2)),
        attempt("chroot", lambda: libc.chroot(b"/tmp")),
        attempt("pivot_root", lambda: libc.syscall({pivot_root}, b"/tmp", b"/tmp")),
        attempt("ptrace", lambda: libc.ptrace(16, 1, 0, 0)),
        attempt("process_vm_readv", lambda: libc.syscall({vm_readv}, 1, 0, 0, 0, 0, 0)),
        attempt("bpf", lambda: libc.syscall({bpf}, 0, buf, 64)),
        attempt("perf_event_open", lambda: libc.syscall({perf}, buf, 0, -1, -1, 0)),
        attempt("userfaultfd", lambda: libc.syscall({uffd}, 0)),
        attempt("io_uring_setup", lambda: libc.syscall({uring}, 8, buf)),
        attempt("keyctl", lambda: libc.syscall({keyctl}, 0, 0, 0, 0, 0)),
        attempt("personality", lambda: libc.personality(0x0040000)),
        attempt("socket", lambda: libc.socket(2, 1, 0)),
    ]
    try:
        subprocess.run(["/usr/bin/true"])
        results.append("exec=ESCAPED")
    except PermissionError:
        results.append("exec=EPERM")
    raise PermissionError("refused: " + " ".join(results))
"#,
        clone = libc::SYS_clone,
        pivot_root = libc::SYS_pivot_root,
        vm_readv = libc::SYS_process_vm_readv,
        bpf = libc::SYS_bpf,
        perf = libc::SYS_perf_event_open,
        uffd = libc::SYS_userfaultfd,
        uring = libc::SYS_io_uring_setup,
        keyctl = libc::SYS_keyctl,
    );
    let details = runtime_error(grade(pool, &source).await);
    assert!(details.contains("refused: "), "{details}");
    assert!(!details.contains("ESCAPED"), "{details}");
    for name in [
        "unshare_user",
        "unshare_mount",
        "clone_newuser",
        "setns",
        "mount",
        "umount",
        "chroot",
        "pivot_root",
        "ptrace",
        "process_vm_readv",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "keyctl",
        "personality",
        "socket",
        "exec",
    ] {
        assert!(details.contains(&format!("{name}=EPERM")), "{name}: {details}");
    }
    assert_still_works(pool).await;
}

#[tokio::test]
async fn forged_replies_never_reach_the_pool() {
    let Some(pool) = pool(1).await else { return };
    forged_replies_are_refused(&pool).await;
}

/// A grader that writes a reply of its own (reward 0.777) on stdout and on every
/// descriptor it has, then returns 0.0: never 0.777.
async fn forged_replies_are_refused(pool: &PythonPool) {
    let forged = r#"{"ok": true, "reward": 0.777}"#;
    let stdout = format!(
        "def grade(s, i):
    print({forged:?}, flush=True)
    return 0.0
"
    );
    assert_eq!(grade(pool, &stdout).await, PythonOutcome::Reward(0.0));
    let every_fd = format!(
        "import os
def grade(s, i):
    for fd in range(0, 256):
        try:
            os.write(fd, {forged:?}.encode() + b'\\n')
        except OSError:
            pass
    return 0.0
"
    );
    let details = runtime_error(grade(pool, &every_fd).await);
    assert!(details.contains("protocol violation"), "{details}");
    // The next call on the same worker reads its own answer, not a leftover forgery.
    assert_eq!(grade(pool, &stdout).await, PythonOutcome::Reward(0.0));
    assert_still_works(pool).await;
}

#[tokio::test]
async fn a_busy_pool_answers_resource_exhausted_after_its_queue_timeout() {
    let Some(pool) = pool_with(1, None, Duration::from_millis(500)).await else {
        return;
    };
    let slow = "import time\ndef grade(s, i):\n    time.sleep(2)\n    return 1.0\n";
    let waiting = async {
        // Let the slow grader take the only worker first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        (grade(&pool, OK).await, start.elapsed())
    };
    let (held, (queued, waited)) = tokio::join!(grade(&pool, slow), waiting);
    assert_eq!(held, PythonOutcome::Reward(1.0));
    match queued {
        PythonOutcome::ServerError { kind, details } => {
            assert_eq!(kind, "resource_exhausted");
            assert!(details.contains("stayed busy"), "{details}");
        }
        other => panic!("expected resource_exhausted, got {other:?}"),
    }
    assert!(waited < Duration::from_millis(1500), "waited {waited:?}");
    assert_still_works(&pool).await;
}

/// One project's burst of slow graders holds at most all but one worker: another
/// project's grade runs at once instead of queueing behind it.
#[tokio::test]
async fn one_projects_slow_graders_leave_a_worker_for_another() {
    let Some(pool) = pool(2).await else { return };
    let slow = "import time\ndef grade(s, i):\n    time.sleep(1.5)\n    return 1.0\n";
    let sample = Sample::from_model_output("x").to_json();
    let item = json!({});
    let a = |n: u8| {
        let (pool, sample, item) = (&pool, &sample, &item);
        async move {
            let source = format!("{slow}# {n}\n");
            let domain = lathe::graders::python_source_hash(&source);
            pool.grade_for("project-a", &domain, &source, sample, item).await
        }
    };
    let other = async {
        // Let project a's three slow grades queue first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let domain = lathe::graders::python_source_hash(OK);
        let out = pool.grade_for("project-b", &domain, OK, &sample, &item).await;
        (out, start.elapsed())
    };
    let (r1, r2, r3, (out, waited)) = tokio::join!(a(1), a(2), a(3), other);
    for r in [r1, r2, r3] {
        assert_eq!(r, PythonOutcome::Reward(1.0));
    }
    assert_eq!(out, PythonOutcome::Reward(1.0));
    // Two workers and no cap: b would wait for a's first grades (1.5 s, then more).
    assert!(waited < Duration::from_millis(1200), "project b waited {waited:?}");
}

/// As root: runs `hostile_set_at_this_level` as uid 65534 (the user-namespace level),
/// telling it this process's pid as the server's to kill.
#[tokio::test]
async fn hostile_graders_hold_when_the_server_is_not_root() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: re-runs the hostile set as another uid, which needs root");
        return;
    }
    if !std::path::Path::new("/usr/bin/python3").exists() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipping: needs /usr/bin/python3 and setpriv");
        return;
    }
    let out = tokio::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "graders_python_sandbox::hostile_set_at_this_level",
            "--nocapture",
        ])
        .env("LATHE_TEST_SERVER_PID", std::process::id().to_string())
        .env("TMPDIR", "/tmp")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("hostile set held at UserNamespace"), "{text}");
}

/// Every hostile grader above on one pool at this process's level; `LATHE_TEST_SERVER_PID`
/// names one more pid to try to kill (the root test that re-runs this unprivileged).
#[tokio::test]
async fn hostile_set_at_this_level() {
    let Some(pool) = pool(1).await else { return };
    let mut pids = vec![std::process::id()];
    pids.extend(
        std::env::var("LATHE_TEST_SERVER_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok()),
    );
    reads_outside_scratch_fail(&pool).await;
    sockets_are_refused(&pool).await;
    processes_are_out_of_reach(&pool, &pids).await;
    escapes_are_refused(&pool).await;
    forged_replies_are_refused(&pool).await;
    let details = runtime_error(
        grade(
            &pool,
            "def grade(s, i):\n    x = bytearray(20 * 1024**3)\n    return 1.0\n",
        )
        .await,
    );
    assert!(details.contains("MemoryError"), "{details}");
    let details = runtime_error(grade(&pool, "import os\ndef grade(s, i):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n").await);
    assert!(details.contains("timed out"), "{details}");
    assert_still_works(&pool).await;
    println!("hostile set held at {:?}", pool.sandbox().level);
}

#[tokio::test]
async fn fork_bomb_is_contained() {
    let Some(pool) = pool(1).await else { return };
    let bomb = "import os\ndef grade(s, i):\n    while True:\n        os.fork()\n";
    let details = runtime_error(grade(&pool, bomb).await);
    assert!(
        details.contains("BlockingIOError") || details.contains("timed out"),
        "{details}"
    );
    let stubborn = "import os\ndef grade(s, i):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n";
    let details = runtime_error(grade(&pool, stubborn).await);
    assert!(details.contains("timed out"), "{details}");
    assert_still_works(&pool).await;
}

/// A process a grade leaves behind is killed with it: it never writes its file in the
/// scratch, which the next grade of the same worker (same domain) would see.
#[tokio::test]
async fn nothing_a_grade_forks_outlives_it() {
    let Some(pool) = pool(1).await else { return };
    let (domain, sample, item) = ([9u8; 32], Sample::from_model_output("x").to_json(), json!({}));
    let leave = "import os, time\ndef grade(s, i):\n    open('early', 'w').write('x')\n    if os.fork() == 0:\n        time.sleep(0.5)\n        open('late', 'w').write('x')\n        os._exit(0)\n    return 1.0\n";
    assert_eq!(
        pool.grade_in(&domain, leave, &sample, &item).await,
        PythonOutcome::Reward(1.0)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let check =
        "import os\ndef grade(s, i):\n    return float(os.path.exists('early')) + 2 * float(os.path.exists('late'))\n";
    assert_eq!(
        pool.grade_in(&domain, check, &sample, &item).await,
        PythonOutcome::Reward(1.0),
        "same worker (its scratch kept 'early'), and 'late' never written"
    );
}

#[tokio::test]
async fn huge_allocation_fails_cleanly() {
    let Some(pool) = pool(1).await else { return };
    let details = runtime_error(
        grade(
            &pool,
            "def grade(s, i):\n    x = bytearray(20 * 1024**3)\n    return 1.0\n",
        )
        .await,
    );
    assert!(details.contains("MemoryError"), "{details}");
    assert_still_works(&pool).await;
}

#[tokio::test]
async fn infinite_loop_times_out_and_worker_is_replaced() {
    let Some(pool) = pool(1).await else { return };
    let start = Instant::now();
    let details = runtime_error(grade(&pool, "def grade(s, i):\n    while True:\n        pass\n").await);
    assert!(details.contains("timed out"), "{details}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_still_works(&pool).await;
}

#[tokio::test]
async fn validate_checks_source_with_ast() {
    let Some(pool) = pool(1).await else { return };
    assert_eq!(pool.check_source(OK).await, Ok(()));
    assert!(
        pool.check_source("def grade(s, i):\n  return (\n")
            .await
            .unwrap_err()
            .contains("syntax error")
    );
    assert!(
        pool.check_source("def grade(s):\n  return 1\n")
            .await
            .unwrap_err()
            .contains("two arguments")
    );
    let ctx = GradeContext {
        python: Some(Arc::new(pool)),
        ..GradeContext::default()
    };
    let bad = json!({"type": "python", "name": "p", "source": "def grade(s, i):\n  return (\n"});
    let violations = lathe::graders::validate(&bad, &ctx).await.unwrap_err();
    assert_eq!(violations[0].field, "source");
}

#[tokio::test]
async fn run_reports_runtime_errors_in_metadata_and_warm_workers_keep_answering() {
    let Some(pool) = pool(2).await else { return };
    let ctx = GradeContext {
        python: Some(Arc::new(pool)),
        ..GradeContext::default()
    };
    let g = parse(&json!({"type": "python", "name": "p", "source": "def grade(sample, item):\n    return len(sample['output_text']) / 10\n"}))
        .expect("valid");
    let item: Value = json!({});
    let sample = Sample::from_model_output("hello");
    let r = run(&g, &sample, &item, &ctx).await;
    assert_eq!(r.reward, 0.5);
    // Many calls on the same warm workers. How fast they are is measured
    // by the grader benchmark (BENCHMARKS.md), not here.
    for _ in 0..200 {
        let r = run(&g, &sample, &item, &ctx).await;
        assert_eq!(r.reward, 0.5);
    }

    let bad = parse(&json!({"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1 / 0\n"}))
        .expect("valid");
    let r = run(&bad, &sample, &item, &ctx).await;
    assert_eq!(r.reward, 0.0);
    assert!(r.metadata.errors().python_grader_runtime_error);
    assert!(
        r.metadata
            .errors()
            .python_grader_runtime_error_details
            .contains("ZeroDivisionError")
    );
}

/// A grader environment as `setup-python` lays it out (a virtualenv), made offline: no
/// pip, one module of its own. It sits in a 0700 directory, as in a data dir.
fn probe_env() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = data.path().join("python-env");
    let made = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&env)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipping: python3 -m venv is not available");
        return None;
    }
    let site = std::process::Command::new(env.join("bin/python3"))
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output()
        .unwrap();
    let site = std::path::PathBuf::from(String::from_utf8(site.stdout).unwrap().trim());
    std::fs::write(site.join("lathe_env_probe.py"), "VALUE = 0.625\n").unwrap();
    Some((data, env))
}

const PROBE: &str = "import lathe_env_probe\ndef grade(s, i):\n    return lathe_env_probe.VALUE\n";

#[tokio::test]
async fn an_environment_in_a_private_data_dir_is_mounted_read_only_for_the_workers() {
    let Some((_data, env)) = probe_env() else { return };
    let Some(pool) = pool_in(1, Some(env.clone())).await else {
        return;
    };
    pool.check_source(PROBE).await.unwrap();
    assert_eq!(grade(&pool, PROBE).await, PythonOutcome::Reward(0.625));
    // Read-only: the grader cannot change the packages the next grader imports.
    let write = "import os, lathe_env_probe\ndef grade(s, i):\n    d = os.path.dirname(lathe_env_probe.__file__)\n    try:\n        open(os.path.join(d, 'evil.py'), 'w').write('x')\n        return 1.0\n    except OSError:\n        return 0.0\n";
    assert_eq!(grade(&pool, write).await, PythonOutcome::Reward(0.0));
    // NLTK finds its corpora in the environment.
    let nltk = "import os\ndef grade(s, i):\n    return float(os.environ['NLTK_DATA'].endswith('/nltk_data'))\n";
    assert_eq!(grade(&pool, nltk).await, PythonOutcome::Reward(1.0));
}

#[tokio::test]
async fn a_module_the_environment_lacks_is_named_at_validation() {
    let Some(pool) = pool(1).await else { return };
    let problem = pool.check_source(PROBE).await.unwrap_err();
    assert!(
        problem.contains("not installed") && problem.contains("lathe_env_probe"),
        "{problem}"
    );
    // An import guarded by `except ImportError` is optional, and the standard library is there.
    let optional = "import json\ntry:\n    import lathe_env_probe\nexcept ImportError:\n    lathe_env_probe = None\ndef grade(s, i):\n    return 1.0\n";
    pool.check_source(optional).await.unwrap();
    // Graded anyway (an eval that skipped validation), it is a runtime error that says so.
    let details = runtime_error(grade(&pool, PROBE).await);
    assert!(details.contains("ModuleNotFoundError"), "{details}");
}

/// One grader's python sources (a multi's) share warm workers: alternating between them
/// neither replaces the worker nor mixes up their `grade` functions; another grader's
/// source gets a fresh worker. (A worker is told by a mark in its scratch, which lives as
/// long as the worker: each grade runs in a fresh child process.)
#[tokio::test]
async fn a_graders_sources_share_a_worker_and_other_graders_do_not() {
    let Some(pool) = pool(1).await else { return };
    let mark = "import os, random\ndef mark():\n    if not os.path.exists('mark'):\n        open('mark', 'w').write(str(random.randint(1, 10**9)))\n    return float(open('mark').read())\n";
    let a = format!("{mark}def grade(s, i):\n    return mark()\n");
    let b = format!("{mark}def grade(s, i):\n    return -mark()\n");
    let (a, b) = (a.as_str(), b.as_str());
    let domain = [7u8; 32];
    let (sample, item) = (Sample::from_model_output("x").to_json(), json!({}));
    let pid = |o: PythonOutcome| match o {
        PythonOutcome::Reward(r) => r,
        other => panic!("{other:?}"),
    };
    let first = pid(pool.grade_in(&domain, a, &sample, &item).await);
    for _ in 0..3 {
        assert_eq!(pid(pool.grade_in(&domain, b, &sample, &item).await), -first);
        assert_eq!(pid(pool.grade_in(&domain, a, &sample, &item).await), first);
    }
    let other = pid(pool.grade(a, &sample, &item).await);
    assert_ne!(other, first, "another grader's code ran in the same process");
    // A multi grader's parsed sub-graders carry one domain; separate graders their own.
    let multi = parse(
        &json!({"type": "multi", "name": "m", "calculate_output": "x + y", "graders": {
        "x": {"type": "python", "name": "x", "source": a},
        "y": {"type": "python", "name": "y", "source": b}}}),
    )
    .unwrap();
    let lathe::graders::Grader::Multi(m) = multi else {
        panic!()
    };
    let domains: Vec<[u8; 32]> = m
        .graders
        .iter()
        .map(|(_, g)| match g {
            lathe::graders::Grader::Python(p) => p.domain,
            _ => panic!(),
        })
        .collect();
    assert_eq!(domains[0], domains[1]);
    let lathe::graders::Grader::Python(alone) = parse(&json!({"type": "python", "name": "x", "source": a})).unwrap()
    else {
        panic!()
    };
    assert_ne!(alone.domain, domains[0]);
}
