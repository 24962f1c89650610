//! The `hearth` command line's clap definition, shared by the binary and by
//! the man-page and completion generator (examples/gen-assets.rs).

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};
use hearth_protocol::{Label, MemberName, Role};

use crate::unix_now;

/// Administer a Hearth hub: members, devices and status.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// The hub's admin socket (default: /run/hearth/admin.sock where the
    /// packaged service runs, else admin.sock in hearthd's default state
    /// directory: /var/lib/hearth for root, ~/.local/state/hearth for
    /// others).
    #[arg(long, env = "HEARTH_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Uptime, version, listeners and connected devices.
    Status,
    /// Household members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Devices and their certificates.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Grants a service device a topic filter, literally (no substitution).
    Grant(GrantArgs),
    /// Takes a grant back; the service's sessions close at once.
    RevokeGrant(GrantArgs),
    /// Reads the audit log (connects, refusals, denials, admin changes).
    Audit(AuditArgs),
    /// Opens a pairing window for one device and prints its token, URI and
    /// QR code; or lists or closes windows.
    Pair(PairArgs),
    /// A one-time link (and QR code) that signs a phone or tablet in to
    /// the family web app as a member's browser (docs/WEB.md).
    WebLink(WebLinkArgs),
    /// What waits in the mailbox: counts and ages per device, no content.
    Mailbox,
    /// Who may message whom, beyond the defaults (parents: anyone;
    /// children: their parents). Without a command, lists the rules.
    Contacts(ContactsArgs),
    /// Which devices the bridge may carry to another broker (Home
    /// Assistant's, for one): nothing of a device leaves unless enabled here.
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// What the hub holds about the family, and for how long.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Writes one encrypted backup (database, CA, mailbox key) to a file.
    Backup(BackupArgs),
    /// Restores a backup into an empty data dir (hearthd stopped).
    Restore(RestoreArgs),
    /// Factory reset: destroys every key and the database (hearthd stopped).
    EraseAll(EraseAllArgs),
}

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// Lets the bridge carry this device's description, telemetry and
    /// availability, and bring commands to it (never its messages).
    Enable {
        /// The device: its id, a unique id prefix or a unique label.
        id: DeviceRef,
    },
    /// Stops bridging the device and removes its entries on the other broker.
    Disable {
        /// The device: its id, a unique id prefix or a unique label.
        id: DeviceRef,
    },
    /// Lists the bridged devices and whether the bridge is connected.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Per kind of data: how much, the oldest, how long it is kept, and
    /// what the hub never stores.
    Report {
        /// Only what concerns this member and their devices.
        #[arg(long)]
        member: Option<MemberName>,
    },
}

#[derive(Debug, ClapArgs)]
pub struct WebLinkArgs {
    /// Whose browser it will be.
    #[arg(long)]
    pub member: MemberName,
    /// What the browser is called in lists, e.g. "Ada's phone".
    #[arg(long, default_value = "browser")]
    pub label: Label,
    /// The host name or address the phone reaches the hub at (default:
    /// the web app's address, or the hub's LAN address).
    #[arg(long)]
    pub host: Option<String>,
    /// Don't draw the QR code.
    #[arg(long)]
    pub no_qr: bool,
}

/// Where the passphrase of a backup comes from.
#[derive(Debug, ClapArgs)]
pub struct PassphraseArgs {
    /// A file whose first line is the passphrase (else
    /// $HEARTH_BACKUP_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct BackupArgs {
    /// The file to write (created 0600; an existing file is refused).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Encrypt to this age recipient (age1...) instead of a passphrase.
    #[arg(long)]
    pub recipient: Option<String>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, ClapArgs)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The hub's data dir (must hold no hub).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/hearth")]
    pub data_dir: PathBuf,
    /// An age identity file (AGE-SECRET-KEY-1...) for a backup made to a
    /// recipient.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

