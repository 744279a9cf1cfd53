//! KServe V2 over REST: `/v2/health/{live,ready}`, `/v2`, `/v2/models/{name}[/versions/{v}]`, `.../ready` and
//! `.../infer`, with JSON tensors and the binary tensor data extension (`Inference-Header-Content-Length`: the
//! JSON header, then each binary tensor in order). Health stays open; everything else wants the bearer token
//! when tokens are configured. Errors are `{"error": "..."}` with the HTTP status for their kind.
//!
//! An infer request is refused from its headers alone when it can be (token, model, Content-Length over the limit,
//! request memory budget), before a byte of its body is read; its JSON is decoded by typed serde, tensor data
//! straight into flat floats, so decoding holds about as much as the body.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use ::metrics::counter;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::api::auth::Tokens;
use crate::api::connection::{ConnInfo, ReadDeadline};
use crate::api::grpc::status::{code, code_name};
use crate::api::kserve::tensor::{self, Data, Tensor};
use crate::api::kserve::{EXTENSIONS, SERVER_NAME, V2, V2Error, V2Models, repository};
use crate::error::{ErrorKind, ServeError, quote};
use crate::telemetry::metrics;

const HEADER_LENGTH: &str = "inference-header-content-length";
/// Bodies larger than this are decoded on a blocking thread.
const PARSE_INLINE: usize = 64 << 10;

#[derive(Clone)]
struct Ctx {
    v2: Arc<V2Models>,
    tokens: Tokens,
    max_body: usize,
    max_values: usize,
}

/// The V2 REST routes; `max_body` bounds a request's body, `max_values` its tensor's values.
pub(crate) fn router(
    v2: Arc<V2Models>,
    tokens: Tokens,
    max_body: usize,
    max_values: usize,
) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route(
            "/v2/repository/models/{name}/unload",
            post(repository_unload),
        )
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(model_infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(model_infer),
        )
        .with_state(Ctx {
            v2,
            tokens,
            max_body,
            max_values,
        })
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

/// An error response, counted.
fn error(err: V2Error) -> Response {
    let kind = err.kind();
    let (http, grpc) = (http_status(kind), code(kind));
    let http = match &err {
        V2Error::Serve(ServeError::RequestTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => http,
    };
    err.record(code_name(grpc));
    let mut response = (http, Json(json!({ "error": err.to_string() }))).into_response();
    if matches!(
        http,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        // The body is left unread: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Exhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Disabled => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `None` when the call may go on; else the 401 to answer.
fn refuse(ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // The same check as the gRPC services (counted there); REST names its header in its own words.
    ctx.tokens.check(header).err().map(|_| {
        (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": "this server requires an `Authorization: Bearer <token>` header"}),
            ),
        )
            .into_response()
    })
}

async fn server_ready(State(ctx): State<Ctx>) -> Response {
    let ready = ctx.v2.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ready }))).into_response()
}

/// A model request's token checked and its model (and version) found, or the response that refuses it.
#[allow(clippy::result_large_err)] // the error is the response itself, answered at once, never passed up
fn admit(ctx: &Ctx, headers: &HeaderMap, name: &str, version: &str) -> Result<Arc<V2>, Response> {
    if let Some(r) = refuse(ctx, headers) {
        return Err(r);
    }
    ctx.v2.get(name, version).map_err(error)
}

/// The repository extension's index (Triton's and MLServer's `POST /v2/repository/index`): every model version
/// served, READY or UNAVAILABLE (only READY ones for `{"ready": true}`), a shadow's tally as numbers too.
async fn repository_index(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&ctx, &headers) {
        return r;
    }
    let ready_only = match json_body(&body) {
        Ok(v) => v.get("ready").and_then(Value::as_bool).unwrap_or(false),
        Err(err) => return error(err),
    };
    let index: Vec<Value> = repository::index(&ctx.v2, ready_only)
        .into_iter()
        .map(|e| {
            let mut entry = json!({"name": e.name, "version": e.version, "state": e.state, "reason": e.reason});
            // For scripts deciding on a promotion.
            if let Some((of, tally)) = e.shadow {
                entry["shadow"] = json!({"of": of, "agree": tally.agree, "disagree": tally.disagree,
                    "unscored": tally.unscored, "skipped": tally.skipped, "agreement": tally.agreement()});
            }
            entry
        })
        .collect();
    Json(Value::Array(index)).into_response()
}

