//! The drsn.v1 handlers: StreamDiagnose reads a client's stream into the pipeline and encodes its events and
//! condition, Diagnose classifies whole windows, GetModel returns the card, ListMachines and WatchMachines show
//! the machines of this replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::api::connection;
use crate::api::grpc::encode::Encoder;
use crate::api::grpc::proto::diagnosis_server::Diagnosis;
use crate::api::grpc::proto::stream_diagnose_request::Message;
use crate::api::grpc::proto::{self, StreamDiagnoseRequest, StreamDiagnoseResponse};
use crate::api::grpc::{condition, decode, status};
use crate::condition::Conditions;
use crate::condition::debounce::State;
use crate::condition::machines::WatchStart;
use crate::condition::track::{Ending, Event};
use crate::engine::device::Placement;
use crate::error::{Resume, ServeError};
use crate::model::card::LoadedModel;
use crate::pipeline::Pipeline;
use crate::pipeline::models::Models;
use crate::pipeline::stream::StreamSession;
use crate::telemetry::logging::LogBudget;

/// Timeouts a stream is held to.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimeouts {
    /// How long a new stream may take to send `open`.
    pub open: Duration,
    /// How long an open stream may go without a chunk before it is closed.
    pub idle: Duration,
    /// How long a stream may stay open before it is handed over (a resume point), so that it moves to the
    /// version new streams get; `None`: for ever.
    pub max_age: Option<Duration>,
}

#[derive(Clone)]
pub struct DiagnosisService {
    models: Arc<Models>,
    placement: Placement,
    timeouts: StreamTimeouts,
    conditions: Arc<Conditions>,
}

impl DiagnosisService {
    pub fn new(
        models: Arc<Models>,
        conditions: Arc<Conditions>,
        placement: Placement,
        timeouts: StreamTimeouts,
    ) -> Self {
        Self {
            models,
            conditions,
            placement,
            timeouts,
        }
    }

    fn model_info(&self, model: &LoadedModel) -> proto::ModelInfo {
        let card = &model.card;
        proto::ModelInfo {
            name: card.name.clone(),
            version: card.version.clone(),
            architecture: model.architecture_name(),
            classes: card.classes.clone(),
            window: card.input.window as u32,
            channels: card.input.channels as u32,
            sample_rate_hz: card.input.sample_rate_hz,
            default_hop: card.default_hop as u32,
            sha256: card.sha256.clone(),
            device: self.placement.to_string(),
            card_json: model.card_json.clone(),
        }
    }
}

// The trailers a stream's ending status carries (where to go on; the condition state to resume with): named in the
// wire contract, which clients read them by.
pub use drsn_client::proto::{CONDITION_TRAILER, RESUME_TRAILER};

/// The status a stream ends with, carrying where to resume and the condition state to resume with.
fn ending(end: Ending) -> Status {
    let resume = end.error.resume();
    let mut status = status::status(end.error);
    if let Some(at) = resume {
        let text = at.map_or_else(|| "start".to_owned(), |n| n.to_string());
        if let Ok(value) = text.parse() {
            status.metadata_mut().insert(RESUME_TRAILER, value);
        }
    }
    let bytes = prost::Message::encode_to_vec(&condition::carry(&end.carry));
    status.metadata_mut().insert_bin(
        CONDITION_TRAILER,
        tonic::metadata::MetadataValue::from_bytes(&bytes),
    );
    status
}

pub type WatchStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<proto::MachineEvent, Status>> + Send + 'static>,
>;

pub type ResponseStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<StreamDiagnoseResponse, Status>> + Send + 'static>,
>;

