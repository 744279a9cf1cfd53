//! Reaching a server: an address with its TLS (a private CA, a client certificate for mutual TLS, the name to
//! check) and bearer token; the addresses a stream may use, in turn (a DNS name stands for every address it
//! resolves to); one connection per address, shared by the streams that use it and retired when it fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::Error;
use crate::proto::diagnosis_client::DiagnosisClient;

/// A drsn.v1 client: cheap to clone, one connection shared by every clone.
pub type Client = DiagnosisClient<InterceptedService<Channel, Bearer>>;

/// One server to reach, and how.
#[derive(Clone, Default)]
pub struct Target {
    /// `http://host:port`, or `https://host:port` for TLS.
    pub addr: String,
    /// The CA certificate (PEM) that signed the server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// The client's certificate and key (PEM) for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against (default: the address's host).
    pub server_name: Option<String>,
    /// The bearer token sent with every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for Target {
    // Never the token, nor the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls())
            .field("server_name", &self.server_name)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Target {
    /// A plain-text server at `addr` (`http://` is added when no scheme is given).
    pub fn new(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        let addr = if addr.contains("://") {
            addr
        } else {
            format!("http://{addr}")
        };
        Self {
            addr,
            ..Self::default()
        }
    }

    /// Sends `token` as `authorization: Bearer <token>` on every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into().trim().to_owned());
        self
    }

    /// Verifies the server with this CA (PEM); the address becomes `https://`.
    pub fn with_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self.addr = self.addr.replacen("http://", "https://", 1);
        self
    }

    /// Presents this certificate and key (PEM) for mutual TLS.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    fn tls(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some() || self.addr.starts_with("https://")
    }

    /// The address's host and port.
    fn authority(&self) -> &str {
        let rest = self
            .addr
            .split_once("://")
            .map_or(self.addr.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

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

/// Connects to `target`, with HTTP/2 settings for many small replies.
pub async fn connect(target: &Target) -> Result<Client, Error> {
    let fail = |reason: String| Error::Connect {
        addr: target.addr.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(target.addr.clone())
        .map_err(|e| fail(format!("not an address: {e}")))?
        .tcp_nodelay(true)
        // Large fixed windows (h2's adaptive window made servers close connections under many small replies).
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if target.tls() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &target.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &target.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &target.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| fail(format!("TLS settings refused: {}", causes(&e))))?;
    }
    let bearer = match &target.token {
        Some(t) => Bearer(Some(format!("Bearer {t}").parse().map_err(|_| {
            Error::Config("the token holds characters not allowed in a header".into())
        })?)),
        None => Bearer(None),
    };
    let channel = endpoint.connect().await.map_err(|e| {
        fail(format!(
            "{}; is `drsn-serve serve` running there (and TLS set on both ends or neither)?",
            causes(&e)
        ))
    })?;
    Ok(DiagnosisClient::with_interceptor(channel, bearer).max_decoding_message_size(64 << 20))
}

/// An error and its causes on one line: transport errors say little until their sources ("invalid peer
/// certificate: Expired").
pub fn causes(err: &dyn std::error::Error) -> String {
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

/// The servers a stream may use, taken in turn, with one connection per address shared by every stream holding a
/// clone. A target whose host is a DNS name stands for each address the name resolves to (resolved again on every
/// round, so replicas added later are found), its certificate still checked against the name.
#[derive(Clone, Debug)]
pub struct Targets {
    targets: Arc<Vec<Target>>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    round: Vec<Target>,
    connections: HashMap<String, Client>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer")
    }
}

impl Targets {
    /// At least one target.
    pub fn new(targets: impl IntoIterator<Item = Target>) -> Result<Self, Error> {
        let targets: Vec<Target> = targets.into_iter().collect();
        if targets.is_empty() {
            return Err(Error::Config(
                "at least one server address is needed".into(),
            ));
        }
        Ok(Self {
            targets: Arc::new(targets),
            shared: Arc::default(),
        })
    }

    /// Plain-text servers at `addrs`.
    pub fn plain<S: Into<String>>(addrs: impl IntoIterator<Item = S>) -> Result<Self, Error> {
        Self::new(addrs.into_iter().map(Target::new))
    }

    /// The next target to dial: the next address of this round, a new round resolved when one is used up.
    pub async fn next(&self) -> Target {
        if let Some(t) = self.take() {
            return t;
        }
        let mut round = Vec::new();
        for target in self.targets.iter() {
            round.extend(resolve(target).await);
        }
        round.reverse();
        if let Ok(mut shared) = self.shared.lock() {
            shared.round = round;
        }
        self.take().unwrap_or_else(|| self.targets[0].clone())
    }

    fn take(&self) -> Option<Target> {
        self.shared.lock().ok()?.round.pop()
    }

    /// A connection to `target`: the shared one, or a new one.
    pub async fn connect(&self, target: &Target) -> Result<Client, Error> {
        let cached = self
            .shared
            .lock()
            .ok()
            .and_then(|s| s.connections.get(&target.addr).cloned());
        if let Some(client) = cached {
            return Ok(client);
        }
        let client = connect(target).await?;
        if let Ok(mut shared) = self.shared.lock() {
            shared
                .connections
                .insert(target.addr.clone(), client.clone());
        }
        Ok(client)
    }

    /// Forgets `target`'s connection (drained, aged out, or gone): the next call dials again.
    pub fn retire(&self, target: &Target) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.connections.remove(&target.addr);
        }
    }
}

