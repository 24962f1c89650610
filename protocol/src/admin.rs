//! Messages of the admin socket: one JSON request per line from the `hearth`
//! CLI, one JSON response per line from the daemon.

use serde::{Deserialize, Serialize};

use crate::household::{Owner, Role};
use crate::id::{DeviceId, Label, MemberName};
use crate::policy::Direction;

/// What an administrator asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AdminRequest {
    /// Uptime, version, listeners and connected devices.
    Status,
    /// Adds a household member.
    MemberAdd {
        /// The nickname.
        name: MemberName,
        /// Parent or child.
        role: Role,
    },
    /// Lists the members.
    MemberList,
    /// Signs a device's certificate signing request and registers the device.
    DeviceIssue {
        /// Who the device belongs to.
        owner: Owner,
        /// A label for people.
        label: Label,
        /// The PKCS#10 request, PEM. The key stays where it was made.
        csr_pem: String,
        /// The host the device will reach the hub at (its `device.toml`);
        /// by default the one a pairing URI would name.
        #[serde(default)]
        host: Option<String>,
    },
    /// Lists the devices.
    DeviceList,
    /// Revokes a device: closes its connections, refuses its certificates.
    DeviceRevoke {
        /// The device.
        id: DeviceId,
    },
    /// Revokes and deletes a device.
    DeviceRemove {
        /// The device.
        id: DeviceId,
    },
    /// What the hub observed of a device, judged line by line.
    DeviceCheck {
        /// The device.
        id: DeviceId,
    },
    /// Removes a member and revokes and deletes their devices.
    MemberRemove {
        /// The nickname.
        name: MemberName,
    },
    /// Grants a service device a filter.
    Grant {
        /// The service device.
        id: DeviceId,
        /// The filter, literal.
        filter: String,
        /// Publish or subscribe.
        direction: Direction,
    },
    /// Takes a grant back.
    RevokeGrant {
        /// The service device.
        id: DeviceId,
        /// The filter, literal.
        filter: String,
        /// Publish or subscribe.
        direction: Direction,
    },
    /// Opens a pairing window for one device.
    PairOpen {
        /// The member the device will belong to.
        member: MemberName,
        /// Its label.
        label: Label,
        /// How long the window stays open, seconds.
        ttl_secs: u64,
        /// The host name or address to put in the URI (default: the hub's
        /// first LAN address).
        host: Option<String>,
    },
    /// Lists the open pairing windows.
    PairList,
    /// Closes one pairing window, or all.
    PairCancel {
        /// The window, or every window when absent.
        id: Option<u32>,
    },
    /// Lifts a pairing lockout (too many wrong tokens) from an address.
    PairUnlock {
        /// The locked-out address (for IPv6, any address of its /64).
        address: std::net::IpAddr,
    },
    /// What the mailbox holds: counts and ages per device, no content.
    MailboxStatus,
    /// Allows or denies messaging between two members, both ways.
    ContactSet {
        /// One member.
        a: MemberName,
        /// The other.
        b: MemberName,
        /// Allowed or denied.
        allowed: bool,
    },
    /// Lists the explicit contact rules.
    ContactList,
    /// Reads the audit log.
    Audit {
        /// Only this device's entries.
        device: Option<DeviceId>,
        /// Only entries at or after this Unix time.
        since: Option<i64>,
        /// Only entries with a larger id (for following).
        after_id: Option<i64>,
        /// At most this many (the newest).
        limit: u32,
    },
    /// What the hub holds, per kind of data (no content).
    PrivacyReport {
        /// Only what concerns this member and their devices.
        member: Option<MemberName>,
    },
    /// Everything held about a member, for `hearth member export`.
    MemberExport {
        /// The nickname.
        name: MemberName,
    },
    /// A one-time link that joins a browser to the household as `member`'s
    /// (the family web app, docs/WEB.md).
    WebLink {
        /// Whose browser it will be.
        member: MemberName,
        /// The browser's label, e.g. "Ada's phone".
        label: Label,
        /// The host name or address to put in the link (default: the
        /// hub's first LAN address).
        #[serde(default)]
        host: Option<String>,
    },
    /// One `age`-encrypted backup: database snapshot, CA and mailbox key.
    /// Exactly one of the two is given.
    Backup {
        /// Encrypt to this passphrase (scrypt).
        passphrase: Option<String>,
        /// Encrypt to this age recipient (`age1...`).
        recipient: Option<String>,
    },
    /// Lets the bridge carry a device's data to the other broker.
    BridgeEnable {
        /// The device.
        id: DeviceId,
    },
    /// Stops bridging a device and takes back what the bridge published
    /// about it (its discovery entries).
    BridgeDisable {
        /// The device.
        id: DeviceId,
    },
    /// Lists the devices a parent enabled bridging for.
    BridgeList,
}

