//! Webhook delivery for terminal job states: a signed JSON POST, retried
//! with exponential backoff.
//!
//! The signature header is `Lathe-Signature: t=<unix seconds>,v1=<hex>`,
//! where v1 is HMAC-SHA256(secret, "<t>.<body>"): receivers recompute it
//! and reject stale timestamps to stop replays.
//!
//! A webhook URL comes from whoever creates a job, and the server makes the
//! request, so by default only https:// URLs to public addresses are taken
//! (`WebhookPolicy`): a literal address is checked when the job is
//! created, a name when the request is made, by a resolver that drops the
//! addresses it may not reach (so DNS rebinding gets nothing). Redirects
//! are not followed and proxies are not used, so neither can send the
//! request elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;

use super::model::Webhook;

const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the operator lets webhooks reach; the default is https:// to
/// public addresses only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookPolicy {
    /// Plain http:// URLs too.
    pub allow_http: bool,
    /// Loopback, private, link-local and other non-public addresses too.
    pub allow_private_addresses: bool,
}

const PRIVATE: &str = "must not point at a loopback, private, link-local or other non-public address";

/// The problem with `url` under `policy`, as a field violation's
/// description: the scheme, and a literal address's range. A name is
/// checked when the request is made, against what it resolves to then.
pub fn check_url(url: &str, policy: WebhookPolicy) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err("must be an https:// URL (this server does not send webhooks over plain http)".into()),
        _ if policy.allow_http => return Err("must be an http:// or https:// URL".into()),
        _ => return Err("must be an https:// URL".into()),
    }
    let Some(host) = parsed.host_str() else {
        return Err("must name a host".into());
    };
    // The URL parser writes every IPv4 spelling (0x7f.1, 2130706433) in
    // dotted form and IPv6 in brackets.
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    if let Some(ip) = literal
        && !policy.allow_private_addresses
        && !is_public(ip)
    {
        return Err(PRIVATE.into());
    }
    Ok(parsed)
}

/// Whether `ip` is an address on the public internet: not unspecified,
/// loopback, private (RFC 1918, CGNAT 100.64/10, ULA fc00::/7), link-local,
/// multicast, broadcast, documentation, benchmarking or reserved, also
/// when written as an IPv4-mapped, -compatible, NAT64 or 6to4 IPv6
/// address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0 included
        || ip.is_loopback()
        || ip.is_private()
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64/10
        || ip.is_link_local()
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18/15
        || ip.is_multicast()
        || a >= 240) // reserved, and the broadcast address
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // ::a.b.c.d and ::ffff:a.b.c.d
    if let Some(v4) = ip.to_ipv4() {
        return is_public_v4(v4);
    }
    // NAT64 64:ff9b::/96
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    // 6to4 2002::/16
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    !(ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // ULA fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
        || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
        || s[..4] == [0x100, 0, 0, 0]) // discard 100::/64
}

/// A name's addresses without the ones webhooks may not reach; an error
/// when none is left, so the request is never made.
#[derive(Debug)]
struct PublicOnly;

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to addresses webhooks may not reach (loopback, private, link-local or other non-public)")]
struct Refused(String);

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client webhooks are sent with, under `policy`.
pub fn client(policy: WebhookPolicy) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if !policy.allow_private_addresses {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder.build().unwrap_or_default()
}

pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Sends the webhook under `policy`; when it is not delivered, says why,
/// for the job's log (never the URL's path or query, nor the secret).
pub async fn deliver(
    http: &reqwest::Client,
    policy: WebhookPolicy,
    hook: &Webhook,
    payload: &serde_json::Value,
    job_id: &str,
) -> Result<(), String> {
    // The server's policy may have changed since the job was created; a
    // literal address never reaches the resolver, so it is checked here.
    let url = check_url(&hook.url, policy).map_err(|why| format!("refused: its URL {why}"))?;
    if !policy.allow_private_addresses
        && let Some(host) = url.domain()
    {
        // The resolver enforces this at connect time; asking first tells a
        // refusal (not retried) from a failure.
        let port = url.port_or_known_default().unwrap_or(443);
        let public = match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => addrs.into_iter().any(|a| is_public(a.ip())),
            Err(_) => true, // a failure to resolve is retried below, like any other
        };
        if !public {
            return Err(format!("refused: {}", Refused(host.to_string())));
        }
    }
    let body = payload.to_string().into_bytes();
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let timestamp = crate::ids::now_millis() / 1000;
        let result = http
            .post(url.clone())
            .header("content-type", "application/json")
            .header("lathe-signature", signature(&hook.secret, timestamp, &body))
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                tracing::info!(job = %job_id, attempt, "webhook delivered");
                return Ok(());
            }
            Ok(r) => {
                tracing::warn!(job = %job_id, attempt, status = %r.status(), "webhook refused");
                last = format!("the receiver answered {}", r.status());
            }
            Err(e) => {
                tracing::warn!(job = %job_id, attempt, error = %e, "webhook failed");
                if let Some(r) = find_refused(&e) {
                    return Err(format!("refused: {r}"));
                }
                last = if e.is_timeout() {
                    "the request timed out".into()
                } else if e.is_connect() {
                    "could not connect".into()
                } else {
                    "the request failed".into()
                };
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(job = %job_id, "webhook not delivered after {ATTEMPTS} attempts");
    Err(format!("not delivered after {ATTEMPTS} attempts: {last}"))
}

/// The resolver's refusal somewhere in `e`'s causes (a name that
/// resolved to public addresses when asked first, then to others).
fn find_refused(e: &reqwest::Error) -> Option<&Refused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
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

    #[test]
    fn only_public_addresses_are_public() {
        use super::is_public;
        for refused in [
            "0.0.0.0",
            "127.0.0.1",
            "127.8.9.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
        ] {
            assert!(!is_public(refused.parse().unwrap()), "{refused}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_by_scheme_and_literal_address() {
        use super::{WebhookPolicy, check_url};
        let strict = WebhookPolicy::default();
        assert!(check_url("https://hooks.example.com/x", strict).is_ok());
        assert!(
            check_url("https://localhost/x", strict).is_ok(),
            "names are checked when sending"
        );
        for (url, why) in [
            ("http://hooks.example.com/x", "https://"),
            ("ftp://hooks.example.com/x", "https://"),
            ("https://127.0.0.1/x", "loopback"),
            ("https://2130706433/x", "loopback"),
            ("https://0x7f.1/x", "loopback"),
            ("https://169.254.169.254/latest", "loopback"),
            ("https://[::1]/x", "loopback"),
            ("https://[::ffff:10.0.0.1]/x", "loopback"),
            ("not a url", "not a URL"),
        ] {
            let err = check_url(url, strict).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
        let open = WebhookPolicy {
            allow_http: true,
            allow_private_addresses: true,
        };
        assert!(check_url("http://127.0.0.1:9/x", open).is_ok());
        assert!(check_url("ftp://127.0.0.1/x", open).is_err());
    }
}
