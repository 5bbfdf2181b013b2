//! TLS material read from PEM files and checked once, and the server's
//! acceptor: one listener serves gRPC (HTTP/2) and REST clients that speak
//! HTTP/1.1 only (the `openai` SDK), so the handshake offers both in ALPN
//! (tonic's own TLS offers h2 alone, which an HTTP/1.1 client's handshake
//! fails on). `Client` builds its tonic configuration from the same bytes.
//! Knows neither tonic nor HTTP.
//!
//! Errors name the setting and the file, never the file's contents (a key
//! file's lines are secrets).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, server::WebPkiClientVerifier};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;

/// A listener's TLS: its certificate chain and key, and the CA bundle that
/// signs the client certificates it requires, if any (mTLS). All PEM,
/// each checked to hold what it should.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_chain: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mtls", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The listener's TLS from its settings: none when neither
    /// `--tls-cert` nor `--tls-key` is set; an error when only one is, when
    /// `--tls-client-ca` comes without them, or when a file is missing or
    /// does not hold what its flag says.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Option<ServerTls>> {
        let (cert, key) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                if config.tls_client_ca.is_some() {
                    anyhow::bail!(
                        "--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)"
                    );
                }
                return Ok(None);
            }
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key (the certificate's private key)"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert (the certificate chain it signs for)"),
        };
        Ok(Some(ServerTls {
            cert_chain: read_certificates(cert, "--tls-cert")?,
            key: read_private_key(key, "--tls-key")?,
            client_ca: config
                .tls_client_ca
                .as_deref()
                .map(|ca| read_certificates(ca, "--tls-client-ca"))
                .transpose()?,
        }))
    }
}

/// A handshake that takes longer is dropped instead of holding its socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

impl ServerTls {
    /// The rustls configuration: this certificate, client certificates
    /// required when there is a client CA, ALPN `h2` then `http/1.1`.
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(cert.map_err(|_| anyhow::anyhow!("--tls-client-ca: a malformed PEM certificate"))?)
                        .map_err(|e| anyhow::anyhow!("--tls-client-ca: {e}"))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| anyhow::anyhow!("--tls-client-ca: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certs = CertificateDer::pem_slice_iter(&self.cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| anyhow::anyhow!("--tls-cert: a malformed PEM certificate"))?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.key).map_err(|_| anyhow::anyhow!("--tls-key: no PEM private key"))?;
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Accepts connections on `listener` and handshakes each in its own task
/// (a slow client holds up no one), yielding the connections that finished
/// their handshake. Ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: report it and
                    // let the server decide, as a plain listener would.
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            // Small unary replies must not wait for Nagle's algorithm.
            let _ = socket.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The PEM file at `path`, checked to hold one or more certificates and
/// nothing malformed; `setting` names it in errors.
pub fn read_certificates(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    let pem = read(path, setting)?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        if cert.is_err() {
            anyhow::bail!("{setting} {}: a malformed PEM certificate", path.display());
        }
        count += 1;
    }
    if count == 0 {
        anyhow::bail!(
            "{setting} {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(pem)
}

/// The PEM file at `path`, checked to hold a private key (PKCS#8, PKCS#1
/// or SEC1); `setting` names it in errors.
pub fn read_private_key(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    let pem = read(path, setting)?;
    if PrivateKeyDer::from_pem_slice(&pem).is_err() {
        anyhow::bail!(
            "{setting} {}: no PEM private key in it (expected -----BEGIN PRIVATE KEY----- or an RSA or EC key)",
            path.display()
        );
    }
    Ok(pem)
}

fn read(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{setting} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> TlsConfig {
        TlsConfig {
            tls_cert: cert.map(Path::to_path_buf),
            tls_key: key.map(Path::to_path_buf),
            tls_client_ca: ca.map(Path::to_path_buf),
        }
    }

    fn error(config: &TlsConfig) -> String {
        ServerTls::load(config).unwrap_err().to_string()
    }

    #[test]
    fn settings_go_together() {
        let p = Path::new("/nonexistent.pem");
        assert!(ServerTls::load(&config(None, None, None)).unwrap().is_none());
        assert!(error(&config(Some(p), None, None)).starts_with("--tls-cert needs --tls-key"));
        assert!(error(&config(None, Some(p), None)).starts_with("--tls-key needs --tls-cert"));
        assert!(error(&config(None, None, Some(p))).starts_with("--tls-client-ca needs --tls-cert"));
    }

    #[test]
    fn files_that_are_not_pem_are_named_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key.pem");
        std::fs::write(&secret, "hunter2 is not a key\n").unwrap();
        let missing = dir.path().join("missing.pem");

        let e = error(&config(Some(&missing), Some(&secret), None));
        assert!(e.starts_with(&format!("--tls-cert {}: ", missing.display())), "{e}");

        let e = error(&config(Some(&secret), Some(&secret), None));
        assert!(e.contains("--tls-cert") && e.contains("no PEM certificate"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");

        assert!(
            read_private_key(&secret, "--tls-key")
                .unwrap_err()
                .to_string()
                .contains("no PEM private key")
        );
        let half = dir.path().join("half.pem");
        std::fs::write(&half, "-----BEGIN CERTIFICATE-----\nhunter2\n").unwrap();
        let e = read_certificates(&half, "LATHE_CA_CERT").unwrap_err().to_string();
        assert!(e.contains("malformed") && !e.contains("hunter2"), "{e}");
    }
}
