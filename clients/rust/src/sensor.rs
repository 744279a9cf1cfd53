//! A live sensor stream, as a gateway runs one for months: samples go in as they are read, each window's result and
//! each condition change come out once, in order, whatever happens to the servers in between. The samples the
//! server has not yet answered for are held (a bounded buffer: `send` waits for room) and sent again on a new call
//! from where the server says to go on (a drain, a connection at its maximum age) or, after a broken connection or
//! a dead replica, from the window after the last one delivered, on the next of the targets after a jittered
//! backoff; windows a new call repeats are dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::Error;
use crate::connect::{Target, Targets};
use crate::proto::stream_diagnose_request::Message;
use crate::proto::stream_diagnose_response::Event as Wire;
use crate::proto::{
    ConditionCarry, Discontinuity, IntegerSamples, ResultDetail, SampleChunk, SensorCondition,
    StreamDiagnoseRequest, StreamDiagnoseResponse, StreamOpen, WindowResult, sample_chunk,
};
use crate::resume::{self, Backoff, Named};

/// What a stream is: which machine and sensor, its rate, and what to send back.
#[derive(Debug, Clone)]
pub struct Sensor {
    pub machine_id: String,
    pub sensor_id: String,
    pub sample_rate_hz: f64,
    /// Interleaved channels per frame.
    pub channels: u32,
    /// Window hop in model-rate samples (0: the model's).
    pub hop: u32,
    pub detail: ResultDetail,
    /// The index of the first sample sent (a gateway going on from its own count).
    pub first_sample_index: u64,
    /// When set, samples are 16-bit ADC codes ([`SampleSender::send_codes`]).
    pub adc: Option<Adc>,
    /// The model to serve the stream and its version; empty: the server's default model, its newest version (taken
    /// afresh at every resume, so a stream follows a rolling model update; name a version to pin it).
    pub model: String,
    pub model_version: String,
}

impl Sensor {
    /// One channel, the model's hop, compact results, from sample 0, float samples.
    pub fn new(
        machine_id: impl Into<String>,
        sensor_id: impl Into<String>,
        sample_rate_hz: f64,
    ) -> Self {
        Self {
            machine_id: machine_id.into(),
            sensor_id: sensor_id.into(),
            sample_rate_hz,
            channels: 1,
            hop: 0,
            detail: ResultDetail::Compact,
            first_sample_index: 0,
            adc: None,
            model: String::new(),
            model_version: String::new(),
        }
    }
}

/// How 16-bit codes turn into the card's unit: value = (code - offset) x scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adc {
    pub scale: f32,
    pub offset: f32,
    /// The converter's bits (at most 16): its full-scale code is known clipping.
    pub bits: u32,
}

/// The stream's limits and pacing.
#[derive(Debug, Clone)]
pub struct Options {
    /// Frames held until answered; `send` waits while it is full. Enough for the server's window plus what is in
    /// flight (default: 2^20 frames, 21 s at 48 kHz).
    pub max_buffered_frames: usize,
    /// Frames per chunk on the wire.
    pub chunk_frames: usize,
    /// Results waiting for the gateway to read them; the stream stops reading the server while it is full.
    pub result_buffer: usize,
    /// First delay and ceiling of the jittered exponential backoff between calls.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Give up after this many calls in a row that delivered nothing (None: never; a gateway's stream runs for
    /// months and a replica may be gone for a while).
    pub max_attempts: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_buffered_frames: 1 << 20,
            chunk_frames: 4096,
            result_buffer: 256,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

/// What comes back, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// One window's result. `index` counts the stream's windows from 0 across every resume, as one uninterrupted
    /// stream would (the server's `window_index` restarts on each new call).
    Window { index: u64, result: WindowResult },
    /// The sensor's debounced condition changed (onset, class change, zone rise, clear, sensor fault).
    Condition(SensorCondition),
    /// The server saw samples that did not continue where the previous ones ended; windowing restarted.
    Gap(Discontinuity),
}

