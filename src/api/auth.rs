//! Bearer-token authentication: `authorization: Bearer <token>` on every call of a protected service, compared in
//! constant time against the configured tokens (as SHA-256 digests, so neither a token's content nor its length
//! leaks through timing). Tokens are never logged.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::telemetry::metrics;

/// The `reason` label of a refused call in `drsn_errors_total`.
pub const REASON: &str = "unauthenticated";

/// Shortest token accepted at start-up: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;

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

    /// The interceptor for a protected service (a no-op when no token is configured).
    pub fn interceptor(
        &self,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let tokens = self.clone();
        move |request: Request<()>| {
            if tokens.is_empty() {
                return Ok(request);
            }
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            match presented {
                Some(token) if tokens.accepts(token.trim()) => Ok(request),
                Some(_) => Err(refuse("the bearer token is not valid")),
                None => Err(refuse(
                    "this server requires `authorization: Bearer <token>` metadata",
                )),
            }
        }
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
