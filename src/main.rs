//! The `drsn-serve` command: `serve` the model, `replay` recordings to a server, `bench` the service.

use clap::{Parser, Subcommand};
use drsn_serve::{
    client::{bench, replay},
    server::{self, config::ServeConfig},
};
use tracing_subscriber::EnvFilter;

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
    /// Measure raw ONNX Runtime and end-to-end service throughput side by side.
    Bench(bench::BenchArgs),
}

fn init_logging(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
                init_logging(config.log_format == "json", "info");
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
            Command::Replay(args) => {
                init_logging(false, "warn");
                replay::run(args).await
            }
            Command::Bench(args) => {
                init_logging(false, "warn");
                let report = bench::run(args).await?;
                println!("{report}");
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
