//! The machines of this replica as JSON on the HTTP listener, behind the same tokens as the REST API:
//! `GET /v1/machines` (every machine, with the revision it is as of; `?after_revision=N` waits, up to `wait_s`
//! seconds (default 30, at most 60), until something changed after N: the HTTP way to watch) and
//! `GET /v1/machines/{machine_id}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
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

pub(crate) fn router(registry: Arc<Registry>, tokens: Tokens) -> Router {
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

/// `after_revision` and `wait_s` from the query string; anything else is ignored, a malformed number refused.
fn poll(query: Option<&str>) -> Result<Option<(u64, u64)>, String> {
    let mut after = None;
    let mut wait = 30;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                format!(
                    "{key} must be a whole number, not {}",
                    crate::error::quote(value)
                )
            })
        };
        match key {
            "after_revision" => after = Some(number()?),
            "wait_s" => wait = number()?,
            _ => {}
        }
    }
    Ok(after.map(|a| (a, wait.min(MAX_WAIT_S))))
}

/// The longest a long poll is held: below common proxies' idle timeouts.
const MAX_WAIT_S: u64 = 60;

async fn list(State(ctx): State<Ctx>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    if let Some(r) = refused(&ctx, &headers) {
        return r;
    }
    match poll(query.as_deref()) {
        Ok(Some((after, wait_s))) => {
            ctx.registry
                .changed_after(after, std::time::Duration::from_secs(wait_s))
                .await;
        }
        Ok(None) => {}
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({ "error": e })),
    }
    let (revision, machines) = ctx.registry.list();
    let machines: Vec<Value> = machines.iter().map(machine).collect();
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
            json!({"revision": revision, "machine": machine(m)}),
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

fn machine(m: &MachineView) -> Value {
    json!({
        "machine_id": m.machine_id,
        "condition": m.condition.label(),
        "sensor_id": m.sensor_id,
        "fault_class": m.fault_class,
        "zone": m.zone.map(|z| z.name()),
        "velocity_rms_mm_s": m.velocity_mm_s,
        "since_unix_ms": m.since_unix_ms,
        "sensors": m.sensors.iter().map(sensor).collect::<Vec<_>>(),
    })
}

fn sensor(v: &SensorView) -> Value {
    let (s, classes): (&Snapshot, &[String]) = (&v.snapshot, &v.classes);
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
