//! `hearth`: the administrator's command line, speaking JSON to hearthd's
//! admin socket.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hearth_daemon::datadir::{create_private_dir, write_with_mode};
use hearth_protocol::admin::{
    AdminRequest, AdminResponse, AuditEntry, DeviceInfo, DeviceStatus, MemberInfo, Verdict,
};
use hearth_protocol::policy::Direction;
use hearth_protocol::{terminal, DeviceId, MemberName, Owner, Role};

use hearth_daemon::cli::hearth::*;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            // An error can quote what a device sent (a CSR's contents, say).
            eprintln!("hearth: {}", terminal::text(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> Result<()> {
    let socket = match cli.socket.clone() {
        Some(socket) => socket,
        None => default_socket()?,
    };
    let json = cli.json;
    // A request whose answer `--json` prints as it came.
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
    // A request the CLI makes for itself (names to ids, table columns):
    // never printed, so `--json` output stays what it was.
    let query = |request: AdminRequest| -> Result<AdminResponse> {
        match request_once(&socket, &request)? {
            AdminResponse::Error { message } => bail!("{message}"),
            other => Ok(other),
        }
    };
    let device = |reference: &str| -> Result<DeviceId> { resolve_device(&query, reference) };
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Status => {
            if let AdminResponse::Status(status) = ask(AdminRequest::Status)? {
                if !json {
                    writeln!(
                        out,
                        "hearthd {} up {}",
                        status.version,
                        human_span(i64::try_from(status.uptime_secs).unwrap_or(i64::MAX))
                    )?;
                    for l in &status.listeners {
                        writeln!(out, "listener {:<6} {}", l.name, l.address)?;
                    }
                    if let Some(config) = &status.config {
                        write!(out, "{}", config_lines(config))?;
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
                    let household = Household::read(&query)?;
                    write!(out, "{}", household.member_table(&members))?;
                }
            }
        }
        Command::Device(DeviceCommand::List) => {
            if let AdminResponse::Devices { devices } = ask(AdminRequest::DeviceList)? {
                if !json {
                    let household = Household::read(&query)?;
                    write!(out, "{}", household.device_table(&devices))?;
                }
            }
        }
        Command::Device(DeviceCommand::Issue(args)) => issue(args, &ask, json, &mut out)?,
        Command::Device(DeviceCommand::Revoke { id }) => print_done(
            ask(AdminRequest::DeviceRevoke { id: device(&id)? })?,
            json,
            &mut out,
        )?,
        Command::Device(DeviceCommand::Check { id }) => {
            let AdminResponse::DeviceChecked { id, lines } =
                ask(AdminRequest::DeviceCheck { id: device(&id)? })?
            else {
                bail!("unexpected answer from hearthd");
            };
            if !json {
                writeln!(out, "device {id}")?;
                for line in &lines {
                    let verdict = match line.verdict {
                        Verdict::Pass => "pass",
                        Verdict::Warn => "WARN",
                        Verdict::Fail => "FAIL",
                    };
                    writeln!(out, "{verdict}  {:<20} {}", line.item, line.reason)?;
                }
            }
            if lines.iter().any(|l| l.verdict == Verdict::Fail) {
                out.flush()?;
                std::process::exit(1);
            }
        }
        Command::Device(DeviceCommand::Remove { id }) => print_done(
            ask(AdminRequest::DeviceRemove { id: device(&id)? })?,
            json,
            &mut out,
        )?,
        Command::Member(MemberCommand::Remove { name, yes }) => {
            if !yes {
                confirm_member_removal(&query, &name)?;
            }
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
                    id: device(&g.id)?,
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
                    id: device(&g.id)?,
                    filter: g.filter,
                    direction,
                })?,
                json,
                &mut out,
            )?
        }
        Command::Bridge(BridgeCommand::Enable { id }) => print_done(
            ask(AdminRequest::BridgeEnable { id: device(&id)? })?,
            json,
            &mut out,
        )?,
        Command::Bridge(BridgeCommand::Disable { id }) => print_done(
            ask(AdminRequest::BridgeDisable { id: device(&id)? })?,
            json,
            &mut out,
        )?,
        Command::Bridge(BridgeCommand::List) => {
            if let AdminResponse::Bridged {
                devices,
                enabled,
                connected,
            } = ask(AdminRequest::BridgeList)?
            {
                if !json {
                    let state = match (enabled, connected) {
                        (false, _) => "off ([bridge] enabled = false in hearth.toml)",
                        (true, false) => "on, not connected to the other broker",
                        (true, true) => "on, connected",
                    };
                    writeln!(out, "bridge: {state}")?;
                    if devices.is_empty() {
                        writeln!(out, "no device is bridged (`hearth bridge enable ID`)")?;
                    }
                    for id in devices {
                        writeln!(out, "{id}")?;
                    }
                }
            }
        }
        Command::Pair(args) => pair(args, &ask, json, &mut out)?,
        Command::WebLink(args) => web_link(args, &ask, json, &mut out)?,
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
                            "{}\t{} waiting\toldest {} old\tnext expiry in {}",
                            terminal::field(p.device.as_str()),
                            p.count,
                            human_span(now - p.oldest_sent_at),
                            human_span(p.next_expiry - now)
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
        Command::Contacts(ContactsArgs {
            command: None | Some(ContactsCommand::List),
        }) => {
            if let AdminResponse::Contacts { rules } = ask(AdminRequest::ContactList)? {
                if !json {
                    if rules.is_empty() {
                        writeln!(
                            out,
                            "no rules: the defaults apply (parents may message anyone, \
                             children their parents)"
                        )?;
                    }
                    for r in rules {
                        let verb = if r.allowed { "allow" } else { "deny" };
                        writeln!(
                            out,
                            "{}\t{verb}\t{}",
                            terminal::field(r.from.as_str()),
                            terminal::field(r.to.as_str())
                        )?;
                    }
                }
            }
        }
        Command::Contacts(ContactsArgs {
            command: Some(ContactsCommand::Allow { a, b }),
        }) => print_done(
            ask(AdminRequest::ContactSet {
                a,
                b,
                allowed: true,
            })?,
            json,
            &mut out,
        )?,
        Command::Contacts(ContactsArgs {
            command: Some(ContactsCommand::Deny { a, b }),
        }) => print_done(
            ask(AdminRequest::ContactSet {
                a,
                b,
                allowed: false,
            })?,
            json,
            &mut out,
        )?,
        Command::Audit(args) => {
            let only = match &args.device {
                Some(reference) => Some(device(reference)?),
                None => None,
            };
            let mut after_id = None;
            let mut since = args.since;
            loop {
                let request = AdminRequest::Audit {
                    device: only,
                    since,
                    after_id,
                    limit: if after_id.is_some() {
                        10_000
                    } else {
                        args.limit
                    },
                };
                if let AdminResponse::Audit { entries } = query(request)? {
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

/// Finds the device a reference names (id, id prefix or label), asking
/// the hub for its list unless the reference is a whole id already.
fn resolve_device(
    query: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    reference: &str,
) -> Result<DeviceId> {
    let AdminResponse::Devices { devices } = query(AdminRequest::DeviceList)? else {
        bail!("unexpected answer from hearthd");
    };
    if let Ok(id) = reference.parse::<DeviceId>() {
        if !devices.iter().any(|d| d.id == id) {
            // Let the hub say it in its own words.
            return Ok(id);
        }
    }
    Ok(hearth_protocol::reference::resolve_device(
        reference,
        devices.iter().map(|d| (d.id, d.label.as_str())),
    )?)
}

/// Removing a member removes their devices too: ask first, on a terminal;
/// without one (a script), refuse unless `--yes` said it already.
fn confirm_member_removal(
    query: &dyn Fn(AdminRequest) -> Result<AdminResponse>,
    name: &MemberName,
) -> Result<()> {
    let AdminResponse::Devices { devices } = query(AdminRequest::DeviceList)? else {
        bail!("unexpected answer from hearthd");
    };
    let theirs: Vec<_> = devices
        .iter()
        .filter(|d| match &d.owner {
            Owner::Member(owner) => hearth_protocol::reference::same_member(owner, name),
            Owner::Service => false,
        })
        .collect();
    if theirs.is_empty() {
        return Ok(());
    }
    let labels: Vec<String> = theirs
        .iter()
        .map(|d| terminal::field(d.label.as_str()).into_owned())
        .collect();
    let what = format!(
        "removing {} also revokes and removes {} device(s): {}",
        terminal::field(name.as_str()),
        theirs.len(),
        labels.join(", ")
    );
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("{what}. Nothing was removed: there is no terminal to ask on; add --yes to go ahead");
    }
    eprint!("{what}. Remove them? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
        Ok(())
    } else {
        bail!("nothing was removed")
    }
}

/// What the tables add to the lists: roles, who is online now.
struct Household {
    roles: Vec<(MemberName, Role)>,
    online: Vec<DeviceId>,
    devices: Vec<DeviceInfo>,
    now: i64,
}

impl Household {
    fn read(query: &dyn Fn(AdminRequest) -> Result<AdminResponse>) -> Result<Household> {
        let (
            AdminResponse::Members { members },
            AdminResponse::Status(status),
            AdminResponse::Devices { devices },
        ) = (
            query(AdminRequest::MemberList)?,
            query(AdminRequest::Status)?,
            query(AdminRequest::DeviceList)?,
        )
        else {
            bail!("unexpected answer from hearthd");
        };
        Ok(Household {
            roles: members.into_iter().map(|m| (m.name, m.role)).collect(),
            online: status.connected,
            devices,
            now: unix_now(),
        })
    }

    fn role_of(&self, owner: &Owner) -> &'static str {
        match owner {
            Owner::Service => "service",
            Owner::Member(name) => self
                .roles
                .iter()
                .find(|(m, _)| m == name)
                .map(|(_, role)| role.as_str())
                .unwrap_or("?"),
        }
    }

    fn seen(&self, device: &DeviceInfo) -> String {
        if self.online.contains(&device.id) {
            return "online".into();
        }
        // The hub keeps only the day (docs/PRIVACY.md): say the day.
        match device.last_seen {
            Some(at) => seen_day(at, self.now),
            None => "never".into(),
        }
    }

    fn device_table(&self, devices: &[DeviceInfo]) -> String {
        if devices.is_empty() {
            return "no devices yet: `hearth pair` or `hearth device issue` adds one\n".into();
        }
        let rows = devices
            .iter()
            .map(|d| {
                vec![
                    d.id.to_string(),
                    terminal::field(&d.owner.to_string()).into_owned(),
                    terminal::field(d.label.as_str()).into_owned(),
                    self.role_of(&d.owner).to_owned(),
                    match d.status {
                        DeviceStatus::Active => "active".to_owned(),
                        DeviceStatus::Revoked => "revoked".to_owned(),
                    },
                    self.seen(d),
                    match d.kind {
                        // A browser of the family web app has a session
                        // secret, not a certificate.
                        hearth_protocol::admin::DeviceKind::Browser => "browser, no cert".into(),
                        hearth_protocol::admin::DeviceKind::Device => d
                            .cert_not_after
                            .map(|at| expiry(at, self.now))
                            .unwrap_or_else(|| "-".into()),
                    },
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "OWNER",
                "LABEL",
                "ROLE",
                "STATUS",
                "SEEN",
                "CERT EXPIRES",
            ],
            rows,
        )
    }

    fn member_table(&self, members: &[MemberInfo]) -> String {
        if members.is_empty() {
            return "no members yet: `hearth member add NAME --role parent` adds one\n".into();
        }
        let rows = members
            .iter()
            .map(|m| {
                let theirs: Vec<&DeviceInfo> = self
                    .devices
                    .iter()
                    .filter(|d| d.owner == Owner::Member(m.name.clone()))
                    .collect();
                let online = theirs
                    .iter()
                    .filter(|d| self.online.contains(&d.id))
                    .count();
                let seen = if online > 0 {
                    "online".to_owned()
                } else {
                    match theirs.iter().filter_map(|d| d.last_seen).max() {
                        Some(at) => format!("{} ago", human_span(self.now - at)),
                        None => "never".to_owned(),
                    }
                };
                vec![
                    terminal::field(m.name.as_str()).into_owned(),
                    m.role.to_string(),
                    theirs.len().to_string(),
                    online.to_string(),
                    seen,
                ]
            })
            .collect();
        table(&["NAME", "ROLE", "DEVICES", "ONLINE", "LAST SEEN"], rows)
    }
}

/// Columns padded to their widest cell, two spaces apart, headers first.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A span of time for people: "40 s", "5 min", "3 h", "2 days", "4 years"
/// (rounded down).
fn human_span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=172_799 => format!("{} h", s / 3600),
        172_800..=63_071_999 => format!("{} days", s / 86_400),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// When and from where the daemon's settings were read, for `status`:
/// `config: /etc/hearth/hearth.toml loaded 2026-11-28 02:31:07 UTC
/// (reloaded 2 times)`, and a line for a refused reload.
fn config_lines(config: &hearth_protocol::admin::ConfigLoaded) -> String {
    let from = match &config.file {
        Some(file) => terminal::field(file).into_owned(),
        None => "built-in defaults (no --config file)".to_owned(),
    };
    let reloads = match config.reloads {
        0 => String::new(),
        1 => " (reloaded once)".to_owned(),
        n => format!(" (reloaded {n} times)"),
    };
    let mut lines = format!(
        "config: {from} loaded {}{reloads}\n",
        utc_time(config.loaded_at)
    );
    if let Some(refused) = &config.refused {
        lines.push_str(&format!(
            "config: reload at {} refused, the settings above stay: {}\n",
            utc_time(refused.at),
            terminal::field(&refused.message)
        ));
    }
    lines
}

/// `2026-11-28 02:31:07 UTC`.
fn utc_time(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .map(|t| {
            format!(
                "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| at.to_string())
}

/// A certificate's expiry: the date, and how far off (or "EXPIRED").
fn expiry(at: i64, now: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(at)
        .map(|t| format!("{}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_else(|_| at.to_string());
    if at <= now {
        format!("{date} (EXPIRED)")
    } else {
        format!("{date} (in {})", human_span(at - now))
    }
}

fn print_done(response: AdminResponse, json: bool, out: &mut dyn Write) -> Result<()> {
    if let (AdminResponse::Done { message }, false) = (response, json) {
        writeln!(out, "{}", terminal::text(&message))?;
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
    // Topics, reasons and peers can carry what a device sent: shown, never
    // obeyed by the terminal.
    let dash = |v: &Option<String>| {
        v.as_deref()
            .map(|s| terminal::field(s).into_owned())
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{at}  {}  {}  {}  {}  {}{}",
        e.device
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into()),
        terminal::field(&e.event),
        dash(&e.action),
        dash(&e.topic),
        dash(&e.reason),
        e.peer
            .as_ref()
            .map(|p| format!("  peer={}", terminal::field(p)))
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
    // Checked before the hub issues anything: a refused directory leaves
    // no certificate behind.
    if let Some(dir) = &args.out {
        refuse_existing_device(dir, args.force)?;
    }
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
        host: args.host,
    })?
    else {
        bail!("unexpected answer from hearthd");
    };
    let (cert_path, ca_path) = match (&args.out, &args.csr) {
        (Some(dir), _) => {
            create_private_dir(dir)?;
            let key = key.expect("a key is made when --out is given");
            // Replacing a device: its settings go first, so a folder left
            // half-written by a crash never looks complete with a key that
            // does not match its certificate.
            match std::fs::remove_file(dir.join(DEVICE_FILES[1])) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e)
                        .with_context(|| format!("replacing the device in {}", dir.display()))
                }
                _ => {}
            }
            write_with_mode(
                &dir.join(DEVICE_FILES[0]),
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
    if let (Some(dir), Some(settings)) = (&args.out, &issued.settings) {
        // Last, as the device does: a half-written directory never looks
        // like a complete device.
        let text = toml::to_string(settings).context("writing device.toml")?;
        write_with_mode(&dir.join(DEVICE_FILES[1]), text.as_bytes(), 0o644)?;
    }
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

/// The files that make a directory a device's: its key and its settings
/// (the names the reference device uses).
const DEVICE_FILES: [&str; 2] = ["device.key", "device.toml"];

/// Refuses to write a device into a directory that holds one already,
/// unless `force`: its key would be lost.
fn refuse_existing_device(dir: &Path, force: bool) -> Result<()> {
    let existing: Vec<&str> = DEVICE_FILES
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !existing.is_empty() && !force {
        bail!(
            "{} already holds a device ({}); nothing was issued. Choose another directory, \
             or pass --force to replace it (the old certificate stays valid until \
             `hearth device remove ID`)",
            dir.display(),
            existing.join(", ")
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
                        "{}\t{}\t{}\tcloses in {}",
                        w.id,
                        terminal::field(w.member.as_str()),
                        terminal::field(w.label.as_str()),
                        human_span(w.expires_at - unix_now())
                    )?;
                }
            }
        }
        return Ok(());
    }
    if let Some(id) = args.cancel {
        return print_done(ask(AdminRequest::PairCancel { id })?, json, out);
    }
    if let Some(address) = args.unlock {
        return print_done(ask(AdminRequest::PairUnlock { address })?, json, out);
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
        writeln!(out, "{}", qr_drawing(&ticket.uri)?)?;
    }
    writeln!(
        out,
        "pairing window {} open for {}",
        ticket.id,
        human_span(args.ttl as i64)
    )?;
    writeln!(out, "token: {}", ticket.token)?;
    // What a device found by mDNS is checked against: the CA's first 32
    // hex digits, 128 bits (the advertisement's own prefix is never trusted).
    let pairing: hearth_protocol::pairing::PairingUri = ticket
        .uri
        .parse()
        .context("hearthd sent a bad pairing URI")?;
    let ca = pairing.ca_sha256.get(..32).unwrap_or(&pairing.ca_sha256);
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

/// `hearth web-link`: the link and its QR code, and what to compare.
fn web_link(
    args: WebLinkArgs,
    ask: &dyn Fn(AdminRequest) -> anyhow::Result<AdminResponse>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let AdminResponse::WebLink(ticket) = ask(AdminRequest::WebLink {
        member: args.member,
        label: args.label,
        host: args.host,
    })?
    else {
        bail!("unexpected answer from hearthd");
    };
    if json {
        return Ok(());
    }
    // The CA first: the phone must trust the hub before it opens the link
    // (docs/WEB.md), or a box pretending to be the hub could read the code.
    let origin = ticket.url.split("/#").next().unwrap_or_default();
    writeln!(
        out,
        "1. On the phone, install the hub's certificate authority from {origin}/ca.crt"
    )?;
    writeln!(
        out,
        "   and check that its SHA-256 fingerprint is (as phones show it):\n   {}",
        colon_hex(&ticket.ca_sha256)
    )?;
    writeln!(
        out,
        "2. Then open this link (it works once, for {}; no certificate warning may appear):",
        human_span(ticket.expires_at - unix_now())
    )?;
    if !args.no_qr {
        writeln!(out, "{}", qr_drawing(&ticket.url)?)?;
    }
    writeln!(out, "{}", ticket.url)?;
    writeln!(
        out,
        "How to install the certificate on each phone: WEB.md in Hearth's documentation."
    )?;
    Ok(())
}

/// The day `at` (a UTC midnight, as stored) as people say it, from `now`:
/// today, yesterday, or N days ago.
fn seen_day(at: i64, now: i64) -> String {
    let days = (now - now.rem_euclid(86_400) - at).div_euclid(86_400);
    match days {
        i64::MIN..=0 => "today".into(),
        1 => "yesterday".into(),
        n => format!("{n} days ago"),
    }
}

/// `6d6c4c…` as phones and openssl show a fingerprint: `6D:6C:4C:…`.
fn colon_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

/// A QR code of `text` for the terminal (light modules on a dark one, so
/// it scans from a dark terminal too).
fn qr_drawing(text: &str) -> Result<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).context("drawing the QR code")?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
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
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable_hub(socket, &e))?;
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

/// Why the admin socket could not be reached, and what to do about it:
/// each cause has its own fix, so each gets its own words.
fn unreachable_hub(socket: &Path, e: &std::io::Error) -> anyhow::Error {
    // Where it looked, and why there: the wrong socket is the usual cause.
    let at = if default_socket().is_ok_and(|d| d == socket) {
        format!("{} (the default for this user)", socket.display())
    } else {
        format!(
            "{} (given with --socket or HEARTH_SOCKET)",
            socket.display()
        )
    };
    let root = hearth_daemon::datadir::effective_uid() == Some(0);
    let choose = if root {
        "if hearthd runs as another user or with --data-dir, give its socket with --socket \
         PATH or HEARTH_SOCKET"
    } else {
        "if hearthd runs as another user or with --data-dir, give its socket with --socket \
         PATH or HEARTH_SOCKET (a hub started by root has it in /var/lib/hearth: use sudo \
         hearth)"
    };
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on the admin socket {at}: only members of the group \
             `hearth-admin` may administer the hub. Join it (`sudo adduser $USER hearth-admin`, \
             then log out and in again), or run the command with sudo"
        ),
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "hearthd is not running here: there is no admin socket at {at}. Start the hub \
             (`hearthd`, or `sudo systemctl start hearthd` where the package is installed); \
             {choose}"
        ),
        std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "hearthd is not running: {at} is left from a hub that stopped. Start it again \
             (`hearthd`, or `sudo systemctl start hearthd`); {choose}"
        ),
        _ => anyhow::anyhow!("cannot reach hearthd at {at}: {e}; {choose}"),
    }
}

/// Where `hearthd` puts its socket unless told otherwise, by the same rule:
/// `/run/hearth/admin.sock` when the packaged service runs (systemd's
/// `RuntimeDirectory=`), else `admin.sock` in the default state directory
/// (`/var/lib/hearth` for root, `~/.local/state/hearth` for others). The
/// directory /run/hearth is tested, not the socket: a user outside
/// `hearth-admin` cannot see into it and should be told so, not sent to a
/// socket elsewhere.
fn default_socket() -> Result<PathBuf> {
    if Path::new("/run/hearth").is_dir() {
        return Ok(PathBuf::from("/run/hearth/admin.sock"));
    }
    let dir = hearth_daemon::datadir::default_dir().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(dir.join("admin.sock"))
}