/// A repository request's JSON body; an empty body is `{}`.
fn json_body(body: &[u8]) -> Result<Value, V2Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| V2Error::Control(format!("the request's body is not JSON: {e}")))
}

/// `POST /v2/repository/models/{name}/load`: the versions of `name` in the repository that are not served yet are
/// loaded and checked beside the serving ones; a version that fails changes nothing. Without parameters the newest
/// then serves new streams (unless a version is pinned); `{"parameters": {"serve": "<version>" | "newest",
/// "shadow": "<version>" | "none"}}` pins the serving version and sets the shadow candidate.
async fn repository_load(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refuse(&ctx, &headers) {
        return r;
    }
    let roles = json_body(&body).and_then(|v| repository::load_roles(parameters(v)?));
    match roles {
        Ok(roles) => done(&name, repository::load(&ctx.v2, &name, roles).await),
        Err(err) => error(err),
    }
}

/// A repository request's `parameters` as the extension's neutral form: a string, or another value described.
fn parameters(body: Value) -> Result<Vec<(String, repository::Param)>, V2Error> {
    let map = match body.get("parameters") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => {
            return Err(V2Error::Control(format!(
                "`parameters` must be an object, not {other}"
            )));
        }
    };
    Ok(map
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => (k, Ok(s)),
            other => (k, Err(other.to_string())),
        })
        .collect())
}

/// `POST /v2/repository/models/{name}/unload`: every version of `name` stops taking new streams and requests; its
/// open streams end with a resume point (clients resume on the newest version left). Its parameters
/// (tritonclient's `unload_dependents`) change nothing: no model here depends on another.
async fn repository_unload(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = refuse(&ctx, &headers) {
        return r;
    }
    done(&name, repository::unload(&ctx.v2, &name).await)
}

/// A load's or unload's answer: what changed, or why nothing did.
fn done(name: &str, result: Result<String, V2Error>) -> Response {
    match result {
        Ok(what) => Json(json!({"name": name, "result": what})).into_response(),
        Err(err) => error(err),
    }
}

/// `/v2/models/{name}[/versions/{version}]...`: an absent version is the empty string (any version).
#[derive(serde::Deserialize)]
struct ModelPath {
    name: String,
    #[serde(default)]
    version: String,
}

