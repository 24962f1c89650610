//! `hearth-device`: the reference device's command line. It pairs with a
//! hub over EST (its key made here, never sent), runs as an MQTT client
//! over mutual TLS, renews its certificate, and sends and reads family
//! messages. Everything it does is the `hearth_device` library; this file
//! only parses arguments and prints, so toy makers can read it as a map.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hearth_device::cli::{Cli, Command};
use hearth_device::inbox::Content;
use hearth_device::session::{self, Session};
use hearth_device::state::DeviceDir;
use hearth_device::{discovery, enroll, Error, Result};
use hearth_protocol::mailbox::Kind;
use hearth_protocol::terminal;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = DeviceDir::new(cli.dir);
    match command(&dir, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An error can quote what the hub or the network sent.
            eprintln!("hearth-device: {}", terminal::text(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Prints an event the library reports: news to stdout, problems to stderr.
fn report(event: impl Display, problem: bool) {
    if problem {
        eprintln!("{event}");
    } else {
        println!("{event}");
    }
}

async fn command(dir: &DeviceDir, command: Command) -> Result<()> {
    match command {
        Command::Pair {
            uri,
            token,
            ca,
            discover_secs,
            force,
        } => {
            let id = match (uri, token, ca) {
                (Some(uri), _, _) => enroll::pair(dir, uri, force).await?,
                (None, Some(token), Some(ca)) => {
                    enroll::pair_by_discovery(dir, token, &ca, discover_secs, force).await?
                }
                _ => {
                    return Err(Error::Usage(
                        "--token and --ca are needed without a URI".into(),
                    ))
                }
            };
            println!("{id}");
            eprintln!("paired; key and certificate in {}", dir.path().display());
        }
        Command::Run { interval, count } => {
            let interval = Duration::from_secs_f64(interval.max(0.01));
            let acked = session::run_telemetry(dir, interval, count, |event| {
                report(&event, event.is_problem())
            })
            .await?;
            println!("sent {acked} telemetry messages");
        }
        Command::Renew => {
            let id = enroll::renew(dir).await?;
            println!("renewed the certificate of {id}");
        }
        Command::Send {
            to,
            text,
            image,
            audio,
            content_type,
            reference,
        } => {
            let file = image
                .map(|p| (Kind::Image, p))
                .or(audio.map(|p| (Kind::Audio, p)));
            let content = Content::from_args(text, file, content_type)?;
            let mut session = Session::connect_inbox(dir).await?;
            let sent = session.send(&to, content, reference).await;
            session.close().await;
            let stored = sent?;
            println!("stored {} (ref {})", stored.id, stored.reference);
        }
        Command::Inbox { wait, follow } => {
            let mut session = Session::connect_inbox(dir).await?;
            let wait = Duration::from_secs(wait);
            let received = session
                .receive(wait, follow, |event| report(&event, event.is_problem()))
                .await;
            session.close().await;
            received?;
        }
        Command::Discover { secs } => {
            // Anyone on the LAN can advertise: their names are shown, not obeyed.
            let hubs = discovery::discover(secs).await?;
            for hub in &hubs {
                println!("{}", terminal::field(&hub.to_string()));
            }
            if hubs.is_empty() {
                eprintln!("no hub found");
            }
        }
    }
    Ok(())
}
