//! Per-method message limits, enforced from the gRPC length-prefixed framing of the request body before tonic
//! buffers anything: tonic reserves a message's declared length as soon as it reads the 5-byte header, so a
//! half-sent message would otherwise hold up to the service-wide limit outside every budget. Streams are held to
//! one chunk (budgeted at `open` as part of the stream's memory); unary calls that carry samples reserve their
//! declared length from the request budget before the body is read, hold it until the response is sent, and are
//! checked on the wire before prost decodes them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::Body as HttpBody;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{Bytes, Service};
use tonic::server::NamedService;

use crate::api::grpc::{status, wire};
use crate::api::kserve;
use crate::error::ServeError;
use crate::pipeline::budget::{RequestBudget, Reservation};
use crate::pipeline::models::Models;

/// The limit of every method that is neither a stream nor a unary call with samples (metadata, health): names
/// and ids only.
pub(crate) const SMALL_MESSAGE: usize = 64 << 10;

/// The message limits of the two gRPC services, from the settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimits {
    /// StreamDiagnose: one chunk.
    pub stream: usize,
    /// Diagnose and ModelInfer: `--max-unary-windows` windows.
    pub unary: usize,
    /// The largest window (samples x channels) these limits were made for: a model version loaded later must fit.
    pub max_window_values: usize,
}

impl MessageLimits {
    /// The limits of the model that needs the largest messages.
    pub(crate) fn new(models: &Models) -> Self {
        let max_windows = models.gate().admission().max_unary_windows;
        let mut limits = Self {
            stream: 0,
            unary: 0,
            max_window_values: 0,
        };
        for pipeline in models.all() {
            let model = pipeline.model();
            limits.stream = limits.stream.max(pipeline.limits().stream_message(model));
            limits.unary = limits
                .unary
                .max(model.window_values() * 4 * max_windows * 2 + (64 << 10));
            limits.max_window_values = limits.max_window_values.max(model.window_values());
        }
        limits
    }

    /// The largest message of any method: tonic's own limit, behind these.
    pub(crate) fn largest(&self) -> usize {
        self.stream.max(self.unary).max(SMALL_MESSAGE)
    }
}

/// drsn.v1 `Diagnosis` behind its limits: streams to one chunk, Diagnose budgeted and its windows counted.
pub(crate) fn diagnosis<S>(service: S, models: &Models, read_timeout: Duration) -> Frames<S> {
    let limits = MessageLimits::new(models);
    let max_windows = models.gate().admission().max_unary_windows;
    let scan: Scan =
        Arc::new(move |buf| wire::check_diagnose(buf, max_windows).map_err(status::status));
    Frames::new(
        service,
        vec![
            Method {
                path: "/drsn.v1.Diagnosis/StreamDiagnose",
                limit: limits.stream,
                unary: None,
            },
            Method {
                path: "/drsn.v1.Diagnosis/Diagnose",
                limit: limits.unary,
                unary: Some(scan),
            },
        ],
        SMALL_MESSAGE,
        models.gate().request_budget().clone(),
        read_timeout,
    )
}

/// V2 `GRPCInferenceService` behind its limits: ModelInfer budgeted and checked on the wire (`outputs`: how many
/// outputs the model has).
pub(crate) fn inference<S>(
    service: S,
    models: &Models,
    outputs: usize,
    read_timeout: Duration,
) -> Frames<S> {
    let limits = MessageLimits::new(models);
    let scan: Scan =
        Arc::new(move |buf| kserve::grpc::check_infer(buf, outputs).map_err(kserve::grpc::status));
    Frames::new(
        service,
        vec![Method {
            path: kserve::grpc::MODEL_INFER,
            limit: limits.unary,
            unary: Some(scan),
        }],
        SMALL_MESSAGE,
        models.gate().request_budget().clone(),
        read_timeout,
    )
}

/// A check of a whole unary message before it is decoded; the error is an answer already counted.
pub(crate) type Scan = Arc<dyn Fn(&[u8]) -> Result<(), Status> + Send + Sync>;

