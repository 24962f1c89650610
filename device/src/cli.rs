//! The `hearth-device` command line's clap definition, shared by the binary
//! and by the daemon's man-page and completion generator
//! (daemon/examples/gen-assets.rs), which is why it lives in the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hearth_protocol::pairing::PairingUri;

/// A Hearth reference device: pair with a hub, run, renew, send and read messages.
#[derive(Debug, Parser)]
#[command(name = "hearth-device", version, about)]
pub struct Cli {
    /// The device's own directory: key (0600), certificate, hub CA, settings.
    #[arg(
        long,
        env = "HEARTH_DEVICE_DIR",
        default_value = "hearth-device",
        global = true
    )]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pairs with a hub: makes a key here, enrolls over EST with the
    /// one-time token, and stores the certificate.
    Pair {
        /// The hearth://pair?... URI from `hearth pair` (or its QR code).
        /// Without it, the hub is found on the LAN by mDNS.
        uri: Option<PairingUri>,
        /// The token, when the hub is found by mDNS.
        #[arg(long, required_unless_present = "uri", requires = "ca")]
        token: Option<String>,
        /// With --token: the hub's CA fingerprint (at least its first 32 hex
        /// digits, 128 bits, as `hearth pair` prints them). The device trusts only the
        /// hub whose CA matches it; what mDNS says is never trusted.
        #[arg(long, value_name = "HEX")]
        ca: Option<String>,
        /// Seconds to look for a hub on the LAN.
        #[arg(long, default_value_t = 5)]
        discover_secs: u64,
        /// Replace an existing pairing in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Connects over mutual TLS, publishes telemetry to its `tele` topic,
    /// prints commands received on its `cmd` topic; reconnects with backoff.
    Run {
        /// Seconds between telemetry messages.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// Stop after this many telemetry messages were acknowledged.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Renews the certificate with a new key made here.
    Renew,
    /// Sends a message (text, picture or voice note) through the hub's
    /// mailbox and waits until the hub has stored it.
    Send {
        /// A member nickname, or a device id.
        #[arg(long)]
        to: String,
        /// Text to send.
        #[arg(long, group = "content", required = true)]
        text: Option<String>,
        /// A picture to send.
        #[arg(long, group = "content", value_name = "FILE")]
        image: Option<PathBuf>,
        /// A voice note to send.
        #[arg(long, group = "content", value_name = "FILE")]
        audio: Option<PathBuf>,
        /// The file's MIME type (default: from its extension).
        #[arg(long)]
        content_type: Option<String>,
        /// The client reference; sending again with the same one is
        /// stored once (default: a new random one).
        #[arg(long = "ref")]
        reference: Option<String>,
    },
    /// Prints messages and receipts waiting in the inbox, saves
    /// attachments under DIR/inbox/, and acknowledges each message.
    Inbox {
        /// Seconds without news before it stops.
        #[arg(long, default_value_t = 3)]
        wait: u64,
        /// Keep listening.
        #[arg(long)]
        follow: bool,
    },
    /// Lists the hubs advertised on the LAN.
    Discover {
        /// Seconds to listen.
        #[arg(long, default_value_t = 3)]
        secs: u64,
    },
}
