//! Connecting to a server as a gateway would: plain or TLS (with a private CA and a client certificate for mutual
//! TLS), a bearer token on every call, and HTTP/2 settings tuned for many small replies.

use std::path::PathBuf;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::api::grpc::proto::diagnosis_client::DiagnosisClient;

/// How to reach the server; shared by `replay` and `bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Server address (`https://` for TLS).
    #[arg(long, env = "DRSN_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// CA certificate (PEM) to verify the server with (default: the system's roots are not used; give the CA).
    #[arg(long, env = "DRSN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "DRSN_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "DRSN_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Name to check the server certificate against (default: the address's host).
    #[arg(long, env = "DRSN_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// File holding the bearer token to send (preferred over --token: arguments show in process listings).
    #[arg(long, env = "DRSN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Bearer token to send.
    #[arg(long, env = "DRSN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A drsn.v1 client: cheap to clone, one connection shared by every clone.
pub type Client = DiagnosisClient<InterceptedService<Channel, Bearer>>;

/// Connects to a plain-text server at `addr`, without a token (tests, local use).
pub async fn connect(addr: &str) -> anyhow::Result<Client> {
    connect_with(&ConnectArgs {
        addr: addr.to_owned(),
        ..Default::default()
    })
    .await
}

/// Connects as `args` say.
pub async fn connect_with(args: &ConnectArgs) -> anyhow::Result<Client> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", p.display()))
    };
    let mut endpoint = Endpoint::from_shared(args.addr.clone())?
        .tcp_nodelay(true)
        // Large fixed windows (h2's adaptive window made servers close connections under many small replies).
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if args.tls_ca.is_some() || args.tls_client_cert.is_some() || args.addr.starts_with("https://")
    {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
        }
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        if let Some(name) = &args.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let token = match (&args.token_file, &args.token) {
        (Some(path), _) => Some(read(path, "token file")?),
        (None, Some(t)) => Some(t.clone().into_bytes()),
        (None, None) => None,
    };
    let bearer = match token {
        Some(t) => {
            let t = String::from_utf8(t).map_err(|_| anyhow::anyhow!("the token is not UTF-8"))?;
            let value = format!("Bearer {}", t.trim()).parse().map_err(|_| {
                anyhow::anyhow!("the token holds characters not allowed in a header")
            })?;
            Bearer(Some(value))
        }
        None => Bearer(None),
    };
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {}: {}; is `drsn-serve serve` running there (and TLS set on both ends or neither)?",
            args.addr,
            causes(&e)
        )
    })?;
    Ok(DiagnosisClient::with_interceptor(channel, bearer))
}

/// An error and its causes on one line: transport errors say little until their sources ("invalid peer
/// certificate: Expired").
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