/// What a gateway may export: calls opened, resumes after an interrupted call, samples sent again, windows a new
/// call repeated (dropped, as delivered already), and the last interruption.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub calls: u64,
    pub resumes: u64,
    pub samples_resent: u64,
    pub windows_repeated: u64,
    pub last_error: String,
}

/// The gateway's end for samples. Dropping it (or [`finish`](Self::finish)) ends the stream once every sample sent
/// has been answered.
#[derive(Debug)]
pub struct SampleSender {
    input: mpsc::Sender<Block>,
    room: Arc<Semaphore>,
    channels: usize,
    adc: bool,
    max_frames: usize,
    stats: Arc<Mutex<Stats>>,
}

/// The gateway's end for results: every window once, in order, and condition changes; `None` once the stream is
/// done, an error when it ended for a reason resending cannot fix.
#[derive(Debug)]
pub struct Results {
    events: mpsc::Receiver<Result<Event, Error>>,
    stats: Arc<Mutex<Stats>>,
    tail: Arc<Mutex<Option<Tail>>>,
}

/// Samples given to a stream that no delivered window covers, from where its next window would start: what a
/// successor stream of the same sensor starts with so that no window is lost (a bridge handing its sensors to
/// the next one). Known once [`Results::next`] has returned `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    pub first_sample_index: u64,
    pub samples: TailSamples,
}

/// A [`Tail`]'s samples, as they were given: floats or 16-bit codes, interleaved frames.
#[derive(Debug, Clone, PartialEq)]
pub enum TailSamples {
    F32(Vec<f32>),
    I16(Vec<i16>),
}

impl SampleSender {
    /// Sends interleaved float frames; waits while the buffer of unanswered samples is full.
    pub async fn send(&self, samples: &[f32]) -> Result<(), Error> {
        if self.adc {
            return Err(Error::Config(
                "this stream sends ADC codes: use send_codes".into(),
            ));
        }
        self.push(samples.len(), Block::F32(samples.to_vec())).await
    }

    /// Sends interleaved 16-bit ADC codes (the sensor's `adc` set): half the bytes of floats.
    pub async fn send_codes(&self, codes: &[i16]) -> Result<(), Error> {
        if !self.adc {
            return Err(Error::Config(
                "this stream sends floats: set Sensor.adc to send codes".into(),
            ));
        }
        self.push(codes.len(), Block::I16(codes.to_vec())).await
    }

    async fn push(&self, len: usize, block: Block) -> Result<(), Error> {
        if !len.is_multiple_of(self.channels) {
            return Err(Error::Config(format!(
                "{len} samples are not whole frames of {} channels",
                self.channels
            )));
        }
        let frames = len / self.channels;
        if frames == 0 {
            return Ok(());
        }
        if frames > self.max_frames {
            return Err(Error::Config(format!(
                "{frames} frames at once are more than the buffer holds ({}): send less at a time",
                self.max_frames
            )));
        }
        let permits =
            u32::try_from(frames).map_err(|_| Error::Config("too many frames at once".into()))?;
        self.room
            .acquire_many(permits)
            .await
            .map_err(|_| Error::Ended)?
            .forget();
        self.input.send(block).await.map_err(|_| Error::Ended)
    }

