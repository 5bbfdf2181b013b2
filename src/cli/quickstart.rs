//! `lathe quickstart`: the main job on the embedded default, step by step.
//!
//! Today it covers what the platform can do so far: start an embedded
//! server, upload the Banking77 sample as SFT training data and held-out
//! eval items, show their validation reports, and split off a stratified
//! validation set. Re-running reuses what is already stored.

use std::path::PathBuf;

use anyhow::Context;

use super::datasets::{PurposeArg, upload};
use super::output::{dataset_text, status_error};
use crate::config::ServeConfig;
use crate::proto::{self, dataset_service_client::DatasetServiceClient};

#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Folder with the Banking77 sample (banking77_train_sft.jsonl, banking77_test_items.jsonl).
    #[arg(long, default_value = "data/banking77")]
    pub data: PathBuf,
    /// Data directory of the embedded server (ignored with --addr).
    #[arg(long, env = "LATHE_DATA_DIR", default_value = "./lathe-data")]
    pub data_dir: PathBuf,
    /// Fraction of the training rows held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f64,
}

const LABEL: &str = "/messages/-1/content";

pub async fn run(addr: Option<&str>, args: QuickstartArgs) -> anyhow::Result<super::Outcome> {
    let data = resolve_data(&args.data)?;
    let (url, server) = match addr {
        Some(addr) => {
            println!("1. using the server at {addr}");
            (addr.to_string(), None)
        }
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let config = ServeConfig::embedded(&args.data_dir);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(crate::server::run(listener, config, async move {
                let _ = stopped.await;
            }));
            println!(
                "1. started an embedded server at {url} (SQLite + blobs in {})",
                args.data_dir.display()
            );
            (url, Some((stop, task)))
        }
    };
    let result = steps(&url, &data, args.validation_fraction).await;
    if let Some((stop, task)) = server {
        let _ = stop.send(());
        task.await??;
    }
    result?;
    Ok(super::Outcome::Ok)
}

fn resolve_data(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let candidates = [
        path.to_path_buf(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/banking77"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("banking77_train_sft.jsonl").is_file())
        .with_context(|| format!("no Banking77 sample in {} (pass --data)", path.display()))
}

/// A stored dataset with these bytes, purpose and role, if there is one.
async fn find_existing(
    client: &mut DatasetServiceClient<tonic::transport::Channel>,
    sha256: &str,
    role: &str,
) -> anyhow::Result<Option<proto::Dataset>> {
    let mut token = String::new();
    loop {
        let page = client
            .list_datasets(proto::ListDatasetsRequest {
                page_size: 1000,
                page_token: token,
                purpose: 0,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if let Some(d) = page.datasets.into_iter().find(|d| {
            d.sha256 == sha256
                && d.state == proto::DatasetState::Ready as i32
                && d.metadata.get("quickstart").map(String::as_str) == Some(role)
        }) {
            return Ok(Some(d));
        }
        token = page.next_page_token;
        if token.is_empty() {
            return Ok(None);
        }
    }
}

async fn upload_once(
    client: &mut DatasetServiceClient<tonic::transport::Channel>,
    file: PathBuf,
    purpose: PurposeArg,
    role: &str,
    label: &str,
) -> anyhow::Result<proto::Dataset> {
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if let Some(existing) = find_existing(client, &sha, role).await? {
        println!("   {} already uploaded as {}", file.display(), existing.id);
        return Ok(existing);
    }
    let metadata = vec![("quickstart".to_string(), role.to_string())];
    upload(client, &file, purpose, None, metadata, Some(label.to_string()), true).await
}

async fn steps(url: &str, data: &std::path::Path, fraction: f64) -> anyhow::Result<()> {
    let mut client = DatasetServiceClient::new(super::connect(url).await?);

    println!("2. base model: comes with the trainer (not in this build yet)");
    println!("3. uploading the Banking77 sample (real customer queries, 77 intents)");
    let train = upload_once(
        &mut client,
        data.join("banking77_train_sft.jsonl"),
        PurposeArg::Sft,
        "train",
        LABEL,
    )
    .await?;
    print!("{}", indent(&dataset_text(&train)));
    let items = upload_once(
        &mut client,
        data.join("banking77_test_items.jsonl"),
        PurposeArg::Eval,
        "heldout",
        "/label",
    )
    .await?;
    print!("{}", indent(&dataset_text(&items)));
    anyhow::ensure!(
        train.state == proto::DatasetState::Ready as i32 && items.state == proto::DatasetState::Ready as i32,
        "the sample failed validation; see the report above"
    );

    println!(
        "   splitting off a stratified validation set ({:.0}%)",
        fraction * 100.0
    );
    let split = client
        .split_dataset(proto::SplitDatasetRequest {
            id: train.id.clone(),
            validation_fraction: fraction,
            seed: 0,
            stratify_by: LABEL.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let (t, v) = (split.train.unwrap_or_default(), split.validation.unwrap_or_default());
    let rows = |d: &proto::Dataset| d.validation.as_ref().map(|r| r.total_rows).unwrap_or(0);
    println!(
        "   train {} ({} rows), validation {} ({} rows)",
        t.id,
        rows(&t),
        v.id,
        rows(&v)
    );
    println!("4-6. base-model eval, SFT with LoRA and the comparison come with the trainer, graders and evals");
    println!("7. next: upload your own data with `lathe datasets upload FILE --purpose sft|dpo|rft|eval`,");
    println!("   inspect it with `lathe datasets get ID`, and split it with `lathe datasets split ID`.");
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}
