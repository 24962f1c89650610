//! `hearthd`: the Hearth hub daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hearth_daemon::cli::hearthd::{Args, Command};
use hearth_daemon::config::{Config, DEFAULT_CONFIG_TOML};
use hearth_daemon::exit;
use hearth_daemon::reload::ConfigSource;
use tokio::sync::mpsc;

/// A signal stream, or why it could not be installed.
type Signal = std::io::Result<tokio::signal::unix::Signal>;
use tokio_util::sync::CancellationToken;

/// Blocks of 128 KiB and more (a large packet in transit, a router log's
/// segment) are mapped for themselves and given back to the kernel when
/// freed. glibc otherwise raises this threshold after the first such block
/// is freed, and serves later ones from its per-thread heaps, which keep
/// the memory after the peak: a hub passing 1 MiB messages kept 30 MiB
/// more than its queues held instead of 16 (conformance
/// `limits::queued_messages_are_held_to_the_hub_wide_budget`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn give_large_blocks_back() {
    // SAFETY: `mallopt` only sets one of glibc's allocator parameters from
    // two plain integers; it touches no memory of ours, and it runs first
    // thing in `main`, before any other thread exists. Its result (1 on
    // success) changes nothing if it fails: the default threshold stays.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_large_blocks_back() {}

fn main() -> ExitCode {
    give_large_blocks_back();
    let args = Args::parse();
    match args.command {
        Some(Command::CheckConfig { file }) => return check_config(file.or(args.config)),
        Some(Command::PrintDefaultConfig) => {
            print!("{DEFAULT_CONFIG_TOML}");
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    hearth_daemon::logging::init();
    // A reload reads the same source the same way, so it refuses a bad
    // file with this very message.
    let source = ConfigSource {
        file: args.config,
        data_dir: args.data_dir,
    };
    let config = match source.read() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    let data_dir = match config.resolved_data_dir() {
        Ok(dir) => dir,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let result = runtime.block_on(async {
        // One pending reload is enough: SIGHUPs that arrive while one is
        // waiting are served by it.
        let (reload, reloads) = mpsc::channel(1);
        // Installed before the hub starts: a SIGHUP's default action would
        // end the process.
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        tokio::spawn(follow_signals(signals, stop.clone(), reload));
        hearth_daemon::daemon::run((config, source), data_dir, reloads, stop).await
    });
    // Don't wait for rumqttd's threads: they run until the process ends.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `hearthd check-config [FILE]`: one line on stdout if the file is good,
/// one line on stderr naming the problem (and exit 78) if not.
fn check_config(file: Option<PathBuf>) -> ExitCode {
    let Some(path) = file else {
        return match Config::default().check() {
            Ok(()) => {
                println!("built-in defaults: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hearthd: {e}");
                ExitCode::from(exit::CONFIG as u8)
            }
        };
    };
    match Config::load(&path) {
        Ok(config) => {
            // The files the bridge names must be usable too, as at start.
            if let Err(e) =
                hearth_daemon::bridge::link::check_files(&config.bridge, config.limits.max_payload)
            {
                eprintln!("hearthd: {e}");
                return ExitCode::from(exit::CONFIG as u8);
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hearthd: {e}");
            ExitCode::from(exit::CONFIG as u8)
        }
    }
}

/// SIGTERM and SIGINT stop the hub; SIGHUP asks it to reload its config.
async fn follow_signals(
    signals: (Signal, Signal, Signal),
    stop: CancellationToken,
    reload: mpsc::Sender<()>,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                let _ = reload.try_send(());
                continue;
            }
        }
        break;
    }
    stop.cancel();
}