impl DiagnosisService {
    /// A new stream's `open` message, within the open timeout.
    async fn read_open(
        &self,
        inbound: &mut Streaming<StreamDiagnoseRequest>,
    ) -> Result<
        (
            crate::pipeline::spec::OpenRequest,
            Option<State>,
            decode::ModelRef,
        ),
        ServeError,
    > {
        let shutdown = self.models.gate().drain().shutdown.clone();
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Err(ServeError::ShuttingDown { resume: Resume(None) }),
            _ = tokio::time::sleep(self.timeouts.open) => {
                return Err(ServeError::OpenTimeout { after: self.timeouts.open });
            }
            first = inbound.message() => first.map_err(|s| status::from_transport(&s))?,
        };
        match first {
            Some(StreamDiagnoseRequest {
                message: Some(Message::Open(open)),
            }) => decode::open_request(open),
            Some(StreamDiagnoseRequest {
                message: Some(Message::Chunk(_)),
            }) => Err(ServeError::NotOpened),
            None => Err(ServeError::EndedBeforeOpen),
            Some(StreamDiagnoseRequest { message: None }) => Err(ServeError::EmptyMessage),
        }
    }
}

impl DiagnosisService {
    /// A unary request's windows, decoded, diagnosed and encoded.
    async fn diagnose_windows(
        &self,
        request: proto::DiagnoseRequest,
    ) -> Result<Response<proto::DiagnoseResponse>, Status> {
        let detail = decode::detail(request.detail).map_err(status::status)?;
        let pipeline = self
            .models
            .get(&request.model, &request.model_version)
            .map_err(status::status)?;
        let want = pipeline.model().window_values();
        let windows = request
            .windows
            .into_iter()
            .enumerate()
            .map(|(i, w)| decode::decode_window(w, i, want))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status::status)?;
        let encoder = Encoder::new(pipeline.model());
        let results = pipeline
            .diagnose("unary", windows)
            .await
            .map_err(status::status)?
            .into_iter()
            .map(|w| encoder.window(w, detail))
            .collect();
        Ok(Response::new(proto::DiagnoseResponse { results }))
    }
}

#[tonic::async_trait]
impl Diagnosis for DiagnosisService {
    type StreamDiagnoseStream = ResponseStream;

