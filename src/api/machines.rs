//! The machines of this replica as JSON on the HTTP listener, behind the same tokens as the REST API:
//! `GET /v1/machines` (every machine, with the watch revision it is as of) and `GET /v1/machines/{machine_id}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::auth::Tokens;
use crate::condition::debounce::Snapshot;
use crate::condition::machines::{MachineView, Registry, SensorView};

#[derive(Clone)]
struct Ctx {
    registry: Arc<Registry>,
    tokens: Tokens,
}

pub fn router(registry: Arc<Registry>, tokens: Tokens) -> Router {
    Router::new()
        .route("/v1/machines", get(list))
        .route("/v1/machines/{machine_id}", get(one))
        .with_state(Ctx { registry, tokens })
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn refused(ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    ctx.tokens.check(presented).err().map(|_| {
        reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "this server requires an `Authorization: Bearer <token>` header"}),
        )
    })
}

async fn list(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&ctx, &headers) {
        return r;
    }
    let (revision, machines) = ctx.registry.list();
    let classes = ctx.registry.classes();
    let machines: Vec<Value> = machines.iter().map(|m| machine(m, classes)).collect();
    reply(
        StatusCode::OK,
        json!({"revision": revision, "machines": machines}),
    )
}

async fn one(State(ctx): State<Ctx>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = refused(&ctx, &headers) {
        return r;
    }
    let (revision, machines) = ctx.registry.list();
    match machines.iter().find(|m| m.machine_id == id) {
        Some(m) => reply(
            StatusCode::OK,
            json!({"revision": revision, "machine": machine(m, ctx.registry.classes())}),
        ),
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!(
                "no machine {} on this replica: no stream of it is open here, and none ended within the retention time",
                crate::error::quote(&id)
            )}),
        ),
    }
}

fn machine(m: &MachineView, classes: &[String]) -> Value {
    json!({
        "machine_id": m.machine_id,
        "condition": m.condition.label(),
        "sensor_id": m.sensor_id,
        "fault_class": m.fault_class,
        "zone": m.zone.map(|z| z.name()),
        "velocity_rms_mm_s": m.velocity_mm_s,
        "since_unix_ms": m.since_unix_ms,
        "sensors": m.sensors.iter().map(|s| sensor(s, classes)).collect::<Vec<_>>(),
    })
}

fn sensor(v: &SensorView, classes: &[String]) -> Value {
    let s: &Snapshot = &v.snapshot;
    let shares: serde_json::Map<String, Value> = classes
        .iter()
        .zip(&s.shares)
        .map(|(c, share)| (c.clone(), json!(share)))
        .collect();
    json!({
        "sensor_id": v.sensor_id,
        "condition": s.condition.label(),
        "summary": s.summary(classes),
        "fault_class": s.fault_class.and_then(|c| classes.get(c)),
        "shares": shares,
        "evidence_seconds": s.evidence_s,
        "since_sample": s.since_sample,
        "since_unix_ms": s.since_unix_ms,
        "velocity_rms_mm_s": s.velocity_mm_s,
        "zone": s.zone.map(|z| z.name()),
        "worst_zone": s.worst_zone.map(|z| z.name()),
        "streaming": v.streaming,
    })
}
