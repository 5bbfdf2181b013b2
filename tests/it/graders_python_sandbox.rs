//! The python grader sandbox: hostile graders are stopped and the pool keeps working.
//!
//! They run at the root level (namespaces + uid drop) as root and at the user-namespace
//! level otherwise; without /usr/bin/python3 or namespaces they say why they skip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lathe::graders::{GradeContext, PythonOutcome, PythonPool, PythonPoolConfig, Sample, SandboxLevel, parse, run};
use serde_json::{Value, json};

async fn pool(workers: usize) -> Option<PythonPool> {
    pool_in(workers, None).await
}

async fn pool_in(workers: usize, env: Option<std::path::PathBuf>) -> Option<PythonPool> {
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

/// Each pool gets its own uid range so one test's uid sweep never kills another's workers.
fn next_uid_base() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    62_000 + (std::process::id() % 100) * 100 + NEXT.fetch_add(4, Ordering::SeqCst)
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
async fn network_is_unreachable() {
    let Some(pool) = pool(1).await else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let source = format!(
        "import socket\ndef grade(s, i):\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    return 1.0\n"
    );
    let details = runtime_error(grade(&pool, &source).await);
    assert!(details.contains("Error"), "{details}");
    assert_still_works(&pool).await;
}

#[tokio::test]
async fn filesystem_is_read_only_except_scratch() {
    let Some(pool) = pool(1).await else { return };
    let target = std::env::temp_dir().join(format!("lathe-escape-{}", rand_suffix()));
    let source = format!(
        "def grade(s, i):\n    open({:?}, 'w').write('pwned')\n    return 1.0\n",
        target.display().to_string()
    );
    let details = runtime_error(grade(&pool, &source).await);
    assert!(
        details.contains("Read-only file system") || details.contains("Permission denied"),
        "{details}"
    );
    assert!(!target.exists(), "the grader wrote outside its scratch dir");
    let scratch = "import os, tempfile\ndef grade(s, i):\n    p = os.path.join(tempfile.gettempdir(), 'f')\n    open(p, 'w').write('ok')\n    return float(open(p).read() == 'ok')\n";
    assert_eq!(grade(&pool, scratch).await, PythonOutcome::Reward(1.0));
    let home = "import os\ndef grade(s, i):\n    return float(len(os.listdir('/root')))\n";
    assert_eq!(
        grade(&pool, home).await,
        PythonOutcome::Reward(0.0),
        "root's home is hidden"
    );
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

#[tokio::test]
async fn huge_allocation_fails_cleanly() {
    let Some(pool) = pool(1).await else { return };
    let details = runtime_error(
        grade(
            &pool,
            "def grade(s, i):\n    x = bytearray(10 * 1024**3)\n    return 1.0\n",
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
/// source gets a fresh process.
#[tokio::test]
async fn a_graders_sources_share_a_worker_and_other_graders_do_not() {
    let Some(pool) = pool(1).await else { return };
    let a = "import os\ndef grade(s, i):\n    return float(os.getpid())\n";
    let b = "import os\ndef grade(s, i):\n    return -float(os.getpid())\n";
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
