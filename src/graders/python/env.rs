//! The python grader environment: a virtualenv with the packages OpenAI documents for its
//! grader image, pinned, built from PyPI into the data dir by `lathe graders setup-python`
//! and run by the pool's workers (mounted read-only into their sandbox).
//!
//! Without one, workers run the system `python3` with only the standard library, and a
//! grader that imports anything else is refused at validation with the missing module's
//! name (the worker's `check`), rather than scoring 0 with a `ModuleNotFoundError`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use serde::Serialize;
use tokio::process::Command;

use super::NLTK_DATA_DIR;

/// OpenAI's python grader image (tag 2025-05-08), as its docs list it: pip requirement,
/// then the module a grader imports.
pub const OPENAI_GRADER_PACKAGES: &[(&str, &str)] = &[
    ("numpy==2.2.4", "numpy"),
    ("scipy==1.15.2", "scipy"),
    ("sympy==1.13.3", "sympy"),
    ("pandas==2.2.3", "pandas"),
    ("rapidfuzz==3.10.1", "rapidfuzz"),
    ("scikit-learn==1.6.1", "sklearn"),
    ("rouge-score==0.1.2", "rouge_score"),
    ("deepdiff==8.4.2", "deepdiff"),
    ("jsonschema==4.23.0", "jsonschema"),
    ("pydantic==2.10.6", "pydantic"),
    ("pyyaml==6.0.2", "yaml"),
    ("nltk==3.9.1", "nltk"),
    ("sqlparse==0.5.3", "sqlparse"),
    ("rdkit==2024.9.6", "rdkit"),
    ("scikit-bio==0.6.3", "skbio"),
    ("ast-grep-py==0.36.2", "ast_grep_py"),
];

/// The NLTK corpora OpenAI's image carries.
pub const NLTK_CORPORA: &[&str] = &["punkt", "stopwords", "wordnet", "omw-1.4", "names"];

/// The environment's directory name inside a data dir.
pub const ENV_DIR: &str = "python-env";

/// The record `setup` leaves in the environment: what is installed.
pub const MANIFEST: &str = "lathe-python-env.json";

/// `dir` if it holds an environment (its `bin/python3`).
pub fn existing(dir: &Path) -> Option<PathBuf> {
    dir.join("bin").join("python3").exists().then(|| dir.to_path_buf())
}

/// The environment a server or CLI uses: the one named, else the data dir's if it was
/// set up. A named directory without an interpreter is an error, not a silent fallback.
pub fn resolve(named: Option<&Path>, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let found = match named {
        Some(dir) => existing(dir).map(Some).with_context(|| {
            format!(
                "{} is not a python grader environment (no bin/python3); build it with `lathe graders setup-python --env {}`",
                dir.display(),
                dir.display()
            )
        }),
        None => Ok(existing(&data_dir.join(ENV_DIR))),
    }?;
    // Absolute: workers start in `/` and mount it from there.
    found
        .map(|dir| std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display())))
        .transpose()
}

/// What `setup` did.
#[derive(Debug, Serialize)]
pub struct SetupReport {
    pub env: PathBuf,
    pub python_version: String,
    /// `pip freeze` after the install.
    pub installed: Vec<String>,
    /// Modules that import.
    pub modules_ok: Vec<String>,
    /// NLTK corpora downloaded, and why not when they could not be.
    pub nltk_corpora: Vec<String>,
    pub nltk_error: Option<String>,
}

/// Builds (or updates) the environment at `dir` with `base_python`: a virtualenv, the
/// `packages` (pip requirement, module to import) from the package index, an import check
/// of each module, and NLTK's corpora where its downloader can reach them (their host is
/// not a package index; a failure there is reported, not fatal). Everything ends up
/// readable by the sandbox's unprivileged uids.
pub async fn setup(
    dir: &Path,
    base_python: &Path,
    packages: &[(String, String)],
    mut progress: impl FnMut(&str),
) -> anyhow::Result<SetupReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = dir.join("bin").join("python3");
    if !python.exists() {
        progress(&format!(
            "creating a virtualenv at {} with {}",
            dir.display(),
            base_python.display()
        ));
        run(
            Command::new(base_python).arg("-m").arg("venv").arg(dir),
            "python -m venv",
        )
        .await?;
    }
    if !packages.is_empty() {
        progress(&format!(
            "installing {} packages from the package index",
            packages.len()
        ));
        let mut pip = Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
        ])
        .args(packages.iter().map(|(req, _)| req));
        run(&mut pip, "pip install").await?;
    }
    let mut modules_ok = Vec::new();
    let mut broken = Vec::new();
    for (_, module) in packages {
        let out = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stdin(Stdio::null())
            .output()
            .await?;
        if out.status.success() {
            modules_ok.push(module.clone());
        } else {
            broken.push(format!("{module}: {}", last_line(&out.stderr)));
        }
    }
    anyhow::ensure!(broken.is_empty(), "installed but not importable: {}", broken.join("; "));
    let (nltk_corpora, nltk_error) = if modules_ok.iter().any(|m| m == "nltk") {
        progress("downloading NLTK's corpora");
        let target = dir.join(NLTK_DATA_DIR);
        let out = Command::new(&python)
            .args([
                "-c",
                "import sys, nltk\nok = [c for c in sys.argv[2:] if nltk.download(c, download_dir=sys.argv[1], quiet=True, raise_on_error=True)]\nprint(' '.join(ok))",
            ])
            .arg(&target)
            .args(NLTK_CORPORA)
            .stdin(Stdio::null())
            .output()
            .await?;
        if out.status.success() {
            let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            let missing: Vec<&str> = NLTK_CORPORA
                .iter()
                .copied()
                .filter(|c| !got.iter().any(|g| g == c))
                .collect();
            let err = (!missing.is_empty()).then(|| format!("not downloaded: {}", missing.join(", ")));
            (got, err)
        } else {
            (Vec::new(), Some(last_line(&out.stderr)))
        }
    } else {
        (Vec::new(), None)
    };
    let freeze = Command::new(&python)
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .stdin(Stdio::null())
        .output()
        .await?;
    let installed = String::from_utf8_lossy(&freeze.stdout)
        .lines()
        .map(String::from)
        .collect();
    let version = Command::new(&python).arg("--version").output().await?;
    let report = SetupReport {
        env: dir.to_path_buf(),
        python_version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
        installed,
        modules_ok,
        nltk_corpora,
        nltk_error,
    };
    std::fs::write(dir.join(MANIFEST), serde_json::to_vec_pretty(&report)?)?;
    readable_by_all(dir)?;
    Ok(report)
}

async fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `chmod -R a+rX`: the sandbox runs graders as other uids, and a server's umask may
/// have kept files private.
fn readable_by_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        let executable = meta.is_dir() || mode & 0o111 != 0;
        let want = mode | 0o444 | if executable { 0o111 } else { 0 };
        if want != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}
