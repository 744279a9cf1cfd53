//! The batch queue: fair across clients and bounded in space and in time.
//!
//! Windows wait per flow (a stream, or one unary call), flows are grouped by client (a connection; every unary call
//! is a client of its own), and a batch takes one window per turn, round-robin over clients and, within a client,
//! over its flows. A client flooding on many streams so gets one turn in each round, like a sensor sending 12
//! windows a second: its windows wait, the sensor's do not.
//!
//! Space: the queue holds `capacity` windows, and each flow may hold `reserve` more, so a quiet stream never waits
//! behind a full queue it did not fill. A stream that finds no room waits (its reader pauses; HTTP/2 flow control
//! slows the client). Time: a window that has waited longer than `max_wait` when its turn comes is answered as
//! shed, not run, so an overloaded server works on windows that can still be useful and recovers as soon as the
//! load drops. A flow's windows leave with it when its stream ends.

use std::collections::{HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Gauge, gauge};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::error::ServeError;
use crate::pipeline::cost::CostModel;
use crate::pipeline::diagnosis::Answer;
use crate::pipeline::quality::{Flag, Flagged};
use crate::telemetry::metrics as m;

/// Who a flow belongs to, for fairness: a connection, or a unary call.
pub type ClientKey = u64;

/// The answer to one queued window.
pub type Reply = oneshot::Receiver<Result<Answer, ServeError>>;

/// A window waiting for inference.
pub struct Job {
    pub samples: Vec<f32>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Answer, ServeError>>,
}

#[derive(Debug, Clone, Copy)]
pub struct ScheduleConfig {
    /// Windows the queue holds, all flows together.
    pub capacity: usize,
    /// Windows each flow may queue beyond `capacity`.
    pub reserve: usize,
    /// Longest a window may wait before it is shed.
    pub max_wait: Duration,
}

/// When a batch leaves the queue, and how large it is.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Never more windows than this.
    pub max_batch: usize,
    /// How long the oldest window may wait for its batch to fill.
    pub max_delay: Duration,
    /// Queue wait plus inference a window should stay within: a batch leaves, smaller, before it would overrun.
    pub budget: Duration,
    pub cost: Arc<CostModel>,
}

impl BatchPolicy {
    /// The most windows worth putting in one batch now: the efficient batch size, within `max_batch`.
    fn cap(&self) -> usize {
        self.max_batch.min(self.cost.efficient_batch()).max(1)
    }
}

pub struct Scheduler {
    state: Mutex<State>,
    config: ScheduleConfig,
    /// Wakes the batcher: work arrived.
    work: Notify,
    /// Wakes waiting submitters: room freed.
    room: Notify,
}

#[derive(Default)]
struct State {
    flows: HashMap<u64, FlowQueue>,
    /// Per client with waiting windows: its flows with waiting windows, in turn order.
    clients: HashMap<ClientKey, VecDeque<u64>>,
    /// Clients with waiting windows, in turn order.
    ring: VecDeque<ClientKey>,
    queued: usize,
    next_flow: u64,
    closed: bool,
    gauges: QueueGauges,
}

/// The queue's gauges, looked up once: they are set on every window queued and every batch taken.
struct QueueGauges {
    depth: Gauge,
    clients: Gauge,
}

impl Default for QueueGauges {
    fn default() -> Self {
        Self {
            depth: gauge!(m::QUEUE_DEPTH),
            clients: gauge!(m::QUEUE_CLIENTS),
        }
    }
}

struct FlowQueue {
    client: ClientKey,
    jobs: VecDeque<Job>,
}

impl State {
    /// Queues a job on a flow, putting the flow (and its client) in turn if it was idle.
    fn push(&mut self, flow: u64, job: Job) {
        let Some(q) = self.flows.get_mut(&flow) else {
            return;
        };
        let was_idle = q.jobs.is_empty();
        let client = q.client;
        q.jobs.push_back(job);
        self.queued += 1;
        if was_idle {
            let turns = self.clients.entry(client).or_default();
            if turns.is_empty() {
                self.ring.push_back(client);
            }
            turns.push_back(flow);
        }
    }

    /// The next job in round-robin order.
    fn pop(&mut self) -> Option<Job> {
        let client = self.ring.pop_front()?;
        let turns = self.clients.get_mut(&client)?;
        let flow = turns.pop_front()?;
        let q = self.flows.get_mut(&flow)?;
        let job = q.jobs.pop_front()?;
        self.queued -= 1;
        if !q.jobs.is_empty() {
            turns.push_back(flow);
        }
        if turns.is_empty() {
            self.clients.remove(&client);
        } else {
            self.ring.push_back(client);
        }
        Some(job)
    }

