//! A short fuzz run against a real server: random but valid-protobuf streams (odd rates, hops, channel counts,
//! enums, ids; chunks with random indices, encodings, lengths and values, NaN and huge ones included; early
//! half-closes and drops), from a fixed seed, for a fixed time budget (`DRSN_FUZZ_SECONDS`, default 15). Every
//! stream must end with a documented status, never INTERNAL or UNKNOWN; its windows come in order and a window
//! without a class says why; and a good stream afterwards is still classified right.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use drsn_serve::api::grpc::proto::stream_diagnose_request::Message;
use drsn_serve::api::grpc::proto::stream_diagnose_response::Event;
use drsn_serve::api::grpc::proto::{
    FloatSamples, SampleChunk, StreamDiagnoseRequest, StreamOpen, WindowStatus, sample_chunk,
};
use drsn_serve::client::replay::{self, StreamPlan};
use tokio::sync::mpsc;
use tonic::Code;

/// xorshift64*: a reproducible stream of numbers from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// A chunk's samples: real ones at some gain, now and then with extreme finite values, or one non-finite value.
fn random_values(rng: &mut Rng, real: &[f32], len: u64) -> Vec<f32> {
    let gain = rng.pick(&[1.0, 1.0, 1.0, 9.81, 1e-3, 1e6]);
    let start = rng.below(real.len() as u64 - len.min(real.len() as u64 - 1)) as usize;
    let mut v: Vec<f32> = (0..len as usize)
        .map(|i| real[(start + i) % real.len()] * gain)
        .collect();
    if !v.is_empty() {
        match rng.below(30) {
            0 => {
                let at = rng.below(len) as usize;
                v[at] = rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            }
            1 | 2 => {
                for _ in 0..rng.below(4) + 1 {
                    let at = rng.below(len) as usize;
                    v[at] = rng.pick(&[3.4e38, -3.4e38, 1e30, -1e-30, 0.0]);
                }
            }
            _ => {}
        }
    }
    v
}

