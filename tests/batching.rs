//! Dynamic batching on real ONNX Runtime sessions: a batch leaves at max size or at the delay, whichever comes
//! first; results come back to the right window; a full queue makes submitters wait instead of growing.

mod common;

use std::time::{Duration, Instant};

use drsn_serve::engine::onnx::{self, Device, Model};
use drsn_serve::model::card::LoadedModel;
use drsn_serve::pipeline::batch::{self, BatchConfig};

fn sessions(n: usize) -> (Vec<Model>, LoadedModel) {
    let model = LoadedModel::load(&common::model_card()).unwrap();
    let env = onnx::environment(&onnx::locate_library(None, Device::Cpu).unwrap()).unwrap();
    let models = (0..n)
        .map(|_| Model::open(&env, &model, Device::Cpu, 1).unwrap().0)
        .collect();
    (models, model)
}

/// Distinct real windows, so each result can be matched to its input.
fn windows(n: usize) -> Vec<Vec<f32>> {
    let recs = common::recordings();
    (0..n)
        .map(|i| {
            let (_, r) = &recs[i % recs.len()];
            let start = (i / recs.len()) * 2048 % (r.len() - 2048);
            r[start..start + 2048].to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_leaves_at_the_delay_when_it_cannot_fill() {
    let (models, _) = sessions(1);
    let (queue, rx) = batch::queue(64);
    let delay = Duration::from_millis(150);
    let _b = batch::spawn(
        rx,
        BatchConfig {
            max_batch: 64,
            max_delay: delay,
        },
        models,
        Default::default(),
    );
    let t0 = Instant::now();
    let mut replies = Vec::new();
    for w in windows(3) {
        replies.push(queue.submit(w).await.unwrap());
    }
    for r in replies {
        let d = r.await.unwrap().unwrap();
        assert_eq!(d.batch_size, 3, "the three windows leave together");
        assert!(
            d.queue_wait >= delay - Duration::from_millis(5),
            "left after {:?}, before the delay",
            d.queue_wait
        );
    }
    assert!(
        t0.elapsed() < delay + Duration::from_millis(500),
        "left long after the delay: {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_leaves_at_max_size_before_the_delay() {
    let (models, _) = sessions(1);
    let (queue, rx) = batch::queue(64);
    let _b = batch::spawn(
        rx,
        BatchConfig {
            max_batch: 4,
            max_delay: Duration::from_secs(30),
        },
        models,
        Default::default(),
    );
    let t0 = Instant::now();
    let mut replies = Vec::new();
    for w in windows(8) {
        replies.push(queue.submit(w).await.unwrap());
    }
    for r in replies {
        assert_eq!(r.await.unwrap().unwrap().batch_size, 4);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "full batches waited for the 30 s delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reply_answers_its_own_window() {
    // Results from a batched run equal those of running each window alone.
    let (mut models, _) = sessions(3);
    let mut alone = models.pop().unwrap();
    let ws = windows(40);
    let expect: Vec<usize> = ws
        .iter()
        .map(|w| {
            let out = alone.run(std::iter::once(w.as_slice())).unwrap();
            (0..out.classes).fold(0, |b, k| {
                if out.probabilities[k] > out.probabilities[b] {
                    k
                } else {
                    b
                }
            })
        })
        .collect();
    let (queue, rx) = batch::queue(64);
    let _b = batch::spawn(
        rx,
        BatchConfig {
            max_batch: 8,
            max_delay: Duration::from_millis(2),
        },
        models,
        Default::default(),
    );
    let mut replies = Vec::new();
    for w in ws {
        replies.push(queue.submit(w).await.unwrap());
    }
    let mut sizes = Vec::new();
    for (i, r) in replies.into_iter().enumerate() {
        let d = r.await.unwrap().unwrap();
        assert_eq!(
            d.class_index, expect[i],
            "window {i} got another window's answer"
        );
        sizes.push(d.batch_size);
    }
    assert!(
        sizes.iter().any(|&s| s > 1),
        "nothing was batched: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_blocks_the_submitter() {
    let (models, _) = sessions(1);
    let (queue, rx) = batch::queue(4);
    let ws = windows(6);
    let mut replies = Vec::new();
    for w in ws[..4].iter().cloned() {
        replies.push(queue.submit(w).await.unwrap());
    }
    assert_eq!(queue.room(), 0);
    // The fifth waits: nothing is consuming the queue yet.
    let blocked =
        tokio::time::timeout(Duration::from_millis(300), queue.submit(ws[4].clone())).await;
    assert!(blocked.is_err(), "a full queue accepted another window");
    assert!(matches!(
        queue.try_submit(ws[5].clone()),
        Err(drsn_serve::error::ServeError::QueueFull { .. })
    ));
    // Once the batcher runs, the waiting submitter goes through and everything is answered.
    let _b = batch::spawn(
        rx,
        BatchConfig {
            max_batch: 2,
            max_delay: Duration::from_millis(1),
        },
        models,
        Default::default(),
    );
    let fifth = tokio::time::timeout(Duration::from_secs(10), queue.submit(ws[4].clone()))
        .await
        .unwrap()
        .unwrap();
    replies.push(fifth);
    for r in replies {
        assert!(r.await.unwrap().is_ok());
    }
}