/// The addresses `target` stands for: itself when its host is an IP address or cannot be resolved (the dial then
/// says why), else one target per resolved address, the certificate checked against the name.
async fn resolve(target: &Target) -> Vec<Target> {
    let authority = target.authority().to_owned();
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h);
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return vec![target.clone()];
    }
    let Ok(addrs) = tokio::net::lookup_host(&authority).await else {
        return vec![target.clone()];
    };
    let mut seen: Vec<std::net::SocketAddr> = addrs.collect();
    seen.sort();
    seen.dedup();
    if seen.len() <= 1 {
        return vec![target.clone()];
    }
    let scheme = if target.tls() { "https" } else { "http" };
    seen.into_iter()
        .map(|addr| Target {
            addr: format!("{scheme}://{addr}"),
            server_name: target.server_name.clone().or_else(|| Some(host.to_owned())),
            ..target.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_are_taken_in_turn_and_names_stand_for_what_they_resolve_to() {
        let targets = Targets::plain(["127.0.0.1:1", "127.0.0.1:2"]).unwrap();
        let dialled: Vec<String> = [
            targets.next().await,
            targets.next().await,
            targets.next().await,
        ]
        .into_iter()
        .map(|t| t.addr)
        .collect();
        assert_eq!(
            dialled,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1"
            ]
        );
        // `localhost` resolves to one or two loopback addresses: each a target, its certificate name kept.
        let named = resolve(&Target::new("https://localhost:7")).await;
        assert!(!named.is_empty());
        for t in &named {
            assert!(t.addr.starts_with("https://"), "{t:?}");
            if named.len() > 1 {
                assert_eq!(t.server_name.as_deref(), Some("localhost"));
            }
        }
    }

    #[test]
    fn a_target_never_shows_its_token() {
        let t = Target::new("a:1").with_token(" secret\n");
        assert_eq!(t.token.as_deref(), Some("secret"));
        assert!(!format!("{t:?}").contains("secret"));
        assert_eq!(t.authority(), "a:1");
        assert!(
            Target::new("a:1")
                .with_ca(b"pem".to_vec())
                .addr
                .starts_with("https://")
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_in_the_error() {
        let err = connect(&Target::new("127.0.0.1:1"))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("127.0.0.1:1")));
    }
}
