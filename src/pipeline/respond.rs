//! Answers clients: turns diagnoses into `WindowResult`s and delivers a stream's results in window order,
//! whatever order the inference threads finish in.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::api::grpc::proto::{
    ResultDetail, StreamDiagnoseResponse, WindowResult, stream_diagnose_response::Event,
};
use crate::error::ServeError;
use crate::model::card::LoadedModel;
use crate::pipeline::batch::{Diagnosis, Reply};
use crate::telemetry::metrics as m;

/// What a stream's reader hands to its responder, in the order the client must see it.
pub enum Outgoing {
    Event(Event),
    Window { meta: WindowMeta, reply: Reply },
    End(ServeError),
}

/// Where a window came from, and when its last sample arrived.
#[derive(Debug, Clone, Copy)]
pub struct WindowMeta {
    pub index: u64,
    pub first_sample: u64,
    pub last_sample: u64,
    pub arrived: Instant,
}

/// Model facts every result repeats.
pub struct ResultContext {
    pub model_name: String,
    pub model_version: String,
    pub classes: Vec<String>,
}

impl ResultContext {
    pub fn new(model: &LoadedModel) -> Self {
        Self {
            model_name: model.card.name.clone(),
            model_version: model.card.version.clone(),
            classes: model.card.classes.clone(),
        }
    }

    /// Builds the result for one window and records it in the metrics.
    pub fn window_result(
        &self,
        api: &'static str,
        detail: ResultDetail,
        meta: &WindowMeta,
        d: Diagnosis,
    ) -> WindowResult {
        let label = self.classes.get(d.class_index).cloned().unwrap_or_default();
        let total = meta.arrived.elapsed();
        m::record_window(api, &label, total);
        let full = detail != ResultDetail::Compact;
        let noise_score = d.shrinkage.as_ref().filter(|s| !s.is_empty()).map(|s| {
            let mean = s.iter().sum::<f32>() / s.len() as f32;
            (1.0 - mean).clamp(0.0, 1.0)
        });
        WindowResult {
            window_index: meta.index,
            first_sample_index: meta.first_sample,
            last_sample_index: meta.last_sample,
            label,
            class_index: d.class_index as u32,
            confidence: d.probabilities.get(d.class_index).copied().unwrap_or(0.0),
            probabilities: if full { d.probabilities } else { Vec::new() },
            noise_score,
            shrinkage: if full {
                d.shrinkage.unwrap_or_default()
            } else {
                Vec::new()
            },
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            queue_us: d.queue_wait.as_micros() as u64,
            inference_us: d.inference.as_micros() as u64,
            total_us: total.as_micros() as u64,
        }
    }
}

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<StreamDiagnoseResponse, Status>> + Send + 'static>>;

struct Responder {
    rx: mpsc::Receiver<Outgoing>,
    ctx: Arc<ResultContext>,
    detail: ResultDetail,
    drain_expired: CancellationToken,
    done: bool,
    /// Held until the response stream is dropped, however the stream ends (the active-streams gauge, its slot).
    _guard: Box<dyn Send + Sync>,
}

/// The response stream of one StreamDiagnose call: items in the reader's order, each window once its diagnosis
/// is ready; ends with the reader's error, if any, or with UNAVAILABLE if the drain timeout passes first.
pub fn ordered(
    rx: mpsc::Receiver<Outgoing>,
    ctx: Arc<ResultContext>,
    detail: ResultDetail,
    drain_expired: CancellationToken,
    guard: Box<dyn Send + Sync>,
) -> ResponseStream {
    let state = Responder {
        rx,
        ctx,
        detail,
        drain_expired,
        done: false,
        _guard: guard,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = st.rx.recv().await?;
        let out = match item {
            Outgoing::Event(event) => Ok(StreamDiagnoseResponse { event: Some(event) }),
            Outgoing::End(err) => Err(err),
            Outgoing::Window { meta, reply } => {
                let ready = tokio::select! {
                    biased;
                    r = reply => r.unwrap_or(Err(ServeError::WorkersGone)),
                    _ = st.drain_expired.cancelled() => Err(ServeError::DrainTimeout { window_index: meta.index }),
                };
                ready.map(|d| StreamDiagnoseResponse {
                    event: Some(Event::Window(
                        st.ctx.window_result("stream", st.detail, &meta, d),
                    )),
                })
            }
        };
        st.done = out.is_err();
        Some((out.map_err(Status::from), st))
    }))
}