    async fn stream_diagnose(
        &self,
        request: Request<Streaming<StreamDiagnoseRequest>>,
    ) -> Result<Response<Self::StreamDiagnoseStream>, Status> {
        let conn = connection::of(&request);
        if conn
            .aged()
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            return Err(status::status(ServeError::ConnectionAged {
                resume: Resume(None),
            }));
        }
        let slot = self
            .models
            .gate()
            .admit_stream(conn.id)
            .map_err(status::status)?;
        let mut inbound = request.into_inner();
        let (open, carry, pipeline) =
            match self
                .read_open(&mut inbound)
                .await
                .and_then(|(open, carry, (name, version))| {
                    let pipeline = self.models.get(&name, &version)?.clone();
                    if let Some(state) = &carry {
                        self.conditions
                            .check(state, &pipeline.model().card.classes)?;
                    }
                    Ok((open, carry, pipeline))
                }) {
                Ok(open) => open,
                Err(err) => return Err(status::status(slot.refuse(err))),
            };
        let (session, events) = pipeline.open_stream(slot, open).map_err(status::status)?;
        let spec = &session.spec;
        // Every line this stream causes, in its reader or its replies, says whose it was. Ids are client text:
        // recorded through Debug, so control characters could never forge a line anyway.
        let span = tracing::info_span!("stream", machine = ?spec.machine_id, sensor = ?spec.sensor_id,
            peer = ?conn.remote, model = %pipeline.model().card.name,
            model_version = %pipeline.model().card.version);
        static OPENED: LogBudget = LogBudget::new("stream_opened");
        if OPENED.admit() {
            span.in_scope(|| {
                tracing::info!(
                    rate = spec.sample_rate_hz,
                    hop = spec.hop,
                    resampled = spec.resample.is_some(),
                    "stream opened"
                )
            });
        }
        let classes = pipeline.classes().clone();
        let (events, start) = self
            .conditions
            .track(spec, &classes, carry, events)
            .map_err(status::status)?;
        let ids = (spec.machine_id.clone(), spec.sensor_id.clone());
        let encoder = Arc::new(Encoder::new(pipeline.model()));
        let mut opened = encoder.opened(pipeline.model(), spec);
        if let Some(proto::stream_diagnose_response::Event::Opened(o)) = &mut opened.event {
            o.condition = Some(condition::sensor_condition(
                (&ids.0, &ids.1),
                &start,
                None,
                &classes,
            ));
        }
        let detail = spec.detail;
        let stream_aged = self
            .timeouts
            .max_age
            .map(|age| tokio::time::Instant::now() + age);
        let reader = Reader {
            pipeline: pipeline.clone(),
            idle: self.timeouts.idle,
            aged: conn.aged(),
            stream_aged,
        };
        let run = pipeline
            .readers()
            .track_future(reader.run(inbound, session).instrument(span.clone()));
        pipeline.drain().tasks.spawn(run);
        // The connection is busy, not idle, for as long as the client holds the response stream.
        let busy = conn.activity.hold();
        let events = events.map(move |item| {
            let _busy = &busy;
            let _span = span.enter();
            match item {
                Ok(Event::Stream(event)) => Ok(encoder.event(event, detail)),
                Ok(Event::Condition { change, carry }) => {
                    let c = condition::sensor_condition(
                        (&ids.0, &ids.1),
                        &change.now,
                        Some((&change, &carry)),
                        &classes,
                    );
                    Ok(StreamDiagnoseResponse {
                        event: Some(proto::stream_diagnose_response::Event::Condition(c)),
                    })
                }
                Err(end) => Err(ending(end)),
            }
        });
        Ok(Response::new(Box::pin(
            futures_util::stream::once(async { Ok(opened) }).chain(events),
        )))
    }

    async fn diagnose(
        &self,
        request: Request<proto::DiagnoseRequest>,
    ) -> Result<Response<proto::DiagnoseResponse>, Status> {
        let span = tracing::info_span!("request", method = "Diagnose", peer = ?connection::of(&request).remote,
            model = ?request.get_ref().model, model_version = ?request.get_ref().model_version);
        self.diagnose_windows(request.into_inner())
            .instrument(span)
            .await
    }

    async fn list_machines(
        &self,
        _: Request<proto::ListMachinesRequest>,
    ) -> Result<Response<proto::ListMachinesResponse>, Status> {
        let (revision, machines) = self.conditions.registry().list();
        Ok(Response::new(condition::list(revision, &machines)))
    }

    type WatchMachinesStream = WatchStream;

    async fn watch_machines(
        &self,
        request: Request<proto::WatchMachinesRequest>,
    ) -> Result<Response<Self::WatchMachinesStream>, Status> {
        let from = Some(request.into_inner().from_revision).filter(|r| *r > 0);
        let registry = self.conditions.registry().clone();
        let (start, rx) = registry.watch(from);
        // The last revision the watcher has: nothing at or below it is sent again.
        let (first, last): (Vec<_>, u64) = match start {
            WatchStart::Snapshot { revision, machines } => (
                vec![condition::snapshot_event(revision, &machines)],
                revision,
            ),
            WatchStart::Changes(changes) => (
                changes.iter().map(|r| condition::watch_event(r)).collect(),
                changes.last().map_or(from.unwrap_or(0), |r| r.revision),
            ),
        };
        let shutdown = self.models.gate().drain().shutdown.clone();
        let changes = futures_util::stream::unfold(
            (rx, registry, shutdown, last),
            |(mut rx, registry, shutdown, mut last)| async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let got = tokio::select! {
                        biased;
                        // Watchers end with the server's drain, like streams: reconnect to another replica.
                        _ = shutdown.cancelled() => return None,
                        got = rx.recv() => got,
                    };
                    let event = match got {
                        Ok(r) if r.revision <= last => continue,
                        Ok(r) => {
                            last = r.revision;
                            condition::watch_event(&r)
                        }
                        // Fallen behind: start again from a snapshot rather than miss a change; the changes still
                        // buffered are older than it and skipped.
                        Err(RecvError::Lagged(_)) => {
                            let (revision, machines) = registry.list();
                            last = revision;
                            condition::snapshot_event(revision, &machines)
                        }
                        Err(RecvError::Closed) => return None,
                    };
                    return Some((Ok(event), (rx, registry, shutdown, last)));
                }
            },
        );
        Ok(Response::new(Box::pin(
            futures_util::stream::iter(first.into_iter().map(Ok)).chain(changes),
        )))
    }

    async fn get_model(
        &self,
        request: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let r = request.into_inner();
        let pipeline = self
            .models
            .get(&r.model, &r.model_version)
            .map_err(status::status)?;
        Ok(Response::new(self.model_info(pipeline.model())))
    }

    async fn list_models(
        &self,
        _: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        Ok(Response::new(proto::ListModelsResponse {
            models: self
                .models
                .all()
                .iter()
                .map(|p| self.model_info(p.model()))
                .collect(),
            default_model: self.models.default_name().to_owned(),
        }))
    }
}

