//! TLS, mutual TLS and bearer tokens with real certificates made in the test (rcgen): the right CA and token get
//! in; no token, a wrong token, a wrong CA, an expired certificate or a missing client certificate do not; health
//! stays open for probes; `/metrics` can be served over the same TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drsn_serve::api::grpc::proto::GetModelRequest;
use drsn_serve::client::connect::{ConnectArgs, connect_with};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const TOKEN: &str = "s3cret-token-for-the-tests-0123456789";

/// A CA, a server certificate for localhost, a client certificate, and their PEM files in a temporary folder.
struct Pki {
    dir: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    expired: bool,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("drsn-pki-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let good = ca("drsn test CA");
        let rogue = ca("somebody else's CA");
        write("ca.pem", &good.pem());
        write("rogue-ca.pem", &rogue.pem());
        let (cert, key) = leaf(&good, &["localhost", "127.0.0.1"], false);
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = leaf(&good, &["localhost", "127.0.0.1"], true);
        write("expired.pem", &cert);
        write("expired.key", &key);
        let (cert, key) = leaf(&good, &["gateway-7"], false);
        write("client.pem", &cert);
        write("client.key", &key);
        let (cert, key) = leaf(&rogue, &["gateway-x"], false);
        write("rogue-client.pem", &cert);
        write("rogue-client.key", &key);
        write("tokens", &format!("# gateways\n{TOKEN}\n"));
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn client(&self, addr: &str) -> ConnectArgs {
        ConnectArgs {
            addr: addr.replace("http://", "https://"),
            tls_ca: Some(self.dir.join("ca.pem")),
            tls_server_name: Some("localhost".into()),
            ..Default::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn get_model(args: &ConnectArgs) -> Result<(), tonic::Status> {
    let mut client = connect_with(args)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    client.get_model(GetModelRequest::default()).await.map(drop)
}

async fn health(addr: &str, ca: &Path) -> Result<i32, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(addr.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .map(|r| r.into_inner().status)
    .map_err(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tokens_let_the_right_client_in_and_no_one_else() {
    let pki = Pki::new("tokens");
    let running = common::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--auth-tokens-file",
        &pki.path("tokens"),
    ])
    .await;
    let addr = common::addr(&running);
    let mut args = pki.client(&addr);

    let no_token = get_model(&args).await.unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated, "{no_token:?}");
    assert!(no_token.message().contains("Bearer"));

    args.token = Some("not-the-right-token-0000000000".into());
    let wrong = get_model(&args).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(
        !wrong.message().contains("not-the-right"),
        "tokens are never echoed"
    );

    args.token = None;
    args.token_file = Some(pki.dir.join("tokens-client"));
    std::fs::write(pki.dir.join("tokens-client"), format!("{TOKEN}\n")).unwrap();
    get_model(&args)
        .await
        .expect("the right CA and token get in");

    // Probes need no token.
    assert_eq!(
        health(&addr, &pki.dir.join("ca.pem")).await,
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    );

    // A client that trusts another CA does not talk to this server; nor does a plain-text client.
    let mut rogue = pki.client(&addr);
    rogue.tls_ca = Some(pki.dir.join("rogue-ca.pem"));
    rogue.token = Some(TOKEN.into());
    assert!(
        get_model(&rogue).await.is_err(),
        "a server the client cannot verify"
    );
    let plain = ConnectArgs {
        addr: addr.clone(),
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    assert!(
        get_model(&plain).await.is_err(),
        "plain text to a TLS server"
    );

    let scrape = common::scrape(&running).await;
    assert!(
        common::metric(
            &scrape,
            r#"drsn_errors_total{reason="unauthenticated",code="UNAUTHENTICATED"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "refused calls are counted"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_wants_a_client_certificate_from_its_ca() {
    let pki = Pki::new("mtls");
    let running = common::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--tls-client-ca",
        &pki.path("ca.pem"),
    ])
    .await;
    let addr = common::addr(&running);
    let mut args = pki.client(&addr);
    assert!(get_model(&args).await.is_err(), "no client certificate");
    args.tls_client_cert = Some(pki.dir.join("rogue-client.pem"));
    args.tls_client_key = Some(pki.dir.join("rogue-client.key"));
    assert!(
        get_model(&args).await.is_err(),
        "a client certificate from another CA"
    );
    args.tls_client_cert = Some(pki.dir.join("client.pem"));
    args.tls_client_key = Some(pki.dir.join("client.key"));
    get_model(&args)
        .await
        .expect("a client certificate from the client CA gets in");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused() {
    let pki = Pki::new("expired");
    let running = common::start(&[
        "--tls-cert",
        &pki.path("expired.pem"),
        "--tls-key",
        &pki.path("expired.key"),
    ])
    .await;
    let err = get_model(&pki.client(&common::addr(&running)))
        .await
        .unwrap_err();
    assert!(err.message().contains("certificate expired"), "{err:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_served_over_the_same_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;

    let pki = Pki::new("metrics");
    let running = common::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--metrics-tls",
    ])
    .await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.dir.join("ca.pem")).unwrap();
    for cert in rustls_pemfile_certs(&ca) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(running.metrics_addr)
        .await
        .unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the metrics endpoint");
    tls.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut body))
        .await
        .unwrap()
        .ok();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains("drsn_serving 1"));
    // Plain HTTP gets nothing.
    let mut plain = tokio::net::TcpStream::connect(running.metrics_addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("drsn_serving"));
    running.stop().await;
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

#[test]
fn weak_or_missing_token_files_stop_the_start() {
    let dir = std::env::temp_dir().join(format!("drsn-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weak"), "short\n").unwrap();
    std::fs::write(dir.join("empty"), "# nothing\n").unwrap();
    for (file, text) in [
        ("weak", "at least 16"),
        ("empty", "holds no token"),
        ("absent", "cannot read"),
    ] {
        let config = common::config(&["--auth-tokens-file", dir.join(file).to_str().unwrap()]);
        let err = config.tokens().unwrap_err().to_string();
        assert!(err.contains(text), "{file}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