async fn server_metadata(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&ctx, &headers) {
        return r;
    }
    Json(json!({"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS}))
        .into_response()
}

async fn model_metadata(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(ModelPath { name, version }): Path<ModelPath>,
) -> Response {
    let v2 = match admit(&ctx, &headers, &name, &version) {
        Ok(v2) => v2,
        Err(r) => return r,
    };
    let card = &v2.model().card;
    let meta = |m: crate::api::kserve::TensorMeta| json!({"name": m.name, "datatype": m.datatype, "shape": m.shape});
    // Unversioned: every version of the model (the tensors are the newest's); versioned: that one.
    let versions = if version.is_empty() {
        ctx.v2.versions(&card.name)
    } else {
        vec![card.version.clone()]
    };
    Json(json!({
        "name": card.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": v2.inputs().into_iter().map(meta).collect::<Vec<_>>(),
        "outputs": v2.outputs().into_iter().map(meta).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn model_ready(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(ModelPath { name, version }): Path<ModelPath>,
) -> Response {
    let v2 = match admit(&ctx, &headers, &name, &version) {
        Ok(v2) => v2,
        Err(r) => return r,
    };
    let ready = v2.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"name": name, "ready": ready}))).into_response()
}

async fn model_infer(
    State(ctx): State<Ctx>,
    Path(ModelPath { name, version }): Path<ModelPath>,
    request: Request,
) -> Response {
    // Every line this request causes says whose it was.
    let peer = request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|c| c.remote);
    let span = tracing::info_span!("request", method = "REST infer", peer = ?peer, model = ?name,
        model_version = ?version);
    infer_request(ctx, name, version, request)
        .instrument(span)
        .await
}

async fn infer_request(ctx: Ctx, name: String, version: String, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Everything the headers can decide is decided before the first body byte is read (and before hyper answers
    // `Expect: 100-continue`): an unauthenticated or oversized request costs the server nothing.
    let v2 = match admit(&ctx, &parts.headers, &name, &version) {
        Ok(v2) => v2,
        Err(r) => return r,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(bytes) = declared.filter(|n| *n > ctx.max_body) {
        return error(
            ServeError::RequestTooLarge {
                bytes,
                max: ctx.max_body,
            }
            .into(),
        );
    }
    // A chunked body may grow to the limit: reserve that much. Held until the response is built.
    let reservation = match ctx
        .v2
        .request_budget()
        .reserve(declared.unwrap_or(ctx.max_body))
    {
        Ok(r) => r,
        Err(e) => return error(e.into()),
    };
    let deadline = parts.extensions.get::<ReadDeadline>().copied();
    let body = match read_body(body, declared, ctx.max_body, deadline).await {
        Ok(b) => b,
        Err(e) => return error(e.into()),
    };
    let headers = parts.headers;
    let max_values = ctx.max_values;
    let parsed = if body.len() > PARSE_INLINE {
        // Megabytes of JSON take milliseconds: off the async threads, which serve every other connection.
        match tokio::task::spawn_blocking(move || parse(&headers, &body, max_values)).await {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::error!(error = %err, "the REST request parser failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "the server failed to parse the request (a bug: please report it)"})),
                )
                    .into_response();
            }
        }
    } else {
        parse(&headers, &body, max_values)
    };
    let response = match parsed {
        Ok(request) => infer(&v2, request).await,
        Err(e) => error(e),
    };
    drop(reservation);
    response
}

/// Checks the input and the outputs asked for (quoting what the client named), diagnoses, and builds the response.
async fn infer(v2: &V2, request: InferRequest) -> Response {
    if let Some(meta) = v2.inputs().first() {
        let input = &request.input;
        if input.name != meta.name {
            return error(bad(format!(
                "input {} is unknown; the model takes one input, `{}`",
                quote(&input.name),
                meta.name
            )));
        }
        if input.datatype != meta.datatype {
            return error(bad(format!(
                "input {} has datatype {}; the model takes {}",
                quote(&input.name),
                quote(&input.datatype),
                meta.datatype
            )));
        }
    }
    let all = v2.outputs();
    if let Some((unknown, _)) = request
        .outputs
        .iter()
        .find(|(w, _)| !all.iter().any(|m| m.name == w))
    {
        return error(bad(format!(
            "output {} is not one of: {}",
            quote(unknown),
            all.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        )));
    }
    let wanted: Vec<String> = request.outputs.iter().map(|o| o.0.clone()).collect();
    let outputs = match v2.infer(request.input, &wanted).await {
        Ok(o) => o,
        Err(e) => return error(e),
    };
    let card = &v2.model().card;
    let binary = |name: &str| {
        request
            .outputs
            .iter()
            .find(|o| o.0 == name)
            .map_or(request.binary_outputs, |o| o.1)
    };
    let mut blobs = Vec::new();
    let tensors: Vec<Value> = outputs
        .iter()
        .map(|t| {
            let mut v = json!({"name": t.name, "datatype": t.datatype, "shape": t.shape});
            if binary(&t.name) {
                let raw = t.raw();
                v["parameters"] = json!({"binary_data_size": raw.len()});
                blobs.push(raw);
            } else {
                v["data"] = match &t.data {
                    Data::F32(x) => json!(x),
                    Data::Bytes(items) => {
                        json!(
                            items
                                .iter()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .collect::<Vec<_>>()
                        )
                    }
                };
            }
            v
        })
        .collect();
    let mut head =
        json!({"model_name": card.name, "model_version": card.version, "outputs": tensors});
    if let Some(id) = request.id {
        head["id"] = id;
    }
    if blobs.is_empty() {
        return Json(head).into_response();
    }
    let head = head.to_string();
    let mut bytes = head.clone().into_bytes();
    for b in blobs {
        bytes.extend_from_slice(&b);
    }
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&head.len().to_string()) {
        h.insert(HEADER_LENGTH, v);
    }
    response
}

struct InferRequest {
    id: Option<Value>,
    input: Tensor,
    /// Requested outputs with their `binary_data` parameter.
    outputs: Vec<(String, bool)>,
    /// `parameters.binary_data_output`: all outputs binary when none is named.
    binary_outputs: bool,
}

fn bad(text: impl Into<String>) -> V2Error {
    V2Error::Tensor(text.into())
}

/// Splits the body into its JSON header and binary part, and reads the one input tensor (at most `max_values`
/// values).
fn parse(headers: &HeaderMap, body: &[u8], max_values: usize) -> Result<InferRequest, V2Error> {
    let split = match headers.get(HEADER_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                bad(format!(
                    "Inference-Header-Content-Length must be a length within the body of {} bytes",
                    body.len()
                ))
            })?,
        None => body.len(),
    };
    let (head, mut binary) = body.split_at(split);
    MAX_VALUES.with(|m| m.set(max_values));
    let json: Head = serde_json::from_slice(head).map_err(|e| {
        if e.is_data() {
            // serde's message may quote the client's text: bounded and escaped.
            bad(format!(
                "the request is not a KServe V2 inference request: {}",
                quote(&e.to_string())
            ))
        } else {
            bad(format!("the request is not valid JSON: {e}"))
        }
    })?;
    let inputs = json
        .inputs
        .ok_or_else(|| bad("the request has no `inputs` array"))?;
    let count = inputs.count;
    let Ok([input]) = <[InputHead; 1]>::try_from(inputs.items) else {
        return Err(bad(format!(
            "{count} input tensors were sent; the model takes exactly one, `vibration`"
        )));
    };
    if count != 1 {
        return Err(bad(format!(
            "{count} input tensors were sent; the model takes exactly one, `vibration`"
        )));
    }
    let name = input.name.unwrap_or_default();
    let datatype = input.datatype.unwrap_or_default();
    let shape = input.shape.and_then(|s| s.0).ok_or_else(|| {
        bad(format!(
            "input {} needs a `shape` of integers",
            quote(&name)
        ))
    })?;
    let size = input.parameters.and_then(|p| p.binary_data_size);
    let values = match (size, input.data) {
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "input {} has both `data` and binary data (binary_data_size); send one of them",
                quote(&name)
            )));
        }
        (Some(size), None) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return Err(bad(format!(
                    "input {} says binary_data_size {size}, but only {} bytes follow the header",
                    quote(&name),
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            if datatype != "FP32" {
                return Err(bad(format!(
                    "input {} has datatype {}; the model takes FP32",
                    quote(&name),
                    quote(&datatype)
                )));
            }
            let want = tensor::elements(&shape).and_then(|n| n.checked_mul(4));
            if want != Some(mine.len()) {
                return Err(bad(format!(
                    "input {} of shape {shape:?} and datatype FP32 needs {} bytes; {} were sent",
                    quote(&name),
                    want.map_or_else(|| "more".to_owned(), |n| n.to_string()),
                    mine.len()
                )));
            }
            mine.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (None, Some(FlatData(Ok(values)))) => values,
        (None, Some(FlatData(Err(what)))) => {
            return Err(bad(format!("input {} data: {what}", quote(&name))));
        }
        (None, None) => {
            return Err(bad(format!(
                "input {} data: {}",
                quote(&name),
                Wrong::Missing
            )));
        }
    };
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes follow the tensors the header describes",
            binary.len()
        )));
    }
    let outputs = json.outputs.unwrap_or_default();
    if outputs.count > outputs.items.len() {
        return Err(bad(format!(
            "{} outputs were asked for; the model has at most {MAX_OUTPUTS}",
            outputs.count
        )));
    }
    Ok(InferRequest {
        id: json.id.map(|Id(v)| v),
        input: Tensor {
            name,
            datatype,
            shape,
            data: Data::F32(values),
        },
        outputs: outputs
            .items
            .into_iter()
            .map(|o| {
                (
                    o.name.unwrap_or_default(),
                    o.parameters.and_then(|p| p.binary_data).unwrap_or(false),
                )
            })
            .collect(),
        binary_outputs: json
            .parameters
            .and_then(|p| p.binary_data_output)
            .unwrap_or(false),
    })
}

