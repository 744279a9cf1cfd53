//! Samples in, ordered diagnoses out, protocol-neutral. [`Pipeline`] is the facade every API calls: admit a
//! stream, open it from a validated spec, diagnose whole windows.
//!
//! Stages: [`spec`] (what a stream asks for, and its limits) → [`window`] + [`resample`] (sliding windows at the
//! model's rate) → [`quality`] (windows the model cannot judge are flagged) → [`schedule`] (the fair, bounded
//! queue) → [`batch`] (dynamic batches on inference threads, sized by [`cost`]) → [`diagnosis`] (class or flag) →
//! [`deliver`] (window order). [`stream`] runs one stream through them.

pub mod batch;
pub(crate) mod budget;
pub mod cost;
pub(crate) mod deliver;
pub mod diagnosis;
pub mod models;
pub mod quality;
pub mod resample;
pub mod schedule;
pub mod severity;
pub mod shadow;
pub mod spec;
pub(crate) mod start;
pub(crate) mod stream;
pub(crate) mod window;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use metrics::{counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Resume, ServeError};
use crate::model::card::LoadedModel;
use crate::pipeline::deliver::EventStream;
use crate::pipeline::diagnosis::{Answer, WindowDiagnosis, WindowPlace};
use crate::pipeline::schedule::{ClientKey, Scheduler};
use crate::pipeline::spec::{Limits, OpenRequest, StreamSpec};
use crate::pipeline::stream::StreamSession;
use crate::pipeline::window::Framer;
use crate::telemetry::metrics::{self as m, StreamGauge};

/// Admission limits for streams.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    pub max_streams: usize,
    pub max_streams_per_connection: usize,
    /// Most windows in one unary call.
    pub max_unary_windows: usize,
    /// Bytes that requests in flight may hold together (see [`budget`]).
    pub max_request_memory: usize,
}

/// The drain signals a pipeline obeys; the server owns and fires them.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    /// The server stops taking work: readers stop, streams end with a resume point.
    pub shutdown: CancellationToken,
    /// The drain deadline passed: windows still in flight are abandoned.
    pub expired: CancellationToken,
    /// Every stream's reader task, so that the drain can wait for them.
    pub tasks: TaskTracker,
}

/// What every model served by this replica shares: stream slots (global and per connection), the request memory
/// budget and the drain. A stream takes its slot here before its `open` names the model it wants.
pub struct Gate {
    admission: Admission,
    drain: Drain,
    streams: Arc<Semaphore>,
    per_connection: Arc<Mutex<HashMap<ClientKey, usize>>>,
    /// Unary calls are clients of their own: keys counted down from the top, apart from connection ids.
    next_unary: AtomicU64,
    requests: budget::RequestBudget,
}

/// One model version's way from samples to diagnoses: its card, its queue and batcher, its limits; admission
/// through the replica's [`Gate`].
pub struct Pipeline {
    model: Arc<LoadedModel>,
    classes: Arc<Vec<String>>,
    scheduler: Arc<Scheduler>,
    limits: Limits,
    gate: Arc<Gate>,
    /// Fired when this version is unloaded: its streams end with a resume point, as in a drain.
    retire: CancellationToken,
    /// This version's stream readers, so that unloading it can wait for them.
    readers: TaskTracker,
    /// The efficient batch size its engine measured: what "a batch" means for spare capacity.
    batch: usize,
    /// The candidate scoring this version's stream windows, while it is the serving version and has one.
    shadow: Arc<shadow::Slot>,
    /// Where this version scores another's windows when it is their shadow.
    lane: shadow::Lane,
    /// Its per-window series for each API in [`m::APIS`], looked up once.
    meters: Vec<Arc<m::WindowMeters>>,
}

/// A stream's place on the server, held from before its `open` until it ends: a global slot, a slot on its
/// connection, and its memory budget in the gauge.
pub struct StreamSlot {
    _global: OwnedSemaphorePermit,
    _gauge: StreamGauge,
    client: ClientKey,
    per_connection: Arc<Mutex<HashMap<ClientKey, usize>>>,
    memory: usize,
    /// How the stream ended, for `drsn_streams_ended_total` (a client that goes away never says).
    how: &'static str,
    /// The model version it opened on, counted in `drsn_model_streams` while it lasts.
    model: Option<(String, String)>,
    /// The stream's place in the queue, kept while its client listens.
    flow: Option<Arc<schedule::Flow>>,
}

