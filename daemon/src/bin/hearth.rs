//! `hearth`: the administrator's command line, speaking JSON to hearthd's
//! admin socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hearth_daemon::datadir::{create_private_dir, write_with_mode};
use hearth_protocol::admin::{AdminRequest, AdminResponse, AuditEntry, DeviceStatus};
use hearth_protocol::policy::Direction;
use hearth_protocol::Owner;

use hearth_daemon::cli::hearth::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("hearth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let json = cli.json;
    let ask = |request: AdminRequest| -> Result<AdminResponse> {
        let response = request_once(&socket, &request)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&response)?);
        }
        match response {
            AdminResponse::Error { message } => bail!("{message}"),
            other => Ok(other),
        }
    };
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Status => {
            if let AdminResponse::Status(status) = ask(AdminRequest::Status)? {
                if !json {
                    writeln!(out, "hearthd {} up {}s", status.version, status.uptime_secs)?;
                    for l in &status.listeners {
                        writeln!(out, "listener {:<6} {}", l.name, l.address)?;
                    }
                    writeln!(out, "connected devices: {}", status.connected.len())?;
                    for d in &status.connected {
                        writeln!(out, "  {d}")?;
                    }
                }
            }
        }
        Command::Member(MemberCommand::Add { name, role }) => {
            if let AdminResponse::Member(m) = ask(AdminRequest::MemberAdd { name, role })? {
                if !json {
                    writeln!(out, "added {} ({})", m.name, m.role)?;
                }
            }
        }
        Command::Member(MemberCommand::List) => {
            if let AdminResponse::Members { members } = ask(AdminRequest::MemberList)? {
                if !json {
                    for m in members {
                        writeln!(out, "{}\t{}", m.name, m.role)?;
                    }
                }
            }
        }
        Command::Device(DeviceCommand::List) => {
            if let AdminResponse::Devices { devices } = ask(AdminRequest::DeviceList)? {
                if !json {
                    for d in devices {
                        let status = match d.status {
                            DeviceStatus::Active => "active",
                            DeviceStatus::Revoked => "revoked",
                        };
                        writeln!(out, "{}\t{}\t{}\t{}", d.id, d.owner, status, d.label)?;
                    }
                }
            }
        }
        Command::Device(DeviceCommand::Issue(args)) => issue(args, &ask, json, &mut out)?,
        Command::Device(DeviceCommand::Revoke { id }) => {
            print_done(ask(AdminRequest::DeviceRevoke { id })?, json, &mut out)?
        }
        Command::Device(DeviceCommand::Remove { id }) => {
            print_done(ask(AdminRequest::DeviceRemove { id })?, json, &mut out)?
        }
        Command::Member(MemberCommand::Remove { name }) => {
            print_done(ask(AdminRequest::MemberRemove { name })?, json, &mut out)?
        }
        Command::Grant(g) => {
            let direction = if g.publish {
                Direction::Publish
            } else {
                Direction::Subscribe
            };
            print_done(
                ask(AdminRequest::Grant {
                    id: g.id,
                    filter: g.filter,
                    direction,
                })?,
                json,
                &mut out,
            )?
        }
        Command::RevokeGrant(g) => {
            let direction = if g.publish {
                Direction::Publish
            } else {
                Direction::Subscribe
            };
            print_done(
                ask(AdminRequest::RevokeGrant {
                    id: g.id,
                    filter: g.filter,
                    direction,
                })?,
                json,
                &mut out,
            )?
        }
        Command::Pair(args) => pair(args, &ask, json, &mut out)?,
        Command::Mailbox => {
            if let AdminResponse::Mailbox { pending } = ask(AdminRequest::MailboxStatus)? {
                if !json {
                    if pending.is_empty() {
                        writeln!(out, "the mailbox is empty")?;
                    }
                    let now = unix_now();
                    for p in pending {
                        writeln!(
                            out,
                            "{}\t{} waiting\toldest {}s old\tnext expiry in {}s",
                            p.device,
                            p.count,
                            (now - p.oldest_sent_at).max(0),
                            (p.next_expiry - now).max(0)
                        )?;
                    }
                }
            }
        }
        Command::Privacy(PrivacyCommand::Report { member }) => {
            if let AdminResponse::Privacy(report) = ask(AdminRequest::PrivacyReport { member })? {
                if !json {
                    print_privacy(&report, &mut out)?;
                }
            }
        }
        Command::Member(MemberCommand::Export { name, out: dir }) => {
            member_export(name, &dir, &ask, &mut out)?
        }
        Command::Backup(args) => backup(args, &ask, &mut out)?,
        Command::Restore(args) => restore(args, &socket, &mut out)?,
        Command::EraseAll(args) => erase_all(args, &socket, &mut out)?,
        Command::Contacts(ContactsCommand::List) => {
            if let AdminResponse::Contacts { rules } = ask(AdminRequest::ContactList)? {
                if !json {
                    for r in rules {
                        let verb = if r.allowed { "allow" } else { "deny" };
                        writeln!(out, "{}\t{verb}\t{}", r.from, r.to)?;
                    }
                }
            }
        }
        Command::Contacts(ContactsCommand::Allow { a, b }) => print_done(
            ask(AdminRequest::ContactSet {
                a,
                b,
                allowed: true,
            })?,
            json,
            &mut out,
        )?,
        Command::Contacts(ContactsCommand::Deny { a, b }) => print_done(
            ask(AdminRequest::ContactSet {
                a,
                b,
                allowed: false,
            })?,
            json,
            &mut out,
        )?,
        Command::Audit(args) => {
            let mut after_id = None;
            let mut since = args.since;
            loop {
                let request = AdminRequest::Audit {
                    device: args.device,
                    since,
                    after_id,
                    limit: if after_id.is_some() {
                        10_000
                    } else {
                        args.limit
                    },
                };
                if let AdminResponse::Audit { entries } =
                    request_once(&socket, &request).and_then(|r| match r {
                        AdminResponse::Error { message } => bail!("{message}"),
                        other => Ok(other),
                    })?
                {
                    for e in &entries {
                        if json {
                            writeln!(out, "{}", serde_json::to_string(e)?)?;
                        } else {
                            writeln!(out, "{}", audit_line(e))?;
                        }
                    }
                    out.flush()?;
                    after_id = entries.last().map(|e| e.id).or(after_id).or(Some(0));
                    since = None;
                }
                if !args.follow {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    }
    Ok(())
}

fn print_done(response: AdminResponse, json: bool, out: &mut dyn Write) -> Result<()> {
    if let (AdminResponse::Done { message }, false) = (response, json) {
        writeln!(out, "{message}")?;
    }
    Ok(())
}

fn audit_line(e: &AuditEntry) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(e.at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| e.at.to_string());
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "{at}  {}  {}  {}  {}  {}{}",
        e.device
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into()),
        e.event,
        dash(&e.action),
        dash(&e.topic),
        dash(&e.reason),
        e.peer
            .as_ref()
            .map(|p| format!("  peer={p}"))
            .unwrap_or_default(),
    )
}