    /// Ends the stream for sending; [`Results`] ends once everything sent is answered.
    pub fn finish(self) {}

    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Results {
    /// The next event; `None` once the stream is done.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        self.events.recv().await
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Once the stream is done: the samples no window covers (see [`Tail`]); `None` before, or when there are none.
    pub fn tail(&self) -> Option<Tail> {
        self.tail.lock().ok()?.clone()
    }
}

/// Opens a resuming stream for `sensor` over `targets` (dialled when the first samples arrive), on the current
/// tokio runtime.
pub fn open(
    targets: Targets,
    sensor: Sensor,
    options: Options,
) -> Result<(SampleSender, Results), Error> {
    if sensor.channels == 0 {
        return Err(Error::Config("channels must be at least 1".into()));
    }
    if !(sensor.sample_rate_hz.is_finite() && sensor.sample_rate_hz > 0.0) {
        return Err(Error::Config(
            "the sample rate must be a positive number of Hz".into(),
        ));
    }
    // Indices stay far from overflowing in every sum the stream makes: 2^62 is centuries of samples at any rate.
    if sensor.first_sample_index > 1 << 62 {
        return Err(Error::Config("first_sample_index is above 2^62".into()));
    }
    if sensor.adc.is_some_and(|a| !(2..=16).contains(&a.bits)) {
        return Err(Error::Config(
            "16-bit codes come from a converter of 2 to 16 bits".into(),
        ));
    }
    let max_frames = options.max_buffered_frames.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(max_frames));
    let (input_tx, input) = mpsc::channel(64);
    let (events, events_rx) = mpsc::channel(options.result_buffer.max(1));
    let stats: Arc<Mutex<Stats>> = Arc::default();
    let sender = SampleSender {
        input: input_tx,
        room: room.clone(),
        channels: sensor.channels as usize,
        adc: sensor.adc.is_some(),
        max_frames,
        stats: stats.clone(),
    };
    let state = State::new(sensor, options.chunk_frames.max(1));
    let tail: Arc<Mutex<Option<Tail>>> = Arc::default();
    tokio::spawn(drive(
        targets,
        state,
        options,
        input,
        events,
        room,
        (stats.clone(), tail.clone()),
    ));
    Ok((
        sender,
        Results {
            events: events_rx,
            stats,
            tail,
        },
    ))
}

/// Samples as the gateway gave them: floats, or ADC codes.
#[derive(Debug, Clone)]
enum Block {
    F32(Vec<f32>),
    I16(Vec<i16>),
}

impl Block {
    fn len(&self) -> usize {
        match self {
            Block::F32(v) => v.len(),
            Block::I16(v) => v.len(),
        }
    }

    /// Samples `from..to` (not frames).
    fn slice(&self, from: usize, to: usize) -> Block {
        match self {
            Block::F32(v) => Block::F32(v[from..to].to_vec()),
            Block::I16(v) => Block::I16(v[from..to].to_vec()),
        }
    }
}

/// How a call ended.
#[derive(Debug)]
enum End {
    /// Every sample answered.
    Done,
    /// Go on from `State::resume_at` on a new call.
    Retry { code: Code, delivered: u64 },
    /// Resending cannot fix it.
    Fatal(Error),
    /// The gateway dropped its [`Results`].
    Abandoned,
}

/// The samples held until answered and what has been delivered: no I/O, so every rule is tested on its own.
#[derive(Debug)]
struct State {
    sensor: Sensor,
    chunk_frames: usize,
    held: VecDeque<(u64, Block)>,
    held_frames: usize,
    next_index: u64,
    resume_at: u64,
    sent_until: u64,
    input_closed: bool,
    last_first: Option<u64>,
    delivered: u64,
    carry: Option<ConditionCarry>,
    hop_frames: Option<u64>,
}

impl State {
    fn new(sensor: Sensor, chunk_frames: usize) -> Self {
        let first = sensor.first_sample_index;
        Self {
            sensor,
            chunk_frames,
            held: VecDeque::new(),
            held_frames: 0,
            next_index: first,
            resume_at: first,
            sent_until: first,
            input_closed: false,
            last_first: None,
            delivered: 0,
            carry: None,
            hop_frames: None,
        }
    }

    fn channels(&self) -> usize {
        self.sensor.channels as usize
    }

    fn append(&mut self, block: Block) {
        let frames = block.len() / self.channels();
        if frames == 0 {
            return;
        }
        self.held.push_back((self.next_index, block));
        self.held_frames += frames;
        self.next_index += frames as u64;
    }