/// The daemon's answer to one [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AdminResponse {
    /// Answer to [`AdminRequest::Status`].
    Status(StatusReport),
    /// A member was added.
    Member(MemberInfo),
    /// Answer to [`AdminRequest::MemberList`].
    Members {
        /// Every member, by nickname.
        members: Vec<MemberInfo>,
    },
    /// A device certificate was issued.
    DeviceIssued(IssuedDevice),
    /// Answer to [`AdminRequest::BridgeList`].
    Bridged {
        /// The devices enabled for bridging, by id.
        devices: Vec<DeviceId>,
        /// Whether the bridge is on in the config (`[bridge] enabled`).
        enabled: bool,
        /// Whether it is connected to the other broker now.
        connected: bool,
    },
    /// Answer to [`AdminRequest::DeviceList`].
    Devices {
        /// Every device, oldest first.
        devices: Vec<DeviceInfo>,
    },
    /// Answer to [`AdminRequest::DeviceCheck`].
    DeviceChecked {
        /// The device.
        id: DeviceId,
        /// One line per thing checked.
        lines: Vec<CheckLine>,
    },
    /// The request was carried out; the text says what happened.
    Done {
        /// One line for a person.
        message: String,
    },
    /// A pairing window was opened.
    PairOpened(PairingTicket),
    /// Answer to [`AdminRequest::WebLink`].
    WebLink(WebLinkTicket),
    /// Answer to [`AdminRequest::MailboxStatus`].
    Mailbox {
        /// One entry per device with messages waiting.
        pending: Vec<MailboxPending>,
    },
    /// Answer to [`AdminRequest::ContactList`].
    Contacts {
        /// The explicit rules; the defaults apply to every other pair.
        rules: Vec<ContactRule>,
    },
    /// Answer to [`AdminRequest::PairList`].
    PairWindows {
        /// The open windows.
        windows: Vec<PairingWindowInfo>,
    },
    /// Answer to [`AdminRequest::Audit`].
    Audit {
        /// Oldest first.
        entries: Vec<AuditEntry>,
    },
    /// Answer to [`AdminRequest::PrivacyReport`].
    Privacy(PrivacyReport),
    /// Answer to [`AdminRequest::MemberExport`].
    MemberExport {
        /// Everything held about the member, as one JSON document.
        data: serde_json::Value,
        /// Attachments of messages waiting, by file name, base64.
        attachments: Vec<(String, String)>,
    },
    /// Answer to [`AdminRequest::Backup`]: the encrypted file, base64.
    Backup {
        /// The age file, base64.
        age_base64: String,
    },
    /// The request was refused or failed; the message says why.
    Error {
        /// One line for a person.
        message: String,
    },
}

/// What the hub holds, in words a parent understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// The member it is about, or the whole household.
    pub member: Option<MemberName>,
    /// One line per kind of data.
    pub items: Vec<PrivacyItem>,
    /// What the hub never stores.
    pub never_stored: Vec<String>,
}

/// One kind of data the hub holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyItem {
    /// What it is ("messages waiting", "audit entries", ...).
    pub kind: String,
    /// How many.
    pub count: u64,
    /// How many bytes (sealed, for messages).
    pub bytes: u64,
    /// The oldest, Unix seconds.
    pub oldest: Option<i64>,
    /// How long it is kept.
    pub kept: String,
}

/// The daemon's health and what it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Every listener with the address it is bound to.
    pub listeners: Vec<ListenerInfo>,
    /// Devices connected through the edge now.
    pub connected: Vec<DeviceId>,
    /// Where the settings in force came from and when (absent from a
    /// daemon older than reloading).
    #[serde(default)]
    pub config: Option<ConfigLoaded>,
}

/// Where the daemon's settings in force came from and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigLoaded {
    /// The config file it was started with; `None` on the embedded
    /// defaults.
    pub file: Option<String>,
    /// When the settings in force were read, Unix seconds.
    pub loaded_at: i64,
    /// Reloads applied since start.
    pub reloads: u64,
    /// The last reload refused since the last one applied: when, and why
    /// (the message a start with that file prints).
    pub refused: Option<RefusedReload>,
}

/// A reload that was refused; the settings before it stayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReload {
    /// When, Unix seconds.
    pub at: i64,
    /// Why: the same message a start with that file prints.
    pub message: String,
}

/// One bound listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerInfo {
    /// `mqtt` (mutual TLS), `dev` (plaintext, loopback only) or `admin`.
    pub name: String,
    /// The bound address (`ip:port`, or a socket path).
    pub address: String,
}

/// A member as the admin CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The nickname.
    pub name: MemberName,
    /// Parent or child.
    pub role: Role,
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Its current certificate is accepted.
    Active,
    /// Refused for good.
    Revoked,
}

