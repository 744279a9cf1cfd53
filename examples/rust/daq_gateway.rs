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
use drsn_client::{Event, Sensor, Target, Targets, sensor, sensor::Adc};

const BLOCK_S: f64 = 0.1;

#[derive(Parser)]
struct Args {
    recording: String,
    #[arg(long = "addr", required = true, help = "a replica (repeat for several)")]
    addrs: Vec<String>,
    #[arg(long, default_value = "machine-1")]
    machine_id: String,
    #[arg(long, default_value = "drive-end")]
    sensor_id: String,
    #[arg(long, help = "samples per second of a CSV")]
    rate: Option<f64>,
    #[arg(long, default_value_t = 1.0, help = "a WAV's full scale in input units")]
    scale: f32,
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[arg(long)]
    token_file: Option<String>,
}

/// What the DAQ delivers every [`BLOCK_S`]: converter codes, or values.
enum Block {
    Codes(Vec<i16>),
    Values(Vec<f32>),
}

fn read(args: &Args) -> Result<(Vec<Block>, f64), Box<dyn std::error::Error>> {
    let block = |rate: f64| ((rate * BLOCK_S) as usize).max(1);
    if args.recording.ends_with(".wav") {
        let mut wav = hound::WavReader::open(&args.recording)?;
        let (spec, rate) = (wav.spec(), f64::from(wav.spec().sample_rate));
        if spec.bits_per_sample != 16 || spec.channels != 1 {
            return Err("this example reads mono 16-bit WAV".into());
        }
        let codes: Vec<i16> = wav.samples().collect::<Result<_, _>>()?;
        return Ok((codes.chunks(block(rate)).map(|c| Block::Codes(c.to_vec())).collect(), rate));
    }
    let rate = args.rate.ok_or("a CSV needs --rate")?;
    let text = std::fs::read_to_string(&args.recording)?;
    let values: Vec<f32> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    Ok((values.chunks(block(rate)).map(|v| Block::Values(v.to_vec())).collect(), rate))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (blocks, rate) = read(&args)?;
    let token = args.token_file.as_ref().map(std::fs::read_to_string).transpose()?;
    let target = |addr: &String| token.as_ref().map_or(Target::new(addr), |t| Target::new(addr).with_token(t.trim()));
    let targets = Targets::new(args.addrs.iter().map(target))?;
    let mut sensor = Sensor::new(&args.machine_id, &args.sensor_id, rate);
    if let Some(Block::Codes(_)) = blocks.first() {
        sensor.adc = Some(Adc { scale: args.scale / 32768.0, offset: 0.0, bits: 16 });
    }
    let (samples, mut results) = sensor::open(targets, sensor, Default::default())?;
    let speed = args.speed;
    tokio::spawn(async move {
        let start = Instant::now();
        for (n, block) in blocks.into_iter().enumerate() {
            // Blocks come when the DAQ has them: at the recording's rate (times --speed).
            let due = start + Duration::from_secs_f64(n as f64 * BLOCK_S / speed);
            tokio::time::sleep_until(due.into()).await;
            let Ok(()) = (match block {
                Block::Codes(c) => samples.send_codes(&c).await,
                Block::Values(v) => samples.send(&v).await,
            }) else {
                break; // the stream ended: its results say why
            };
        }
    });
    while let Some(event) = results.next().await {
        match event? {
            Event::Window { index, result: r } => {
                let label = if r.label.is_empty() { "-" } else { &r.label };
                println!("window {index} samples {}-{}: {label}", r.first_sample_index, r.last_sample_index);
            }
            Event::Condition(c) => println!("condition: {}", c.summary),
            Event::Gap(_) => {}
        }
    }
    let s = results.stats();
    println!("done: resumed {} time(s), {} samples sent again", s.resumes, s.samples_resent);
    Ok(())
}