fn random_stream(rng: &mut Rng, real: &[f32]) -> Vec<StreamDiagnoseRequest> {
    let mut msgs = Vec::new();
    if !rng.chance(20) {
        msgs.push(StreamDiagnoseRequest {
            message: Some(Message::Open(StreamOpen {
                // Mostly valid, with every kind of invalid field now and then.
                machine_id: if rng.chance(20) {
                    "m\n\u{1b}[31m".into()
                } else {
                    "fuzz".into()
                },
                sensor_id: "x".repeat(if rng.chance(20) {
                    200
                } else {
                    rng.pick(&[1usize, 8, 64])
                }),
                sample_rate_hz: if rng.chance(10) {
                    rng.pick(&[0.0, -1.0, f64::NAN, 1e9, 11_999.5])
                } else {
                    rng.pick(&[12_000.0, 12_000.0, 12_000.0, 48_000.0, 25_600.0, 11_997.0])
                },
                channels: if rng.chance(20) {
                    rng.pick(&[0u32, 2])
                } else {
                    1
                },
                hop: if rng.chance(20) {
                    2_000_000
                } else {
                    rng.pick(&[0u32, 0, 1, 700, 4096])
                },
                detail: if rng.chance(20) {
                    9
                } else {
                    rng.pick(&[0i32, 1, 2])
                },
                ..Default::default()
            })),
        });
    }
    let mut at = rng.below(1_000_000);
    for _ in 0..rng.below(12) {
        let len = rng.pick(&[0u64, 1, 3, 500, 2048, 5000]);
        let values = random_values(rng, real, len);
        let samples = match rng.below(60) {
            0 => None,
            1 => Some(sample_chunk::Samples::Values(FloatSamples { values })),
            2 => {
                let mut b: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                if rng.chance(20) {
                    b.pop(); // not whole frames
                }
                Some(sample_chunk::Samples::F32le(b.into()))
            }
            _ => Some(sample_chunk::Samples::F32le(
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )),
        };
        let first = if rng.chance(6) {
            rng.pick(&[0, at.saturating_sub(100), at + 999, u64::MAX - 3])
        } else {
            at
        };
        msgs.push(StreamDiagnoseRequest {
            message: Some(if rng.chance(80) {
                Message::Open(StreamOpen::default())
            } else {
                Message::Chunk(SampleChunk {
                    first_sample_index: first,
                    samples,
                })
            }),
        });
        if rng.chance(80) {
            msgs.push(StreamDiagnoseRequest { message: None });
        }
        at = first.saturating_add(len);
    }
    msgs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_valid_protobuf_streams_end_with_documented_statuses() {
    let running = common::start(&["--open-timeout", "2s", "--idle-timeout", "2s"]).await;
    let addr = common::addr(&running);
    let recs = common::recordings();
    let real: Arc<Vec<f32>> = recs[4].1.clone();
    let budget = Duration::from_secs_f64(
        std::env::var("DRSN_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15.0),
    );
    let mut rng = Rng(0x5eed_d125_0000_0001);
    let started = Instant::now();
    let mut streams = 0;
    let mut codes = std::collections::BTreeMap::new();
    while started.elapsed() < budget {
        // A few streams at a time, on one connection, as a gateway would.
        let client = replay::connect(&addr).await.unwrap();
        let mut calls = Vec::new();
        for _ in 0..8 {
            let msgs = random_stream(&mut rng, &real);
            let drop_early = rng.chance(8);
            let (tx, rx) = mpsc::channel(32);
            let mut client = client.clone();
            calls.push(tokio::spawn(async move {
                let _sender = tokio::spawn(async move {
                    for m in msgs {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                let call = client
                    .stream_diagnose(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                let mut inbound = match call {
                    Ok(r) => r.into_inner(),
                    Err(s) => return s.code(),
                };
                let mut next = 0;
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
                        Err(_) => panic!("a stream neither answered nor ended in 30 s"),
                        Ok(Ok(Some(m))) => {
                            if let Some(Event::Window(w)) = m.event {
                                assert_eq!(w.window_index, next, "windows in order, none lost");
                                next += 1;
                                let classified = matches!(
                                    WindowStatus::try_from(w.status),
                                    Ok(WindowStatus::Ok | WindowStatus::Uncertain)
                                );
                                assert_eq!(classified, w.class_index.is_some(), "{w:?}");
                                assert!(classified || !w.status_detail.is_empty());
                            }
                            if drop_early {
                                return Code::Cancelled;
                            }
                        }
                        Ok(Ok(None)) => return Code::Ok,
                        Ok(Err(s)) => return s.code(),
                    }
                }
            }));
        }
        for c in calls {
            let code = c.await.expect("a fuzz stream panicked");
            assert!(
                matches!(
                    code,
                    Code::Ok
                        | Code::InvalidArgument
                        | Code::ResourceExhausted
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                ),
                "undocumented status {code:?}"
            );
            *codes.entry(format!("{code:?}")).or_insert(0) += 1;
            streams += 1;
        }
    }
    eprintln!(
        "{streams} fuzz streams in {:?}: {codes:?}",
        started.elapsed()
    );
    assert!(streams >= 16, "the budget ran at least two rounds");

    // The server is unharmed: a real recording is classified right.
    let (label, samples) = recs[6].clone();
    let client = replay::connect(&addr).await.unwrap();
    let out = replay::stream_samples(
        client,
        samples.clone(),
        StreamPlan::new(12_000.0, samples.len() as u64),
        |_| {},
    )
    .await
    .unwrap();
    assert!(out.status.is_none());
    assert!(out.windows.iter().all(|w| w.label == label));
    let scrape = common::scrape(&running).await;
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("drsn_errors_total{"))
    {
        if line.contains("code=\"INTERNAL\"") {
            assert!(line.ends_with(" 0"), "a server fault was counted: {line}");
        }
    }
    running.stop().await;
}
