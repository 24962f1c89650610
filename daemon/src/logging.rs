//! Logging for a service: one line per event to stdout (journald keeps it),
//! colours only on a terminal, level from `HEARTH_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Sets up logging; called before the config is read, so config errors are
/// logged like everything else.
pub fn init() {
    // rumqttd logs every client disconnect as an error; the edge logs
    // sessions itself. `HEARTH_LOG=info,rumqttd=debug` brings them back.
    let filter = EnvFilter::try_from_env("HEARTH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rustls=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .try_init();
}