// The request, typed: unknown fields are skipped without being stored, tensor data goes straight into one flat
// `Vec<f32>`, and every list is bounded, so that decoding holds about as much as the body (no `serde_json::Value`
// tree, which costs some 20 times the body for a tensor of numbers).

/// Most outputs a request may name (the model has six).
const MAX_OUTPUTS: usize = 16;
/// Most dimensions of a shape.
const MAX_DIMS: usize = 8;

#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    inputs: Option<Bounded<InputHead, 1>>,
    #[serde(default)]
    outputs: Option<Bounded<OutputHead, MAX_OUTPUTS>>,
    #[serde(default)]
    parameters: Option<RequestParameters>,
}

#[derive(serde::Deserialize)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(serde::Deserialize)]
struct InputHead {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    datatype: Option<String>,
    #[serde(default)]
    shape: Option<Shape>,
    #[serde(default)]
    parameters: Option<InputParameters>,
    #[serde(default)]
    data: Option<FlatData>,
}

#[derive(serde::Deserialize)]
struct InputParameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
}

#[derive(serde::Deserialize)]
struct OutputHead {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

#[derive(serde::Deserialize)]
struct OutputParameters {
    #[serde(default)]
    binary_data: Option<bool>,
}

/// The request id, echoed back: a string (or a number).
struct Id(Value);

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id(Value::String(v.to_owned())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                Ok(Id(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                Ok(Id(v.into()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The first `N` items of a list, and how many it had (the rest are skipped unread).
struct Bounded<T, const N: usize> {
    items: Vec<T>,
    count: usize,
}

impl<T, const N: usize> Default for Bounded<T, N> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            count: 0,
        }
    }
}

impl<'de, T: serde::Deserialize<'de>, const N: usize> serde::Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Bounded<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                let mut count = 0;
                while count < N {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => return Ok(Bounded { items, count }),
                    }
                    count += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(Bounded { items, count })
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// What is wrong with a tensor's `data` (or `shape`), said once the input's name is known.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wrong {
    Missing,
    NotNumbers,
    OutOfRange,
    TooMany(usize),
}

impl fmt::Display for Wrong {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Missing => {
                f.write_str("missing (send `data`, or binary data with binary_data_size)")
            }
            Self::NotNumbers => f.write_str("not numbers"),
            Self::OutOfRange => f.write_str("a number out of range for FP32"),
            Self::TooMany(max) => write!(f, "more than {max} values"),
        }
    }
}

