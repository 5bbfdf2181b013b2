//! Who may call the server, and on which project's behalf.
//!
//! Every call carries an API key (`authorization: Bearer sk-lathe-…`). A key
//! belongs to a project and has a role: members work within their project,
//! admins also manage projects, keys and base models and read the audit log.
//! The server stores a key's SHA-256 only; the secret is shown once, when it
//! is made. `authenticate` gives the same answer for a missing, malformed,
//! unknown or revoked key, so a refusal says nothing about what exists.
//!
//! The embedded default needs no set-up: on a first start on a loopback
//! address the server makes an admin key for the `default` project and
//! writes it to `<data-dir>/admin.key` (mode 0600), where the CLI on the same
//! machine finds it. On any other address it refuses to start until keys
//! exist (`LATHE_ADMIN_KEY`, or keys made earlier).
//!
//! Architecture invariant: this module knows neither tonic nor HTTP. The
//! front doors' layers hand it the header's value and get a `Caller` (or
//! the error) back, and record calls that change something through `audit`.

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

pub mod model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use self::model::{ApiKeyRecord, AuditEvent, Caller, DEFAULT_PROJECT, Project, Quotas, Role};
use crate::error::{Error, Result};
use crate::ids::{new_id, now_millis};
use crate::paging;
use crate::store::Store;

/// Where the first admin key of a loopback server is written, in its data dir.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Every key's prefix, so secret scanners and people can tell one apart.
pub const KEY_PREFIX: &str = "sk-lathe-";

/// How long an authentication answer is reused. A revoked key stops working
/// within this time on every replica (each reads the shared store).
const CACHE_TTL: Duration = Duration::from_secs(2);

/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY_MILLIS: i64 = 60_000;

/// The refusal for every kind of bad key: it must not tell them apart.
const UNAUTHENTICATED: &str =
    "missing or invalid API key: send `authorization: Bearer <key>` with a key an admin made for you";

/// Longest fields accepted for names and owners.
const MAX_NAME_BYTES: usize = 256;

/// Answers read from the store, reused on this replica for `CACHE_TTL`.
/// Unknown keys are remembered too (a client retrying a bad key costs no
/// query), so the map is bounded by clearing it when it grows.
struct Recent<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> Recent<V> {
    fn new() -> Self {
        Recent {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, value) = entries.get(key)?;
        (at.elapsed() < CACHE_TTL).then(|| value.clone())
    }

    fn put(&self, key: &str, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= 10_000 {
            entries.clear();
        }
        entries.insert(key.to_string(), (Instant::now(), value));
    }

    fn forget(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// A project's request budget on this replica: tokens refill at its
/// `requests_per_second` up to one second's worth.
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Auth {
    store: Arc<dyn Store>,
    /// secret hash → the key (or None: unknown).
    keys: Recent<Option<ApiKeyRecord>>,
    /// key id → when this replica last wrote its `last_used_at`.
    touched: Mutex<HashMap<String, i64>>,
    /// project → its quotas.
    quotas: Recent<Quotas>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// What a first start did about keys, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Keys existed already.
    Existing,
    /// `LATHE_ADMIN_KEY` was recorded as an admin key of `default`.
    FromEnvironment,
    /// A new admin key was written to this file.
    WroteKeyFile(PathBuf),
}

/// PERMISSION_DENIED unless the caller is an admin; `what` says what was refused.
pub fn require_admin(caller: &Caller, what: &str) -> Result<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!("{what} needs an admin key")))
    }
}

/// Checks a project id: 1-64 of a-z, 0-9, '-' and '_', starting with a
/// letter or digit.
pub fn check_project_id(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn redact(secret: &str) -> String {
    let head: String = secret.chars().take(KEY_PREFIX.len() + 4).collect();
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}...{tail}")
}

