//! The `drsn-serve` command: `serve` the model, `replay` recordings to a server, `bridge` MQTT sensors to the
//! replicas, `bench` the service.

use clap::{Parser, Subcommand};
use drsn_serve::bench;
use drsn_serve::bridge;
use drsn_serve::client::{condition_study, replay};
use drsn_serve::server::{self, config::LogFormat, config::ServeConfig};
use drsn_serve::telemetry::logging;

/// jemalloc, not glibc's malloc: after a burst of large requests glibc kept the freed memory (RSS +88 MiB that stayed
/// while the server idled), and so did mimalloc, which purges only when the program allocates again; jemalloc's
/// background thread gives freed pages back on its decay schedule (10 s) whatever the server is doing
/// (`tests/memory.rs`; README "Measured").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "drsn-serve",
    version,
    about = "Real-time machine-fault diagnosis from streamed vibration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model over gRPC, with Prometheus metrics.
    Serve(ServeConfig),
    /// Stream recordings to a server and print each window's diagnosis.
    Replay(replay::ReplayArgs),
    /// Carry sensors from another protocol to the replicas and their results back.
    #[command(subcommand)]
    Bridge(Bridge),
    /// Measure raw ONNX Runtime and end-to-end service throughput side by side.
    Bench(bench::BenchArgs),
    /// The machine-condition settings on the leave-one-load-out folds: the decision table behind the defaults.
    ConditionStudy(condition_study::StudyArgs),
}

#[derive(Subcommand)]
enum Bridge {
    /// Raw-waveform topics of an MQTT broker in; per-window results and condition changes out (README "MQTT").
    Mqtt {
        #[command(flatten)]
        args: bridge::mqtt::MqttArgs,
        /// Log lines as JSON.
        #[arg(long, value_enum, env = "DRSN_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("drsn-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<i32> = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => {
                logging::init(config.log_format == LogFormat::Json, "info");
                let running = server::start(config).await?;
                server::termination_signal().await;
                running.shutdown();
                tokio::spawn(async {
                    server::termination_signal().await;
                    eprintln!("second signal: exiting without waiting for the drain");
                    std::process::exit(130);
                });
                running.stopped().await;
                Ok(0)
            }
            Command::Bridge(Bridge::Mqtt { args, log_format }) => {
                logging::init(log_format == LogFormat::Json, "info");
                bridge::mqtt::run(args).await
            }
            Command::Replay(args) => {
                logging::init(false, "warn");
                replay::run(args).await
            }
            Command::ConditionStudy(args) => {
                println!("{}", condition_study::run_study(args)?);
                Ok(0)
            }
            Command::Bench(args) => {
                logging::init(false, "warn");
                if args.fairness {
                    println!("{}", bench::run_fairness(args).await?);
                } else if args.shadow {
                    println!("{}", bench::run_shadow(args).await?);
                } else if let Some(n) = args.memory {
                    println!("{}", bench::run_memory(args, n).await?);
                } else {
                    println!("{}", bench::run(args).await?);
                }
                Ok(0)
            }
        }
    });
    // Tasks still tied to connections the drain abandoned must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
