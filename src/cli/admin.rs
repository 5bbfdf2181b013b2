//! `lathe projects …`, `lathe keys …` and `lathe audit`: what an admin key
//! manages (`AdminService`), and `lathe whoami` for any key.

use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::connect::Outcome;
use super::output::status_error;
use crate::proto;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Admin,
    Member,
}

/// A project's quotas; a flag left out is no limit.
#[derive(clap::Args, Debug)]
pub struct QuotaArgs {
    /// Jobs running at once.
    #[arg(long)]
    max_running_jobs: Option<u64>,
    /// Jobs validating or queued at once.
    #[arg(long)]
    max_queued_jobs: Option<u64>,
    /// Bytes of ready datasets.
    #[arg(long)]
    max_dataset_bytes: Option<u64>,
    /// Calls a second (per server replica).
    #[arg(long)]
    requests_per_second: Option<f64>,
}

impl QuotaArgs {
    fn proto(&self) -> proto::ProjectQuotas {
        proto::ProjectQuotas {
            max_running_jobs: self.max_running_jobs,
            max_queued_jobs: self.max_queued_jobs,
            max_dataset_bytes: self.max_dataset_bytes,
            requests_per_second: self.requests_per_second,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ProjectsCommand {
    /// Make a project (1-64 of a-z, 0-9, '-' and '_').
    Create {
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Replace a project's quotas (a flag left out is no limit).
    Quotas {
        id: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    List {
        #[arg(long, default_value_t = 1000)]
        limit: i32,
    },
}

fn limit_text<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn project_json(p: &proto::Project) -> serde_json::Value {
    let q = p.quotas.unwrap_or_default();
    json!({
        "id": p.id, "object": "project", "created_at": time(p.created_at),
        "quotas": {"max_running_jobs": q.max_running_jobs, "max_queued_jobs": q.max_queued_jobs,
                   "max_dataset_bytes": q.max_dataset_bytes, "requests_per_second": q.requests_per_second},
    })
}

fn project_line(p: &proto::Project) -> String {
    let q = p.quotas.unwrap_or_default();
    format!(
        "{:<24} running jobs {:<4} queued jobs {:<4} dataset bytes {:<14} requests/s {}",
        p.id,
        limit_text(q.max_running_jobs),
        limit_text(q.max_queued_jobs),
        limit_text(q.max_dataset_bytes),
        limit_text(q.requests_per_second)
    )
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make an API key in a project; its secret is printed this once.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
        #[arg(long, default_value = "")]
        name: String,
        /// Who the key is for (an email, a service name).
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Keys (redacted), of one project or all.
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: i32,
    },
    /// Revoke a key: it is refused from the next call on.
    Revoke { id: String },
}

fn role_name(v: i32) -> &'static str {
    match proto::Role::try_from(v) {
        Ok(proto::Role::Admin) => "admin",
        Ok(proto::Role::Member) => "member",
        _ => "unspecified",
    }
}

fn time(t: Option<prost_types::Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
}

fn key_json(k: &proto::ApiKey) -> serde_json::Value {
    json!({
        "id": k.id, "object": "api_key", "project_id": k.project_id, "name": k.name, "owner": k.owner,
        "role": role_name(k.role), "redacted_value": k.redacted_value,
        "created_at": k.created_at.map(|t| t.to_string()),
        "last_used_at": k.last_used_at.map(|t| t.to_string()),
        "revoked_at": k.revoked_at.map(|t| t.to_string()),
    })
}

fn key_line(k: &proto::ApiKey) -> String {
    format!(
        "{}  {:<16} {:<6}  {}  {:<20} {:<24} last used {}{}",
        k.id,
        k.project_id,
        role_name(k.role),
        k.redacted_value,
        k.name,
        k.owner,
        time(k.last_used_at),
        if k.revoked_at.is_some() { "  REVOKED" } else { "" }
    )
}

fn show_project(json: bool, p: &proto::Project) {
    if json {
        println!("{}", project_json(p));
    } else {
        println!("{}", project_line(p));
    }
}

fn show_key(json: bool, k: &proto::ApiKey) {
    if json {
        println!("{}", key_json(k));
    } else {
        println!("{}", key_line(k));
    }
}

pub async fn projects(addr: &str, json: bool, cmd: ProjectsCommand) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.admin();
    let project = match cmd {
        ProjectsCommand::Create { id, quotas } => client
            .create_project(proto::CreateProjectRequest {
                id,
                quotas: Some(quotas.proto()),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .project
            .unwrap_or_default(),
        ProjectsCommand::Quotas { id, quotas } => client
            .update_project_quotas(proto::UpdateProjectQuotasRequest {
                project_id: id,
                quotas: Some(quotas.proto()),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .project
            .unwrap_or_default(),
        ProjectsCommand::List { limit } => {
            let list = client
                .list_projects(proto::ListProjectsRequest {
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for p in &list.projects {
                show_project(json, p);
            }
            return Ok(Outcome::Ok);
        }
    };
    show_project(json, &project);
    Ok(Outcome::Ok)
}

pub async fn keys(addr: &str, json: bool, cmd: KeysCommand) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.admin();
    match cmd {
        KeysCommand::Create {
            project,
            role,
            name,
            owner,
        } => {
            let role = match role {
                RoleArg::Admin => proto::Role::Admin,
                RoleArg::Member => proto::Role::Member,
            };
            let made = client
                .create_api_key(proto::CreateApiKeyRequest {
                    project_id: project,
                    name,
                    owner,
                    role: role as i32,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let key = made.key.unwrap_or_default();
            if json {
                let mut value = key_json(&key);
                value["secret"] = json!(made.secret);
                println!("{value}");
            } else {
                println!("{}", key_line(&key));
                println!("secret (shown once; send it as `authorization: Bearer <secret>`):");
                println!("{}", made.secret);
            }
        }
        KeysCommand::List { project, limit } => {
            let list = client
                .list_api_keys(proto::ListApiKeysRequest {
                    project_id: project.unwrap_or_default(),
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for k in &list.keys {
                show_key(json, k);
            }
        }
        KeysCommand::Revoke { id } => {
            let key = client
                .revoke_api_key(proto::RevokeApiKeyRequest { id })
                .await
                .map_err(status_error)?
                .into_inner()
                .key
                .unwrap_or_default();
            show_key(json, &key);
        }
    }
    Ok(Outcome::Ok)
}

pub async fn audit(addr: &str, json: bool, limit: i32) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.admin();
    let list = client
        .list_audit_events(proto::ListAuditEventsRequest {
            page_size: limit,
            page_token: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    for e in list.events {
        if json {
            println!(
                "{}",
                json!({"seq": e.seq, "at": time(e.at), "key_id": e.key_id, "project_id": e.project_id,
                       "method": e.method, "outcome": e.outcome})
            );
        } else {
            println!(
                "{:>6}  {}  {}  {:<12} {:<48} {}",
                e.seq,
                time(e.at),
                e.key_id,
                e.project_id,
                e.method,
                e.outcome
            );
        }
    }
    Ok(Outcome::Ok)
}

pub async fn whoami(addr: &str, json: bool) -> anyhow::Result<Outcome> {
    let mut client = super::connect::connect(addr).await?.admin();
    let key = client
        .get_caller(proto::GetCallerRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .key
        .unwrap_or_default();
    show_key(json, &key);
    Ok(Outcome::Ok)
}
