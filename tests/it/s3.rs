//! A server whose blobs live in an S3 bucket (moto): a dataset goes up, a
//! job writes checkpoints, the dataset comes back down, and once the
//! records are deleted the bucket holds nothing; a model imported from
//! another bucket is stored the same way. And `lathe serve` with an S3
//! setting that does not work stops at start-up, naming it.

use std::process::Command;

use crate::common::moto::Moto;
use crate::common::scripted::MODEL;
use crate::common::*;
use lathe::proto::{
    self, DatasetPurpose, JobState, dataset_service_client::DatasetServiceClient, download_dataset_response,
    fine_tuning_service_client::FineTuningServiceClient, model_service_client::ModelServiceClient,
    watch_job_response::Payload,
};

const BUCKET: &str = "lathe-server";

/// The scripted server on `moto`'s bucket: 20 steps, a checkpoint every 10.
fn start(data_dir: &std::path::Path, moto: &Moto) -> (std::process::Child, String) {
    let mut env = moto.env();
    env.push(("LATHE_BLOB_URL", format!("s3://{BUCKET}/replicas")));
    scripted_server(data_dir, 20, 1, 5, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_s3_keeps_datasets_and_checkpoints_there_and_leaves_nothing_behind() {
    let Some(moto) = Moto::start().await else { return };
    moto.create_bucket(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start(dir.path(), &moto);
    let channel = connect_local(&url, dir.path()).await;
    let mut datasets = DatasetServiceClient::new(channel.clone());
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    let mut jobs = FineTuningServiceClient::new(channel.clone());
    let job = jobs
        .create_job(proto::CreateJobRequest {
            base_model: MODEL.into(),
            training_dataset_id: train.id.clone(),
            suffix: "s3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut watch = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let done = loop {
        match watch.message().await.unwrap().unwrap().payload.unwrap() {
            Payload::Event(_) => {}
            Payload::End(end) => break end.job.unwrap(),
        }
    };
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");

    // The bytes are in the bucket, under the prefix, at their addresses.
    let objects = moto.objects(BUCKET).await;
    let address = |sha: &str| format!("replicas/blobs/sha256/{}/{sha}", &sha[..2]);
    assert!(objects.contains(&address(&train.sha256)), "{objects:?}");
    let checkpoints = jobs
        .list_checkpoints(proto::ListCheckpointsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    assert_eq!(checkpoints.len(), 2);
    assert!(
        objects.iter().all(|o| o.starts_with("replicas/blobs/sha256/")),
        "only committed blobs: {objects:?}"
    );

    // Downloading streams them back, byte for byte.
    let mut download = datasets
        .download_dataset(proto::DownloadDatasetRequest { id: train.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(msg) = download.message().await.unwrap() {
        match msg.payload.unwrap() {
            download_dataset_response::Payload::Chunk(c) => bytes.extend_from_slice(&c),
            download_dataset_response::Payload::End(end) => assert_eq!(end.sha256, train.sha256),
        }
    }
    assert_eq!(bytes, std::fs::read(fixture("sft_tools.jsonl")).unwrap());

    // Deleting the records takes their blobs: nothing is left.
    ModelServiceClient::new(channel.clone())
        .delete_model(proto::DeleteModelRequest {
            id: done.fine_tuned_model.clone(),
        })
        .await
        .unwrap();
    datasets
        .delete_dataset(proto::DeleteDatasetRequest { id: train.id.clone() })
        .await
        .unwrap();
    assert_eq!(moto.objects(BUCKET).await, Vec::<String>::new());
    server.kill().unwrap();
    server.wait().unwrap();
}

/// An admin imports a model from a bucket (`s3://bucket/prefix`, read with
/// the server's AWS_* settings): its model files, and nothing else there,
/// become blobs in the server's own store, which the delete empties again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_imported_from_a_bucket_is_stored_as_blobs() {
    let Some(moto) = Moto::start().await else { return };
    moto.create_bucket(BUCKET).await;
    moto.create_bucket("models").await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tiny");
    lathe_engine::tiny::write_tiny_model(&source, 2, 32, 1).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&source).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        moto.put("models", &format!("tiny/{name}"), std::fs::read(entry.path()).unwrap())
            .await;
        names.push(name);
    }
    names.sort();
    moto.put("models", "tiny/README.md", b"not part of the model".to_vec())
        .await;
    let data = dir.path().join("data");
    let (mut server, url) = start(&data, &moto);
    let mut models = ModelServiceClient::new(connect_local(&url, &data).await);
    let model = models
        .import_model(proto::ImportModelRequest {
            name: "tiny-s3".into(),
            source: "s3://models/tiny".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(model.format, "safetensors");
    let stored: Vec<&str> = model.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(stored, names);
    let objects = moto.objects(BUCKET).await;
    for f in &model.files {
        let address = format!("replicas/blobs/sha256/{}/{}", &f.sha256[..2], f.sha256);
        assert!(objects.contains(&address), "{} is not stored: {objects:?}", f.name);
    }

    let err = models
        .import_model(proto::ImportModelRequest {
            name: "nothing".into(),
            source: "s3://models/nothing-here".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("source: s3://models/nothing-here has neither config.json"),
        "{err:?}"
    );

    models
        .delete_model(proto::DeleteModelRequest { id: "tiny-s3".into() })
        .await
        .unwrap();
    assert_eq!(moto.objects(BUCKET).await, Vec::<String>::new());
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `lathe serve` with a bucket that does not exist exits at start-up with
/// a message naming --blob-url; so does one that does not parse.
#[tokio::test]
async fn serve_stops_at_start_up_on_an_s3_setting_that_does_not_work() {
    let Some(moto) = Moto::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let serve = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .envs(moto.env())
            .env("LATHE_BLOB_URL", url)
            .output()
            .unwrap()
    };
    let out = serve("s3://no-such-bucket/lathe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--blob-url s3://no-such-bucket/lathe: the bucket \"no-such-bucket\" does not exist"),
        "{stderr}"
    );
    let out = serve("s4://bucket");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--blob-url") && stderr.contains("s3://bucket"),
        "{stderr}"
    );
}
