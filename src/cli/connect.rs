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

/// Connects to a server; the CLI's own hint when none answers.
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    Client::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (start one with `lathe serve`)"))
}

/// Where a downloaded dataset goes when no path is given.
pub(crate) fn default_output(id: &str) -> PathBuf {
    PathBuf::from(format!("{id}.jsonl"))
}