fn new_secret() -> String {
    format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// The key in an `authorization` header's value (`Bearer <key>`).
fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

fn check_quotas(q: &Quotas) -> Result<()> {
    if let Some(rate) = q.requests_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(Error::invalid(
            "quotas.requests_per_second",
            "must be a positive number (leave it unset for no limit)",
        ));
    }
    let too_big = |v: Option<u64>| v.is_some_and(|v| v > i64::MAX as u64);
    for (field, value) in [
        ("quotas.max_running_jobs", q.max_running_jobs),
        ("quotas.max_queued_jobs", q.max_queued_jobs),
        ("quotas.max_dataset_bytes", q.max_dataset_bytes),
    ] {
        if too_big(value) {
            return Err(Error::invalid(field, "is larger than the server can store"));
        }
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(field, format!("must be at most {MAX_NAME_BYTES} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

impl Auth {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            keys: Recent::new(),
            touched: Mutex::new(HashMap::new()),
            quotas: Recent::new(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call from the caller's project's request budget, or
    /// RESOURCE_EXHAUSTED with how long until the next call fits.
    pub async fn admit(&self, caller: &Caller) -> Result<()> {
        let Some(rate) = self.quotas_of(&caller.project).await?.requests_per_second else {
            return Ok(());
        };
        let capacity = rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(caller.project.clone()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Error::Overloaded {
            message: format!(
                "project {} is over its quota of {rate} requests per second; retry after the delay",
                caller.project
            ),
            retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / rate),
        })
    }

    async fn quotas_of(&self, project: &str) -> Result<Quotas> {
        if let Some(quotas) = self.quotas.get(project) {
            return Ok(quotas);
        }
        let quotas = self
            .store
            .get_project(project)
            .await?
            .map(|p| p.quotas)
            .unwrap_or_default();
        self.quotas.put(project, quotas.clone());
        Ok(quotas)
    }

    /// Makes sure an admin can get in: records `admin_key` when given; else,
    /// when no admin key exists, writes a new one to `data_dir/admin.key` if
    /// the server listens only on loopback, and refuses to start otherwise.
    pub async fn bootstrap(&self, data_dir: &Path, loopback: bool, admin_key: Option<&str>) -> Result<Bootstrap> {
        if let Some(secret) = admin_key {
            if !secret.starts_with(KEY_PREFIX) || secret.len() < KEY_PREFIX.len() + 32 {
                return Err(Error::invalid(
                    "LATHE_ADMIN_KEY",
                    format!("must start with {KEY_PREFIX} and have at least 32 characters after it"),
                ));
            }
            let hash = hash_secret(secret);
            if self.store.api_key_by_hash(&hash).await?.is_none() {
                let inserted = self
                    .insert_key(
                        DEFAULT_PROJECT,
                        "admin (LATHE_ADMIN_KEY)",
                        "operator",
                        Role::Admin,
                        secret,
                    )
                    .await;
                return match inserted {
                    Ok(_) => Ok(Bootstrap::FromEnvironment),
                    // Replicas starting together: another one recorded it first.
                    Err(_) if self.store.api_key_by_hash(&hash).await?.is_some() => Ok(Bootstrap::Existing),
                    Err(e) => Err(e),
                };
            }
            return Ok(Bootstrap::Existing);
        }
        if self.store.has_admin_key().await? {
            return Ok(Bootstrap::Existing);
        }
        if !loopback {
            return Err(Error::FailedPrecondition {
                message: "refusing to listen beyond loopback without API keys: set LATHE_ADMIN_KEY to an \
                          admin key (sk-lathe- and 32 or more characters), or start once on 127.0.0.1 and \
                          make keys with `lathe keys create`"
                    .to_string(),
                violations: vec![("API_KEYS".to_string(), "admin".to_string())],
            });
        }
        let secret = new_secret();
        let path = data_dir.join(ADMIN_KEY_FILE);
        crate::secrets::write_owner_only(&path, &secret)
            .map_err(|e| Error::Internal(format!("writing the admin key file: {e}")))?;
        self.insert_key(DEFAULT_PROJECT, "admin (first start)", "local", Role::Admin, &secret)
            .await?;
        Ok(Bootstrap::WroteKeyFile(path))
    }

    async fn insert_key(
        &self,
        project: &str,
        name: &str,
        owner: &str,
        role: Role,
        secret: &str,
    ) -> Result<ApiKeyRecord> {
        let key = ApiKeyRecord {
            id: new_id("key"),
            project: project.to_string(),
            name: name.to_string(),
            owner: owner.to_string(),
            role,
            secret_hash: hash_secret(secret),
            redacted: redact(secret),
            created_at: now_millis(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_api_key(&key).await?;
        Ok(key)
    }

    /// The caller an `authorization` header's value names, or UNAUTHENTICATED.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller> {
        let refused = || Error::Unauthenticated(UNAUTHENTICATED.to_string());
        let secret = bearer(header).ok_or_else(refused)?;
        let hash = hash_secret(secret);
        let key = self.lookup(&hash).await?.ok_or_else(refused)?;
        if key.revoked_at.is_some() {
            return Err(refused());
        }
        self.touch(&key.id);
        Ok(Caller {
            key_id: key.id,
            project: key.project,
            role: key.role,
        })
    }

    async fn lookup(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        if let Some(hit) = self.keys.get(hash) {
            return Ok(hit);
        }
        let key = self.store.api_key_by_hash(hash).await?;
        self.keys.put(hash, key.clone());
        Ok(key)
    }

    /// Records the key's use, at most once a minute per key and replica, off
    /// the request's path.
    fn touch(&self, key_id: &str) {
        let now = now_millis();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            match touched.get(key_id) {
                Some(&at) if now - at < TOUCH_EVERY_MILLIS => return,
                _ => touched.insert(key_id.to_string(), now),
            };
        }
        let store = self.store.clone();
        let id = key_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id, now).await {
                tracing::warn!(key = %id, error = %e, "could not record a key's last use");
            }
        });
    }

    /// Records a call that changed something (or tried to): who, what, when, how it ended.
    pub async fn audit(&self, caller: &Caller, method: &str, outcome: &str) {
        let event = AuditEvent {
            seq: 0,
            at: now_millis(),
            key_id: caller.key_id.clone(),
            project: caller.project.clone(),
            method: method.to_string(),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.store.insert_audit_events(std::slice::from_ref(&event)).await {
            tracing::error!(error = %e, method, key = %caller.key_id, "could not record an audit event");
        }
    }

    pub async fn create_project(&self, caller: &Caller, id: &str, quotas: Quotas) -> Result<Project> {
        require_admin(caller, "creating a project")?;
        check_project_id("id", id)?;
        check_quotas(&quotas)?;
        let project = Project {
            id: id.to_string(),
            created_at: now_millis(),
            quotas,
        };
        self.store.insert_project(&project).await?;
        Ok(project)
    }

    /// Replaces a project's quotas; every replica applies them within the
    /// cache's two seconds.
    pub async fn set_quotas(&self, caller: &Caller, id: &str, quotas: Quotas) -> Result<Project> {
        require_admin(caller, "setting a project's quotas")?;
        check_project_id("project_id", id)?;
        check_quotas(&quotas)?;
        let project = self
            .store
            .set_project_quotas(id, &quotas)
            .await?
            .ok_or_else(|| Error::not_found("project", id))?;
        self.quotas.forget(id);
        Ok(project)
    }

    pub async fn list_projects(
        &self,
        caller: &Caller,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Project>, String)> {
        require_admin(caller, "listing projects")?;
        let limit = paging::limit(page_size)?;
        let after = (!page_token.is_empty()).then_some(page_token);
        let rows = self.store.list_projects(after, limit + 1).await?;
        Ok(paging::split(rows, limit, |p| p.id.clone()))
    }

    /// A new key and its secret (the only time the secret is seen).
    pub async fn create_key(
        &self,
        caller: &Caller,
        project: &str,
        name: &str,
        owner: &str,
        role: Role,
    ) -> Result<(ApiKeyRecord, String)> {
        require_admin(caller, "creating an API key")?;
        check_project_id("project_id", project)?;
        check_text("name", name)?;
        check_text("owner", owner)?;
        if self.store.get_project(project).await?.is_none() {
            return Err(Error::not_found("project", project));
        }
        let secret = new_secret();
        let key = self.insert_key(project, name, owner, role, &secret).await?;
        Ok((key, secret))
    }

    pub async fn list_keys(
        &self,
        caller: &Caller,
        project: Option<&str>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<ApiKeyRecord>, String)> {
        require_admin(caller, "listing API keys")?;
        let limit = paging::limit(page_size)?;
        let after = (!page_token.is_empty()).then_some(page_token);
        let rows = self.store.list_api_keys(project, after, limit + 1).await?;
        Ok(paging::split(rows, limit, |k| k.id.clone()))
    }

    pub async fn revoke_key(&self, caller: &Caller, id: &str) -> Result<ApiKeyRecord> {
        require_admin(caller, "revoking an API key")?;
        let key = self
            .store
            .revoke_api_key(id, now_millis())
            .await?
            .ok_or_else(|| Error::not_found("API key", id))?;
        self.keys.forget(&key.secret_hash);
        Ok(key)
    }

    pub async fn list_audit(
        &self,
        caller: &Caller,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AuditEvent>, String)> {
        require_admin(caller, "reading the audit log")?;
        let limit = paging::limit(page_size)?;
        let before = if page_token.is_empty() {
            None
        } else {
            Some(page_token.parse::<u64>().map_err(|_| {
                Error::invalid(
                    "page_token",
                    "not a page token from a previous ListAuditEvents response",
                )
            })?)
        };
        let rows = self.store.list_audit_events(before, limit + 1).await?;
        Ok(paging::split(rows, limit, |e| e.seq.to_string()))
    }

    /// The caller's own key record.
    pub async fn caller_key(&self, caller: &Caller) -> Result<ApiKeyRecord> {
        self.store
            .get_api_key(&caller.key_id)
            .await?
            .ok_or_else(|| Error::Unauthenticated(UNAUTHENTICATED.to_string()))
    }
}

/// The admin key in `data_dir/admin.key`, made (and written, owner-only)
/// when there is none: what an embedded server is started with, so its
/// embedder knows the key before the server runs.
pub fn local_admin_key(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    match read_key_file(&path) {
        Ok(key) if key.starts_with(KEY_PREFIX) => Ok(key),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} does not hold a {KEY_PREFIX} key", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = new_secret();
            crate::secrets::write_owner_only(&path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// The key in a key file (`admin.key`): its first line, trimmed.
pub fn read_key_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(Some("Bearer sk-lathe-x")), Some("sk-lathe-x"));
        assert_eq!(bearer(Some("bearer  sk-lathe-x ")), Some("sk-lathe-x"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn secrets_are_random_and_redacted() {
        let a = new_secret();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, new_secret());
        let r = redact(&a);
        assert!(r.starts_with(&a[..13]) && r.ends_with(&a[a.len() - 4..]));
        assert!(r.len() < 25, "{r}");
    }
}
