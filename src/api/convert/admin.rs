use crate::auth::model::{ApiKeyRecord, AuditEvent, Project, Quotas, Role};
use crate::proto::{self, timestamp};

pub fn project(p: Project) -> proto::Project {
    proto::Project {
        id: p.id,
        created_at: Some(timestamp(p.created_at)),
        quotas: Some(proto::ProjectQuotas {
            max_running_jobs: p.quotas.max_running_jobs,
            max_queued_jobs: p.quotas.max_queued_jobs,
            max_dataset_bytes: p.quotas.max_dataset_bytes,
            requests_per_second: p.quotas.requests_per_second,
        }),
    }
}

pub fn quotas(q: Option<proto::ProjectQuotas>) -> Quotas {
    let q = q.unwrap_or_default();
    Quotas {
        max_running_jobs: q.max_running_jobs,
        max_queued_jobs: q.max_queued_jobs,
        max_dataset_bytes: q.max_dataset_bytes,
        requests_per_second: q.requests_per_second,
    }
}

pub fn role(r: Role) -> i32 {
    match r {
        Role::Admin => proto::Role::Admin as i32,
        Role::Member => proto::Role::Member as i32,
    }
}

/// Unset is `None` (the service's default); an unknown number is an error.
pub fn role_from_proto(value: i32) -> Result<Option<Role>, crate::error::Error> {
    match proto::Role::try_from(value) {
        Ok(proto::Role::Unspecified) => Ok(None),
        Ok(proto::Role::Admin) => Ok(Some(Role::Admin)),
        Ok(proto::Role::Member) => Ok(Some(Role::Member)),
        Err(_) => Err(crate::error::Error::invalid(
            "role",
            "must be ROLE_ADMIN or ROLE_MEMBER",
        )),
    }
}

pub fn api_key(k: ApiKeyRecord) -> proto::ApiKey {
    proto::ApiKey {
        id: k.id,
        project_id: k.project,
        name: k.name,
        owner: k.owner,
        role: role(k.role),
        redacted_value: k.redacted,
        created_at: Some(timestamp(k.created_at)),
        last_used_at: k.last_used_at.map(timestamp),
        revoked_at: k.revoked_at.map(timestamp),
    }
}

pub fn audit_event(e: AuditEvent) -> proto::AuditEvent {
    proto::AuditEvent {
        seq: e.seq,
        at: Some(timestamp(e.at)),
        key_id: e.key_id,
        project_id: e.project,
        method: e.method,
        outcome: e.outcome,
    }
}
