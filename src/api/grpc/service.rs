//! The gRPC service: StreamDiagnose wires a client's stream through ingest → window → batch → respond;
//! Diagnose classifies whole windows; GetModel returns the card.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::counter;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::api::grpc::decode::{self, Limits, StreamSpec};
use crate::api::grpc::proto::diagnosis_server::Diagnosis;
use crate::api::grpc::proto::stream_diagnose_request::Message;
use crate::api::grpc::proto::stream_diagnose_response::Event;
use crate::api::grpc::proto::{self, StreamDiagnoseRequest};
use crate::engine::onnx::Placement;
use crate::error::ServeError;
use crate::model::card::LoadedModel;
use crate::pipeline::batch::Queue;
use crate::pipeline::respond::{self, Outgoing, ResponseStream, ResultContext, WindowMeta};
use crate::pipeline::window::{self, Framer};
use crate::telemetry::metrics::{self as m, StreamGauge};

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
    /// Open streams allowed at once; each holds a permit.
    pub streams: Arc<Semaphore>,
    pub max_streams: usize,
    /// How long a new stream may take to send `open`.
    pub open_timeout: Duration,
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
        let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
            return Err(ServeError::TooManyStreams {
                max: shared.max_streams,
            }
            .into());
        };
        let slot = Box::new((StreamGauge::open(), permit));
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return Err(ServeError::ShuttingDown { resume_from: 0 }.into()),
            _ = tokio::time::sleep(shared.open_timeout) => {
                return Err(ServeError::OpenTimeout { after: shared.open_timeout }.into());
            }
            first = inbound.message() => first.map_err(ServeError::from_transport)?,
        };
        let open = match first {
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
        let framer = Framer::new(
            shared.model.window(),
            spec.hop,
            spec.channels,
            spec.resampler()?,
        );
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
        tokio::spawn(read_stream(
            inbound,
            framer,
            spec.channels,
            tx,
            shared.clone(),
        ));
        Ok(Response::new(respond::ordered(
            rx,
            shared.results.clone(),
            detail,
            shared.drain_expired.clone(),
            slot,
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
        let detail = decode::detail(request.detail)?;
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
            .map(|(i, w)| decode::decode_window(w, i, want))
            .collect::<Result<Vec<_>, _>>()?;
        let arrived = Instant::now();
        if shared.queue.room() < n {
            return Err(ServeError::QueueFull {
                capacity: shared.queue.capacity(),
            }
            .into());
        }
        let replies = windows
            .into_iter()
            .map(|w| shared.queue.try_submit(w))
            .collect::<Result<Vec<_>, _>>()?;
        // Every window is answered before any is counted as delivered.
        let mut diagnoses = Vec::with_capacity(n);
        for reply in replies {
            diagnoses.push(reply.await.unwrap_or(Err(ServeError::WorkersGone))?);
        }
        let last = shared.model.window() as u64 - 1;
        let results = diagnoses
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let meta = WindowMeta {
                    index: i as u64,
                    first_sample: 0,
                    last_sample: last,
                    arrived,
                };
                shared.results.window_result("unary", detail, &meta, d)
            })
            .collect();
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
    mut framer: Framer,
    channels: usize,
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
) {
    let end = |err| async { tx.send(Outgoing::End(err)).await.ok() };
    loop {
        let message = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                end(ServeError::ShuttingDown { resume_from: framer.resume_from() }).await;
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
                end(ServeError::OpenedTwice).await;
                return;
            }
            Ok(Some(StreamDiagnoseRequest { message: None })) => {
                end(ServeError::EmptyMessage).await;
                return;
            }
            Ok(None) => {
                // Half-closed: the last windows are still cut, diagnosed and delivered.
                if let Err(reason) = framer.finish() {
                    end(ServeError::Resample(reason)).await;
                } else {
                    let _ = forward(&mut framer, &tx, &shared, Instant::now()).await;
                }
                return;
            }
            Err(status) => {
                // A message too large or undecodable, or the client went away; tell it if it is still there.
                end(ServeError::from_transport(status)).await;
                return;
            }
        };
        let arrived = Instant::now();
        let pushed =
            decode::decode_chunk(chunk, channels, shared.limits).and_then(|(first, samples)| {
                counter!(m::SAMPLES_RECEIVED).increment((samples.len() / channels) as u64);
                framer.push(first, samples).map_err(ServeError::Resample)
            });
        if let Err(err) = pushed {
            end(err).await;
            return;
        }
        if forward(&mut framer, &tx, &shared, arrived).await.is_err() {
            return;
        }
    }
}

/// Queues the windows the last chunk completed, one at a time, and hands everything to the responder in order.
/// Waits (and so stops reading the client) while the batch queue or this stream's buffer is full. Errs when the
/// stream must end: the client is gone, resampling failed, or the drain deadline passed.
async fn forward(
    framer: &mut Framer,
    tx: &mpsc::Sender<Outgoing>,
    shared: &Shared,
    arrived: Instant,
) -> Result<(), ()> {
    loop {
        let event = match framer.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(reason) => {
                let _ = tx.send(Outgoing::End(ServeError::Resample(reason))).await;
                return Err(());
            }
        };
        let permit = tokio::select! {
            permit = tx.reserve() => permit.map_err(|_| ())?,
            _ = shared.drain_expired.cancelled() => return Err(()),
        };
        match event {
            window::Event::Window(cut) => {
                let meta = WindowMeta {
                    index: cut.index,
                    first_sample: cut.first_sample,
                    last_sample: cut.last_sample,
                    arrived,
                };
                let submitted = tokio::select! {
                    submitted = shared.queue.submit(cut.samples) => submitted,
                    _ = shared.drain_expired.cancelled() => return Err(()),
                };
                match submitted {
                    Ok(reply) => permit.send(Outgoing::Window { meta, reply }),
                    Err(err) => {
                        permit.send(Outgoing::End(err));
                        return Err(());
                    }
                }
            }
            window::Event::Discontinuity {
                expected,
                received,
                samples_discarded,
            } => {
                counter!(m::DISCONTINUITIES).increment(1);
                permit.send(Outgoing::Event(Event::Discontinuity(
                    proto::Discontinuity {
                        expected,
                        received,
                        samples_discarded,
                    },
                )));
            }
        }
    }
}
