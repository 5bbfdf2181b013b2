//! A client of a Lathe server: one HTTP/2 connection (TLS for `https://`
//! addresses) and a typed client of every service on it. The CLI talks to
//! servers only through this and the generated API (`crate::proto`, with its
//! JSON helpers), never through the server's own conversions.

use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::proto::{
    admin_service_client::AdminServiceClient, dataset_service_client::DatasetServiceClient,
    eval_service_client::EvalServiceClient, fine_tuning_service_client::FineTuningServiceClient,
    grader_service_client::GraderServiceClient, model_service_client::ModelServiceClient,
};

/// Where a client connects unless told otherwise.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// What an `https://` connection trusts and presents besides the public
/// (webpki) roots, as PEM (`crate::tls` reads and checks the files).
/// Plaintext addresses ignore it.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificates trusted besides the public roots (a private CA).
    pub ca_cert: Option<Vec<u8>>,
    /// A certificate chain and its private key, presented to a server that
    /// requires client certificates (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// A connection to one server; cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
}

/// What every generated client runs on: tonic's channel, with the caller's
/// API key added to each request as `authorization: Bearer <key>`.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: tonic::transport::Channel,
    authorization: Option<HeaderValue>,
}

impl Channel {
    /// `channel` sending `api_key` (when given) with every request.
    pub fn new(channel: tonic::transport::Channel, api_key: Option<&str>) -> anyhow::Result<Channel> {
        let authorization = match api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| anyhow::anyhow!("the API key has characters a header cannot carry"))?;
                // Kept out of debug output and HTTP/2 header compression tables.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Channel {
            inner: channel,
            authorization,
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <tonic::transport::Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}

/// A server address as a URI: `host:port` means `http://host:port`.
pub fn server_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// Connects to `addr` (`host:port` or a URL), sending `api_key` with
    /// every call; `https://` addresses over TLS trusting the public roots.
    pub async fn connect(addr: &str, api_key: Option<&str>) -> anyhow::Result<Client> {
        Self::connect_with(addr, api_key, &ClientTls::default()).await
    }

    /// [`Client::connect`] with `tls` for `https://` addresses (`host:port`
    /// and `http://` stay plaintext).
    pub async fn connect_with(addr: &str, api_key: Option<&str>, tls: &ClientTls) -> anyhow::Result<Client> {
        let uri = server_uri(addr);
        let mut endpoint = Endpoint::from_shared(uri.clone())?
            // Uploads stream large files: windows large enough that a chunk
            // never waits for a window update.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true);
        if endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            let mut config = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &tls.ca_cert {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(config)?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach a lathe server at {uri}: {}", causes(&e)))?;
        Ok(Client {
            channel: Channel::new(channel, api_key)?,
        })
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

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }
}

/// `e` and its causes, "a: b: c": tonic's own message is only "transport
/// error"; what failed (refused, a certificate not trusted) is below it. A
/// cause that its wrapper already printed is not repeated.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
