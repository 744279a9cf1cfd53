//! A gateway for several sensors of several machines: one stream per sensor, all over one connection per replica
//! (the streams share one `Targets`), each fed by its own acquisition task; every window and condition change
//! printed with its machine and sensor.
//!
//!     cargo run --release -p drsn-client --example multi_sensor_gateway -- \
//!         pump-7:drive-end=de.csv pump-7:fan-end=fe.csv fan-2:bearing=b.csv \
//!         --rate 12000 --addr http://replica-a:50051 --addr http://replica-b:50051
//!
//! Each recording is a CSV of one value per line in the model's input unit, played at its real rate (times --speed).

use std::time::{Duration, Instant};

use clap::Parser;
use drsn_client::sensor::{self, SampleSender};
use drsn_client::{Event, Sensor, Targets};

/// A DAQ block, in seconds.
const BLOCK_S: f64 = 0.1;

#[derive(Parser)]
struct Args {
    /// MACHINE:SENSOR=recording.csv
    #[arg(required = true)]
    sensors: Vec<String>,
    /// A replica (repeat for several).
    #[arg(long = "addr", required = true)]
    addrs: Vec<String>,
    /// Samples per second of every recording.
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

async fn acquire(samples: SampleSender, values: Vec<f32>, rate: f64, speed: f64) {
    let block = ((rate * BLOCK_S) as usize).max(1);
    let start = Instant::now();
    for (n, part) in values.chunks(block).enumerate() {
        let at = (n * block) as f64 / rate / speed;
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        if samples.send(part).await.is_err() {
            break; // the stream ended: its results say why
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let targets = Targets::plain(args.addrs.clone())?;
    let mut streams = tokio::task::JoinSet::new();
    for spec in &args.sensors {
        let (ids, path) = spec.split_once('=').ok_or("a sensor is MACHINE:SENSOR=recording.csv")?;
        let (machine, sensor_id) = ids.split_once(':').ok_or("a sensor is MACHINE:SENSOR=recording.csv")?;
        let text = std::fs::read_to_string(path)?;
        let values: Vec<f32> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        let sensor = Sensor::new(machine, sensor_id, args.rate);
        let (samples, mut results) = sensor::open(targets.clone(), sensor, Default::default())?;
        tokio::spawn(acquire(samples, values, args.rate, args.speed));
        let name = format!("{machine}/{sensor_id}");
        streams.spawn(async move {
            while let Some(event) = results.next().await {
                match event? {
                    Event::Window { index, result } => {
                        let label = if result.label.is_empty() { "-" } else { &result.label };
                        println!("{name} window {index}: {label}");
                    }
                    Event::Condition(c) => println!("{name} condition: {}", c.summary),
                    Event::Gap(_) => {}
                }
            }
            println!("{name} done: {} resume(s)", results.stats().resumes);
            Ok::<_, drsn_client::Error>(())
        });
    }
    while let Some(stream) = streams.join_next().await {
        stream??;
    }
    Ok(())
}
