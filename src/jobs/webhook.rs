//! Webhook delivery for terminal job states: a signed JSON POST, retried
//! with exponential backoff.
//!
//! The signature header is `Lathe-Signature: t=<unix seconds>,v1=<hex>`,
//! where v1 is HMAC-SHA256(secret, "<t>.<body>"): receivers recompute it
//! and reject stale timestamps to stop replays.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::model::Webhook;

const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn deliver(http: &reqwest::Client, hook: &Webhook, payload: &serde_json::Value, job_id: &str) {
    let body = payload.to_string().into_bytes();
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let timestamp = crate::ids::now_millis() / 1000;
        let result = http
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("lathe-signature", signature(&hook.secret, timestamp, &body))
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                tracing::info!(job = %job_id, attempt, "webhook delivered");
                return;
            }
            Ok(r) => tracing::warn!(job = %job_id, attempt, status = %r.status(), "webhook refused"),
            Err(e) => tracing::warn!(job = %job_id, attempt, error = %e, "webhook failed"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(job = %job_id, url = %hook.url, "webhook not delivered after {ATTEMPTS} attempts");
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value computed with Python: hmac.new(b"s3cret", b"1700000000.{}", "sha256").hexdigest()
        let sig = super::signature("s3cret", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
    }
}
