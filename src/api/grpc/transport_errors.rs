//! Unary calls whose request tonic could not decode (too large, or not valid protobuf) never reach a handler:
//! tonic answers them itself with OUT_OF_RANGE or INTERNAL. This layer gives them the code and count every other
//! bad request gets (INVALID_ARGUMENT, in `drsn_errors_total`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::Service;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::server::NamedService;

use crate::api::grpc::status::code_name;
use crate::telemetry::metrics;

#[derive(Debug, Clone)]
pub(crate) struct TransportErrors<S>(pub S);

impl<S: NamedService> NamedService for TransportErrors<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<Request<B>> for TransportErrors<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let future = self.0.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            rewrite(&mut response);
            Ok(response)
        })
    }
}

/// A trailers-only response carries its status in the headers: rewrite tonic's decoding failures.
fn rewrite<R>(response: &mut Response<R>) {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let reason = match code {
        Some("11") if message.contains("too%20large") || message.contains("too large") => {
            "message_too_large"
        }
        Some("13") if message.contains("decode") => "malformed",
        _ => return,
    };
    let text = match reason {
        "message_too_large" => {
            "the request is over the server's message size limit: send fewer windows per call"
        }
        _ => "the request is not valid protobuf for this call",
    };
    metrics::record_error(reason, code_name(tonic::Code::InvalidArgument));
    headers.insert("grpc-status", HeaderValue::from_static("3"));
    headers.insert("grpc-message", HeaderValue::from_static(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: &'static str, message: &'static str) -> Response<()> {
        let mut r = Response::new(());
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_static(code));
        r.headers_mut()
            .insert("grpc-message", HeaderValue::from_static(message));
        r
    }

    #[test]
    fn decoding_failures_become_invalid_argument_others_stay() {
        let mut r = response(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%2099%20bytes",
        );
        rewrite(&mut r);
        assert_eq!(r.headers()["grpc-status"], "3");
        let mut r = response("13", "failed%20to%20decode%20Protobuf%20message");
        rewrite(&mut r);
        assert_eq!(r.headers()["grpc-status"], "3");
        let mut r = response("13", "inference%20failed");
        rewrite(&mut r);
        assert_eq!(
            r.headers()["grpc-status"],
            "13",
            "a server fault stays INTERNAL"
        );
        let mut r = response("8", "queue%20full");
        rewrite(&mut r);
        assert_eq!(r.headers()["grpc-status"], "8");
    }
}
