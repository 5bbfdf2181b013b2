//! A Lathe server with the test-only scripted trainer, for the durability
//! test that kills a real server process. Not part of the product binary.
//!
//! Usage: scripted_server DATA_DIR STEPS STEP_MILLIS LEASE_SECS
//! Prints "listening on ADDR" once it accepts connections. Takes its blob
//! store from `LATHE_BLOB_URL` (and the `AWS_*` settings) as `lathe serve`
//! does.

#[path = "../tests/it/common/scripted.rs"]
#[allow(dead_code)]
mod scripted;

use std::{sync::Arc, time::Duration};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: scripted_server DATA_DIR STEPS STEP_MILLIS LEASE_SECS"
    );
    let mut config = lathe::config::ServeConfig::embedded(&args[0]);
    // The admin key is in DATA_DIR/admin.key before "listening on" is printed.
    config.admin_key = Some(lathe::config::Secret(lathe::auth::local_admin_key(
        std::path::Path::new(&args[0]),
    )?));
    config.job_lease_secs = args[3].parse()?;
    config.job_poll_millis = 100;
    if let Ok(url) = std::env::var("LATHE_BLOB_URL") {
        config.blob_url = Some(url.parse().map_err(|e| anyhow::anyhow!("LATHE_BLOB_URL: {e}"))?);
    }
    let trainer = scripted::ScriptedTrainer {
        steps: args[1].parse()?,
        checkpoint_every: 10,
        step_time: Duration::from_millis(args[2].parse()?),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    lathe::server::run_with(
        listener,
        config,
        lathe::app::Engine::Custom(Some(Arc::new(trainer))),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await
}