    /// The held samples from where the next window would start.
    fn tail(&self) -> Option<Tail> {
        let next_window = match (self.last_first, self.hop_frames) {
            (Some(last), Some(hop)) => last + hop,
            _ => self.held_from(),
        };
        let from = next_window.max(self.held_from());
        if from >= self.next_index {
            return None;
        }
        let ch = self.channels();
        let mut samples = match self.held.front()? {
            (_, Block::F32(_)) => TailSamples::F32(Vec::new()),
            (_, Block::I16(_)) => TailSamples::I16(Vec::new()),
        };
        for (first, block) in &self.held {
            let frames = (block.len() / ch) as u64;
            if first + frames <= from {
                continue;
            }
            let skip = from.saturating_sub(*first) as usize * ch;
            match (&mut samples, block.slice(skip, block.len())) {
                (TailSamples::F32(out), Block::F32(v)) => out.extend(v),
                (TailSamples::I16(out), Block::I16(v)) => out.extend(v),
                // A stream sends one kind of sample (send or send_codes, fixed by the sensor's adc).
                _ => return None,
            }
        }
        Some(Tail {
            first_sample_index: from,
            samples,
        })
    }

    fn held_from(&self) -> u64 {
        self.held
            .front()
            .map_or(self.next_index, |(first, _)| *first)
    }

    fn open_message(&self) -> StreamDiagnoseRequest {
        let s = &self.sensor;
        StreamDiagnoseRequest {
            message: Some(Message::Open(StreamOpen {
                machine_id: s.machine_id.clone(),
                sensor_id: s.sensor_id.clone(),
                sample_rate_hz: s.sample_rate_hz,
                channels: s.channels,
                hop: s.hop,
                detail: s.detail as i32,
                resume_condition: self.carry.clone(),
                model: s.model.clone(),
                model_version: s.model_version.clone(),
                ..Default::default()
            })),
        }
    }

    /// The chunk that starts at `cursor` (within one held block, at most `chunk_frames`), and where the next starts.
    fn chunk_at(&self, cursor: u64) -> Option<(StreamDiagnoseRequest, u64)> {
        let ch = self.channels();
        let (first, block) = self
            .held
            .iter()
            .find(|(first, block)| cursor < first + (block.len() / ch) as u64)?;
        let from = cursor.max(*first) - first;
        let frames = (block.len() / ch) as u64;
        let to = (from + self.chunk_frames as u64).min(frames);
        let part = block.slice(from as usize * ch, to as usize * ch);
        let samples = match part {
            Block::F32(v) => {
                sample_chunk::Samples::F32le(bytemuck::cast_slice::<f32, u8>(&v).to_vec().into())
            }
            Block::I16(v) => {
                let adc = self.sensor.adc.unwrap_or(Adc {
                    scale: 1.0,
                    offset: 0.0,
                    bits: 16,
                });
                let data: Vec<u8> = v.iter().flat_map(|c| c.to_le_bytes()).collect();
                sample_chunk::Samples::I16le(IntegerSamples {
                    data: data.into(),
                    scale: adc.scale,
                    offset: adc.offset,
                    adc_bits: adc.bits,
                })
            }
        };
        let chunk = SampleChunk {
            first_sample_index: first + from,
            samples: Some(samples),
        };
        Some((
            StreamDiagnoseRequest {
                message: Some(Message::Chunk(chunk)),
            },
            first + to,
        ))
    }

    /// A new call starts at `resume_at`: counts it, and what it sends again.
    fn call_started(&mut self, stats: &mut Stats) -> u64 {
        stats.calls += 1;
        if stats.calls > 1 {
            stats.resumes += 1;
            stats.samples_resent += self.sent_until.saturating_sub(self.resume_at);
        }
        self.resume_at
    }

