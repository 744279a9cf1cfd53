//! The gRPC service: StreamDiagnose wires a client's stream through ingest → window → batch → respond;
//! Diagnose classifies whole windows; GetModel returns the card.

use std::sync::Arc;
use std::time::Instant;

use metrics::counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::batch::Queue;
use crate::card::LoadedModel;
use crate::error::ServeError;
use crate::infer::Placement;
use crate::ingest::{self, Limits, StreamSpec};
use crate::metrics::{self as m, StreamGauge};
use crate::proto::diagnosis_server::Diagnosis;
use crate::proto::stream_diagnose_request::Message;
use crate::proto::stream_diagnose_response::Event;
use crate::proto::{self, StreamDiagnoseRequest};
use crate::respond::{self, Outgoing, ResponseStream, ResultContext, WindowMeta};
use crate::window::{self, Framer};

/// Everything a request handler needs; shared by all calls.
pub struct Shared {
    pub model: Arc<LoadedModel>,
    pub placement: Placement,
    pub queue: Queue,
    pub limits: Limits,
    /// Windows a stream may have in flight (queued or awaiting delivery) before its reader pauses.
    pub stream_buffer: usize,
    pub max_unary_windows: usize,
    /// Fires when the server starts draining.
    pub shutdown: CancellationToken,
    /// Fires when the drain timeout has passed: undelivered windows are abandoned.
    pub drain_expired: CancellationToken,
    pub results: Arc<ResultContext>,
}

#[derive(Clone)]
pub struct DiagnosisService(pub Arc<Shared>);

#[tonic::async_trait]
impl Diagnosis for DiagnosisService {
    type StreamDiagnoseStream = ResponseStream;

    async fn stream_diagnose(
        &self,
        request: Request<Streaming<StreamDiagnoseRequest>>,
    ) -> Result<Response<Self::StreamDiagnoseStream>, Status> {
        let shared = self.0.clone();
        if shared.shutdown.is_cancelled() {
            return Err(ServeError::ShuttingDown { resume_from: 0 }.into());
        }
        let gauge = Arc::new(StreamGauge::open());
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(StreamDiagnoseRequest {
                message: Some(Message::Open(open)),
            }) => open,
            Some(StreamDiagnoseRequest {
                message: Some(Message::Chunk(_)),
            })
            | None => {
                return Err(ServeError::NotOpened.into());
            }
            Some(StreamDiagnoseRequest { message: None }) => {
                return Err(ServeError::EmptyMessage.into());
            }
        };
        let spec = StreamSpec::from_open(&open, &shared.model)?;
        tracing::info!(machine = %spec.machine_id, sensor = %spec.sensor_id, rate = spec.sample_rate_hz,
            hop = spec.hop, resampled = spec.resample.is_some(), "stream opened");
        let card = &shared.model.card;
        let opened = Event::Opened(proto::StreamOpened {
            model_name: card.name.clone(),
            model_version: card.version.clone(),
            window: card.input.window as u32,
            hop: spec.hop as u32,
            model_sample_rate_hz: card.input.sample_rate_hz,
            resampled: spec.resample.is_some(),
            classes: card.classes.clone(),
        });
        let (tx, rx) = mpsc::channel(shared.stream_buffer.max(2));
        // Capacity is at least 2 and nothing was sent yet.
        let _ = tx.try_send(Outgoing::Event(opened));
        let detail = spec.detail;
        tokio::spawn(read_stream(inbound, spec, tx, shared.clone()));
        Ok(Response::new(respond::ordered(
            rx,
            shared.results.clone(),
            detail,
            shared.drain_expired.clone(),
            gauge,
        )))
    }

    async fn diagnose(
        &self,
        request: Request<proto::DiagnoseRequest>,
    ) -> Result<Response<proto::DiagnoseResponse>, Status> {
        let shared = &self.0;
        if shared.shutdown.is_cancelled() {
            return Err(ServeError::ShuttingDown { resume_from: 0 }.into());
        }
        let request = request.into_inner();
        let detail = ingest::detail(request.detail)?;
        let n = request.windows.len();
        if n == 0 {
            return Err(ServeError::NoWindows.into());
        }
        if n > shared.max_unary_windows {
            return Err(ServeError::TooManyWindows {
                got: n,
                max: shared.max_unary_windows,
            }
            .into());
        }
        let want = shared.model.window_values();
        let windows = request
            .windows
            .into_iter()
            .enumerate()
            .map(|(i, w)| ingest::decode_window(w, i, want))
            .collect::<Result<Vec<_>, _>>()?;
        let arrived = Instant::now();
        if shared.queue.room() < n {
            return Err(ServeError::QueueFull {
                capacity: shared.queue.room(),
            }
            .into());
        }
        let replies = windows
            .into_iter()
            .map(|w| shared.queue.try_submit(w))
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(n);
        for (i, reply) in replies.into_iter().enumerate() {
            let d = reply.await.unwrap_or(Err(ServeError::WorkersGone))?;
            let last = shared.model.window() as u64 - 1;
            let meta = WindowMeta {
                index: i as u64,
                first_sample: 0,
                last_sample: last,
                arrived,
            };
            results.push(shared.results.window_result("unary", detail, &meta, d));
        }
        Ok(Response::new(proto::DiagnoseResponse { results }))
    }

    async fn get_model(
        &self,
        _: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let model = &self.0.model;
        let card = &model.card;
        Ok(Response::new(proto::ModelInfo {
            name: card.name.clone(),
            version: card.version.clone(),
            architecture: model.architecture_name(),
            classes: card.classes.clone(),
            window: card.input.window as u32,
            channels: card.input.channels as u32,
            sample_rate_hz: card.input.sample_rate_hz,
            default_hop: card.default_hop as u32,
            sha256: card.sha256.clone(),
            device: self.0.placement.to_string(),
            card_json: model.card_json.clone(),
        }))
    }
}

