//! A gateway that reads a recording at its real rate, block by block as a DAQ delivers them, and streams it to
//! drsn-serve through drsn-client: every window's class printed once, in order, whichever replica answers it.
//!
//!     cargo run --release -p drsn-client --example daq_gateway -- pump.wav \
//!         --addr http://replica-a:50051 --addr http://replica-b:50051
//!
//! A 16-bit WAV goes as its converter codes (`--scale`: input units per full scale, e.g. g); a CSV is one value per
//! line in the model's input unit, at `--rate`. `--speed` plays it faster than real time (the tests use it).

use std::time::{Duration, Instant};

use clap::Parser;
use drsn_client::sensor::{self, Adc};
use drsn_client::{Event, Sensor, Target, Targets};

/// A DAQ block, in seconds.
const BLOCK_S: f64 = 0.1;

#[derive(Parser)]
struct Args {
    recording: String,
    /// A replica (repeat for several).
    #[arg(long = "addr", required = true)]
    addrs: Vec<String>,
    #[arg(long, default_value = "machine-1")]
    machine_id: String,
    #[arg(long, default_value = "drive-end")]
    sensor_id: String,
    /// Samples per second of a CSV.
    #[arg(long)]
    rate: Option<f64>,
    /// A WAV's full scale in input units.
    #[arg(long, default_value_t = 1.0)]
    scale: f32,
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[arg(long)]
    token_file: Option<String>,
}

enum Recording {
    Codes(Vec<i16>),
    Values(Vec<f32>),
}

fn read(args: &Args) -> Result<(Recording, f64), Box<dyn std::error::Error>> {
    if args.recording.ends_with(".wav") {
        let mut wav = hound::WavReader::open(&args.recording)?;
        let spec = wav.spec();
        if spec.bits_per_sample != 16 || spec.channels != 1 {
            return Err("this example reads mono 16-bit WAV".into());
        }
        let codes = wav.samples::<i16>().collect::<Result<_, _>>()?;
        return Ok((Recording::Codes(codes), f64::from(spec.sample_rate)));
    }
    let rate = args.rate.ok_or("a CSV needs --rate")?;
    let text = std::fs::read_to_string(&args.recording)?;
    let values = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok((Recording::Values(values), rate))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (recording, rate) = read(&args)?;
    let token = args
        .token_file
        .as_ref()
        .map(std::fs::read_to_string)
        .transpose()?;
    let targets = Targets::new(args.addrs.iter().map(|a| match &token {
        Some(t) => Target::new(a).with_token(t.trim()),
        None => Target::new(a),
    }))?;
    let mut sensor = Sensor::new(&args.machine_id, &args.sensor_id, rate);
    if let Recording::Codes(_) = recording {
        sensor.adc = Some(Adc {
            scale: args.scale / 32768.0,
            offset: 0.0,
            bits: 16,
        });
    }
    let (samples, mut results) = sensor::open(targets, sensor, Default::default())?;
    let (block, speed) = (((rate * BLOCK_S) as usize).max(1), args.speed);
    tokio::spawn(async move {
        let start = Instant::now();
        let len = match &recording {
            Recording::Codes(c) => c.len(),
            Recording::Values(v) => v.len(),
        };
        for at in (0..len).step_by(block) {
            // Blocks come when the DAQ has them: at the recording's rate (times --speed).
            tokio::time::sleep_until(
                (start + Duration::from_secs_f64(at as f64 / rate / speed)).into(),
            )
            .await;
            let end = (at + block).min(len);
            let sent = match &recording {
                Recording::Codes(c) => samples.send_codes(&c[at..end]).await,
                Recording::Values(v) => samples.send(&v[at..end]).await,
            };
            if sent.is_err() {
                break; // the stream ended: its results say why
            }
        }
    });
    while let Some(event) = results.next().await {
        match event? {
            Event::Window { index, result: r } => {
                let label = if r.label.is_empty() { "-" } else { &r.label };
                println!(
                    "window {index} samples {}-{}: {label}",
                    r.first_sample_index, r.last_sample_index
                );
            }
            Event::Condition(c) => println!("condition: {}", c.summary),
            Event::Gap(_) => {}
        }
    }
    let s = results.stats();
    println!(
        "done: resumed {} time(s), {} samples sent again",
        s.resumes, s.samples_resent
    );
    Ok(())
}