    /// What a response means for the gateway, and how many frames it releases.
    fn on_response(
        &mut self,
        response: StreamDiagnoseResponse,
        stats: &mut Stats,
    ) -> (Option<Event>, usize) {
        match response.event {
            Some(Wire::Opened(opened)) => {
                if opened.model_sample_rate_hz > 0.0 {
                    self.hop_frames = Some(resume::client_hop(
                        opened.hop,
                        opened.model_sample_rate_hz,
                        self.sensor.sample_rate_hz,
                    ));
                }
                if let Some(carry) = opened.condition.and_then(|c| c.carry) {
                    self.carry = Some(carry);
                }
                (None, 0)
            }
            Some(Wire::Window(result)) => {
                let first = result.first_sample_index;
                if self.last_first.is_some_and(|last| first <= last) {
                    stats.windows_repeated += 1;
                    return (None, 0);
                }
                self.last_first = Some(first);
                let index = self.delivered;
                self.delivered += 1;
                // A new call starts at a window boundary at or after this window's first sample: nothing before it
                // is needed again.
                (
                    Some(Event::Window { index, result }),
                    self.release_before(first),
                )
            }
            Some(Wire::Condition(condition)) => {
                if let Some(carry) = &condition.carry {
                    self.carry = Some(carry.clone());
                }
                (Some(Event::Condition(condition)), 0)
            }
            Some(Wire::Discontinuity(gap)) => (Some(Event::Gap(gap)), 0),
            None => (None, 0),
        }
    }

    fn release_before(&mut self, index: u64) -> usize {
        let ch = self.channels();
        let mut released = 0;
        while let Some((first, block)) = self.held.front_mut() {
            let frames = (block.len() / ch) as u64;
            if *first + frames <= index {
                released += frames as usize;
                self.held.pop_front();
            } else {
                if *first < index {
                    let cut = (index - *first) as usize;
                    *block = block.slice(cut * ch, block.len());
                    *first = index;
                    released += cut;
                }
                break;
            }
        }
        self.held_frames -= released;
        released
    }

    /// Judges a call's end (`None`: the server closed it normally) and sets where the next call starts.
    fn on_end(
        &mut self,
        status: Option<Status>,
        sent_all: bool,
        delivered: u64,
        stats: &mut Stats,
    ) -> End {
        if let Some(carry) = status.as_ref().and_then(resume::carry) {
            self.carry = Some(carry);
        }
        let status = match status {
            None if self.input_closed && sent_all => {
                self.resume_at = self.next_index;
                return End::Done;
            }
            // The server ended a stream still being sent on: go on from the next window.
            None => Status::unavailable("the server ended the stream early"),
            Some(s) => s,
        };
        if !resume::retryable(status.code()) {
            return End::Fatal(Error::Stream {
                code: status.code(),
                message: status.message().to_owned(),
            });
        }
        stats.last_error = format!("{:?}: {}", status.code(), status.message());
        let resume = match resume::named(&status) {
            Some(Named::At(n)) => n,
            Some(Named::Start) => self.held_from(),
            None => match (self.last_first, self.hop_frames) {
                (Some(last), Some(hop)) => last + hop,
                _ => self.held_from(),
            },
        };
        // Never before what is held (released samples were answered for), never past what was given.
        self.resume_at = resume.max(self.held_from()).min(self.next_index);
        End::Retry {
            code: status.code(),
            delivered,
        }
    }

    fn finished(&self) -> bool {
        self.input_closed && self.resume_at >= self.next_index
    }
}