#[derive(Debug, ClapArgs)]
pub struct EraseAllArgs {
    /// Yes, destroy everything: no backup is made.
    #[arg(long)]
    pub yes: bool,
    /// The hub's data dir.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/hearth")]
    pub data_dir: PathBuf,
}

/// `hearth contacts [allow|deny|list]`.
#[derive(Debug, ClapArgs)]
pub struct ContactsArgs {
    /// What to do (default: list).
    #[command(subcommand)]
    pub command: Option<ContactsCommand>,
}

/// How a device is named on the command line: its id, a unique prefix of
/// its id (4 characters or more), or its label if no other device has it.
pub type DeviceRef = String;

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Lets two members message each other.
    Allow {
        /// One member.
        a: MemberName,
        /// The other.
        b: MemberName,
    },
    /// Stops two members messaging each other.
    Deny {
        /// One member.
        a: MemberName,
        /// The other.
        b: MemberName,
    },
    /// Lists the rules set with allow and deny.
    List,
}

#[derive(Debug, ClapArgs)]
pub struct PairArgs {
    /// The member the new device will belong to.
    #[arg(long, required_unless_present_any = ["list", "cancel", "unlock"])]
    pub member: Option<MemberName>,
    /// A label for people ("Ada's robot").
    #[arg(long, required_unless_present_any = ["list", "cancel", "unlock"])]
    pub label: Option<Label>,
    /// How long the window stays open, with its unit: 90s, 10m, 2h (at
    /// least 1m, at most 24h; a bare number is refused).
    #[arg(long, default_value = "10m", value_parser = parse_window)]
    pub ttl: u64,
    /// The host name or address devices should use (default: the hub's
    /// LAN address).
    #[arg(long)]
    pub host: Option<String>,
    /// Do not draw the QR code.
    #[arg(long)]
    pub no_qr: bool,
    /// Lists the open windows.
    #[arg(long, conflicts_with_all = ["member", "label", "cancel"])]
    pub list: bool,
    /// Closes a window by number, or every window. Closing a window that
    /// is not open is an error (exit 1).
    #[arg(long, value_name = "ID", conflicts_with_all = ["member", "label"])]
    pub cancel: Option<Option<u32>>,
    /// Lifts the lockout of an address that sent too many wrong tokens
    /// (the address `hearth audit` shows as peer=).
    #[arg(long, value_name = "ADDRESS", conflicts_with_all = ["member", "label", "list", "cancel"])]
    pub unlock: Option<std::net::IpAddr>,
}

/// Parses a duration that must carry its unit: `90s`, `10m`, `2h`, `7d`.
/// A bare number is refused rather than guessed at: `--ttl 10` once meant
/// ten seconds to the hub and ten minutes to the person typing it.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let usage = || format!("{s:?}: give a number with its unit: 90s, 10m, 2h or 7d");
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| usage())?;
    let scale = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => {
            return Err(format!(
                "{s:?} has no unit: say {n}s, {n}m or {n}h (a bare number is refused)"
            ))
        }
        _ => return Err(usage()),
    };
    n.checked_mul(scale).ok_or_else(usage)
}

/// The shortest pairing window: time to walk to the toy and scan the code.
pub const MIN_WINDOW_SECS: u64 = 60;

/// Parses a pairing window's length: a duration from 1 minute to 24 hours.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let seconds = parse_duration(s)?;
    if !(MIN_WINDOW_SECS..=24 * 3600).contains(&seconds) {
        return Err(format!(
            "{s:?}: a pairing window stays open between 1m and 24h"
        ));
    }
    Ok(seconds)
}

#[derive(Debug, ClapArgs)]
pub struct GrantArgs {
    /// The service device: id, id prefix or label.
    pub id: DeviceRef,
    /// The topic filter, under hearth/v1/<literal>/.
    pub filter: String,
    /// Allow publishing to topics the filter matches.
    #[arg(
        long,
        required_unless_present = "subscribe",
        conflicts_with = "subscribe"
    )]
    pub publish: bool,
    /// Allow subscribing to filters within it.
    #[arg(long)]
    pub subscribe: bool,
}