/// Visitor methods that take a JSON scalar other than a number as `$value`.
macro_rules! other_scalars_are {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// A shape: `None` unless it is a list of at most [`MAX_DIMS`] integers.
struct Shape(Option<Vec<i64>>);

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                let mut dims = Vec::new();
                let mut ok = true;
                while let Some(Dim(dim)) = seq.next_element()? {
                    match dim {
                        Some(n) if ok && dims.len() < MAX_DIMS => dims.push(n),
                        _ => ok = false,
                    }
                }
                Ok(Shape(ok.then_some(dims)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Shape(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape(None))
            }
            other_scalars_are!(Shape(None));
        }
        d.deserialize_any(V)
    }
}

/// One dimension of a shape: `None` unless an integer.
struct Dim(Option<i64>);

impl<'de> serde::Deserialize<'de> for Dim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dim;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dim, E> {
                Ok(Dim(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dim, E> {
                Ok(Dim(i64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Dim, E> {
                Ok(Dim(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dim, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Dim(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dim, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Dim(None))
            }
            other_scalars_are!(Dim(None));
        }
        d.deserialize_any(V)
    }
}

std::thread_local! {
    /// Most values the `data` of the request being parsed on this thread may hold ([`parse`] sets it; a serde
    /// `Deserialize` has no other way in).
    static MAX_VALUES: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Tensor `data`, flat or nested arrays of numbers, flattened row-major as it is read; what is wrong with it is
/// kept (the rest skipped unread) so that the error can name the input, whose name may come later.
struct FlatData(Result<Vec<f32>, Wrong>);

impl<'de> serde::Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        let max = MAX_VALUES.with(Cell::get);
        let read = d.deserialize_any(Flatten { out: &mut out, max })?;
        Ok(FlatData(read.map(|()| out)))
    }
}

/// Appends the numbers of a (nested) array to `out`.
struct Flatten<'a> {
    out: &'a mut Vec<f32>,
    max: usize,
}

impl Flatten<'_> {
    fn push(self, v: f32) -> Result<(), Wrong> {
        if !v.is_finite() {
            return Err(Wrong::OutOfRange);
        }
        if self.out.len() >= self.max {
            return Err(Wrong::TooMany(self.max));
        }
        self.out.push(v);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = Result<(), Wrong>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = Result<(), Wrong>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Flatten { out, max } = self;
        while let Some(read) = seq.next_element_seed(Flatten {
            out: &mut *out,
            max,
        })? {
            if let Err(wrong) = read {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(Err(wrong));
            }
        }
        Ok(Ok(()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.push(v as f32))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.push(v as f32))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.push(v as f32))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(Wrong::Missing))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(Wrong::NotNumbers))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(Wrong::NotNumbers))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err(Wrong::NotNumbers))
    }
}

