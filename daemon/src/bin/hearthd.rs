//! `hearthd`: the Hearth hub daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hearth_daemon::cli::hearthd::{Args, Command};
use hearth_daemon::config::{Config, DEFAULT_CONFIG_TOML};
use hearth_daemon::exit;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
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
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(exit::CONFIG as u8);
            }
        },
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    }
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
        tokio::spawn(stop_on_signal(stop.clone()));
        hearth_daemon::daemon::run(config, data_dir, stop).await
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
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hearthd: {e}");
            ExitCode::from(exit::CONFIG as u8)
        }
    }
}

async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    stop.cancel();
}
