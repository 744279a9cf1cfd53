//! Logging set-up: text or JSON lines on stderr, levels from RUST_LOG; colour only on a terminal, so log files and
//! collectors get plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(json: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