/// Reads one client's chunks until it half-closes, errs, goes away, or the server drains.
async fn read_stream(
    mut inbound: Streaming<StreamDiagnoseRequest>,
    spec: StreamSpec,
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut framer = Framer::new(
        shared.model.window(),
        spec.hop,
        spec.channels,
        spec.resampler(),
    );
    let mut events = Vec::new();
    loop {
        let message = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                let _ = tx.send(Outgoing::End(ServeError::ShuttingDown { resume_from: framer.resume_from() })).await;
                return;
            }
            _ = tx.closed() => return,
            message = inbound.message() => message,
        };
        let chunk = match message {
            Ok(Some(StreamDiagnoseRequest {
                message: Some(Message::Chunk(chunk)),
            })) => chunk,
            Ok(Some(StreamDiagnoseRequest {
                message: Some(Message::Open(_)),
            })) => {
                let _ = tx.send(Outgoing::End(ServeError::OpenedTwice)).await;
                return;
            }
            Ok(Some(StreamDiagnoseRequest { message: None })) => {
                let _ = tx.send(Outgoing::End(ServeError::EmptyMessage)).await;
                return;
            }
            Ok(None) => {
                // Half-closed: the last windows are still cut, diagnosed and delivered.
                framer.finish(&mut events);
                let _ = forward(&mut events, &tx, &shared.queue, Instant::now()).await;
                return;
            }
            Err(status) => {
                tracing::debug!(%status, "client stream ended with an error");
                return;
            }
        };
        let arrived = Instant::now();
        match ingest::decode_chunk(chunk, spec.channels, shared.limits) {
            Ok((first, samples)) => {
                counter!(m::SAMPLES_RECEIVED).increment((samples.len() / spec.channels) as u64);
                framer.push(first, &samples, &mut events);
                if forward(&mut events, &tx, &shared.queue, arrived)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(err) => {
                let _ = tx.send(Outgoing::End(err)).await;
                return;
            }
        }
    }
}

/// Queues the windows a chunk completed and hands everything to the responder, in order. Waits (and so stops
/// reading the client) while the batch queue or this stream's buffer is full. Errs when the client is gone.
async fn forward(
    events: &mut Vec<window::Event>,
    tx: &mpsc::Sender<Outgoing>,
    queue: &Queue,
    arrived: Instant,
) -> Result<(), ()> {
    for event in events.drain(..) {
        let outgoing = match event {
            window::Event::Window(cut) => {
                let meta = WindowMeta {
                    index: cut.index,
                    first_sample: cut.first_sample,
                    last_sample: cut.last_sample,
                    arrived,
                };
                let permit = tx.reserve().await.map_err(|_| ())?;
                match queue.submit(cut.samples).await {
                    Ok(reply) => permit.send(Outgoing::Window { meta, reply }),
                    Err(err) => {
                        permit.send(Outgoing::End(err));
                        return Err(());
                    }
                }
                continue;
            }
            window::Event::Discontinuity {
                expected,
                received,
                samples_discarded,
            } => {
                counter!(m::DISCONTINUITIES).increment(1);
                Outgoing::Event(Event::Discontinuity(proto::Discontinuity {
                    expected,
                    received,
                    samples_discarded,
                }))
            }
        };
        tx.send(outgoing).await.map_err(|_| ())?;
    }
    Ok(())
}
