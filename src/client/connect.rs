//! The command line's way to name a server (address, TLS files, token), turned into the client crate's targets
//! (drsn-client does the connecting: TLS, mutual TLS, the token, HTTP/2 settings).

use std::path::PathBuf;

use drsn_client::{Target, Targets};

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

pub use drsn_client::connect::Client;

impl ConnectArgs {
    /// The client crate's target: the files read, the token trimmed.
    pub fn target(&self) -> anyhow::Result<Target> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", p.display()))
        };
        let mut target = Target::new(self.addr.clone());
        if let Some(ca) = &self.tls_ca {
            target = target.with_ca(read(ca, "CA certificate")?);
        }
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            target =
                target.with_identity(read(cert, "client certificate")?, read(key, "client key")?);
        }
        target.server_name = self.tls_server_name.clone();
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => Some(
                String::from_utf8(read(path, "token file")?)
                    .map_err(|_| anyhow::anyhow!("the token is not UTF-8"))?,
            ),
            (None, t) => t.clone(),
        };
        Ok(match token {
            Some(t) => target.with_token(t),
            None => target,
        })
    }

    /// This address and `others`, each with the same TLS and token: the replicas a stream may resume on.
    pub fn targets(&self, others: &[String]) -> anyhow::Result<Targets> {
        let first = self.target()?;
        let mut all = vec![first.clone()];
        for addr in others {
            let mut other = first.clone();
            other.addr = Target::new(addr.clone()).addr;
            all.push(other);
        }
        Ok(Targets::new(all)?)
    }
}

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
    Ok(drsn_client::connect::connect(&args.target()?).await?)
}
