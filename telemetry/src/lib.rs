#![doc = include_str!("../README.md")]

//! Logging set-up, metrics and the shutdown signal shared by every binary.

pub mod access;
pub mod metrics;

use tracing_subscriber::EnvFilter;

/// JSON logs when `SHOMEI_LOG_JSON=1`, human-readable otherwise; level from `RUST_LOG`
/// (`info` when unset or unreadable). warp's own request lines are off unless `RUST_LOG` names
/// warp: [`access`] logs each request once, without what they would show.
pub fn init() {
    let filter = EnvFilter::try_new(filter_directives(std::env::var("RUST_LOG").ok()))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives(None)));
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

/// The log filter for `RUST_LOG`'s value.
fn filter_directives(rust_log: Option<String>) -> String {
    let given = rust_log.filter(|v| !v.trim().is_empty());
    let directives = given.unwrap_or_else(|| "info".to_owned());
    if directives.contains("warp") {
        directives
    } else {
        format!("{directives},warp::filters::trace=off")
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

#[cfg(test)]
mod tests {
    use super::filter_directives;

    #[test]
    fn warps_request_lines_are_off_unless_asked_for() {
        assert_eq!(filter_directives(None), "info,warp::filters::trace=off");
        assert_eq!(
            filter_directives(Some(" ".into())),
            "info,warp::filters::trace=off"
        );
        assert_eq!(
            filter_directives(Some("debug".into())),
            "debug,warp::filters::trace=off"
        );
        assert_eq!(
            filter_directives(Some("info,warp=debug".into())),
            "info,warp=debug"
        );
    }
}