/// Reads one client's chunks into its stream session until it half-closes, errs, goes quiet, goes away, its
/// connection reaches its maximum age, or the server drains.
struct Reader {
    pipeline: Arc<Pipeline>,
    idle: Duration,
    aged: Option<tokio::time::Instant>,
    /// When the stream reaches --stream-max-age.
    stream_aged: Option<tokio::time::Instant>,
}

impl Reader {
    async fn run(self, mut inbound: Streaming<StreamDiagnoseRequest>, mut session: StreamSession) {
        let shutdown = self.pipeline.drain().shutdown.clone();
        let retiring = self.pipeline.retiring().clone();
        let limits = *self.pipeline.limits();
        let channels = session.spec.channels;
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let aged = self.aged.unwrap_or(far);
        let stream_aged = self.stream_aged.unwrap_or(far);
        // A stream holds its slot by making progress, not by sending: the timer restarts when a window is cut, so
        // a client trickling a sample now and then cannot keep a slot for free. A real-time sensor cuts one every
        // hop (a third of a second by default); the allowance covers a window and a hop twice over at any hop.
        let model = self.pipeline.model();
        let span = (model.window() + session.spec.hop) as f64 / model.card.input.sample_rate_hz;
        let allowance = self.idle.max(Duration::from_secs_f64(2.0 * span));
        let mut progress = session.resume();
        let mut quiet_until = tokio::time::Instant::now() + allowance;
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let resume = session.resume();
                    return session.end(ServeError::ShuttingDown { resume }).await;
                }
                _ = retiring.cancelled() => {
                    let (card, resume) = (&model.card, session.resume());
                    let (model, version) = (card.name.clone(), card.version.clone());
                    return session.end(ServeError::ModelUnloaded { model, version, resume }).await;
                }
                _ = tokio::time::sleep_until(aged) => {
                    let resume = session.resume();
                    return session.end(ServeError::ConnectionAged { resume }).await;
                }
                _ = tokio::time::sleep_until(stream_aged) => {
                    let resume = session.resume();
                    return session.end(ServeError::StreamAged { resume }).await;
                }
                _ = session.closed() => return,
                _ = tokio::time::sleep_until(quiet_until) => {
                    let resume = session.resume();
                    return session.end(ServeError::IdleTimeout { after: allowance, resume }).await;
                }
                message = inbound.message() => message,
            };
            let chunk = match message {
                Ok(Some(StreamDiagnoseRequest {
                    message: Some(Message::Chunk(chunk)),
                })) => chunk,
                Ok(Some(StreamDiagnoseRequest {
                    message: Some(Message::Open(_)),
                })) => return session.end(ServeError::OpenedTwice).await,
                Ok(Some(StreamDiagnoseRequest { message: None })) => {
                    return session.end(ServeError::EmptyMessage).await;
                }
                // Half-closed: the last windows are still cut, diagnosed and delivered.
                Ok(None) => return session.finish().await,
                // A message too large or undecodable, or the client went away; tell it if it is still there.
                Err(status) => return session.end(status::from_transport(&status)).await,
            };
            let arrived = Instant::now();
            match decode::decode_chunk(chunk, channels, limits) {
                Ok(chunk) => {
                    if session
                        .push(chunk.first, chunk.samples, chunk.rails, arrived)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if session.resume() != progress {
                        progress = session.resume();
                        quiet_until = tokio::time::Instant::now() + allowance;
                    }
                }
                Err(err) => return session.end(err).await,
            }
        }
    }
}