/// Reads a request body of at most `max` bytes by `deadline`; `expected` (its Content-Length) sizes the buffer. A
/// slow body is counted (`drsn_connections_closed_total{reason="slow"}`): answer it and the connection closes, since
/// the rest of the body is never read.
pub(crate) async fn read_body(
    body: Body,
    expected: Option<usize>,
    max: usize,
    deadline: Option<ReadDeadline>,
) -> Result<Vec<u8>, ServeError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(expected.unwrap_or(0).min(max));
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ServeError::ClientGone(e.to_string()))?;
            let bytes = buf.len().saturating_add(chunk.len());
            if bytes > max {
                return Err(ServeError::RequestTooLarge { bytes, max });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match deadline {
        None => read.await?,
        Some(d) => match tokio::time::timeout_at(d.at, read).await {
            Ok(read) => read?,
            Err(_) => {
                counter!(metrics::CONNECTIONS_CLOSED, "listener" => d.listener, "reason" => "slow")
                    .increment(1);
                return Err(ServeError::RequestReadTimeout { after: d.timeout });
            }
        },
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_json_requests_parse_to_the_same_tensor() {
        let values = [0.5f32, -1.25, 3.0];
        let json_body =
            json!({"inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, 3],
            "data": [[[0.5, -1.25, 3.0]]]}]})
            .to_string();
        let a = parse(&HeaderMap::new(), json_body.as_bytes(), 1 << 20).unwrap();
        let head = json!({"id": "r1", "inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, 3],
            "parameters": {"binary_data_size": 12}}], "outputs": [{"name": "label", "parameters": {"binary_data": true}}]})
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, head.len().to_string().parse().unwrap());
        let b = parse(&headers, &body, 1 << 20).unwrap();
        assert_eq!(a.input, b.input);
        assert_eq!(b.outputs, vec![("label".to_owned(), true)]);
        assert_eq!(b.id, Some(json!("r1")));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        for (body, text) in [
            ("{", "not valid JSON"),
            ("{}", "no `inputs`"),
            (r#"{"inputs": []}"#, "0 input tensors"),
            (
                r#"{"inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, 3]}]}"#,
                "missing",
            ),
            (
                r#"{"inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, 3], "data": ["a"]}]}"#,
                "not numbers",
            ),
            (
                r#"{"inputs": [{"name": "vibration", "datatype": "FP32", "shape": "x", "data": []}]}"#,
                "shape",
            ),
        ] {
            let e = parse(&HeaderMap::new(), body.as_bytes(), 1 << 20)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(text), "{body}: {e}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, "999".parse().unwrap());
        let e = parse(&headers, b"{}", 1 << 20).err().unwrap().to_string();
        assert!(e.contains("Inference-Header-Content-Length"), "{e}");
    }

    #[test]
    fn tensor_data_is_flattened_and_checked_as_it_is_read() {
        let body = |data: &str| {
            format!(
                r#"{{"inputs": [{{"data": {data}, "name": "vibration", "datatype": "FP32", "shape": [1, 2, 2]}}]}}"#
            )
        };
        let ok = parse(
            &HeaderMap::new(),
            body("[[[1, -2.5], [3e2, 4]]]").as_bytes(),
            4,
        )
        .unwrap();
        assert_eq!(ok.input.data, Data::F32(vec![1.0, -2.5, 300.0, 4.0]));
        for (data, text) in [
            (
                "[1, 2, 3, 1e39]",
                "input \"vibration\" data: a number out of range for FP32",
            ),
            ("[1, 2, 3, 4, 5]", "more than 4 values"),
            ("[[1, true], [3, 4]]", "not numbers"),
            ("[[1, {\"a\": 1}], 3]", "not numbers"),
            ("[1, null]", "missing"),
        ] {
            let e = parse(&HeaderMap::new(), body(data).as_bytes(), 4)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(text), "{data}: {e}");
        }
        // Binary data and JSON data for the same input: ambiguous, refused.
        let head = r#"{"inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, 1], "data": [1],
            "parameters": {"binary_data_size": 4}}]}"#;
        let mut both = head.as_bytes().to_vec();
        both.extend(1f32.to_le_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, head.len().to_string().parse().unwrap());
        let e = parse(&headers, &both, 4).err().unwrap().to_string();
        assert!(e.contains("both `data` and binary data"), "{e}");
        // Client text is quoted back bounded and escaped.
        let long = format!(
            r#"{{"inputs": [{{"name": "{}\n", "datatype": "FP32", "shape": "x"}}]}}"#,
            "n".repeat(10_000)
        );
        let e = parse(&HeaderMap::new(), long.as_bytes(), 4)
            .err()
            .unwrap()
            .to_string();
        assert!(e.len() < 200 && e.contains("(10001 bytes)"), "{e}");
        let e = parse(&HeaderMap::new(), br#"{"inputs": [{}, {}, {}]}"#, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("3 input tensors"), "{e}");
    }
}
