#![doc = include_str!("../README.md")]

//! Logging set-up, metrics and the shutdown signal shared by every binary.

pub mod metrics;

use tracing_subscriber::EnvFilter;

/// JSON logs when `SHOMEI_LOG_JSON=1`, human-readable otherwise; level from `RUST_LOG`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("SHOMEI_LOG_JSON").is_ok_and(|v| v == "1") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested");
}