/// The stream's task: calls, one after another, until every sample is answered or the stream cannot go on.
async fn drive(
    targets: Targets,
    mut state: State,
    options: Options,
    mut input: mpsc::Receiver<Block>,
    events: mpsc::Sender<Result<Event, Error>>,
    room: Arc<Semaphore>,
    (stats, tail): (Arc<Mutex<Stats>>, Arc<Mutex<Option<Tail>>>),
) {
    let mut backoff = Backoff::new(options.backoff_base, options.backoff_cap);
    let mut fruitless = 0u32;
    loop {
        if state.finished() {
            break;
        }
        // Nothing to send yet: no call until there is.
        if state.resume_at >= state.next_index {
            match input.recv().await {
                Some(block) => state.append(block),
                None => state.input_closed = true,
            }
            continue;
        }
        let target = targets.next().await;
        let end = call(
            &targets, &target, &mut state, &mut input, &events, &room, &stats,
        )
        .await;
        match end {
            End::Done | End::Abandoned => break,
            End::Fatal(error) => {
                let _ = events.send(Err(error)).await;
                break;
            }
            End::Retry { code, delivered } => {
                if resume::retire(code) {
                    targets.retire(&target);
                }
                if delivered > 0 {
                    backoff.reset();
                    fruitless = 0;
                } else {
                    fruitless += 1;
                }
                let last = stats
                    .lock()
                    .map(|s| s.last_error.clone())
                    .unwrap_or_default();
                if options.max_attempts.is_some_and(|max| fruitless >= max) {
                    let _ = events
                        .send(Err(Error::GaveUp {
                            attempts: fruitless,
                            last,
                        }))
                        .await;
                    break;
                }
                let delay = backoff.next_delay();
                tracing::info!(
                    machine = %state.sensor.machine_id, sensor = %state.sensor.sensor_id, addr = %target.addr,
                    from = state.resume_at, delay_ms = delay.as_millis() as u64, ended = %last,
                    "stream interrupted; resuming"
                );
                // Samples keep coming in while it waits, up to the buffer's bound.
                let wake = tokio::time::Instant::now() + delay;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => break,
                        block = input.recv(), if !state.input_closed => match block {
                            Some(block) => state.append(block),
                            None => state.input_closed = true,
                        },
                    }
                }
            }
        }
    }
    // Before `events` closes: the gateway reads the tail once the results end.
    if let Ok(mut t) = tail.lock() {
        *t = state.tail();
    }
    // Senders waiting for room learn the stream has ended.
    room.close();
}

/// One call: the open, the held samples from the resume point, new samples as they come; results as they arrive.
async fn call(
    targets: &Targets,
    target: &Target,
    state: &mut State,
    input: &mut mpsc::Receiver<Block>,
    events: &mpsc::Sender<Result<Event, Error>>,
    room: &Semaphore,
    stats: &Mutex<Stats>,
) -> End {
    let mut client = match targets.connect(target).await {
        Ok(client) => client,
        Err(e) => {
            if let Ok(mut s) = stats.lock() {
                s.last_error = e.to_string();
            }
            return End::Retry {
                code: Code::Unavailable,
                delivered: 0,
            };
        }
    };
    let mut cursor = match stats.lock() {
        Ok(mut s) => state.call_started(&mut s),
        Err(_) => state.resume_at,
    };
    let (tx, rx) = mpsc::channel(8);
    // The open goes first; the call's response waits on it.
    let _ = tx.send(state.open_message()).await;
    let mut inbound = match client.stream_diagnose(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return with_stats(stats, |s| state.on_end(Some(status), false, 0, s)),
    };
    let mut tx = Some(tx);
    let mut delivered = 0u64;
    loop {
        if state.input_closed && cursor >= state.next_index {
            // Everything is sent: half-close, and the server ends the call once it has answered.
            tx = None;
        }
        let can_send = tx.is_some() && cursor < state.next_index;
        tokio::select! {
            biased;
            message = inbound.message() => match message {
                Ok(Some(response)) => {
                    let (event, released) = with_stats(stats, |s| state.on_response(response, s));
                    if released > 0 {
                        room.add_permits(released);
                    }
                    if let Some(event) = event {
                        delivered += u64::from(matches!(event, Event::Window { .. }));
                        if events.send(Ok(event)).await.is_err() {
                            return End::Abandoned;
                        }
                    }
                }
                Ok(None) => {
                    let sent_all = cursor >= state.next_index;
                    return with_stats(stats, |s| state.on_end(None, sent_all, delivered, s));
                }
                Err(status) => return with_stats(stats, |s| state.on_end(Some(status), false, delivered, s)),
            },
            permit = reserve(tx.clone()), if can_send => match permit {
                Some(permit) => {
                    if let Some((chunk, next)) = state.chunk_at(cursor) {
                        permit.send(chunk);
                        cursor = next;
                        state.sent_until = state.sent_until.max(next);
                    }
                }
                // The server stopped reading: its status follows on the inbound side.
                None => tx = None,
            },
            block = input.recv(), if !state.input_closed => match block {
                Some(block) => state.append(block),
                None => state.input_closed = true,
            },
        }
    }
}

