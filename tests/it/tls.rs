//! TLS on the gRPC listener (`--tls-cert`/`--tls-key`), client
//! certificates (`--tls-client-ca`), the client's and the CLI's side of
//! both, and settings that cannot work. Certificates are made per test
//! with rcgen: a CA, a server certificate for localhost and 127.0.0.1, a
//! client certificate.

use std::path::{Path, PathBuf};

use crate::common::*;
use lathe::client::{Client, ClientTls};
use lathe::config::ServeConfig;
use lathe::proto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM files of a test PKI, in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "lathe test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = write("ca.pem", ca_params.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        };
        let (cert, key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (server_cert, server_key) = (write("server.pem", cert), write("server.key", key));
        let (cert, key) = leaf(vec!["lathe-test-client".into()], ExtendedKeyUsagePurpose::ClientAuth);
        let (client_cert, client_key) = (write("client.pem", cert), write("client.key", key));
        Pki {
            _dir: dir,
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// A server configuration serving TLS with this PKI's server
    /// certificate, requiring client certificates when `mtls`.
    fn config(&self, data_dir: &Path, mtls: bool) -> ServeConfig {
        let mut config = ServeConfig::embedded(data_dir);
        config.tls.tls_cert = Some(self.server_cert.clone());
        config.tls.tls_key = Some(self.server_key.clone());
        if mtls {
            config.tls.tls_client_ca = Some(self.ca.clone());
        }
        config
    }

    /// A client's TLS trusting this PKI's CA, presenting its client
    /// certificate when `identity`.
    fn client(&self, identity: bool) -> ClientTls {
        ClientTls {
            ca_cert: Some(std::fs::read(&self.ca).unwrap()),
            identity: identity.then(|| {
                (
                    std::fs::read(&self.client_cert).unwrap(),
                    std::fs::read(&self.client_key).unwrap(),
                )
            }),
        }
    }
}

/// GetCaller over a connection to `url` with `tls` and the admin key.
async fn get_caller(url: &str, tls: &ClientTls) -> anyhow::Result<proto::ApiKey> {
    let client = Client::connect_with(url, Some(ADMIN_KEY), tls).await?;
    let response = client.admin().get_caller(proto::GetCallerRequest {}).await?;
    Ok(response.into_inner().key.unwrap_or_default())
}

#[tokio::test]
async fn tls_clients_that_trust_the_ca_call_and_others_fail() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(pki.config(dir.path(), false)).await;
    assert!(server.url().starts_with("https://localhost:"), "{}", server.url());

    let key = get_caller(&server.url(), &pki.client(false)).await.unwrap();
    assert_eq!(key.project_id, "default");
    assert_eq!(key.role, proto::Role::Admin as i32);
    // The certificate is for the address too.
    let by_ip = format!("https://127.0.0.1:{}", server.addr.port());
    get_caller(&by_ip, &pki.client(false)).await.unwrap();

    // Without the private CA, only the public roots: the server's
    // certificate is not trusted.
    let untrusted = get_caller(&server.url(), &ClientTls::default()).await.unwrap_err();
    assert!(format!("{untrusted:#}").contains("UnknownIssuer"), "{untrusted:#}");

    // Plaintext HTTP/2 to the TLS port gets no answer.
    let plaintext = format!("http://127.0.0.1:{}", server.addr.port());
    assert!(get_caller(&plaintext, &ClientTls::default()).await.is_err());
    assert!(get_caller(&plaintext, &pki.client(true)).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_call() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(pki.config(dir.path(), true)).await;

    let key = get_caller(&server.url(), &pki.client(true)).await.unwrap();
    assert_eq!(key.project_id, "default");

    // TLS 1.3 clients finish their handshake before the server checks
    // their certificate: the refusal may come on the first call.
    let refused = get_caller(&server.url(), &pki.client(false)).await.unwrap_err();
    assert!(
        format!("{refused:#}").to_lowercase().contains("certificate"),
        "{refused:#}"
    );

    // A certificate from another CA is refused too.
    let other = Pki::new();
    let mut foreign = other.client(true);
    foreign.ca_cert = pki.client(false).ca_cert;
    assert!(get_caller(&server.url(), &foreign).await.is_err());
    server.stop().await;
}

/// An HTTP/1.1-only REST client (as the `openai` SDK is) trusting the
/// PKI's CA, presenting the client certificate when `identity`.
fn rest_client(pki: &Pki, identity: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .http1_only();
    if identity {
        let mut pem = std::fs::read(&pki.client_cert).unwrap();
        pem.extend(std::fs::read(&pki.client_key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn rest_clients_speaking_http1_share_the_tls_port() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(pki.config(dir.path(), false)).await;
    let models = format!("{}/v1/models", server.url());
    let response = rest_client(&pki, false)
        .get(&models)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    // gRPC over HTTP/2 on the same port still works.
    get_caller(&server.url(), &pki.client(false)).await.unwrap();
    server.stop().await;

    // With a client CA, REST clients need a certificate too.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(pki.config(dir.path(), true)).await;
    let models = format!("{}/v1/models", server.url());
    let ok = rest_client(&pki, true)
        .get(&models)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        rest_client(&pki, false)
            .get(&models)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .is_err()
    );
    server.stop().await;
}

/// What `server::run` says, before anything is opened, when its TLS
/// settings cannot work.
async fn start_error(config: ServeConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = lathe::server::run(listener, config, std::future::pending()).await;
    format!("{:#}", result.expect_err("the server started"))
}

#[tokio::test]
async fn tls_settings_that_cannot_work_stop_the_start() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();

    let mut config = pki.config(dir.path(), false);
    config.tls.tls_key = None;
    assert_eq!(
        start_error(config).await,
        "--tls-cert needs --tls-key (the certificate's private key)"
    );

    let mut config = ServeConfig::embedded(dir.path());
    config.tls.tls_client_ca = Some(pki.ca.clone());
    let e = start_error(config).await;
    assert!(e.starts_with("--tls-client-ca needs --tls-cert and --tls-key"), "{e}");

    let missing = dir.path().join("missing.pem");
    let mut config = pki.config(dir.path(), false);
    config.tls.tls_cert = Some(missing.clone());
    let e = start_error(config).await;
    assert!(e.starts_with(&format!("--tls-cert {}: ", missing.display())), "{e}");
    assert!(e.contains("No such file"), "{e}");

    // A key where the certificate should be: named, not shown.
    let mut config = pki.config(dir.path(), false);
    config.tls.tls_cert = Some(pki.server_key.clone());
    let e = start_error(config).await;
    assert!(e.contains("--tls-cert") && e.contains("no PEM certificate"), "{e}");
    assert!(!e.contains("PRIVATE KEY-----\n"), "{e}");

    // The client's key with the server's certificate.
    let mut config = pki.config(dir.path(), false);
    config.tls.tls_key = Some(pki.client_key.clone());
    let e = start_error(config).await;
    assert!(
        e.starts_with("--tls-cert/--tls-key: ") && e.contains("KeyMismatch"),
        "{e}"
    );

    // Nothing was opened.
    assert!(!dir.path().join("lathe.db").exists());
}

/// `lathe whoami` with the CLI's variables against a TLS server, then
/// against one that requires client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_connects_over_tls_with_its_variables() {
    let pki = Pki::new();
    let whoami = |url: String, env: Vec<(&'static str, PathBuf)>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
                .args(["whoami", "--json"])
                .env("LATHE_ADDR", url)
                .env("LATHE_API_KEY", ADMIN_KEY)
                .envs(env)
                .output()
                .expect("run lathe")
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(pki.config(dir.path(), false)).await;
    let out = whoami(server.url(), vec![("LATHE_CA_CERT", pki.ca.clone())])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(key["project_id"], "default");
    assert_eq!(key["role"], "admin");
    let out = whoami(server.url(), vec![]).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UnknownIssuer") && err.contains("LATHE_CA_CERT"), "{err}");
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(pki.config(dir.path(), true)).await;
    let out = whoami(
        server.url(),
        vec![
            ("LATHE_CA_CERT", pki.ca.clone()),
            ("LATHE_CLIENT_CERT", pki.client_cert.clone()),
            ("LATHE_CLIENT_KEY", pki.client_key.clone()),
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = whoami(
        server.url(),
        vec![
            ("LATHE_CA_CERT", pki.ca.clone()),
            ("LATHE_CLIENT_CERT", pki.client_cert.clone()),
        ],
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LATHE_CLIENT_CERT needs LATHE_CLIENT_KEY"), "{err}");
    server.stop().await;
}

/// The binary, listening beyond loopback: plaintext warns once that keys
/// travel in clear text (and still serves); TLS from the environment
/// variables does not warn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_beyond_loopback_without_tls_warns() {
    let pki = Pki::new();
    let serve = |dir: &Path, tls: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"));
        command
            .args(["serve", "--listen", "0.0.0.0:0", "--log-json", "--data-dir"])
            .arg(dir)
            .env("LATHE_ADMIN_KEY", ADMIN_KEY)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        if tls {
            command
                .env("LATHE_TLS_CERT", &pki.server_cert)
                .env("LATHE_TLS_KEY", &pki.server_key);
        }
        command.spawn().unwrap()
    };

    for tls in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = serve(dir.path(), tls);
        let (port, log) = log_until_serving(&mut child).await;
        let warnings: Vec<_> = log.iter().filter(|l| l.contains("clear text")).collect();
        if tls {
            assert!(warnings.is_empty(), "{log:?}");
            let url = format!("https://localhost:{port}");
            get_caller(&url, &pki.client(false)).await.unwrap();
        } else {
            assert_eq!(warnings.len(), 1, "{log:?}");
            assert!(warnings[0].contains("WARN") && warnings[0].contains("proxy"), "{log:?}");
            let url = format!("http://127.0.0.1:{port}");
            get_caller(&url, &ClientTls::default()).await.unwrap();
        }
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// A `serve --log-json` child's log lines up to the one naming its address,
/// and the port in it. The rest of the log is left to drain unread.
async fn log_until_serving(child: &mut std::process::Child) -> (u16, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            log.push(line);
            if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
                let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                // Keep reading so the child never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return (port, log);
            }
        }
        panic!("server never logged its address: {log:?}");
    })
    .await
    .unwrap()
}