/// What a registry entry is: a device with a certificate, or a browser
/// with a session secret (the family web app).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A toy, phone app or service that connects over mutual-TLS MQTT.
    #[default]
    Device,
    /// A web browser signed in to the family web app.
    Browser,
}

/// A device as the admin CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device id (also the MQTT client id).
    pub id: DeviceId,
    /// Who it belongs to.
    pub owner: Owner,
    /// A label for people.
    pub label: Label,
    /// Active or revoked.
    pub status: DeviceStatus,
    /// SHA-256 of its current certificate, hex.
    pub cert_sha256: String,
    /// When it was registered, Unix seconds.
    pub created_at: i64,
    /// When it last connected, Unix seconds.
    pub last_seen: Option<i64>,
    /// When its current certificate expires, Unix seconds (absent from
    /// older hubs' answers).
    #[serde(default)]
    pub cert_not_after: Option<i64>,
    /// A device or a browser (absent from older hubs' answers: a device).
    #[serde(default)]
    pub kind: DeviceKind,
}

/// What `device issue` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedDevice {
    /// The new device's id.
    pub device_id: DeviceId,
    /// The device certificate, PEM.
    pub certificate_pem: String,
    /// The hub CA certificate, PEM (the trust anchor for the hub).
    pub ca_pem: String,
    /// Where and how the device reaches the hub, for its `device.toml`
    /// (absent from older hubs' answers).
    #[serde(default)]
    pub settings: Option<crate::pairing::DeviceSettings>,
}

/// What `hearth web-link` prints: the only time the join code is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebLinkTicket {
    /// The link to open on the phone; the one-time code is in its
    /// fragment, which browsers never send to a server.
    pub url: String,
    /// SHA-256 of the hub CA certificate, hex: what the phone's owner
    /// compares before trusting the hub.
    pub ca_sha256: String,
    /// When the code stops working, Unix seconds.
    pub expires_at: i64,
}

/// What `hearth pair` prints: the only time the token is ever shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingTicket {
    /// The window's number.
    pub id: u32,
    /// The one-time token.
    pub token: String,
    /// The `hearth://pair?...` URI (also for the QR code).
    pub uri: String,
    /// When the window closes, Unix seconds.
    pub expires_at: i64,
}

/// An open pairing window (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingWindowInfo {
    /// The window's number.
    pub id: u32,
    /// The member the device will belong to.
    pub member: MemberName,
    /// Its label.
    pub label: Label,
    /// When the window closes, Unix seconds.
    pub expires_at: i64,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// The device concerned, if known.
    pub device: Option<DeviceId>,
    /// `connect`, `disconnect`, `handshake-refused`, `connect-refused`,
    /// `denied`, `disconnected`, `suppressed`, `admin` or `bridge`.
    pub event: String,
    /// What was attempted (`publish`, `subscribe`, `device-revoke`, ...).
    pub action: Option<String>,
    /// The topic or filter, if any.
    pub topic: Option<String>,
    /// Why it was refused, or details.
    pub reason: Option<String>,
    /// The peer address, for refused handshakes.
    pub peer: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let req = AdminRequest::MemberAdd {
            name: "Ada".parse().unwrap(),
            role: Role::Child,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"type":"member_add","name":"Ada","role":"child"}"#);
        assert_eq!(serde_json::from_str::<AdminRequest>(&json).unwrap(), req);
    }

    #[test]
    fn invalid_names_are_refused_when_decoding() {
        let json = r#"{"type":"member_add","name":"a/#","role":"child"}"#;
        assert!(serde_json::from_str::<AdminRequest>(json).is_err());
    }

    #[test]
    fn owner_encodes_member_and_service() {
        let member = Owner::Member("Mum".parse().unwrap());
        assert_eq!(
            serde_json::to_string(&member).unwrap(),
            r#"{"kind":"member","member":"Mum"}"#
        );
        assert_eq!(
            serde_json::to_string(&Owner::Service).unwrap(),
            r#"{"kind":"service"}"#
        );
    }
}

/// Messages waiting for one device (no content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxPending {
    /// The recipient device.
    pub device: DeviceId,
    /// How many messages wait for it.
    pub count: u64,
    /// When the oldest was sent, Unix seconds.
    pub oldest_sent_at: i64,
    /// When the first of them expires, Unix seconds.
    pub next_expiry: i64,
}

/// An administrator's rule on who may message whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRule {
    /// The sender member.
    pub from: MemberName,
    /// The recipient member.
    pub to: MemberName,
    /// Allowed or denied.
    pub allowed: bool,
}

/// One line of `hearth device check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckLine {
    /// What is checked ("TLS", "acknowledgements"...).
    pub item: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words for a toy maker.
    pub reason: String,
}

/// How a line of `hearth device check` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As the hub expects.
    Pass,
    /// Works, but should change.
    Warn,
    /// Does not work as a Hearth device must.
    Fail,
}
