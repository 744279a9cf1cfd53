//! The per-window input checks, side by side in one run: each window of a stream summarised whole against the
//! stream's checker merging per-block statistics (`cargo bench --bench checks`).

use std::hint::black_box;
use std::time::Instant;

use drsn_serve::pipeline::quality::{Checker, check};

fn main() {
    let (window, hop, windows) = (8192, 4096, 2000);
    let x: Vec<f32> = (0..hop * (windows + 1))
        .map(|i| 0.3 * (i as f32 * 0.37).sin() + 0.05 * (i as f32 * 1.91).cos())
        .collect();
    let at = |i: usize| &x[i * hop..i * hop + window];
    let mut best = [f64::INFINITY; 2];
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..windows {
            black_box(check(black_box(at(i)), 1, None, None));
        }
        best[0] = best[0].min(t.elapsed().as_secs_f64());
        let mut checker = Checker::new(window, hop, 1);
        let t = Instant::now();
        for i in 0..windows {
            black_box(checker.check(i as u64, black_box(at(i)), None, None));
        }
        best[1] = best[1].min(t.elapsed().as_secs_f64());
    }
    let us = |s: f64| s * 1e6 / windows as f64;
    println!("window {window}, hop {hop}: best of 5 runs of {windows} windows");
    println!(
        "each window whole:       {:>6.2} us per window",
        us(best[0])
    );
    println!(
        "per-block, merged:       {:>6.2} us per window",
        us(best[1])
    );
    println!("ratio whole / merged:    {:>6.2}", best[0] / best[1]);
}
