//! The directories base models may be registered from.
//!
//! A registration names a path on the server, which the server then reads
//! with its own rights, so a path is taken only when it resolves (symlinks
//! and `..` followed, by the filesystem) to something under one of the
//! operator's model roots, and never to the server's own files (the data
//! directory: database, blobs) unless a root inside them says so (the
//! default `<data-dir>/models`). Every refusal
//! of that kind reads the same, whether or not something exists at the
//! path, so registration cannot be used to learn what is on the server's
//! disk.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The one answer for a path that is not a model under a root, or that
/// does not resolve at all.
pub const OUTSIDE: &str = "must be a model directory or GGUF file under one of the server's model roots";

#[derive(Clone, Debug)]
pub struct ModelRoots {
    /// Absolute; resolved (canonicalized) at each check, so a root made
    /// after start-up (`lathe models pull` creates `./models`) counts.
    roots: Vec<PathBuf>,
    /// The server's own directories: a path in one is taken only under a
    /// root that lies strictly inside it.
    excluded: Vec<PathBuf>,
}

impl ModelRoots {
    /// `roots` and `excluded` relative to the working directory are made
    /// absolute now, so a later change of directory changes nothing.
    pub fn new(roots: Vec<PathBuf>, excluded: Vec<PathBuf>) -> Self {
        Self {
            roots: roots.into_iter().map(absolute).collect(),
            excluded: excluded.into_iter().map(absolute).collect(),
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `path`, resolved, when it lies under a root and outside the
    /// excluded directories; the uniform refusal otherwise (also when it
    /// does not exist, so existence is not revealed).
    pub fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let outside = || Error::invalid("path", OUTSIDE);
        let resolved = std::fs::canonicalize(path).map_err(|_| outside())?;
        if self.contains(&resolved) {
            Ok(resolved)
        } else {
            Err(outside())
        }
    }

    /// Whether an already resolved path lies under a root, and, where it
    /// lies in an excluded directory, under a root strictly inside that
    /// one (so a root that is, or holds, the data directory opens none of
    /// it). Directories that do not exist hold nothing.
    pub fn contains(&self, resolved: &Path) -> bool {
        let canonical =
            |dirs: &[PathBuf]| -> Vec<PathBuf> { dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect() };
        let excluded = canonical(&self.excluded);
        canonical(&self.roots).iter().any(|root| {
            resolved.starts_with(root)
                && excluded
                    .iter()
                    .filter(|e| resolved.starts_with(e))
                    .all(|e| root.starts_with(e) && root != e)
        })
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_resolves_under_a_root_and_outside_the_exclusions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("models");
        let data = root.join("data");
        std::fs::create_dir_all(root.join("m")).unwrap();
        std::fs::create_dir_all(data.join("blobs")).unwrap();
        std::fs::create_dir_all(data.join("models/m")).unwrap();
        std::fs::write(data.join("blobs/b"), "x").unwrap();
        std::fs::write(data.join("lathe.db"), "x").unwrap();
        std::fs::write(dir.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).unwrap();
        let refuses = |roots: &ModelRoots, paths: &[PathBuf]| {
            for refused in paths {
                let err = roots.resolve(refused).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    format!("invalid argument: path: {OUTSIDE}"),
                    "{refused:?}"
                );
            }
        };
        let excluded = vec![data.clone(), data.join("blobs")];
        let roots = ModelRoots::new(vec![root.clone(), dir.path().join("not-made-yet")], excluded.clone());
        assert!(roots.resolve(&root.join("m")).is_ok());
        assert!(roots.resolve(&root.join("m/../m")).is_ok());
        refuses(
            &roots,
            &[
                root.join("../secret"),
                root.join("link"),
                root.join("missing"),
                data.join("blobs/b"),
                data.join("lathe.db"),
                data.join("models/m"),
                dir.path().join("secret"),
            ],
        );
        // A root inside the data directory opens only itself; the data
        // directory as a root opens nothing of it.
        let roots = ModelRoots::new(vec![data.join("models"), data.clone()], excluded);
        assert!(roots.resolve(&data.join("models/m")).is_ok());
        refuses(&roots, &[data.join("blobs/b"), data.join("lathe.db")]);
    }
}