impl deliver::Ending for StreamSlot {
    fn ended(&mut self, how: &'static str) {
        self.how = how;
    }
}

impl StreamSlot {
    /// The stream ends before it opened: counted with `err`'s kind; `err` is handed back.
    pub fn refuse(mut self, err: ServeError) -> ServeError {
        self.how = err.kind().label();
        err
    }

    fn budget(&mut self, bytes: usize) {
        gauge!(m::STREAM_MEMORY).increment(bytes as f64);
        self.memory += bytes;
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        counter!(m::STREAMS_ENDED, "how" => self.how).increment(1);
        if let Some((name, version)) = self.model.take() {
            gauge!(m::MODEL_STREAMS, "model" => name, "version" => version).decrement(1.0);
        }
        gauge!(m::STREAM_MEMORY).decrement(self.memory as f64);
        let mut counts = self
            .per_connection
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

impl Gate {
    pub fn new(admission: Admission, drain: Drain) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(admission.max_streams.max(1))),
            admission,
            drain,
            per_connection: Arc::default(),
            next_unary: AtomicU64::new(u64::MAX),
            requests: budget::RequestBudget::new(admission.max_request_memory),
        }
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The memory budget every API reserves a request's bytes from before it reads the request.
    pub fn request_budget(&self) -> &budget::RequestBudget {
        &self.requests
    }

    /// A slot for a new stream of `client`'s, before it has sent `open`.
    pub fn admit_stream(&self, client: ClientKey) -> Result<StreamSlot, ServeError> {
        if self.drain.shutdown.is_cancelled() {
            return Err(ServeError::ShuttingDown {
                resume: Resume(None),
            });
        }
        let global =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| ServeError::TooManyStreams {
                    max: self.admission.max_streams,
                })?;
        {
            let mut counts = self
                .per_connection
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(client).or_default();
            if *n >= self.admission.max_streams_per_connection {
                return Err(ServeError::TooManyStreamsOnConnection {
                    max: self.admission.max_streams_per_connection,
                });
            }
            *n += 1;
        }
        counter!(m::STREAMS_OPENED).increment(1);
        Ok(StreamSlot {
            _global: global,
            _gauge: StreamGauge::open(),
            client,
            per_connection: self.per_connection.clone(),
            memory: 0,
            how: "cancelled",
            model: None,
            flow: None,
        })
    }
}

impl Pipeline {
    pub fn new(
        model: Arc<LoadedModel>,
        scheduler: Arc<Scheduler>,
        limits: Limits,
        gate: Arc<Gate>,
        batch: usize,
        lane: shadow::Lane,
    ) -> Self {
        Self {
            batch: batch.max(1),
            shadow: Arc::default(),
            lane,
            classes: Arc::new(model.card.classes.clone()),
            meters: m::APIS
                .iter()
                .map(|api| {
                    Arc::new(m::WindowMeters::new(
                        api,
                        &model.card.name,
                        &model.card.classes,
                    ))
                })
                .collect(),
            model,
            scheduler,
            limits,
            gate,
            retire: CancellationToken::new(),
            readers: TaskTracker::new(),
        }
    }

    /// This version's per-window series for `api`.
    fn meters(&self, api: &'static str) -> Arc<m::WindowMeters> {
        match self.meters.iter().find(|m| m.api() == api) {
            Some(meters) => meters.clone(),
            None => Arc::new(m::WindowMeters::new(
                api,
                &self.model.card.name,
                &self.classes,
            )),
        }
    }

    /// Closes this version's queue: its batcher answers what is queued, then stops.
    pub fn close_queue(&self) {
        self.scheduler.close();
    }

    /// Fired when this version is unloaded.
    pub fn retiring(&self) -> &CancellationToken {
        &self.retire
    }

    /// This version's stream readers: spawn them here so that unloading it can wait for them.
    pub fn readers(&self) -> &TaskTracker {
        &self.readers
    }