/// Room for one request (owned: the sender may be dropped in the same turn of the loop).
async fn reserve(
    tx: Option<mpsc::Sender<StreamDiagnoseRequest>>,
) -> Option<mpsc::OwnedPermit<StreamDiagnoseRequest>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

fn with_stats<T>(stats: &Mutex<Stats>, f: impl FnOnce(&mut Stats) -> T) -> T {
    match stats.lock() {
        Ok(mut s) => f(&mut s),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(chunk: usize) -> State {
        State::new(Sensor::new("m", "s", 1000.0), chunk)
    }

    fn window(first: u64) -> StreamDiagnoseResponse {
        StreamDiagnoseResponse {
            event: Some(Wire::Window(WindowResult {
                first_sample_index: first,
                ..Default::default()
            })),
        }
    }

    fn opened(hop: u32) -> StreamDiagnoseResponse {
        StreamDiagnoseResponse {
            event: Some(Wire::Opened(crate::proto::StreamOpened {
                hop,
                model_sample_rate_hz: 1000.0,
                ..Default::default()
            })),
        }
    }

    fn first_of(request: &StreamDiagnoseRequest) -> u64 {
        match &request.message {
            Some(Message::Chunk(c)) => c.first_sample_index,
            _ => u64::MAX,
        }
    }

    #[test]
    fn chunks_cover_what_is_held_from_any_cursor() {
        let mut s = state(3);
        s.append(Block::F32(vec![0.0; 5]));
        s.append(Block::F32(vec![1.0; 4]));
        let mut cursor = 2;
        let mut firsts = Vec::new();
        while let Some((chunk, next)) = s.chunk_at(cursor) {
            firsts.push(first_of(&chunk));
            cursor = next;
        }
        assert_eq!(firsts, [2, 5, 8]);
        assert_eq!(cursor, 9);
    }

    #[test]
    fn answered_samples_are_released_and_repeated_windows_dropped() {
        let mut s = state(4);
        let mut stats = Stats::default();
        s.append(Block::F32(vec![0.0; 10]));
        s.append(Block::F32(vec![0.0; 10]));
        s.on_response(opened(4), &mut stats);
        let (event, released) = s.on_response(window(12), &mut stats);
        assert!(matches!(event, Some(Event::Window { index: 0, .. })));
        assert_eq!(released, 12);
        assert_eq!((s.held_from(), s.held_frames), (12, 8));
        // A new call repeats a window already delivered: dropped, counted.
        let (event, released) = s.on_response(window(12), &mut stats);
        assert!(event.is_none() && released == 0);
        assert_eq!(stats.windows_repeated, 1);
        let (event, _) = s.on_response(window(16), &mut stats);
        assert!(matches!(event, Some(Event::Window { index: 1, .. })));
    }

    #[test]
    fn the_tail_is_what_no_window_covers_from_the_next_window_on() {
        let mut stats = Stats::default();
        let mut s = state(4);
        // Before any window, every sample given is the tail.
        s.append(Block::F32((0..10).map(|v| v as f32).collect()));
        assert_eq!(
            s.tail(),
            Some(Tail {
                first_sample_index: 0,
                samples: TailSamples::F32((0..10).map(|v| v as f32).collect())
            })
        );
        s.append(Block::F32((10..20).map(|v| v as f32).collect()));
        s.on_response(opened(4), &mut stats);
        s.on_response(window(8), &mut stats);
        // The last window started at 8: the next starts at 12, across the two blocks.
        let tail = s.tail().unwrap();
        assert_eq!(tail.first_sample_index, 12);
        assert_eq!(
            tail.samples,
            TailSamples::F32((12..20).map(|v| v as f32).collect())
        );
        // Every sample covered: no tail.
        s.on_response(window(16), &mut stats);
        s.release_before(20);
        assert_eq!(s.tail(), None);
    }

    #[test]
    fn a_call_goes_on_where_the_server_says_or_after_the_last_window() {
        let mut stats = Stats::default();
        let mut s = state(4);
        s.append(Block::F32(vec![0.0; 40]));
        s.on_response(opened(4), &mut stats);
        s.on_response(window(8), &mut stats);
        // Named by the server (a drain): from there.
        let mut drained = Status::unavailable("draining");
        drained
            .metadata_mut()
            .insert(crate::proto::RESUME_TRAILER, "20".parse().unwrap());
        assert!(matches!(
            s.on_end(Some(drained), false, 1, &mut stats),
            End::Retry { .. }
        ));
        assert_eq!(s.resume_at, 20);
        // A broken connection: the window after the last delivered.
        assert!(matches!(
            s.on_end(
                Some(Status::internal("h2 protocol error")),
                false,
                0,
                &mut stats
            ),
            End::Retry { .. }
        ));
        assert_eq!(s.resume_at, 12);
        // Never before what is held, never past what was given.
        let mut far = Status::unavailable("");
        far.metadata_mut()
            .insert(crate::proto::RESUME_TRAILER, "99".parse().unwrap());
        s.on_end(Some(far), false, 0, &mut stats);
        assert_eq!(s.resume_at, 40);
        // The gateway's own mistakes are not retried.
        assert!(matches!(
            s.on_end(
                Some(Status::unauthenticated("bad token")),
                false,
                0,
                &mut stats
            ),
            End::Fatal(Error::Stream {
                code: Code::Unauthenticated,
                ..
            })
        ));
        // Closed normally while samples were still to go: resumed, not done.
        assert!(matches!(
            s.on_end(None, false, 0, &mut stats),
            End::Retry { .. }
        ));
        s.input_closed = true;
        assert!(matches!(s.on_end(None, true, 0, &mut stats), End::Done));
        assert!(s.finished());
    }

    #[test]
    fn resent_samples_are_counted() {
        let mut stats = Stats::default();
        let mut s = state(4);
        s.append(Block::F32(vec![0.0; 40]));
        s.call_started(&mut stats);
        s.sent_until = 30;
        s.resume_at = 12;
        s.call_started(&mut stats);
        assert_eq!(
            (stats.calls, stats.resumes, stats.samples_resent),
            (2, 1, 18)
        );
    }

    #[test]
    fn codes_go_as_i16_with_their_scale() {
        let mut sensor = Sensor::new("m", "s", 1000.0);
        sensor.adc = Some(Adc {
            scale: 0.5,
            offset: 1.0,
            bits: 12,
        });
        let mut s = State::new(sensor, 8);
        s.append(Block::I16(vec![-2048, 0, 2047]));
        let (chunk, next) = s.chunk_at(0).unwrap();
        assert_eq!(next, 3);
        let Some(Message::Chunk(SampleChunk {
            samples: Some(sample_chunk::Samples::I16le(codes)),
            ..
        })) = chunk.message
        else {
            panic!("not i16le");
        };
        assert_eq!(
            (codes.scale, codes.offset, codes.adc_bits, codes.data.len()),
            (0.5, 1.0, 12, 6)
        );
    }
}
