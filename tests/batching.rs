//! Dynamic batching, deterministically: a fake runner and tokio's paused clock. A batch leaves at its delay or at
//! max size; every window gets its own answer; a quiet client is served in the next batch beside a flood; failed
//! batches and lost devices are told to every window; non-finite outputs are flagged. (Real ONNX Runtime is
//! checked in parity.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drsn_serve::engine::{BatchOutput, InferError, Runner};
use drsn_serve::error::ServeError;
use drsn_serve::pipeline::batch::{self, Batcher};
use drsn_serve::pipeline::cost::CostModel;
use drsn_serve::pipeline::diagnosis::{Reading, Verdict};
use drsn_serve::pipeline::quality::Flag;
use drsn_serve::pipeline::schedule::{BatchPolicy, ScheduleConfig, Scheduler};
use tokio_util::sync::CancellationToken;

const CLASSES: usize = 4;

/// Answers each window with class `first sample mod 4`; records every batch's first samples; can be told to fail.
#[derive(Clone, Default)]
struct Fake {
    batches: Arc<Mutex<Vec<Vec<u32>>>>,
    fail: Option<InferError>,
    nan: bool,
}

impl Runner for Fake {
    fn run(&mut self, windows: &[&[f32]]) -> Result<BatchOutput, InferError> {
        self.batches
            .lock()
            .unwrap()
            .push(windows.iter().map(|w| w[0] as u32).collect());
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let mut logits = vec![0.0; windows.len() * CLASSES];
        for (row, w) in windows.iter().enumerate() {
            logits[row * CLASSES + (w[0] as usize % CLASSES)] =
                if self.nan { f32::NAN } else { 10.0 };
        }
        Ok(BatchOutput {
            classes: CLASSES,
            logits,
            shrinkage: None,
            ood: None,
        })
    }
}

fn start(runners: Vec<Fake>, max_batch: usize, delay_ms: u64) -> (Arc<Scheduler>, Batcher) {
    let scheduler = Scheduler::new(ScheduleConfig {
        capacity: 256,
        reserve: 1,
        max_wait: Duration::from_secs(10),
    });
    let batcher = batch::spawn(
        scheduler.clone(),
        BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(delay_ms),
            budget: Duration::from_secs(10),
            // A fixed cost per batch: the largest batch is the efficient one.
            cost: Arc::new(CostModel::new(
                max_batch,
                &[(1, 1e-3), (max_batch, 1.001e-3)],
            )),
        },
        Reading {
            temperature: 1.0,
            uncertain_below: None,
            uncertain_above: None,
        },
        batch::Meters::new("test", "1"),
        runners,
        CancellationToken::new(),
    );
    (scheduler, batcher)
}

fn window(tag: u32) -> Vec<f32> {
    vec![tag as f32; 8]
}

#[tokio::test(start_paused = true)]
async fn a_batch_leaves_at_the_delay_when_it_cannot_fill() {
    let (s, _b) = start(vec![Fake::default()], 64, 150);
    let flow = s.flow(1);
    let mut replies = Vec::new();
    for k in 0..3 {
        replies.push(flow.submit(window(k)).await.unwrap());
    }
    for r in replies {
        let a = r.await.unwrap().unwrap();
        assert_eq!(a.timing.batch_size, 3, "the three windows leave together");
        assert_eq!(a.timing.queue_wait, Duration::from_millis(150));
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_leaves_at_once_and_every_window_gets_its_own_answer() {
    let fake = Fake::default();
    let (s, _b) = start(vec![fake.clone()], 4, 1000);
    let flow = s.flow(1);
    let replies = flow
        .submit_all((0..8).map(window).collect())
        .expect("room for 8");
    for (k, r) in replies.into_iter().enumerate() {
        let a = r.await.unwrap().unwrap();
        assert_eq!(a.timing.batch_size, 4);
        assert_eq!(
            a.timing.queue_wait,
            Duration::ZERO,
            "full batches do not wait"
        );
        match a.verdict {
            Verdict::Classified(c) => assert_eq!(c.class_index, k % CLASSES, "window {k}"),
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(
        *fake.batches.lock().unwrap(),
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
}

#[tokio::test(start_paused = true)]
async fn a_quiet_client_is_served_in_the_next_batch_beside_a_flood() {
    let fake = Fake::default();
    let (s, _b) = start(vec![fake.clone()], 4, 5);
    // One client floods on two streams with 40 windows queued before the quiet client's one window.
    let (a, b, quiet) = (s.flow(1), s.flow(1), s.flow(2));
    let mut flood = a.submit_all((100..120).map(window).collect()).unwrap();
    flood.extend(b.submit_all((200..220).map(window).collect()).unwrap());
    let mine = quiet.submit(window(7)).await.unwrap();
    mine.await.unwrap().unwrap();
    let batches = fake.batches.lock().unwrap().clone();
    let served_in = batches.iter().position(|b| b.contains(&7)).unwrap();
    assert!(
        served_in <= 1,
        "the quiet window waited behind {served_in} batches: {batches:?}"
    );
    drop(flood);
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_answers_every_window_and_the_worker_carries_on() {
    let fake = Fake {
        fail: Some(InferError::Batch("shape".into())),
        ..Default::default()
    };
    let (s, b) = start(vec![fake], 2, 1);
    let flow = s.flow(1);
    for r in flow.submit_all((0..2).map(window).collect()).unwrap() {
        assert!(matches!(
            r.await.unwrap(),
            Err(ServeError::Inference { .. })
        ));
    }
    assert!(!b.workers_gone.is_cancelled());
    let again = flow.submit(window(3)).await.unwrap();
    assert!(matches!(
        again.await.unwrap(),
        Err(ServeError::Inference { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_lost_device_stops_its_worker_and_the_last_one_closes_the_queue() {
    let fake = Fake {
        fail: Some(InferError::Device("gone".into())),
        ..Default::default()
    };
    let (s, b) = start(vec![fake], 2, 1);
    let flow = s.flow(1);
    let r = flow.submit(window(0)).await.unwrap();
    assert!(matches!(
        r.await.unwrap(),
        Err(ServeError::Inference { .. })
    ));
    b.workers_gone.cancelled().await;
    assert!(matches!(
        flow.submit(window(1)).await,
        Err(ServeError::WorkersGone)
    ));
}

#[tokio::test(start_paused = true)]
async fn non_finite_outputs_come_back_flagged() {
    let fake = Fake {
        nan: true,
        ..Default::default()
    };
    let (s, _b) = start(vec![fake], 2, 1);
    let flow = s.flow(1);
    let a = flow
        .submit(window(0))
        .await
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    match a.verdict {
        Verdict::Flagged(f) => assert_eq!(f.flag, Flag::OutputNotFinite),
        v => panic!("a NaN became {v:?}"),
    }
}
