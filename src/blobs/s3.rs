//! S3-compatible storage: a client from the standard `AWS_*` settings, and
//! the start-up probe that turns a wrong bucket, wrong credentials or an
//! endpoint that does not answer into a message naming the setting,
//! before the server takes any request.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

/// How long the probe may take before the endpoint counts as unreachable.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// S3 refuses to copy an object larger than this in one request, and a
/// staged blob reaches its address by a copy.
pub(super) const MAX_COPY_BYTES: u64 = 5 << 30;

/// Opens `bucket` (under `prefix`, when not empty) with `builder`'s settings
/// once a probe under the prefix (put, list, delete of a small object) has
/// worked. `url` is how the operator named it, for messages.
pub(super) async fn open(
    builder: AmazonS3Builder,
    bucket: &str,
    prefix: &str,
    url: &str,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let builder = builder.with_bucket_name(bucket);
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .unwrap_or_else(|| "AWS's default endpoint".to_string());
    // The probe neither retries nor waits long: an endpoint that does not
    // answer is a setting to fix, not a blip to ride out.
    let probe = builder
        .clone()
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "5s")
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s");
    let build = |b: AmazonS3Builder| -> anyhow::Result<Arc<dyn ObjectStore>> {
        let s3 = b
            .build()
            .map_err(|e| anyhow::anyhow!("--blob-url {url}: the S3 settings (AWS_*) do not work: {e}"))?;
        Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        })
    };
    let probe = build(probe)?;
    match tokio::time::timeout(PROBE_TIMEOUT, try_round_trip(&*probe)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => anyhow::bail!("--blob-url {url}: {}", explain(&e, bucket, &endpoint)),
        Err(_) => anyhow::bail!(
            "--blob-url {url}: no answer from {endpoint} (AWS_ENDPOINT_URL) within {} s",
            PROBE_TIMEOUT.as_secs()
        ),
    }
    // At work, the client's own retries ride out a blip (a dropped
    // connection, a 503) but give up within seconds rather than its default
    // three minutes: a longer outage is the caller's to wait out, where it
    // can say so (`outage`) and be stopped.
    build(builder.with_retry(RetryConfig {
        retry_timeout: Duration::from_secs(10),
        ..RetryConfig::default()
    }))
}

/// Puts, lists and deletes a small object under `probe/`.
async fn try_round_trip(store: &dyn ObjectStore) -> object_store::Result<()> {
    let key = Path::from(format!("probe/{}", crate::ids::new_id("probe")));
    store.put(&key, "lathe start-up probe".into()).await?;
    let listed: Vec<_> = store.list(Some(&Path::from("probe"))).try_collect().await?;
    let seen = listed.iter().any(|m| m.location == key);
    store.delete(&key).await?;
    if !seen {
        return Err(object_store::Error::Generic {
            store: "S3",
            source: "an object just written is not listed".into(),
        });
    }
    Ok(())
}

/// What a failed probe means, in the operator's terms.
fn explain(e: &object_store::Error, bucket: &str, endpoint: &str) -> String {
    match e {
        object_store::Error::NotFound { .. } => {
            format!("the bucket {bucket:?} does not exist at {endpoint}: {e}")
        }
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => format!(
            "{endpoint} refused the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) for bucket {bucket:?}: {e}"
        ),
        _ => format!("cannot use {endpoint} (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP): {e}"),
    }
}