/// The limit of one method (by its path, `/package.Service/Method`).
#[derive(Clone)]
pub(crate) struct Method {
    pub path: &'static str,
    /// The largest message, in bytes.
    pub limit: usize,
    /// A unary call with samples: reserved from the request budget and scanned.
    pub unary: Option<Scan>,
}

struct Rules {
    methods: Vec<Method>,
    /// The limit of every other method (metadata, health: small messages).
    other: usize,
    budget: RequestBudget,
    /// How long a unary call may take to send its message: a stalled body must not hold its reservation.
    read_timeout: Duration,
}

/// The layer around one gRPC service.
#[derive(Clone)]
pub(crate) struct Frames<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> Frames<S> {
    pub(crate) fn new(
        inner: S,
        methods: Vec<Method>,
        other: usize,
        budget: RequestBudget,
        read_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            rules: Arc::new(Rules {
                methods,
                other,
                budget,
                read_timeout,
            }),
        }
    }
}

impl<S: NamedService> NamedService for Frames<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for Frames<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> BoxFuture {
        let rules = self.rules.clone();
        let method = rules
            .methods
            .iter()
            .find(|m| m.path == request.uri().path())
            .cloned();
        let (limit, scan) = match method {
            Some(m) => (m.limit, m.unary),
            None => (rules.other, None),
        };
        let Some(scan) = scan else {
            let (parts, body) = request.into_parts();
            let body = Body::new(Framed::new(body, Bytes::new(), limit));
            return Box::pin(self.inner.call(Request::from_parts(parts, body)));
        };
        // The service readied by `poll_ready` is the one called, later.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(unary(
            inner,
            request,
            limit,
            scan,
            rules.budget.clone(),
            rules.read_timeout,
        ))
    }
}

/// The error tonic gives a message over its limit (OUT_OF_RANGE, rewritten by `TransportErrors` for unary calls
/// and by `status::from_transport` for streams into INVALID_ARGUMENT `message_too_large`).
fn too_large(len: usize, limit: usize) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
    ))
}

/// Reads a unary call's header, reserves its declared length, reads and scans the message, then calls the
/// service with it; the reservation is held until the response body has been sent.
async fn unary<S>(
    mut inner: S,
    request: Request<Body>,
    limit: usize,
    scan: Scan,
    budget: RequestBudget,
    read_timeout: Duration,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let (parts, mut body) = request.into_parts();
    let mut buf = Vec::new();
    let mut ended = false;
    let mut reservation: Option<Reservation> = None;
    let read = async {
        fill(&mut body, &mut buf, 5, &mut ended).await?;
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > limit {
                return Err(too_large(len, limit));
            }
            reservation = Some(budget.reserve(5 + len).map_err(status::status)?);
            buf.reserve_exact((5 + len).saturating_sub(buf.len()));
            fill(&mut body, &mut buf, 5 + len, &mut ended).await?;
            if buf.len() >= 5 + len {
                scan(&buf[5..5 + len])?;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(read_timeout, read).await {
        Ok(Ok(())) => {}
        Ok(Err(status)) => return Ok(status.into_http()),
        Err(_) => {
            let err = ServeError::RequestReadTimeout {
                after: read_timeout,
            };
            return Ok(status::status(err).into_http());
        }
    }
    // What was read goes on first, then the rest of the body, still framed; tonic answers a short body.
    let rest = (!ended).then_some(body);
    let framed = Framed {
        prefix: Some(Bytes::from(buf)),
        body: rest,
        limit,
        header: [0; 5],
        have: 0,
        remaining: 0,
        failed: None,
    };
    let response = inner
        .call(Request::from_parts(parts, Body::new(framed)))
        .await?;
    Ok(match reservation {
        Some(reservation) => response.map(|body| {
            Body::new(Held {
                body,
                _reservation: reservation,
            })
        }),
        None => response,
    })
}

/// Reads `body` into `buf` until it holds `want` bytes or the body has ended.
async fn fill(
    body: &mut Body,
    buf: &mut Vec<u8>,
    want: usize,
    ended: &mut bool,
) -> Result<(), Status> {
    while buf.len() < want && !*ended {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                // Trailers end a request body.
                Err(_) => *ended = true,
            },
            Some(Err(status)) => return Err(status),
            None => *ended = true,
        }
    }
    Ok(())
}

