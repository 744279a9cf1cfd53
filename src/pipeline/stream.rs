//! One open stream on the server side, protocol-neutral: takes decoded chunks, cuts windows, checks each one,
//! queues those the model may judge, and hands everything to the in-order deliverer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use metrics::{Counter, counter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Resume, ServeError};
use crate::model::card::LoadedModel;
use crate::pipeline::deliver::{Discontinuity, Outgoing, Pending};
use crate::pipeline::diagnosis::{Answer, WindowPlace};
use crate::pipeline::quality;
use crate::pipeline::schedule::Flow;
use crate::pipeline::severity::VelocityMeter;
use crate::pipeline::shadow;
use crate::pipeline::spec::StreamSpec;
use crate::pipeline::window::{self, Framer};
use crate::telemetry::metrics as m;

/// The stream cannot go on: its client has been told why (or is gone).
#[derive(Debug)]
pub struct Ended;

pub struct StreamSession {
    pub spec: StreamSpec,
    framer: Framer,
    checker: quality::Checker,
    /// The converter's full scale, while the stream sends integer codes at the model's rate (resampled codes are
    /// no longer codes: those windows get the float check).
    rails: Option<quality::Rails>,
    /// `None` when the card's sample unit cannot be converted to velocity.
    meter: Option<VelocityMeter>,
    flow: Arc<Flow>,
    tx: mpsc::Sender<Outgoing>,
    model: Arc<LoadedModel>,
    drain_expired: CancellationToken,
    progress: Arc<AtomicU64>,
    /// The model version's shadow candidate, while it has one.
    shadow: Arc<shadow::Slot>,
    /// `drsn_samples_received_total`, looked up once rather than for every chunk.
    samples_received: Counter,
}

/// What a stream holds of the model version serving it.
pub(crate) struct Version {
    pub model: Arc<LoadedModel>,
    /// The server's drain deadline passed: windows still in flight are abandoned.
    pub drain_expired: CancellationToken,
    pub shadow: Arc<shadow::Slot>,
}

impl StreamSession {
    pub(crate) fn new(
        spec: StreamSpec,
        framer: Framer,
        flow: Arc<Flow>,
        tx: mpsc::Sender<Outgoing>,
        version: Version,
        progress: Arc<AtomicU64>,
    ) -> Self {
        let Version {
            model,
            drain_expired,
            shadow,
        } = version;
        Self {
            checker: quality::Checker::new(model.window(), spec.hop, spec.channels),
            rails: None,
            meter: {
                let (rate, unit) = (model.card.input.sample_rate_hz, model.unit());
                VelocityMeter::new(model.window(), rate, unit)
                    .map(|m| m.for_hop(spec.hop, rate, unit))
            },
            spec,
            framer,
            flow,
            tx,
            model,
            drain_expired,
            progress,
            shadow,
            samples_received: counter!(m::SAMPLES_RECEIVED),
        }
    }

    /// Where a reconnecting client picks up: the next window not yet cut.
    pub fn resume(&self) -> Resume {
        Resume(self.framer.resume_from())
    }

    fn resume_from(&self) -> u64 {
        self.framer.resume_from().unwrap_or(0)
    }

    /// Resolves when nobody reads this stream's results any more.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Takes a chunk of interleaved frames starting at client sample `first`, received at `arrived`; `rails` when
    /// it came as integer codes. Waits (and so stops the reading of the client) while the batch queue or this
    /// stream's buffer is full.
    pub async fn push(
        &mut self,
        first: u64,
        samples: Vec<f32>,
        rails: Option<quality::Rails>,
        arrived: Instant,
    ) -> Result<(), Ended> {
        self.samples_received
            .increment((samples.len() / self.spec.channels) as u64);
        self.rails = rails.filter(|_| !self.framer.resamples());
        if let Err(reason) = self.framer.push(first, samples) {
            return self.resampler_failed(reason).await;
        }
        self.forward(arrived).await
    }

    /// The client half-closed: the last windows are cut, diagnosed and delivered, then the stream ends OK.
    pub async fn finish(mut self) {
        if let Err(reason) = self.framer.finish() {
            let _ = self.resampler_failed(reason).await;
            return;
        }
        if self.forward(Instant::now()).await.is_ok() {
            let _ = self.tx.send(Outgoing::Finished).await;
        }
    }

    /// Ends the stream with `err`, after everything already handed over.
    pub async fn end(self, err: ServeError) {
        let _ = self.fail(err).await;
    }

    /// The resampler failed: the stream ends INTERNAL, resuming where its delivered windows end.
    async fn resampler_failed(&self, reason: String) -> Result<(), Ended> {
        let resume_from = self.resume_from();
        self.fail(ServeError::Resample {
            reason,
            resume_from,
        })
        .await
    }

    async fn fail(&self, err: ServeError) -> Result<(), Ended> {
        let _ = self.tx.send(Outgoing::End(err)).await;
        Err(Ended)
    }

    /// Queues the windows the input so far completed, one at a time, and hands everything over in order.
    async fn forward(&mut self, arrived: Instant) -> Result<(), Ended> {
        loop {
            let event = match self.framer.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.progress.store(self.resume_from(), Ordering::SeqCst);
                    return Ok(());
                }
                Err(reason) => return self.resampler_failed(reason).await,
            };
            let permit = tokio::select! {
                permit = self.tx.reserve() => permit.map_err(|_| Ended)?,
                _ = self.drain_expired.cancelled() => return Err(Ended),
            };
            match event {
                window::Event::Window(cut) => {
                    let place = WindowPlace {
                        index: cut.index,
                        first_sample: cut.first_sample,
                        last_sample: cut.last_sample,
                    };
                    let range = self.model.card.input_range.as_ref();
                    let mut severity = None;
                    let mut shadow = None;
                    let rails = self.rails.as_ref();
                    let answer = match self.checker.check(cut.index, &cut.samples, range, rails) {
                        Some(flagged) => Pending::Ready(Answer::flagged(flagged)),
                        None => {
                            severity = self.meter.as_mut().and_then(|m| {
                                m.measure_at(cut.index, &cut.samples, self.spec.channels)
                                    .map(|v| self.spec.zones.severity(v))
                            });
                            shadow = self
                                .shadow
                                .get()
                                .and_then(|s| s.offer(&cut.samples, self.flow.queue_len()));
                            let submitted = tokio::select! {
                                submitted = self.flow.submit(cut.samples) => submitted,
                                _ = self.drain_expired.cancelled() => return Err(Ended),
                            };
                            match submitted {
                                Ok(reply) => Pending::Waiting(reply),
                                Err(err) => {
                                    permit.send(Outgoing::End(err));
                                    return Err(Ended);
                                }
                            }
                        }
                    };
                    permit.send(Outgoing::Window {
                        place,
                        arrived,
                        answer,
                        severity,
                        shadow,
                    });
                }
                window::Event::Discontinuity {
                    expected,
                    received,
                    samples_discarded,
                } => {
                    counter!(m::DISCONTINUITIES).increment(1);
                    self.checker.restart();
                    if let Some(m) = self.meter.as_mut() {
                        m.restart();
                    }
                    permit.send(Outgoing::Discontinuity(Discontinuity {
                        expected,
                        received,
                        samples_discarded,
                    }));
                }
            }
        }
    }
}
