//! A chunk's samples decoded from the wire, side by side in one run: f32le (a copy) against 16-bit codes (half the
//! bytes, converted with scale and offset), per window's worth of new samples at the default hop (`cargo bench
//! --bench decode`).

use std::hint::black_box;
use std::time::Instant;

use drsn_serve::api::grpc::decode::decode_chunk;
use drsn_serve::api::grpc::proto::{IntegerSamples, SampleChunk, sample_chunk};
use drsn_serve::pipeline::severity::{Foundation, MachineGroup, ZoneLimits};
use drsn_serve::pipeline::spec::Limits;

fn main() {
    let (hop, chunks) = (4096usize, 20_000);
    let limits = Limits {
        max_chunk_frames: hop,
        max_id_bytes: 64,
        stream_buffer: 4,
        transport_buffer: 0,
        max_stream_memory: 1 << 20,
        default_zones: ZoneLimits::new(MachineGroup::Medium, Foundation::Rigid),
    };
    let codes: Vec<i16> = (0..hop)
        .map(|i| (9000.0 * (i as f32 * 0.37).sin()) as i16)
        .collect();
    let scale = 1.0 / 3276.8;
    let floats: Vec<f32> = codes.iter().map(|c| f32::from(*c) * scale).collect();
    let f32le: Vec<u8> = floats.iter().flat_map(|x| x.to_le_bytes()).collect();
    let i16le: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
    let chunk = |samples| SampleChunk {
        first_sample_index: 0,
        samples: Some(samples),
    };
    let f32_chunk = chunk(sample_chunk::Samples::F32le(f32le.into()));
    let i16_chunk = chunk(sample_chunk::Samples::I16le(IntegerSamples {
        data: i16le.into(),
        scale,
        offset: 0.0,
        adc_bits: 16,
    }));
    let mut best = [f64::INFINITY; 2];
    for _ in 0..5 {
        for (k, c) in [&f32_chunk, &i16_chunk].into_iter().enumerate() {
            let t = Instant::now();
            for _ in 0..chunks {
                // The clone shares the bytes (as tonic hands them over); the decode is what is timed.
                black_box(decode_chunk(black_box(c.clone()), 1, limits).ok());
            }
            best[k] = best[k].min(t.elapsed().as_secs_f64());
        }
    }
    let us = |s: f64| s * 1e6 / chunks as f64;
    println!(
        "{hop} samples a chunk (one window's new samples at hop {hop}): best of 5 runs of {chunks} chunks"
    );
    println!(
        "f32le, {:>5} bytes:  {:>6.2} us per chunk",
        4 * hop,
        us(best[0])
    );
    println!(
        "i16le, {:>5} bytes:  {:>6.2} us per chunk",
        2 * hop,
        us(best[1])
    );
    println!("ratio i16le / f32le: {:>6.2}", best[1] / best[0]);
}