fn issue(
    args: IssueArgs,
    ask: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let owner = match args.member {
        Some(name) => Owner::Member(name),
        None => Owner::Service,
    };
    let (csr_pem, key) = match &args.csr {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None,
        ),
        None => {
            // The key is made here, on the machine that will use it; only
            // the signing request goes to the hub.
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .pem()?;
            (csr, Some(key))
        }
    };
    let AdminResponse::DeviceIssued(issued) = ask(AdminRequest::DeviceIssue {
        owner,
        label: args.label,
        csr_pem,
    })?
    else {
        bail!("unexpected answer from hearthd");
    };
    let (cert_path, ca_path) = match (&args.out, &args.csr) {
        (Some(dir), _) => {
            create_private_dir(dir)?;
            let key = key.expect("a key is made when --out is given");
            write_with_mode(
                &dir.join("device.key"),
                key.serialize_pem().as_bytes(),
                0o600,
            )?;
            (dir.join("device.pem"), dir.join("ca.pem"))
        }
        (None, Some(csr)) => {
            let cert = args
                .cert_out
                .clone()
                .unwrap_or_else(|| csr.with_extension("pem"));
            let ca = cert.with_file_name("ca.pem");
            (cert, ca)
        }
        (None, None) => bail!("give --out DIR or --csr FILE"),
    };
    let chain = format!("{}{}", issued.certificate_pem, issued.ca_pem);
    write_with_mode(&cert_path, chain.as_bytes(), 0o644)?;
    write_with_mode(&ca_path, issued.ca_pem.as_bytes(), 0o644)?;
    if !json {
        writeln!(out, "{}", issued.device_id)?;
        eprintln!(
            "certificate: {}\nhub CA:      {}",
            cert_path.display(),
            ca_path.display()
        );
    }
    Ok(())
}

