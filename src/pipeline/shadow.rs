//! Shadow scoring: a candidate version scores the same windows as its model's serving version when there is spare
//! capacity, and the agreement between the two is counted (`drsn_shadow_windows_total`, and the confusion between
//! their classes). The serving answers never wait for it: a window is offered to the candidate only while the
//! serving queue holds less than a batch and the candidate has fewer than two of its batches in flight; the
//! candidate runs them on a lane of its own (one session, one thread at the lowest CPU priority, so the serving
//! inference threads take the cores first); its answer is compared on a task of its own after the serving answer
//! has gone out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use metrics::{Counter, counter};
use tokio::sync::mpsc;

use crate::engine::Runner;
use crate::error::ServeError;
use crate::pipeline::diagnosis::{Answer, Reading, Timing, Verdict};
use crate::pipeline::schedule::{Job, Reply};
use crate::telemetry::metrics as m;

/// Name of a shadow lane's inference thread.
pub const SHADOW_THREAD: &str = "drsn-shadow";

/// The nice value of a shadow lane's thread: the lowest priority, so that it runs on what the serving threads
/// leave (Linux; elsewhere it runs at normal priority).
const LANE_NICE: i32 = 19;

/// A candidate version's own inference for shadow windows: one session on one thread, fed by a bounded channel,
/// apart from the version's queue and batcher (its metrics and cost model stay those of the windows it serves).
#[derive(Clone)]
pub struct Lane {
    tx: crossbeam_channel::Sender<Job>,
    /// Windows it holds at most: two of its batches.
    in_flight: usize,
}