#[derive(Debug, ClapArgs)]
pub struct AuditArgs {
    /// Only this device: id, id prefix or label.
    #[arg(long)]
    pub device: Option<DeviceRef>,
    /// Only the last period: 90s, 10m, 2h, 7d; a bare number is a point in
    /// time, Unix seconds (0: everything).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<i64>,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Keep printing new entries as they come.
    #[arg(long)]
    pub follow: bool,
}

/// Parses `--since`: a period back from now (`7d`), or a point in time in
/// Unix seconds.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(unix) = s.parse::<i64>() {
        return Ok(unix);
    }
    let seconds = parse_duration(s)?;
    Ok(unix_now().saturating_sub(i64::try_from(seconds).unwrap_or(i64::MAX)))
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Adds a member, known only by a nickname and a role.
    Add {
        /// The nickname ("Ada", "Mum").
        name: MemberName,
        /// parent or child.
        #[arg(long)]
        role: Role,
    },
    /// Lists the members: role, devices, when last seen.
    List,
    /// Removes a member; their devices are revoked and removed. Asks first
    /// when they have devices; the last parent cannot be removed while
    /// others remain.
    Remove {
        /// The nickname (any case).
        name: MemberName,
        /// Do not ask; needed when there is no terminal to ask on.
        #[arg(long, short)]
        yes: bool,
    },
    /// Writes everything the hub holds about a member to a new folder:
    /// member.json, attachments/, and a README explaining each file.
    Export {
        /// The nickname.
        name: MemberName,
        /// The folder to create (must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Issues a device certificate and registers the device.
    Issue(IssueArgs),
    /// Lists the devices: owner, label, role, online or last seen,
    /// certificate expiry.
    List,
    /// Revokes a device: its connections close at once and its
    /// certificates are refused from then on.
    Revoke {
        /// The device: id, id prefix (4+ characters) or label.
        id: DeviceRef,
    },
    /// Revokes a device and deletes it from the registry.
    Remove {
        /// The device: id, id prefix (4+ characters) or label.
        id: DeviceRef,
    },
    /// What the hub observed of a device in its last sessions, judged line
    /// by line (pass, warn, fail): a toy maker's checklist. Exits 1 when a
    /// line fails.
    Check {
        /// The device: id, id prefix (4+ characters) or label.
        id: DeviceRef,
    },
}

#[derive(Debug, ClapArgs)]
pub struct IssueArgs {
    /// The member the device belongs to.
    #[arg(long, required_unless_present = "service", conflicts_with = "service")]
    pub member: Option<MemberName>,
    /// A service device (a local integration) instead of a member's.
    #[arg(long)]
    pub service: bool,
    /// A label for people ("Ada's tablet").
    #[arg(long)]
    pub label: Label,
    /// Sign this PKCS#10 request (PEM); the key stays where it was made.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "out",
        conflicts_with = "out"
    )]
    pub csr: Option<PathBuf>,
    /// With --csr: where to write the certificate (default: the request's
    /// path with the extension .pem); the CA goes to ca.pem beside it.
    #[arg(long, value_name = "FILE", requires = "csr")]
    pub cert_out: Option<PathBuf>,
    /// Make a key here and write what the reference device needs: device.key
    /// (0600), device.pem, ca.pem and device.toml (the hub's address, ports
    /// and CA fingerprint). Refuses a directory that already holds a device.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --out: replace the device already in DIR (its old certificate
    /// stays valid until `hearth device remove` or `revoke`).
    #[arg(long, requires = "out")]
    pub force: bool,
    /// The address the device reaches the hub at, written to device.toml
    /// (default: the one `hearth pair` would put in a pairing URI).
    #[arg(long)]
    pub host: Option<String>,
}
