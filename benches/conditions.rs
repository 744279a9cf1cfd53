//! What the condition stage adds per window, side by side in one run with the input check every window already
//! pays: the velocity meter (one 8192-point real FFT a window, or at the default hop one 4096-point FFT as
//! consecutive windows share halves), the debouncer, and the registry update
//! (`cargo bench --bench conditions`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drsn_serve::condition::debounce::{Debouncer, Observation, Settings, State, Vote};
use drsn_serve::condition::machines::Registry;
use drsn_serve::pipeline::quality::Checker;
use drsn_serve::pipeline::severity::{VelocityMeter, ZoneLimits};

fn main() {
    let (window, hop, windows) = (8192usize, 4096usize, 2000usize);
    let x: Vec<f32> = (0..hop * (windows + 1))
        .map(|i| 0.3 * (i as f32 * 0.37).sin() + 0.05 * (i as f32 * 1.91).cos())
        .collect();
    let at = |i: usize| &x[i * hop..i * hop + window];
    let classes: Arc<Vec<String>> = Arc::new((0..10).map(|i| format!("c{i}")).collect());
    let mut best = [f64::INFINITY; 5];
    for _ in 0..5 {
        let mut checker = Checker::new(window, hop, 1);
        let t = Instant::now();
        for i in 0..windows {
            black_box(checker.check(i as u64, black_box(at(i)), None, None));
        }
        best[0] = best[0].min(t.elapsed().as_secs_f64());

        let Some(mut meter) = VelocityMeter::new(window, 12_000.0, "g") else {
            return eprintln!("no velocity meter for 8192 samples at 12 kHz in g");
        };
        let t = Instant::now();
        for i in 0..windows {
            black_box(meter.measure(black_box(at(i)), 1));
        }
        best[1] = best[1].min(t.elapsed().as_secs_f64());

        let Some(meter) = VelocityMeter::new(window, 12_000.0, "g") else {
            return eprintln!("no velocity meter for 8192 samples at 12 kHz in g");
        };
        let mut shared = meter.for_hop(hop, 12_000.0, "g");
        let t = Instant::now();
        for i in 0..windows {
            black_box(shared.measure_at(i as u64, black_box(at(i)), 1));
        }
        best[4] = best[4].min(t.elapsed().as_secs_f64());

        let new = || {
            Debouncer::new(
                Settings::default(),
                Some(0),
                12_000.0,
                ZoneLimits::default(),
                State::new(10, 0),
            )
        };
        let obs = |i: usize| Observation {
            first_sample: (i * hop) as u64,
            end_sample: (i * hop + window - 1) as u64,
            vote: Vote::Class {
                index: i % 3,
                uncertain: i.is_multiple_of(5),
            },
            velocity_mm_s: Some(2.0),
        };
        let mut d = new();
        let t = Instant::now();
        for i in 0..windows {
            black_box(d.observe(obs(i), 0));
        }
        best[2] = best[2].min(t.elapsed().as_secs_f64());

        let registry = Registry::new(Duration::from_secs(60), 16);
        let mut d = new();
        let handle = registry.attach("machine", "sensor", classes.clone(), d.snapshot());
        let t = Instant::now();
        for i in 0..windows {
            d.observe(obs(i), 0);
            registry.update(&handle, black_box(d.snapshot()));
        }
        best[3] = best[3].min(t.elapsed().as_secs_f64());
    }
    let us = |s: f64| s * 1e6 / windows as f64;
    println!("window {window}, hop {hop}: best of 5 runs of {windows} windows");
    println!(
        "input check (already paid):   {:>6.2} us per window",
        us(best[0])
    );
    println!(
        "velocity, whole window:       {:>6.2} us per window",
        us(best[1])
    );
    println!(
        "velocity, halves shared:      {:>6.2} us per window (a stream at the default hop)",
        us(best[4])
    );
    println!(
        "debouncer:                    {:>6.2} us per window",
        us(best[2])
    );
    println!(
        "debouncer + registry update:  {:>6.2} us per window",
        us(best[3])
    );
    println!(
        "condition stage / input check: {:>5.2}",
        (best[4] + best[3]) / best[0]
    );
}