fn pair(
    args: PairArgs,
    ask: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if args.list {
        if let AdminResponse::PairWindows { windows } = ask(AdminRequest::PairList)? {
            if !json {
                if windows.is_empty() {
                    writeln!(out, "no pairing window is open")?;
                }
                for w in windows {
                    writeln!(
                        out,
                        "{}\t{}\t{}\tcloses in {}s",
                        w.id,
                        w.member,
                        w.label,
                        (w.expires_at - unix_now()).max(0)
                    )?;
                }
            }
        }
        return Ok(());
    }
    if let Some(id) = args.cancel {
        return print_done(ask(AdminRequest::PairCancel { id })?, json, out);
    }
    let (Some(member), Some(label)) = (args.member, args.label) else {
        bail!("give --member and --label");
    };
    let AdminResponse::PairOpened(ticket) = ask(AdminRequest::PairOpen {
        member,
        label,
        ttl_secs: args.ttl,
        host: args.host,
    })?
    else {
        bail!("unexpected answer from hearthd");
    };
    if json {
        return Ok(());
    }
    if !args.no_qr {
        let code = qrcode::QrCode::new(ticket.uri.as_bytes()).context("drawing the QR code")?;
        let drawing = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        writeln!(out, "{drawing}")?;
    }
    writeln!(out, "pairing window {} open for {}s", ticket.id, args.ttl)?;
    writeln!(out, "token: {}", ticket.token)?;
    // What a device found by mDNS is checked against: the CA's first 16
    // hex digits (the advertisement's own prefix is never trusted).
    let pairing: hearth_protocol::pairing::PairingUri = ticket
        .uri
        .parse()
        .context("hearthd sent a bad pairing URI")?;
    let ca = pairing.ca_sha256.get(..16).unwrap_or(&pairing.ca_sha256);
    writeln!(out, "ca:    {ca}")?;
    writeln!(out, "uri:   {}", ticket.uri)?;
    writeln!(
        out,
        "On the device: hearth-device pair '{}'  (or scan the code)",
        ticket.uri
    )?;
    writeln!(
        out,
        "or, on the same network: hearth-device pair --token {} --ca {}",
        ticket.token, ca
    )?;
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn print_privacy(
    report: &hearth_protocol::admin::PrivacyReport,
    out: &mut impl Write,
) -> Result<()> {
    match &report.member {
        Some(m) => writeln!(out, "What this hub holds about {m} and their devices:")?,
        None => writeln!(out, "What this hub holds about the household:")?,
    }
    let now = unix_now();
    for item in &report.items {
        let mut line = format!("  {}: {}", item.kind, item.count);
        if item.bytes > 0 {
            line.push_str(&format!(", {} bytes", item.bytes));
        }
        if let Some(oldest) = item.oldest.filter(|_| item.count > 0) {
            line.push_str(&format!(
                ", oldest {} days old",
                (now - oldest).max(0) / 86_400
            ));
        }
        writeln!(out, "{line}; kept {}", item.kept)?;
    }
    writeln!(out, "Never stored:")?;
    for never in &report.never_stored {
        writeln!(out, "  {never}")?;
    }
    Ok(())
}

const EXPORT_README: &str = "\
What Hearth held about this member when it was exported
=======================================================

member.json
  member        the nickname and role (parent or child)
  devices       each device: its id, label, status, when it was added,
                the day it was last seen, its certificate fingerprint
  contact_rules who this member may or may not message, as set by a parent
  messages      messages not yet delivered, waiting for this member or sent
                by them, with their text; pictures and voice notes are in
                attachments/ (delivered messages are not kept by the hub)
  audit         the hub's log entries about this member's devices: times,
                event kinds, topic classes, reasons (no message content)

attachments/
  one file per picture or voice note of a waiting message, named by the
  message id

Times are seconds since 1970-01-01 UTC. See docs/PRIVACY.md for how long
each kind of data is kept and how to erase it (hearth member remove).
";

fn member_export(
    name: hearth_protocol::MemberName,
    dir: &Path,
    ask: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    out: &mut impl Write,
) -> Result<()> {
    use base64::Engine;
    if dir.exists() {
        bail!("{} exists; choose a new folder", dir.display());
    }
    let AdminResponse::MemberExport { data, attachments } =
        ask(AdminRequest::MemberExport { name: name.clone() })?
    else {
        bail!("hearthd gave no export");
    };
    create_private_dir(&dir.join("attachments"))?;
    let json = serde_json::to_vec_pretty(&data)?;
    write_with_mode(&dir.join("member.json"), &json, 0o600)?;
    write_with_mode(&dir.join("README.txt"), EXPORT_README.as_bytes(), 0o600)?;
    for (file, b64) in &attachments {
        // Names come from the hub (message id and a checked extension);
        // refuse anything that could leave the folder all the same.
        if file.contains('/') || file.starts_with('.') {
            bail!("hearthd sent an attachment name {file:?}");
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("an attachment is not base64")?;
        write_with_mode(&dir.join("attachments").join(file), &bytes, 0o600)?;
    }
    writeln!(
        out,
        "exported what the hub holds about {name} to {} ({} attachment(s))",
        dir.display(),
        attachments.len()
    )?;
    Ok(())
}

/// The passphrase from a file's first line or $HEARTH_BACKUP_PASSPHRASE.
fn passphrase(args: &PassphraseArgs) -> Result<Option<String>> {
    if let Some(path) = &args.passphrase_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let line = text.lines().next().unwrap_or("").to_owned();
        if line.is_empty() {
            bail!("{} holds no passphrase", path.display());
        }
        return Ok(Some(line));
    }
    Ok(std::env::var("HEARTH_BACKUP_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty()))
}

fn backup(
    args: BackupArgs,
    ask: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    out: &mut impl Write,
) -> Result<()> {
    use base64::Engine;
    let passphrase = match &args.recipient {
        Some(_) => None,
        None => Some(passphrase(&args.passphrase)?.context(
            "a backup needs a passphrase (--passphrase-file or HEARTH_BACKUP_PASSPHRASE) or --recipient",
        )?),
    };
    if args.out.exists() {
        bail!("{} exists; choose a new file", args.out.display());
    }
    let AdminResponse::Backup { age_base64 } = ask(AdminRequest::Backup {
        passphrase,
        recipient: args.recipient,
    })?
    else {
        bail!("hearthd gave no backup");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(age_base64)
        .context("hearthd's backup is not base64")?;
    write_with_mode(&args.out, &bytes, 0o600)?;
    writeln!(out, "encrypted backup written to {}", args.out.display())?;
    Ok(())
}

/// Offline commands refuse while a hub answers on the socket.
fn refuse_if_running(socket: &Path) -> Result<()> {
    if request_once(socket, &AdminRequest::Status).is_ok() {
        bail!(
            "hearthd is running (it answers on {}); stop it first",
            socket.display()
        );
    }
    Ok(())
}

fn restore(args: RestoreArgs, socket: &Path, out: &mut impl Write) -> Result<()> {
    use hearth_daemon::backup::BackupKey;
    refuse_if_running(socket)?;
    let key = match &args.identity {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let line = text
                .lines()
                .find(|l| l.starts_with("AGE-SECRET-KEY-"))
                .with_context(|| format!("{} holds no age identity", path.display()))?;
            BackupKey::Identity(line.to_owned())
        }
        None => BackupKey::Passphrase(passphrase(&args.passphrase)?.context(
            "the backup's passphrase (--passphrase-file or HEARTH_BACKUP_PASSPHRASE) or --identity is needed",
        )?),
    };
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    hearth_daemon::backup::restore(&bytes, &key, &args.data_dir)?;
    writeln!(
        out,
        "restored into {}; start hearthd",
        args.data_dir.display()
    )?;
    Ok(())
}

fn erase_all(args: EraseAllArgs, socket: &Path, out: &mut impl Write) -> Result<()> {
    if !args.yes {
        bail!("erase-all destroys every key, device and message for good; add --yes to do it");
    }
    refuse_if_running(socket)?;
    let removed = hearth_daemon::backup::erase_all(&args.data_dir)?;
    writeln!(
        out,
        "erased {} file(s) in {}: the hub starts empty next time",
        removed.len(),
        args.data_dir.display()
    )?;
    Ok(())
}

fn request_once(socket: &Path, request: &AdminRequest) -> Result<AdminResponse> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach hearthd at {} (is it running? --socket or HEARTH_SOCKET chooses the socket)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        bail!("hearthd closed the connection without answering");
    }
    serde_json::from_str(&answer).context("hearthd's answer is not valid JSON")
}

/// `/run/hearth/admin.sock` when the packaged service runs, else the
/// socket inside the default data dir. The directory is tested, not the
/// socket: a user outside `hearth-admin` cannot see into it and should be
/// told so, not sent to a socket that does not exist.
fn default_socket() -> PathBuf {
    if Path::new("/run/hearth").is_dir() {
        PathBuf::from("/run/hearth/admin.sock")
    } else {
        PathBuf::from("hearth-data/admin.sock")
    }
}
