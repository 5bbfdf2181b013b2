//! A client of a Lathe server: one HTTP/2 connection and a typed client of
//! every service on it. The CLI talks to servers only through this and the
//! generated API (`crate::proto`, with its JSON helpers), never through the
//! server's own conversions.

use tonic::transport::{Channel, Endpoint};

use crate::proto::{
    dataset_service_client::DatasetServiceClient, eval_service_client::EvalServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, grader_service_client::GraderServiceClient,
    model_service_client::ModelServiceClient,
};

/// Where a client connects unless told otherwise.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// A connection to one server; cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
}

impl Client {
    /// Connects to `addr` (`host:port` or a URL).
    pub async fn connect(addr: &str) -> anyhow::Result<Client> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri.clone())?
            // Uploads stream large files: windows large enough that a chunk
            // never waits for a window update.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach a lathe server at {uri}: {e}"))?;
        Ok(Client { channel })
    }

    /// The connection, for calls written against the wire format itself.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn datasets(&self) -> DatasetServiceClient<Channel> {
        DatasetServiceClient::new(self.channel.clone())
    }

    pub fn jobs(&self) -> FineTuningServiceClient<Channel> {
        FineTuningServiceClient::new(self.channel.clone())
    }

    pub fn models(&self) -> ModelServiceClient<Channel> {
        ModelServiceClient::new(self.channel.clone())
    }

    pub fn graders(&self) -> GraderServiceClient<Channel> {
        GraderServiceClient::new(self.channel.clone())
    }

    pub fn evals(&self) -> EvalServiceClient<Channel> {
        EvalServiceClient::new(self.channel.clone())
    }
}