/// A request body passed on frame by frame while its message headers are read: a header declaring more than
/// `limit` bytes ends the body with [`too_large`] instead of reaching tonic. Messages before it in the same frame
/// are passed on first.
struct Framed {
    prefix: Option<Bytes>,
    body: Option<Body>,
    limit: usize,
    header: [u8; 5],
    /// Header bytes read of the next message.
    have: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    /// The error to end with, once what came before it has been passed on.
    failed: Option<Option<Status>>,
}

impl Framed {
    fn new(body: Body, prefix: Bytes, limit: usize) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            body: Some(body),
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
            failed: None,
        }
    }

    /// Follows the framing through `data`; on a message over the limit, the offset where its header starts in
    /// `data` (0 if it began in an earlier frame) and the error.
    fn follow(&mut self, data: &[u8]) -> Result<(), (usize, Status)> {
        let mut at = 0;
        let mut header_at = 0;
        while at < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() - at);
                self.remaining -= n;
                at += n;
                continue;
            }
            if self.have == 0 {
                header_at = at;
            }
            let n = (5 - self.have).min(data.len() - at);
            // Byte by byte: at most five, and a call to memcpy for each message costs more than the copy.
            for (slot, byte) in self.header[self.have..self.have + n]
                .iter_mut()
                .zip(&data[at..at + n])
            {
                *slot = *byte;
            }
            self.have += n;
            at += n;
            if self.have == 5 {
                self.have = 0;
                let h = self.header;
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                if len > self.limit {
                    return Err((header_at, too_large(len, self.limit)));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl HttpBody for Framed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(failed) = &mut this.failed {
            return Poll::Ready(failed.take().map(Err));
        }
        let frame = match this.prefix.take() {
            Some(prefix) => http_body::Frame::data(prefix),
            None => {
                let Some(body) = &mut this.body else {
                    return Poll::Ready(None);
                };
                match ready!(Pin::new(body).poll_frame(cx)) {
                    Some(Ok(frame)) => frame,
                    other => return Poll::Ready(other),
                }
            }
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        match this.follow(data) {
            Ok(()) => Poll::Ready(Some(Ok(frame))),
            Err((0, status)) => {
                this.failed = Some(None);
                Poll::Ready(Some(Err(status)))
            }
            Err((at, status)) => {
                this.failed = Some(Some(status));
                let before = data.slice(..at);
                Poll::Ready(Some(Ok(http_body::Frame::data(before))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.failed {
            Some(pending) => pending.is_none(),
            None => self.prefix.is_none() && self.body.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }
}

/// A response body that holds its request's reservation until it has been sent (or dropped).
struct Held {
    body: Body,
    _reservation: Reservation,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(limit: usize) -> Framed {
        Framed::new(Body::empty(), Bytes::new(), limit)
    }

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn headers_are_followed_across_frames() {
        let mut f = framed(10);
        let mut wire = message(10);
        wire.extend(message(0));
        wire.extend(message(3));
        // One byte at a time: headers split across frames are still read.
        for b in &wire {
            assert!(f.follow(std::slice::from_ref(b)).is_ok());
        }
        assert!(f.follow(&wire).is_ok());
        assert_eq!((f.have, f.remaining), (0, 0));
    }

    #[test]
    fn a_header_over_the_limit_is_refused_where_it_starts() {
        let mut f = framed(10);
        let mut wire = message(4);
        wire.extend_from_slice(&[0, 0, 0, 0, 11]);
        let (at, status) = f.follow(&wire).unwrap_err();
        assert_eq!(at, 9, "the message before it is passed on");
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status
                .message()
                .contains("found 11 bytes, the limit is: 10")
        );
        // A header that began in an earlier frame.
        let mut f = framed(10);
        assert!(f.follow(&[0, 0, 0]).is_ok());
        assert_eq!(f.follow(&[1, 0]).unwrap_err().0, 0);
    }
}
