//! The `hearthd` command line's clap definition, shared by the binary and by
//! the man-page and completion generator (examples/gen-assets.rs).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The Hearth home hub: mutual-TLS MQTT for a household's toys and phones.
#[derive(Debug, Parser)]
#[command(name = "hearthd", version, about)]
pub struct Args {
    /// Configuration file (TOML). Without one, the embedded defaults apply.
    /// SIGHUP (`systemctl reload hearthd`) reads it again: most settings
    /// apply at once, those bound at start wait for a restart, and a bad
    /// file is refused with the settings in force kept.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory; overrides the config file and the default
    /// ($STATE_DIRECTORY, else /var/lib/hearth for root and
    /// $XDG_STATE_HOME/hearth, i.e. ~/.local/state/hearth, for others).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    // Without a command, hearthd runs the hub.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `hearthd` does instead of running the hub.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks a configuration file and exits: prints "FILE: ok", or one
    /// line naming the bad key and exits 78.
    CheckConfig {
        /// The file to check (default: the one given with --config, else
        /// the built-in defaults).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Prints the default configuration, every setting commented out at
    /// its default (the packaged /etc/hearth/hearth.toml).
    PrintDefaultConfig,
}
