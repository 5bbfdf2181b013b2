//! What every client command shares: the connection to the server (with
//! the CLI's hint when none answers), the exit status, default file names.

use std::path::PathBuf;

use crate::client::{Client, ClientTls};

/// What a client command's exit status should be.
pub enum Outcome {
    Ok,
    /// The command worked but its subject is not usable (e.g. a dataset
    /// that failed validation): exit status 2.
    NotUsable,
}

/// Connects to a server with the CLI's API key ([`api_key`]) and TLS
/// settings ([`tls`]); the CLI's own hint when none answers.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let key = api_key(addr)?;
    Client::connect_with(addr, key.as_deref(), &tls(addr)?)
        .await
        .map_err(|e| {
            let e = e.to_string();
            if e.contains("invalid peer certificate") {
                anyhow::anyhow!("{e} (for a server with a private CA, set LATHE_CA_CERT to the CA's PEM file)")
            } else {
                anyhow::anyhow!("{e} (start one with `lathe serve`)")
            }
        })
}

/// For an `https://` address, the CLI's TLS settings besides the public
/// roots: `LATHE_CA_CERT` (a PEM CA bundle to trust, for a private CA) and
/// `LATHE_CLIENT_CERT` with `LATHE_CLIENT_KEY` (a PEM certificate chain and
/// key, for a server that requires client certificates). Plaintext
/// addresses read none of them.
pub fn tls(addr: &str) -> anyhow::Result<ClientTls> {
    if !addr
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Ok(ClientTls::default());
    }
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let ca_cert = var("LATHE_CA_CERT")
        .map(|path| crate::tls::read_certificates(&path, "LATHE_CA_CERT"))
        .transpose()?;
    let identity = match (var("LATHE_CLIENT_CERT"), var("LATHE_CLIENT_KEY")) {
        (Some(cert), Some(key)) => Some((
            crate::tls::read_certificates(&cert, "LATHE_CLIENT_CERT")?,
            crate::tls::read_private_key(&key, "LATHE_CLIENT_KEY")?,
        )),
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("LATHE_CLIENT_CERT needs LATHE_CLIENT_KEY (the certificate's private key)"),
        (None, Some(_)) => {
            anyhow::bail!("LATHE_CLIENT_KEY needs LATHE_CLIENT_CERT (the certificate chain it signs for)")
        }
    };
    Ok(ClientTls { ca_cert, identity })
}

/// The key the CLI sends: `LATHE_API_KEY`; else the file `LATHE_API_KEY_FILE`
/// names; else, for a server on this machine's loopback, the admin key a
/// server wrote into its data dir on first start (`LATHE_DATA_DIR`, default
/// `./lathe-data`, as `lathe serve`'s); else none (the server will say so).
pub fn api_key(addr: &str) -> anyhow::Result<Option<String>> {
    if let Ok(key) = std::env::var("LATHE_API_KEY")
        && !key.trim().is_empty()
    {
        return Ok(Some(key.trim().to_string()));
    }
    if let Some(path) = std::env::var_os("LATHE_API_KEY_FILE") {
        let path = PathBuf::from(path);
        let key = crate::auth::read_key_file(&path)
            .map_err(|e| anyhow::anyhow!("reading the API key file {}: {e}", path.display()))?;
        return Ok(Some(key));
    }
    if !is_loopback(addr) {
        return Ok(None);
    }
    let data_dir = std::env::var_os("LATHE_DATA_DIR").map_or_else(|| PathBuf::from("./lathe-data"), PathBuf::from);
    Ok(crate::auth::read_key_file(&data_dir.join(crate::auth::ADMIN_KEY_FILE)).ok())
}

fn is_loopback(addr: &str) -> bool {
    let Ok(uri) = crate::client::server_uri(addr).parse::<http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Where a downloaded dataset goes when no path is given.
pub(crate) fn default_output(id: &str) -> PathBuf {
    PathBuf::from(format!("{id}.jsonl"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_addresses() {
        for addr in [
            "127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:50051",
            "127.1.2.3:9",
        ] {
            assert!(super::is_loopback(addr), "{addr}");
        }
        for addr in ["10.0.0.1:50051", "https://lathe.example.com", "0.0.0.0:1"] {
            assert!(!super::is_loopback(addr), "{addr}");
        }
    }
}
