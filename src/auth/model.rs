//! Projects, API keys, callers and audit events: plain records.

/// The project everything belonged to before projects existed, and the one
/// the first admin key is made in.
pub const DEFAULT_PROJECT: &str = "default";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub id: String,
    pub created_at: i64,
    pub quotas: Quotas,
}

/// What a project may use at once; None is no limit. Set by admins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quotas {
    /// Jobs running at once: the scheduler claims no more of its jobs.
    pub max_running_jobs: Option<u64>,
    /// Jobs validating or queued at once: more are refused at create.
    pub max_queued_jobs: Option<u64>,
    /// Bytes of its ready datasets: an upload or split beyond is refused.
    pub max_dataset_bytes: Option<u64>,
    /// Calls a second, a token bucket holding one second's worth, per replica.
    pub requests_per_second: Option<f64>,
}

/// A key as stored: its secret only as a hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub project: String,
    pub name: String,
    pub owner: String,
    pub role: Role,
    /// Hex SHA-256 of the secret. Secrets are 256 random bits, so a fast
    /// hash is enough: there is nothing to guess that a slow one would protect.
    pub secret_hash: String,
    pub redacted: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Who is calling: the key a request was authenticated with. Every scoped
/// service call takes one; its project bounds what the call may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub project: String,
    pub role: Role,
}

impl Caller {
    /// The caller the server acts as for its own work (the scheduler, the
    /// eval runner) on a project's resources.
    pub fn system(project: &str) -> Caller {
        Caller {
            key_id: "system".to_string(),
            project: project.to_string(),
            role: Role::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether a record of `project` is visible to this caller.
    pub fn sees(&self, project: &str) -> bool {
        self.project == project
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub seq: u64,
    pub at: i64,
    pub key_id: String,
    pub project: String,
    pub method: String,
    pub outcome: String,
}