    /// When the oldest waiting window was queued.
    fn oldest(&self) -> Option<Instant> {
        self.clients
            .values()
            .flatten()
            .filter_map(|f| self.flows.get(f)?.jobs.front().map(|j| j.enqueued))
            .min()
    }

    fn remove_flow(&mut self, flow: u64) {
        let Some(q) = self.flows.remove(&flow) else {
            return;
        };
        self.queued -= q.jobs.len();
        if let Some(turns) = self.clients.get_mut(&q.client) {
            turns.retain(|f| *f != flow);
            if turns.is_empty() {
                self.clients.remove(&q.client);
                self.ring.retain(|c| *c != q.client);
            }
        }
    }

    fn record(&self) {
        self.gauges.depth.set(self.queued as f64);
        self.gauges.clients.set(self.ring.len() as f64);
    }
}

impl Scheduler {
    pub fn new(config: ScheduleConfig) -> Arc<Self> {
        gauge!(m::QUEUE_CAPACITY).set(config.capacity as f64);
        Arc::new(Self {
            state: Mutex::new(State::default()),
            config,
            work: Notify::new(),
            room: Notify::new(),
        })
    }

    pub fn config(&self) -> ScheduleConfig {
        self.config
    }

    // A panic while holding the lock cannot leave the queue half-updated (every update is a few plain field
    // writes), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new flow of `client`'s; its waiting windows leave the queue when it is dropped.
    pub fn flow(self: &Arc<Self>, client: ClientKey) -> Flow {
        let mut st = self.lock();
        let id = st.next_flow;
        st.next_flow += 1;
        st.flows.insert(
            id,
            FlowQueue {
                client,
                jobs: VecDeque::new(),
            },
        );
        Flow {
            id,
            scheduler: self.clone(),
        }
    }

