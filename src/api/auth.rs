//! Bearer-token authentication: `authorization: Bearer <token>` on every call of a protected service, compared in
//! constant time against the configured tokens (as SHA-256 digests, so neither a token's content nor its length
//! leaks through timing), except on the health methods probes call ([`Guard`]). Tokens are never logged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::telemetry::metrics;

/// The `reason` label of a refused call in `drsn_errors_total`.
pub(crate) const REASON: &str = "unauthenticated";

/// Shortest token accepted at start-up: a guessable token is no authentication.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// The accepted tokens, as digests. Empty: authentication is off.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Tokens from text, one per line or comma-separated; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut digests = Vec::new();
        for (n, token) in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
        {
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "token {} is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                    n + 1,
                    token.len()
                ));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "token {} holds whitespace or control characters",
                    n + 1
                ));
            }
            digests.push(Sha256::digest(token.as_bytes()).into());
        }
        Ok(Self(Arc::new(digests)))
    }

    /// Both sets of tokens.
    pub fn joined(&self, other: &Tokens) -> Tokens {
        Tokens(Arc::new(
            self.0.iter().chain(other.0.iter()).copied().collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `token` is one of ours; every configured token is compared, whatever matches.
    pub fn accepts(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for d in self.0.iter() {
            found |= d.ct_eq(&digest);
        }
        found.into()
    }

    /// Whether a call with this `authorization` header value may proceed (always, when no token is configured).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        let presented = authorization.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        match presented {
            Some(token) if self.accepts(token.trim()) => Ok(()),
            Some(_) => Err(refuse("the bearer token is not valid")),
            None => Err(refuse(
                "this server requires `authorization: Bearer <token>` metadata",
            )),
        }
    }

    /// The interceptor for a protected service (a no-op when no token is configured).
    pub fn interceptor(
        &self,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let tokens = self.clone();
        move |request: Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            tokens.check(header).map(|()| request)
        }
    }

    /// `service` behind the tokens, except for the methods (paths, `/package.Service/Method`) in `open`.
    pub fn guard<S>(&self, service: S, open: &'static [&'static str]) -> Guard<S> {
        Guard {
            inner: service,
            tokens: self.clone(),
            open,
        }
    }
}

/// A gRPC service behind the tokens, with some methods open (health checks, which probes make without a token).
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    tokens: Tokens,
    open: &'static [&'static str],
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !self.open.contains(&request.uri().path()) {
            let header = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if let Err(status) = self.tokens.check(header) {
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

fn refuse(message: &str) -> Status {
    metrics::record_error(REASON, "UNAUTHENTICATED");
    Status::unauthenticated(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123";

    fn call(token: Option<&str>) -> Result<Request<()>, Status> {
        let tokens = Tokens::parse(&format!(
            "# ops team\n{GOOD}\n\nfedcba9876543210fedc, another-token-of-16\n"
        ))
        .unwrap();
        assert_eq!(tokens.len(), 3);
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", t.parse().unwrap());
        }
        (tokens.interceptor())(r)
    }

    #[test]
    fn right_wrong_and_missing_tokens() {
        assert!(call(Some(&format!("Bearer {GOOD}"))).is_ok());
        assert!(call(Some("Bearer another-token-of-16")).is_ok());
        let wrong = call(Some("Bearer 0123456789abcdef0124")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(
            !wrong.message().contains("0123"),
            "the token is never echoed"
        );
        let missing = call(None).unwrap_err();
        assert!(missing.message().contains("Bearer"));
        assert!(call(Some(GOOD)).is_err(), "the scheme is required");
    }

    #[tokio::test]
    async fn the_guard_lets_only_open_paths_through_without_a_token() {
        let tokens = Tokens::parse(GOOD).unwrap();
        let echo = tower_service_fn();
        let mut guard = tokens.guard(echo, &["/p.S/Live"]);
        let call = |path: &str, token: Option<&str>| {
            let mut r = http::Request::post(format!("http://h{path}"));
            if let Some(t) = token {
                r = r.header("authorization", t);
            }
            r.body(Body::empty()).unwrap()
        };
        let code = |r: http::Response<Body>| {
            r.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let live = guard.call(call("/p.S/Live", None)).await.unwrap();
        assert_eq!(code(live), None, "open");
        let infer = guard.call(call("/p.S/Infer", None)).await.unwrap();
        assert_eq!(code(infer).as_deref(), Some("16"), "UNAUTHENTICATED");
        let authed = guard
            .call(call("/p.S/Infer", Some(&format!("Bearer {GOOD}"))))
            .await
            .unwrap();
        assert_eq!(code(authed), None);
    }

    /// A service that answers every call with an empty 200.
    fn tower_service_fn() -> Echo {
        Echo
    }

    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<Body>> for Echo {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    #[test]
    fn weak_tokens_are_refused_at_start_up() {
        assert!(Tokens::parse("short").unwrap_err().contains("at least 16"));
        assert!(Tokens::parse("").unwrap().is_empty());
        assert_eq!(
            format!("{:?}", Tokens::parse(GOOD).unwrap()),
            "Tokens(1 configured)"
        );
    }
}