impl Lane {
    /// Starts the lane's thread: at its first window it opens its session with `open` (a version that never
    /// shadows holds no more than an idle thread), then runs what is waiting, up to `batch` windows at a time,
    /// until every sender is gone. If the session cannot be opened, every window is answered with an error
    /// (unscored).
    pub fn spawn<R: Runner>(
        open: impl FnOnce() -> Result<R, String> + Send + 'static,
        reading: Reading,
        batch: usize,
    ) -> Self {
        let batch = batch.max(1);
        let in_flight = 2 * batch;
        let (tx, rx) = crossbeam_channel::bounded::<Job>(in_flight);
        let spawned = std::thread::Builder::new()
            .name(SHADOW_THREAD.into())
            .spawn(move || {
                lower_priority();
                let mut open = Some(open);
                let mut runner = Err(());
                while let Ok(first) = rx.recv() {
                    if let Some(open) = open.take() {
                        runner = open().map_err(|e| {
                            tracing::error!(error = %e,
                                "the shadow lane cannot open its session; its windows are unscored");
                        });
                    }
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter().take(batch - 1));
                    match &mut runner {
                        Ok(r) => run(r, jobs, reading),
                        Err(()) => {
                            for job in jobs {
                                let _ = job.reply.send(Err(ServeError::WorkersGone));
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            // The receiver went with the closure: every offer is refused and counted as skipped.
            tracing::error!(error = %e, "cannot start a shadow lane");
        }
        Self { tx, in_flight }
    }

    /// The most shadow windows to have queued or running on it at once.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

fn run<R: Runner>(runner: &mut R, jobs: Vec<Job>, reading: Reading) {
    let started = std::time::Instant::now();
    let windows: Vec<&[f32]> = jobs.iter().map(|j| j.samples.as_slice()).collect();
    let result = runner.run(&windows);
    let timing = Timing {
        queue_wait: Default::default(),
        inference: started.elapsed(),
        batch_size: jobs.len(),
    };
    for (row, job) in jobs.into_iter().enumerate() {
        let answer = match &result {
            Ok(out) => Ok(reading.answer(out, row, timing)),
            Err(e) => Err(ServeError::Inference {
                reason: e.to_string(),
                resume_from: 0,
            }),
        };
        let _ = job.reply.send(answer);
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux a thread id names one thread to setpriority: only this one is lowered.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), LANE_NICE) {
        tracing::warn!(error = %e, "cannot lower the shadow lane's CPU priority; it runs at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// What the two versions said about the windows the candidate was offered, since the shadow was set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Both judged the window and named the same class.
    pub agree: u64,
    pub disagree: u64,
    /// One of them could not judge it (flagged, shed, failed): not an agreement either way.
    pub unscored: u64,
    /// Not offered to the candidate: no spare capacity at the time.
    pub skipped: u64,
}

impl Tally {
    /// Agreement over the windows both judged, `None` before any.
    pub fn agreement(&self) -> Option<f64> {
        let judged = self.agree + self.disagree;
        (judged > 0).then(|| self.agree as f64 / judged as f64)
    }
}

/// One outcome's count, and its metric series (registered once: a skipped window costs two atomic adds).
struct Outcome {
    n: AtomicU64,
    series: Counter,
}

impl Outcome {
    fn new(labels: &Labels, agreement: &'static str) -> Self {
        Self {
            n: AtomicU64::new(0),
            series: counter!(m::SHADOW_WINDOWS, "model" => labels.model.clone(),
                "serving" => labels.serving.clone(), "candidate" => labels.candidate.clone(),
                "agreement" => agreement),
        }
    }

    fn add(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.series.increment(1);
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

struct Counts {
    agree: Outcome,
    disagree: Outcome,
    unscored: Outcome,
    skipped: Outcome,
}

/// The metric labels of one serving/candidate pair.
#[derive(Clone)]
pub struct Labels {
    pub model: String,
    pub serving: String,
    pub candidate: String,
}

/// How much the shadow may take.
#[derive(Debug, Clone, Copy)]
pub struct Spare {
    /// A window is offered only while the serving queue holds fewer windows than this (a batch).
    pub serving_backlog_below: usize,
    /// Most shadow windows queued or running on the candidate at once.
    pub in_flight: usize,
}

/// A candidate scoring a serving version's windows.
pub struct Shadow {
    lane: Lane,
    spare: Spare,
    in_flight: Arc<AtomicUsize>,
    counts: Arc<Counts>,
    labels: Labels,
    tally: mpsc::Sender<Scoring>,
}

/// A window offered to the candidate, until the serving answer is known. Dropped unscored (the serving side failed,
/// or the stream went before its answer), it is counted as unscored: every window offered is accounted for.
pub(crate) struct Pending(Option<Offered>);

struct Offered {
    shadow: Arc<Shadow>,
    reply: Reply,
    ticket: Ticket,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(o) = &self.0 {
            o.shadow.counts.unscored.add();
        }
    }
}

/// One shadow window in flight, counted down however it ends.
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Scoring {
    /// The serving version's class name, `None` when it could not judge the window.
    serving: Option<String>,
    reply: Reply,
    _ticket: Ticket,
}

impl Shadow {
    /// Starts scoring on the candidate's `lane`; the comparing task runs until the shadow and every window offered
    /// to it are gone. `candidate_classes` names the candidate's class indices.
    pub fn start(
        lane: Lane,
        labels: Labels,
        candidate_classes: Arc<Vec<String>>,
        spare: Spare,
    ) -> Arc<Self> {
        let in_flight = spare.in_flight.max(1);
        let (tx, rx) = mpsc::channel(in_flight);
        let counts = Arc::new(Counts {
            agree: Outcome::new(&labels, "agree"),
            disagree: Outcome::new(&labels, "disagree"),
            unscored: Outcome::new(&labels, "unscored"),
            skipped: Outcome::new(&labels, "skipped"),
        });
        tokio::spawn(compare(
            rx,
            candidate_classes,
            labels.clone(),
            counts.clone(),
        ));
        Arc::new(Self {
            lane,
            spare,
            in_flight: Arc::new(AtomicUsize::new(0)),
            counts,
            labels,
            tally: tx,
        })
    }

    pub fn candidate(&self) -> &str {
        &self.labels.candidate
    }

    pub fn tally(&self) -> Tally {
        let c = &self.counts;
        Tally {
            agree: c.agree.get(),
            disagree: c.disagree.get(),
            unscored: c.unscored.get(),
            skipped: c.skipped.get(),
        }
    }

    /// Offers a window the serving version is about to judge, with `serving_backlog` windows in its queue; never
    /// waits. `None` (counted as skipped) when there is no spare capacity.
    pub(crate) fn offer(
        self: &Arc<Self>,
        samples: &[f32],
        serving_backlog: usize,
    ) -> Option<Pending> {
        let taken = serving_backlog < self.spare.serving_backlog_below
            && self
                .in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < self.spare.in_flight).then_some(n + 1)
                })
                .is_ok();
        let pending = if taken {
            let ticket = Ticket(self.in_flight.clone());
            let (tx, reply) = tokio::sync::oneshot::channel();
            let job = Job {
                samples: samples.to_vec(),
                enqueued: tokio::time::Instant::now(),
                reply: tx,
            };
            // Full (or gone): skipped, never waited for.
            self.lane.tx.try_send(job).ok().map(|()| {
                Pending(Some(Offered {
                    shadow: self.clone(),
                    reply,
                    ticket,
                }))
            })
        } else {
            None
        };
        if pending.is_none() {
            self.counts.skipped.add();
        }
        pending
    }
}

impl Pending {
    /// The serving answer is out: hands the pair to the comparing task, never waiting (it has room for every
    /// window in flight).
    pub(crate) fn score(mut self, serving: &Answer, classes: &[String]) {
        let Some(Offered {
            shadow,
            reply,
            ticket,
        }) = self.0.take()
        else {
            return;
        };
        let serving = match &serving.verdict {
            Verdict::Classified(c) => classes.get(c.class_index).cloned(),
            Verdict::Flagged(_) => None,
        };
        let scoring = Scoring {
            serving,
            reply,
            _ticket: ticket,
        };
        if shadow.tally.try_send(scoring).is_err() {
            shadow.counts.unscored.add();
        }
    }
}

/// Compares each candidate answer with the serving one, in the order they were offered.
async fn compare(
    mut rx: mpsc::Receiver<Scoring>,
    classes: Arc<Vec<String>>,
    labels: Labels,
    counts: Arc<Counts>,
) {
    while let Some(s) = rx.recv().await {
        if s.serving.is_none() {
            // Unscored whatever the candidate says: no need to wait for it.
            counts.unscored.add();
            continue;
        }
        let candidate = match s.reply.await {
            Ok(Ok(Answer {
                verdict: Verdict::Classified(c),
                ..
            })) => classes.get(c.class_index).cloned(),
            _ => None,
        };
        let outcome = match (s.serving, candidate) {
            (Some(a), Some(b)) => {
                counter!(m::SHADOW_CONFUSION, "model" => labels.model.clone(),
                    "serving" => labels.serving.clone(), "candidate" => labels.candidate.clone(),
                    "serving_class" => a.clone(), "candidate_class" => b.clone())
                .increment(1);
                if a == b {
                    &counts.agree
                } else {
                    &counts.disagree
                }
            }
            _ => &counts.unscored,
        };
        outcome.add();
    }
}

/// A serving version's shadow, if any: set and cleared while its streams run, read once per window.
#[derive(Default)]
pub struct Slot(RwLock<Option<Arc<Shadow>>>);

impl Slot {
    pub fn get(&self) -> Option<Arc<Shadow>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, shadow: Option<Arc<Shadow>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = shadow;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::sync::mpsc as tmpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::engine::{BatchOutput, InferError};
    use crate::pipeline::deliver::{self, Outgoing, Pending as Waiting, StreamEvent};
    use crate::pipeline::diagnosis::{Classified, WindowPlace};

    fn classified(class_index: usize) -> Answer {
        Answer {
            verdict: Verdict::Classified(Classified {
                class_index,
                logits: vec![0.0, 0.0, 0.0],
                probabilities: vec![0.0, 0.0, 0.0],
                shrinkage: None,
                ood_score: None,
                out_of_distribution: false,
                uncertain: false,
            }),
            timing: Timing::default(),
        }
    }

    /// A lane whose windows the test answers by hand: it holds the receiving end.
    fn lane(capacity: usize) -> (Lane, crossbeam_channel::Receiver<Job>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (
            Lane {
                tx,
                in_flight: capacity,
            },
            rx,
        )
    }

    fn shadow(lane: Lane, in_flight: usize) -> Arc<Shadow> {
        // The candidate names its classes in another order: agreement is by name, not index.
        let classes = Arc::new(vec!["inner".into(), "normal".into(), "ball".into()]);
        let labels = Labels {
            model: "m".into(),
            serving: "1".into(),
            candidate: "2".into(),
        };
        let spare = Spare {
            serving_backlog_below: 8,
            in_flight,
        };
        Shadow::start(lane, labels, classes, spare)
    }

    async fn settle(shadow: &Shadow, scored: u64) -> Tally {
        // Up to 5 s (a lane answers from a thread of its own); with the clock paused, at once.
        for _ in 0..5000 {
            let t = shadow.tally();
            if t.agree + t.disagree + t.unscored >= scored {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        shadow.tally()
    }

    #[tokio::test(start_paused = true)]
    async fn the_serving_answers_go_out_while_the_candidate_has_not_answered_and_excess_is_skipped()
    {
        let (lane, jobs) = lane(64);
        let shadow = shadow(lane, 2);
        let serving_classes = Arc::new(vec!["normal".to_string(), "inner".into(), "ball".into()]);
        let (tx, rx) = tmpsc::channel(8);
        let mut offered = 0;
        for i in 0..5u64 {
            let pending = shadow.offer(&[i as f32; 4], 0);
            offered += usize::from(pending.is_some());
            tx.send(Outgoing::Window {
                place: WindowPlace {
                    index: i,
                    first_sample: i * 4,
                    last_sample: i * 4 + 3,
                },
                arrived: std::time::Instant::now(),
                answer: Waiting::Ready(classified(1)),
                severity: None,
                shadow: pending,
            })
            .await
            .unwrap();
        }
        assert_eq!(offered, 2, "no more than the in-flight limit is offered");
        assert_eq!(
            shadow.offer(&[0.0; 4], 8).map(|_| ()),
            None,
            "a serving backlog of a batch: skipped"
        );
        drop(tx);
        let events = deliver::ordered(
            rx,
            Arc::new(m::WindowMeters::new("stream", "m", &serving_classes)),
            serving_classes,
            CancellationToken::new(),
            Arc::default(),
            Box::new(()),
        );
        // The clock is paused: were delivery waiting for the candidate, the timeout would fire first.
        let got: Vec<_> =
            tokio::time::timeout(Duration::from_millis(1), events.take(5).collect::<Vec<_>>())
                .await
                .expect("serving answers are not held back by the candidate");
        assert!(got.iter().all(|e| matches!(e, Ok(StreamEvent::Window(_)))));
        assert_eq!(shadow.tally().skipped, 4);

        // The candidate answers now: the first window like the serving version ("inner"), the second not.
        let first = jobs.try_recv().unwrap();
        let second = jobs.try_recv().unwrap();
        assert_eq!(
            first.samples,
            vec![0.0; 4],
            "the candidate sees the serving window's samples"
        );
        first.reply.send(Ok(classified(0))).unwrap();
        second.reply.send(Ok(classified(2))).unwrap();
        let t = settle(&shadow, 2).await;
        assert_eq!((t.agree, t.disagree, t.unscored, t.skipped), (1, 1, 0, 4));
        assert_eq!(t.agreement(), Some(0.5));
        // Both answered: there is room in flight again.
        assert!(shadow.offer(&[0.0; 4], 0).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lane_skips_and_a_window_either_side_could_not_judge_is_unscored() {
        let (lane, jobs) = lane(2);
        let shadow = shadow(lane, 4);
        let classes = vec!["normal".to_string()];
        let flagged = Answer::flagged(crate::pipeline::quality::Flagged {
            flag: crate::pipeline::quality::Flag::Flat,
            detail: String::new(),
        });
        shadow
            .offer(&[0.0; 4], 0)
            .unwrap()
            .score(&flagged, &classes);
        let pending = shadow.offer(&[0.0; 4], 0).unwrap();
        assert!(
            shadow.offer(&[0.0; 4], 0).is_none(),
            "the lane holds two: the third is skipped, not waited for"
        );
        pending.score(&classified(0), &classes);
        // The lane drops its windows unanswered (its thread failed).
        jobs.try_iter().for_each(drop);
        let t = settle(&shadow, 2).await;
        assert_eq!((t.agree, t.disagree, t.unscored, t.skipped), (0, 0, 2, 1));
        assert_eq!(t.agreement(), None);
        // The serving side failed (or the stream went) before its answer: the offered window is still counted.
        drop(shadow.offer(&[0.0; 4], 0).unwrap());
        let t = settle(&shadow, 3).await;
        assert_eq!((t.agree, t.disagree, t.unscored, t.skipped), (0, 0, 3, 1));
    }

    /// Answers every window with the class its first sample names.
    struct ByFirstSample;

    impl Runner for ByFirstSample {
        fn run(&mut self, windows: &[&[f32]]) -> Result<BatchOutput, InferError> {
            let mut logits = Vec::new();
            for w in windows {
                let mut row = vec![0.0f32; 3];
                row[w[0] as usize] = 10.0;
                logits.extend(row);
            }
            Ok(BatchOutput {
                classes: 3,
                logits,
                shrinkage: None,
                ood: None,
            })
        }
    }

    #[tokio::test]
    async fn a_lane_runs_windows_on_its_own_thread_and_one_without_a_session_leaves_them_unscored()
    {
        let reading = Reading {
            temperature: 1.0,
            uncertain_below: None,
            uncertain_above: None,
        };
        let serving = vec!["inner".to_string(), "normal".into(), "ball".into()];
        let working = shadow(Lane::spawn(|| Ok(ByFirstSample), reading, 4), 8);
        // The serving version said `inner` every time; the lane's network names the class the samples hold.
        for class in [0usize, 1, 2, 0] {
            let pending = working.offer(&[class as f32; 4], 0).unwrap();
            pending.score(&classified(0), &serving);
        }
        let t = settle(&working, 4).await;
        assert_eq!((t.agree, t.disagree, t.unscored), (2, 2, 0), "{t:?}");
        // A lane that cannot open its session answers with errors: unscored, never agreement.
        let no_session = || Err::<ByFirstSample, _>("no session".to_string());
        let broken = shadow(Lane::spawn(no_session, reading, 4), 8);
        let pending = broken.offer(&[0.0; 4], 0).unwrap();
        pending.score(&classified(0), &serving);
        let t = settle(&broken, 1).await;
        assert_eq!((t.agree, t.disagree, t.unscored), (0, 0, 1), "{t:?}");
    }
}