    /// Refuses new windows: waiting submitters get [`ServeError::WorkersGone`], the batcher ends once the queue is
    /// empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_waiters();
        self.work.notify_one();
    }

    /// Whether [`Scheduler::close`] was called (a drain finished, or every inference worker stopped).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Windows waiting.
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    /// The next batch. It leaves as soon as the efficient batch size is waiting (see [`BatchPolicy`]), when the oldest
    /// window has waited `max_delay`, or when waiting longer would overrun the latency budget; it is cut smaller
    /// when its inference would overrun the budget (unless its windows are late anyway: then throughput comes
    /// first). Windows that waited past `max_wait` are answered as shed instead; windows whose stream ended are
    /// dropped. `None` once the queue is closed and empty.
    pub async fn next_batch(&self, cut: &BatchPolicy) -> Option<Vec<Job>> {
        loop {
            let mut notified = pin!(self.work.notified());
            notified.as_mut().enable();
            let wake_at = {
                let mut st = self.lock();
                if st.queued == 0 {
                    if st.closed {
                        return None;
                    }
                    None
                } else {
                    let now = Instant::now();
                    let cap = cut.cap();
                    let oldest = st.oldest().unwrap_or(now);
                    let waited = now.saturating_duration_since(oldest);
                    let size = st.queued.min(cap);
                    // Waiting for one more window must leave room for the bigger batch's inference.
                    let grow_until = cut
                        .budget
                        .saturating_sub(cut.cost.estimate((size + 1).min(cap)));
                    let due = oldest + cut.max_delay.min(grow_until);
                    if st.queued >= cap || now >= due {
                        let max = if waited + cut.cost.estimate(size) <= cut.budget
                            || waited >= cut.budget
                        {
                            cap
                        } else {
                            cut.cost.fits(cap, cut.budget - waited)
                        };
                        let before = st.queued;
                        let batch = self.take(&mut st, max, now);
                        st.record();
                        let freed = before - st.queued;
                        drop(st);
                        self.wake(freed);
                        if !batch.is_empty() {
                            return Some(batch);
                        }
                        continue;
                    }
                    Some(due)
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Wakes one waiting submitter per freed place, not all of them: with hundreds of streams waiting, waking
    /// every one for each batch would keep the runtime busy with submitters that go straight back to sleep.
    fn wake(&self, freed: usize) {
        for _ in 0..freed {
            self.room.notify_one();
        }
    }

    fn take(&self, st: &mut State, max: usize, now: Instant) -> Vec<Job> {
        let mut batch = Vec::with_capacity(max.min(st.queued));
        while batch.len() < max {
            let Some(job) = st.pop() else { break };
            if job.reply.is_closed() {
                continue; // its stream has ended: nobody would read the answer
            }
            let waited = now.saturating_duration_since(job.enqueued);
            if waited > self.config.max_wait {
                let _ = job.reply.send(Ok(Answer::flagged(Flagged {
                    flag: Flag::Shed,
                    detail: format!(
                        "the server is overloaded: this window waited {} ms for inference, over the {} ms limit \
                         (--max-queue-wait)",
                        waited.as_millis(),
                        self.config.max_wait.as_millis()
                    ),
                })));
                continue;
            }
            batch.push(job);
        }
        batch
    }
}

/// One stream's (or unary call's) place in the queue.
pub struct Flow {
    id: u64,
    scheduler: Arc<Scheduler>,
}

impl Flow {
    /// Queues a window, waiting while the queue is full and this flow has used its reserve: the caller stops
    /// reading its client meanwhile, so HTTP/2 flow control slows the client instead of memory growing.
    pub async fn submit(&self, samples: Vec<f32>) -> Result<Reply, ServeError> {
        let s = &self.scheduler;
        loop {
            let mut room = pin!(s.room.notified());
            room.as_mut().enable();
            {
                let mut st = s.lock();
                if st.closed {
                    return Err(ServeError::WorkersGone);
                }
                let mine = st.flows.get(&self.id).map_or(0, |q| q.jobs.len());
                if st.queued < s.config.capacity || mine < s.config.reserve {
                    let (tx, rx) = oneshot::channel();
                    st.push(
                        self.id,
                        Job {
                            samples,
                            enqueued: Instant::now(),
                            reply: tx,
                        },
                    );
                    st.record();
                    drop(st);
                    s.work.notify_one();
                    return Ok(rx);
                }
            }
            room.await;
        }
    }

    /// Windows waiting in the whole queue this flow is in.
    pub fn queue_len(&self) -> usize {
        self.scheduler.queued()
    }

    /// Queues every window or none: a unary call is refused with `QueueFull` rather than half-run.
    pub fn submit_all(&self, windows: Vec<Vec<f32>>) -> Result<Vec<Reply>, ServeError> {
        let s = &self.scheduler;
        let mut st = s.lock();
        if st.closed {
            return Err(ServeError::WorkersGone);
        }
        if st.queued + windows.len() > s.config.capacity {
            return Err(ServeError::QueueFull {
                want: windows.len(),
                capacity: s.config.capacity,
            });
        }
        let now = Instant::now();
        let replies = windows
            .into_iter()
            .map(|samples| {
                let (tx, rx) = oneshot::channel();
                st.push(
                    self.id,
                    Job {
                        samples,
                        enqueued: now,
                        reply: tx,
                    },
                );
                rx
            })
            .collect();
        st.record();
        drop(st);
        s.work.notify_one();
        Ok(replies)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let mut st = self.scheduler.lock();
        let before = st.queued;
        st.remove_flow(self.id);
        st.record();
        let freed = before - st.queued;
        drop(st);
        self.scheduler.wake(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts at `max` windows or `delay`, with a cost model that never stands in the way: a fixed overhead makes
    /// the largest batch the efficient one, and everything is fast against the budget.
    fn cut(max: usize, delay: Duration) -> BatchPolicy {
        BatchPolicy {
            max_batch: max,
            max_delay: delay,
            budget: Duration::from_secs(10),
            cost: Arc::new(CostModel::new(
                max,
                &[(1, 1e-3), (max, 1e-3 + max as f64 * 1e-9)],
            )),
        }
    }

    fn scheduler(capacity: usize, reserve: usize) -> Arc<Scheduler> {
        Scheduler::new(ScheduleConfig {
            capacity,
            reserve,
            max_wait: Duration::from_secs(1),
        })
    }

    /// The first sample of each window says which flow and which window it was.
    fn tag(flow: u32, k: u32) -> Vec<f32> {
        vec![(flow * 1000 + k) as f32]
    }

    fn tags(batch: &[Job]) -> Vec<u32> {
        batch.iter().map(|j| j.samples[0] as u32).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn batches_take_turns_across_clients_then_flows() {
        let s = scheduler(100, 1);
        // Client 1 floods on two streams; client 2 has one window on one stream.
        let (a, b, c) = (s.flow(1), s.flow(1), s.flow(2));
        let mut keep = Vec::new();
        for k in 0..5 {
            keep.push(a.submit(tag(1, k)).await.unwrap());
            keep.push(b.submit(tag(2, k)).await.unwrap());
        }
        keep.push(c.submit(tag(3, 0)).await.unwrap());
        let batch = s
            .next_batch(&cut(6, Duration::from_millis(5)))
            .await
            .unwrap();
        // Client 1 and client 2 alternate; within client 1, its two streams alternate.
        assert_eq!(tags(&batch), [1000, 3000, 2000, 1001, 2001, 1002]);
        let rest = s.next_batch(&cut(100, Duration::ZERO)).await.unwrap();
        assert_eq!(tags(&rest), [2002, 1003, 2003, 1004, 2004]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_after_max_delay_and_a_full_one_at_once() {
        let s = scheduler(100, 1);
        let f = s.flow(1);
        let _r = f.submit(tag(1, 0)).await.unwrap();
        let started = Instant::now();
        let batch = s
            .next_batch(&cut(4, Duration::from_millis(5)))
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        let _r: Vec<_> = f.submit_all((0..4).map(|k| tag(1, k)).collect()).unwrap();
        let started = Instant::now();
        assert_eq!(
            s.next_batch(&cut(4, Duration::from_millis(5)))
                .await
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a full batch does not wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_makes_a_busy_flow_wait_but_never_a_quiet_one() {
        let s = scheduler(2, 1);
        let (busy, quiet) = (s.flow(1), s.flow(2));
        let _a = busy.submit(tag(1, 0)).await.unwrap();
        let _b = busy.submit(tag(1, 1)).await.unwrap();
        // The queue is full and the busy flow holds more than its reserve: it waits.
        let blocked = tokio::time::timeout(Duration::from_secs(5), busy.submit(tag(1, 2))).await;
        assert!(blocked.is_err(), "the busy flow waits for room");
        let _c = quiet.submit(tag(2, 0)).await.unwrap();
        assert_eq!(s.queued(), 3, "the quiet flow used its reserve");
        // Room frees when a batch leaves; the waiting submitter then gets in.
        let waiter = tokio::spawn(async move { busy.submit(tag(1, 2)).await.map(drop).is_ok() });
        tokio::task::yield_now().await;
        let _batch = s.next_batch(&cut(3, Duration::ZERO)).await.unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn unary_calls_are_all_or_nothing() {
        let s = scheduler(4, 1);
        let f = s.flow(7);
        let _r = f.submit_all(vec![tag(1, 0); 3]).unwrap();
        let g = s.flow(8);
        let e = g.submit_all(vec![tag(2, 0); 2]).unwrap_err();
        assert!(
            matches!(
                e,
                ServeError::QueueFull {
                    want: 2,
                    capacity: 4
                }
            ),
            "{e}"
        );
        assert_eq!(s.queued(), 3, "nothing of the refused call was queued");
    }

    #[tokio::test(start_paused = true)]
    async fn windows_that_waited_too_long_are_shed_with_a_reason() {
        let s = scheduler(100, 1);
        let f = s.flow(1);
        let old = f.submit(tag(1, 0)).await.unwrap();
        tokio::time::advance(Duration::from_millis(1500)).await;
        let fresh = f.submit(tag(1, 1)).await.unwrap();
        let batch = s.next_batch(&cut(8, Duration::ZERO)).await.unwrap();
        assert_eq!(tags(&batch), [1001], "only the fresh window runs");
        let answer = old.await.unwrap().unwrap();
        match answer.verdict {
            crate::pipeline::diagnosis::Verdict::Flagged(f) => {
                assert_eq!(f.flag, Flag::Shed);
                assert!(f.detail.contains("waited 1500 ms"), "{}", f.detail);
            }
            v => panic!("{v:?}"),
        }
        drop(fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_stream_takes_its_windows_with_it() {
        let s = scheduler(100, 1);
        let (gone, stays) = (s.flow(1), s.flow(2));
        let mut replies = Vec::new();
        for k in 0..3 {
            replies.push(gone.submit(tag(1, k)).await.unwrap());
        }
        let _keep = stays.submit(tag(2, 0)).await.unwrap();
        drop(gone);
        assert_eq!(s.queued(), 1);
        let batch = s.next_batch(&cut(8, Duration::ZERO)).await.unwrap();
        assert_eq!(tags(&batch), [2000]);
        // And a window whose receiver is gone is skipped, not run.
        let f = s.flow(3);
        drop(f.submit(tag(3, 0)).await.unwrap());
        let _k = f.submit(tag(3, 1)).await.unwrap();
        assert_eq!(
            tags(&s.next_batch(&cut(8, Duration::ZERO)).await.unwrap()),
            [3001]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closing_refuses_new_windows_and_ends_the_batcher_when_empty() {
        let s = scheduler(100, 1);
        let f = s.flow(1);
        let _r = f.submit(tag(1, 0)).await.unwrap();
        s.close();
        assert!(matches!(
            f.submit(tag(1, 1)).await,
            Err(ServeError::WorkersGone)
        ));
        assert_eq!(
            s.next_batch(&cut(8, Duration::from_millis(5)))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            s.next_batch(&cut(8, Duration::from_millis(5)))
                .await
                .is_none()
        );
    }
}
