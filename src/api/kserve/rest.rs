//! KServe V2 over REST: `/v2/health/{live,ready}`, `/v2`, `/v2/models/{name}[/versions/{v}]`, `.../ready` and
//! `.../infer`, with JSON tensors and the binary tensor data extension (`Inference-Header-Content-Length`: the
//! JSON header, then each binary tensor in order). Health stays open; everything else wants the bearer token
//! when tokens are configured. Errors are `{"error": "..."}` with the HTTP status for their kind.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::api::auth::Tokens;
use crate::api::grpc::status::{code, code_name};
use crate::api::kserve::tensor::{self, Data, Tensor};
use crate::api::kserve::{EXTENSIONS, SERVER_NAME, V2, V2Error};
use crate::error::ErrorKind;
use crate::telemetry::metrics;

const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct Ctx {
    v2: Arc<V2>,
    tokens: Tokens,
}

/// The V2 REST routes; `max_body` bounds a request.
pub fn router(v2: Arc<V2>, tokens: Tokens, max_body: usize) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
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
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Ctx { v2, tokens })
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
    let (http, grpc) = match err.kind() {
        None => (StatusCode::NOT_FOUND, tonic::Code::NotFound),
        Some(kind) => (http_status(kind), code(kind)),
    };
    err.record(code_name(grpc));
    (http, Json(json!({ "error": err.to_string() }))).into_response()
}

fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Exhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `None` when the call may go on; else the 401 to answer.
fn refuse(ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    if ctx.tokens.is_empty() {
        return None;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if token.is_some_and(|t| ctx.tokens.accepts(t.trim())) {
        return None;
    }
    metrics::record_error(crate::api::auth::REASON, "UNAUTHENTICATED");
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error": "this server requires an `Authorization: Bearer <token>` header"}),
            ),
        )
            .into_response(),
    )
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

/// A model request's token and model name (and version) checked, or the response that refuses it.
fn admit(ctx: &Ctx, headers: &HeaderMap, name: &str, version: &str) -> Option<Response> {
    refuse(ctx, headers).or_else(|| ctx.v2.check_model(name, version).err().map(error))
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
    if let Some(r) = admit(&ctx, &headers, &name, &version) {
        return r;
    }
    let card = &ctx.v2.model().card;
    let meta = |m: crate::api::kserve::TensorMeta| json!({"name": m.name, "datatype": m.datatype, "shape": m.shape});
    Json(json!({
        "name": card.name,
        "versions": [card.version],
        "platform": "onnxruntime_onnx",
        "inputs": ctx.v2.inputs().into_iter().map(meta).collect::<Vec<_>>(),
        "outputs": ctx.v2.outputs().into_iter().map(meta).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn model_ready(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(ModelPath { name, version }): Path<ModelPath>,
) -> Response {
    if let Some(r) = admit(&ctx, &headers, &name, &version) {
        return r;
    }
    let ready = ctx.v2.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"name": name, "ready": ready}))).into_response()
}

async fn model_infer(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(ModelPath { name, version }): Path<ModelPath>,
    body: Bytes,
) -> Response {
    if let Some(r) = admit(&ctx, &headers, &name, &version) {
        return r;
    }
    let request = match parse(&headers, &body) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let wanted: Vec<String> = request.outputs.iter().map(|o| o.0.clone()).collect();
    let outputs = match ctx.v2.infer(request.input, &wanted).await {
        Ok(o) => o,
        Err(e) => return error(e),
    };
    let card = &ctx.v2.model().card;
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
    let head = head.to_string();
    if blobs.is_empty() {
        return Json(serde_json::from_str(&head).unwrap_or(Value::Null)).into_response();
    }
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

/// Splits the body into its JSON header and binary part, and reads the one input tensor.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<InferRequest, V2Error> {
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
    let json: Value = serde_json::from_slice(head)
        .map_err(|e| bad(format!("the request is not valid JSON: {e}")))?;
    let inputs = json["inputs"]
        .as_array()
        .ok_or_else(|| bad("the request has no `inputs` array"))?;
    let [input] = inputs.as_slice() else {
        return Err(bad(format!(
            "{} input tensors were sent; the model takes exactly one, `vibration`",
            inputs.len()
        )));
    };
    let name = input["name"].as_str().unwrap_or("").to_owned();
    let datatype = input["datatype"].as_str().unwrap_or("").to_owned();
    let shape: Vec<i64> = input["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .filter(|s: &Vec<i64>| s.len() == input["shape"].as_array().map_or(0, Vec::len))
        .ok_or_else(|| bad(format!("input `{name}` needs a `shape` of integers")))?;
    let values = match input["parameters"]["binary_data_size"].as_u64() {
        Some(size) => {
            let size = size as usize;
            if size > binary.len() {
                return Err(bad(format!(
                    "input `{name}` says binary_data_size {size}, but only {} bytes follow the header",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            if datatype != "FP32" {
                return Err(bad(format!(
                    "input `{name}` has datatype {datatype}; the model takes FP32"
                )));
            }
            tensor::f32_from_raw(&name, &shape, mine)?
        }
        None => {
            let mut flat = Vec::new();
            flatten(&input["data"], &mut flat)
                .map_err(|what| bad(format!("input `{name}` data: {what}")))?;
            flat
        }
    };
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes follow the tensors the header describes",
            binary.len()
        )));
    }
    let outputs = json["outputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        o["name"].as_str().unwrap_or("").to_owned(),
                        o["parameters"]["binary_data"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(InferRequest {
        id: json.get("id").cloned(),
        input: Tensor {
            name,
            datatype,
            shape,
            data: Data::F32(values),
        },
        outputs,
        binary_outputs: json["parameters"]["binary_data_output"]
            .as_bool()
            .unwrap_or(false),
    })
}

/// JSON tensor data, flat or nested, row-major.
fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<(), &'static str> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten(i, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or("a number out of range")? as f32);
            Ok(())
        }
        Value::Null => Err("missing (send `data`, or binary data with binary_data_size)"),
        _ => Err("not numbers"),
    }
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
        let a = parse(&HeaderMap::new(), json_body.as_bytes()).unwrap();
        let head = json!({"id": "r1", "inputs": [{"name": "vibration", "datatype": "FP32", "shape": [1, 1, 3],
            "parameters": {"binary_data_size": 12}}], "outputs": [{"name": "label", "parameters": {"binary_data": true}}]})
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, head.len().to_string().parse().unwrap());
        let b = parse(&headers, &body).unwrap();
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
            let e = parse(&HeaderMap::new(), body.as_bytes())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(text), "{body}: {e}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, "999".parse().unwrap());
        let e = parse(&headers, b"{}").err().unwrap().to_string();
        assert!(e.contains("Inference-Header-Content-Length"), "{e}");
    }
}
