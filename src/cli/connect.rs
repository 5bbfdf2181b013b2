//! What every client command shares: the connection to the server (with
//! the CLI's hint when none answers), the exit status, default file names.

use std::path::PathBuf;

use crate::client::Client;

/// What a client command's exit status should be.
pub enum Outcome {
    Ok,
    /// The command worked but its subject is not usable (e.g. a dataset
    /// that failed validation): exit status 2.
    NotUsable,
}

/// Connects to a server with the CLI's API key ([`api_key`]); the CLI's own
/// hint when none answers.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    let key = api_key(addr)?;
    Client::connect(addr, key.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{e} (start one with `lathe serve`)"))
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
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let Ok(uri) = uri.parse::<http::Uri>() else {
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