    /// Unloads this version: no new stream or request reaches it (it has left [`models::Models`] already), its
    /// streams end with a resume point, and once their readers are done (or `within` has passed) its queue closes,
    /// so the batcher answers what is queued and stops.
    pub async fn retire(&self, within: std::time::Duration) {
        self.retire.cancel();
        self.readers.close();
        if tokio::time::timeout(within, self.readers.wait())
            .await
            .is_err()
        {
            tracing::warn!(model = %self.model.card.name, version = %self.model.card.version,
                "streams of an unloaded model version still open; closing its queue anyway");
        }
        self.scheduler.close();
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// The candidate shadowing this version, if any.
    pub fn shadow(&self) -> Option<Arc<shadow::Shadow>> {
        self.shadow.get()
    }

    /// Lets `candidate` score this version's stream windows from now on (`None`: none does). The candidate must
    /// read the same windows: window length, sample rate and channels.
    pub fn set_shadow(&self, candidate: Option<&Pipeline>) -> Result<(), String> {
        let Some(candidate) = candidate else {
            self.shadow.set(None);
            return Ok(());
        };
        let (a, b) = (&self.model, &candidate.model);
        let reads = |m: &LoadedModel| {
            format!(
                "windows of {} samples at {} Hz, {} channel(s)",
                m.window(),
                m.card.input.sample_rate_hz,
                m.channels()
            )
        };
        if reads(a) != reads(b) {
            return Err(format!(
                "version {} cannot shadow version {}: a shadow scores the same windows, but it reads {} and the \
                 serving version {}",
                b.card.version,
                a.card.version,
                reads(b),
                reads(a)
            ));
        }
        let labels = shadow::Labels {
            model: a.card.name.clone(),
            serving: a.card.version.clone(),
            candidate: b.card.version.clone(),
        };
        let spare = shadow::Spare {
            serving_backlog_below: self.batch,
            in_flight: candidate.lane.in_flight(),
        };
        let lane = candidate.lane.clone();
        let classes = candidate.classes.clone();
        self.shadow
            .set(Some(shadow::Shadow::start(lane, labels, classes, spare)));
        Ok(())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The model's classes, shared by every stream on it.
    pub fn classes(&self) -> &Arc<Vec<String>> {
        &self.classes
    }

    pub fn admission(&self) -> &Admission {
        &self.gate.admission
    }

    pub fn drain(&self) -> &Drain {
        &self.gate.drain
    }

    /// The memory budget every API reserves a request's bytes from before it reads the request.
    pub fn request_budget(&self) -> &budget::RequestBudget {
        &self.gate.requests
    }

    /// A slot for a new stream of `client`'s, before it has sent `open`.
    pub fn admit_stream(&self, client: ClientKey) -> Result<StreamSlot, ServeError> {
        self.gate.admit_stream(client)
    }

    /// Opens an admitted stream: validates what it asks for, budgets its memory, and returns the session its reader
    /// feeds and the events its client receives.
    pub fn open_stream(
        &self,
        mut slot: StreamSlot,
        open: OpenRequest,
    ) -> Result<(StreamSession, EventStream), ServeError> {
        let (spec, resampler, need) = match self.plan_stream(open) {
            Ok(planned) => planned,
            Err(err) => {
                slot.how = err.kind().label();
                return Err(err);
            }
        };
        slot.budget(need);
        let card = &self.model.card;
        gauge!(m::MODEL_STREAMS, "model" => card.name.clone(), "version" => card.version.clone())
            .increment(1.0);
        slot.model = Some((card.name.clone(), card.version.clone()));
        let framer = Framer::new(self.model.window(), spec.hop, spec.channels, resampler);
        let (tx, rx) = mpsc::channel(self.limits.stream_buffer.max(2));
        let progress = Arc::new(AtomicU64::new(0));
        // The flow lives while either end does: its queued windows leave when the reader has finished and the
        // client has stopped listening.
        let flow = Arc::new(self.scheduler.flow(slot.client));
        slot.flow = Some(flow.clone());
        let events = deliver::ordered(
            rx,
            self.meters("stream"),
            self.classes.clone(),
            self.gate.drain.expired.clone(),
            progress.clone(),
            Box::new(slot),
        );
        let session = StreamSession::new(
            spec,
            framer,
            flow,
            tx,
            stream::Version {
                model: self.model.clone(),
                drain_expired: self.gate.drain.expired.clone(),
                shadow: self.shadow.clone(),
            },
            progress,
        );
        Ok((session, events))
    }

    /// Whether new work is taken: not draining, and inference workers alive.
    pub fn ready(&self) -> bool {
        !self.gate.drain.shutdown.is_cancelled() && !self.scheduler.is_closed()
    }

    /// The validated spec, its resampler and its memory budget, or why the stream cannot be served.
    fn plan_stream(
        &self,
        open: OpenRequest,
    ) -> Result<(StreamSpec, Option<resample::StreamResampler>, usize), ServeError> {
        let spec = StreamSpec::new(open, &self.model, &self.limits)?;
        let resampler = spec.resampler()?;
        let state = resampler.as_ref().map_or(0, |r| r.memory_bytes());
        let (need, what) = self.limits.stream_memory(&self.model, state);
        if need > self.limits.max_stream_memory {
            return Err(ServeError::StreamMemory {
                need: need / 1024,
                max: self.limits.max_stream_memory / 1024,
                what,
            });
        }
        Ok((spec, resampler, need))
    }

    /// Diagnoses whole windows (each the model's window length, interleaved frames) for `api` (the metrics label):
    /// all are queued or none, and the answers come back in request order.
    pub async fn diagnose(
        &self,
        api: &'static str,
        windows: Vec<Vec<f32>>,
    ) -> Result<Vec<WindowDiagnosis>, ServeError> {
        counter!(m::REQUESTS, "api" => api).increment(1);
        if self.gate.drain.shutdown.is_cancelled() {
            return Err(ServeError::ShuttingDown {
                resume: Resume(None),
            });
        }
        let n = windows.len();
        if n == 0 {
            return Err(ServeError::NoWindows);
        }
        if n > self.gate.admission.max_unary_windows {
            return Err(ServeError::TooManyWindows {
                got: n,
                max: self.gate.admission.max_unary_windows,
            });
        }
        let want = self.model.window_values();
        if let Some((index, w)) = windows.iter().enumerate().find(|(_, w)| w.len() != want) {
            return Err(ServeError::WindowLength {
                index,
                got: w.len(),
                want,
            });
        }
        let arrived = Instant::now();
        let range = self.model.card.input_range.as_ref();
        let channels = self.model.channels();
        let flagged: Vec<_> = windows
            .iter()
            .map(|w| quality::check(w, channels, range, None))
            .collect();
        let mut meter = severity::VelocityMeter::new(
            self.model.window(),
            self.model.card.input.sample_rate_hz,
            self.model.unit(),
        );
        let zones = self.limits.default_zones;
        let severities: Vec<_> = windows
            .iter()
            .map(|w| {
                let v = meter.as_mut()?.measure(w, channels)?;
                Some(zones.severity(v))
            })
            .collect();
        let to_run: Vec<Vec<f32>> = windows
            .into_iter()
            .zip(&flagged)
            .filter(|(_, f)| f.is_none())
            .map(|(w, _)| w)
            .collect();
        let client = self
            .gate
            .next_unary
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let flow = self.scheduler.flow(client);
        // The candidate scores the same windows as streams' when there is room; offered before they are queued, as
        // a stream's are (a window dropped unscored below is counted as unscored).
        let mut shadows = match self.shadow.get() {
            Some(s) => to_run
                .iter()
                .map(|w| s.offer(w, flow.queue_len()))
                .collect(),
            None => Vec::new(),
        }
        .into_iter();
        let mut replies = flow.submit_all(to_run)?.into_iter();
        let mut answers = Vec::with_capacity(n);
        for f in flagged {
            let answer = match f {
                Some(f) => Answer::flagged(f),
                None => {
                    let answer = match replies.next() {
                        Some(reply) => reply.await.unwrap_or(Err(ServeError::WorkersGone))?,
                        None => return Err(ServeError::WorkersGone),
                    };
                    if let Some(Some(pending)) = shadows.next() {
                        pending.score(&answer, &self.classes);
                    }
                    answer
                }
            };
            answers.push(answer);
        }
        // Every window is answered before any is counted as delivered.
        let last = self.model.window() as u64 - 1;
        let total = arrived.elapsed();
        let meters = self.meters(api);
        Ok(answers
            .into_iter()
            .zip(severities)
            .enumerate()
            .map(|(i, (a, severity))| {
                let place = WindowPlace {
                    index: i as u64,
                    first_sample: 0,
                    last_sample: last,
                };
                WindowDiagnosis::deliver(&meters, place, a, severity, total)
            })
            .collect())
    }
}
