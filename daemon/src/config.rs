//! The daemon's configuration: embedded defaults, an optional TOML file that
//! overrides them (unknown keys refused), and a semantic check.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The commented default configuration, as packaged in
/// /etc/hearth/hearth.toml and printed by `hearthd print-default-config`.
/// A unit test below keeps it equal to [`Config::default`].
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../packaging/hearth.toml");

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("config: {key}: {message}")]
    Invalid {
        /// The offending key, dotted (`dev.listen`).
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// Everything `hearthd` can be told. Every field has a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the CA, certificates and database live.
    pub data_dir: Option<PathBuf>,
    /// The mutual-TLS MQTT listener.
    pub mqtt: MqttSection,
    /// The admin socket.
    pub admin: AdminSection,
    /// Limits that protect the hub from any one client.
    pub limits: LimitsSection,
    /// The plaintext development listener for toy makers.
    pub dev: DevSection,
    /// The audit log.
    pub audit: AuditSection,
    /// EST enrollment over HTTPS.
    pub enroll: EnrollSection,
    /// mDNS/DNS-SD advertisement on the LAN.
    pub discovery: DiscoverySection,
    /// Family messaging.
    pub mailbox: MailboxSection,
    /// The hub itself.
    pub hub: HubSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// The family web app.
    pub web: WebSection,
    /// The bridge to another MQTT broker (Home Assistant's, for one).
    pub bridge: BridgeSection,
}

/// `[web]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Serve the family web app (on by default: it is how families use
    /// the hub).
    pub enabled: bool,
    /// Where, over HTTPS with the hub's server certificate.
    pub listen: SocketAddr,
    /// A browser not used for this many days is signed out.
    pub idle_days: u32,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8444)),
            idle_days: 30,
        }
    }
}

/// `[bridge]`: Hearth connects out to another MQTT broker and carries the
/// devices a parent enabled (`hearth bridge enable ID`). Off by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// Connect to the other broker.
    pub enabled: bool,
    /// What to publish there.
    pub mode: BridgeMode,
    /// The other broker's host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// TLS to the other broker. Without it, only to a loopback address or
    /// one in `allow_plain`.
    pub tls: bool,
    /// The CA certificate(s) that sign the other broker's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Hearth's client certificate for the other broker (PEM), with
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8 or SEC1).
    pub key_file: Option<PathBuf>,
    /// A user name on the other broker, with `password_file`.
    pub username: Option<String>,
    /// A file whose first line is the password (kept out of this file,
    /// which is world-readable when packaged).
    pub password_file: Option<PathBuf>,
    /// Addresses (not names) that plain TCP is allowed to, besides loopback.
    pub allow_plain: Vec<std::net::IpAddr>,
    /// Hearth's MQTT client id on the other broker.
    pub client_id: String,
    /// Home Assistant mode: where state and commands live on the other
    /// broker (`<topic_prefix>/<device id>/tele/...`, `.../cmd/...`).
    pub topic_prefix: String,
    /// Home Assistant mode: the discovery prefix it listens on.
    pub discovery_prefix: String,
    /// Messages kept while the other broker is away; beyond it the oldest
    /// is dropped (counted and audited).
    pub queue_max: usize,
    /// Bytes (topics and payloads) kept likewise, whatever the count.
    pub queue_max_bytes: usize,
    /// QoS of what the bridge publishes out (0 or 1), Home Assistant mode.
    pub qos: u8,
    /// Generic mode: what goes out.
    pub out: Vec<BridgeOut>,
    /// Generic mode: where commands come in.
    #[serde(rename = "in")]
    pub inbound: Vec<BridgeIn>,
}

/// What the bridge publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum BridgeMode {
    /// MQTT discovery, availability, state and commands for Home Assistant.
    Homeassistant,
    /// Only the `out` and `in` mappings.
    Generic,
}

/// One outgoing mapping: a bridged device's `hearth/v1/dev/<id>/<local>`
/// goes to `<remote>/<id>/<the same levels>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BridgeOut {
    /// A filter below the device's prefix: `tele/...` or `meta` only.
    pub local: String,
    /// The prefix on the other broker.
    pub remote: String,
    /// 0 or 1.
    #[serde(default = "one")]
    pub qos: u8,
}

/// One incoming mapping: `<remote>/<id>/cmd/...` on the other broker is a
/// command to bridged device `<id>` (`hearth/v1/dev/<id>/cmd/...`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BridgeIn {
    /// The prefix on the other broker.
    pub remote: String,
    /// 0 or 1.
    #[serde(default = "one")]
    pub qos: u8,
}

fn one() -> u8 {
    1
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            enabled: false,
            mode: BridgeMode::Homeassistant,
            host: "127.0.0.1".into(),
            port: 8883,
            tls: true,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            allow_plain: Vec::new(),
            client_id: "hearth".into(),
            topic_prefix: "hearth".into(),
            discovery_prefix: "homeassistant".into(),
            queue_max: 1000,
            queue_max_bytes: 16 * 1024 * 1024,
            qos: 1,
            out: Vec::new(),
            inbound: Vec::new(),
        }
    }
}

impl BridgeSection {
    /// Checks what serde cannot; only when the bridge is enabled, so a
    /// half-written section that is off never stops the hub.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if !self.enabled {
            return Ok(());
        }
        if self.host.is_empty() {
            return bad("bridge.host", "must name the other broker".into());
        }
        if !self.tls {
            let allowed = match self.host.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.is_loopback() || self.allow_plain.contains(&ip),
                Err(_) => self.host == "localhost",
            };
            if !allowed {
                return bad(
                    "bridge.tls",
                    format!(
                        "plain TCP to {} would carry the household's data readable on the                          network; use TLS (ca_file), or a loopback address, or list the                          address in bridge.allow_plain",
                        self.host
                    ),
                );
            }
        } else if self.ca_file.is_none() {
            return bad(
                "bridge.ca_file",
                "TLS needs the CA that signed the other broker's certificate".into(),
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad(
                "bridge.key_file",
                "cert_file and key_file go together".into(),
            );
        }
        if self.password_file.is_some() && self.username.is_none() {
            return bad("bridge.username", "password_file needs a username".into());
        }
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            return bad("bridge.client_id", "must be 1 to 64 characters".into());
        }
        if !(1..=1_000_000).contains(&self.queue_max) {
            return bad("bridge.queue_max", "must be between 1 and 1000000".into());
        }
        if !(4096..=1 << 30).contains(&self.queue_max_bytes) {
            return bad(
                "bridge.queue_max_bytes",
                "must be between 4096 and 1073741824".into(),
            );
        }
        if self.qos > 1
            || self.out.iter().any(|o| o.qos > 1)
            || self.inbound.iter().any(|i| i.qos > 1)
        {
            return bad("bridge.qos", "must be 0 or 1".into());
        }
        for (key, prefix) in [
            ("bridge.topic_prefix", &self.topic_prefix),
            ("bridge.discovery_prefix", &self.discovery_prefix),
        ]
        .into_iter()
        .chain(self.out.iter().map(|o| ("bridge.out", &o.remote)))
        .chain(self.inbound.iter().map(|i| ("bridge.in", &i.remote)))
        {
            if let Err(why) = check_remote_prefix(prefix) {
                return bad(key, format!("{prefix:?}: {why}"));
            }
        }
        for out in &self.out {
            if let Err(why) = check_local_filter(&out.local) {
                return bad("bridge.out", format!("{:?}: {why}", out.local));
            }
        }
        if self.mode == BridgeMode::Generic && self.out.is_empty() && self.inbound.is_empty() {
            return bad(
                "bridge.mode",
                "generic mode carries only the out and in mappings, and none is given".into(),
            );
        }
        Ok(())
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serve `/metrics` (off by default).
    pub enabled: bool,
    /// Where; loopback unless you choose otherwise (the figures carry
    /// no names, but they say when the household is active).
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// `[hub]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// The name in the server certificate (CN and a DNS name, with
    /// `.local`); by default `hearth-<8 hex of the CA fingerprint>`, never
    /// the OS host name.
    pub name: Option<String>,
}

/// `[mailbox]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct MailboxSection {
    /// Seconds an undelivered message is kept (default 7 days).
    pub expiry_secs: u64,
    /// Largest text, in bytes.
    pub max_text_bytes: usize,
    /// Largest picture, in bytes (before base64).
    pub max_image_bytes: usize,
    /// Largest voice note, in bytes (before base64).
    pub max_audio_bytes: usize,
    /// Messages that may wait for one device.
    pub max_pending_per_device: u64,
    /// Bytes one device may send in a day.
    pub max_sender_bytes_per_day: u64,
    /// Bytes that may wait for one device.
    pub max_pending_bytes_per_device: u64,
    /// Bytes all stored messages may take together.
    pub max_total_bytes: u64,
    /// Below this much free space on the data dir's filesystem, new
    /// messages are refused.
    pub min_free_bytes: u64,
}

impl MailboxSection {
    /// The limits as they apply: an attachment travels base64 in a JSON
    /// envelope in one MQTT packet, so none can exceed what
    /// `limits.max_payload` carries.
    pub fn within(&self, max_payload: usize) -> MailboxSection {
        let fits = max_payload.saturating_sub(4096) / 4 * 3;
        MailboxSection {
            max_text_bytes: self.max_text_bytes.min(fits),
            max_image_bytes: self.max_image_bytes.min(fits),
            max_audio_bytes: self.max_audio_bytes.min(fits),
            ..self.clone()
        }
    }
}

impl Default for MailboxSection {
    fn default() -> Self {
        MailboxSection {
            expiry_secs: 7 * 86_400,
            max_text_bytes: 8 * 1024,
            max_image_bytes: 5 * 1024 * 1024,
            max_audio_bytes: 2 * 1024 * 1024,
            max_pending_per_device: 500,
            max_sender_bytes_per_day: 64 * 1024 * 1024,
            max_pending_bytes_per_device: 128 * 1024 * 1024,
            max_total_bytes: 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[enroll]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct EnrollSection {
    /// Address of the EST (HTTPS) listener.
    pub listen: SocketAddr,
}

impl Default for EnrollSection {
    fn default() -> Self {
        EnrollSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
        }
    }
}

/// `[discovery]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySection {
    /// Advertise `_hearth._tcp` and `_secure-mqtt._tcp` over mDNS.
    pub enabled: bool,
    /// Interface names to advertise on; empty means every interface
    /// except loopback.
    pub interfaces: Vec<String>,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        DiscoverySection {
            enabled: true,
            interfaces: Vec::new(),
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Days an audit entry is kept.
    pub retention_days: u32,
    /// Entries written per minute about peers no registered device is known
    /// for, all together; beyond it, one row counts the rest. (Devices are
    /// bounded one by one, and only an administrator adds devices.)
    pub max_unidentified_entries_per_minute: u32,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            retention_days: 30,
            max_unidentified_entries_per_minute: 600,
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// Address of the mutual-TLS listener.
    pub listen: SocketAddr,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Path of the admin socket; default `$RUNTIME_DIRECTORY/admin.sock`,
    /// else `<data dir>/admin.sock`.
    pub socket: Option<PathBuf>,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Connections served at once (TLS and dev listeners together).
    pub max_connections: usize,
    /// Largest MQTT packet a client may send, in bytes.
    pub max_payload: usize,
    /// Seconds from TCP accept to a complete TLS handshake and CONNECT.
    pub handshake_timeout_secs: u64,
    /// Retained messages one device may hold.
    pub max_retained_per_device: usize,
    /// Bytes (topic and payload) of one device's retained messages.
    pub max_retained_bytes_per_device: usize,
    /// Retained messages in the whole hub.
    pub max_retained: usize,
    /// Bytes of all retained messages in the hub.
    pub max_retained_bytes: usize,
    /// Filters one client session may be subscribed to at once.
    pub max_subscriptions_per_client: usize,
    /// Distinct topic names the router remembers the matching filters of
    /// (beyond it an arbitrary one is forgotten and matched again when it
    /// recurs; topics over 256 bytes are never remembered).
    pub max_router_topics: usize,
    /// The longest a client's session (its subscriptions and queued
    /// messages) outlives its connection, whatever the client asked for.
    pub max_session_expiry_secs: u64,
    /// Bytes of messages kept for one filter's subscribers, connected or
    /// offline (a session's queue is its filters'); beyond it the oldest
    /// half goes.
    pub max_queued_bytes_per_filter: usize,
    /// Bytes of messages kept for all subscribers together; beyond it the
    /// oldest messages of the longest queue go.
    pub max_queued_bytes: usize,
    /// QoS 1 and 2 messages in flight per connection, each way: what the hub
    /// sends a client before it acknowledges (with the client's own Receive
    /// Maximum, if lower), and the Receive Maximum the hub gives a v5
    /// client (a client sending more is disconnected, 0x93).
    pub max_inflight: usize,
    /// Bytes of large packets (over 64 KiB) being received from clients or
    /// sent to them at once, the whole hub together, each counted twice (for
    /// its copy on the broker's side); a sender waits for room (at most
    /// 30 s), a delivery waits its turn.
    pub max_large_packet_bytes: usize,
    /// Connections not yet authenticated that each listener (MQTT, EST)
    /// holds at once, apart from `max_connections`.
    pub max_unauthenticated: usize,
    /// Of those, how many one source (IPv4 address, IPv6 /64) may hold.
    pub max_unauthenticated_per_source: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 1024,
            max_payload: 8 * 1024 * 1024,
            handshake_timeout_secs: 10,
            max_retained_per_device: 100,
            max_retained_bytes_per_device: 1024 * 1024,
            max_retained: 10_000,
            max_retained_bytes: 32 * 1024 * 1024,
            max_subscriptions_per_client: 128,
            max_router_topics: 4096,
            max_session_expiry_secs: 7 * 24 * 3600,
            max_queued_bytes_per_filter: 8 * 1024 * 1024,
            max_queued_bytes: 64 * 1024 * 1024,
            max_inflight: 100,
            max_large_packet_bytes: 128 * 1024 * 1024,
            max_unauthenticated: 128,
            max_unauthenticated_per_source: 8,
        }
    }
}

impl LimitsSection {
    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

/// `[dev]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct DevSection {
    /// Plaintext listener, loopback only; off unless set.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// What the hub publishes on `hearth/v1/hub/info`: the limits as they
    /// apply (the mailbox's within what one packet carries).
    pub fn hub_info(&self) -> hearth_protocol::hub_info::HubInfo {
        let mailbox = self.mailbox.within(self.limits.max_payload);
        hearth_protocol::hub_info::HubInfo {
            v: hearth_protocol::mailbox::VERSION,
            hub_version: env!("CARGO_PKG_VERSION").to_owned(),
            max_packet_bytes: self.limits.max_payload,
            mailbox: hearth_protocol::hub_info::MailboxLimits {
                max_text_bytes: mailbox.max_text_bytes,
                max_image_bytes: mailbox.max_image_bytes,
                max_audio_bytes: mailbox.max_audio_bytes,
            },
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.check()?;
        Ok(config)
    }

    /// Parses TOML text; the error names the key and is one line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    match key_at(text, line) {
                        Some(key) => format!("line {line}: {key}: {message}"),
                        None => format!("line {line}: {message}"),
                    }
                }
                None => message,
            }
        })
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.hub.name {
            // One DNS label, so `<name>.local` is a valid server name.
            let ok = !name.is_empty()
                && name.len() <= 63
                && !name.starts_with('-')
                && !name.ends_with('-')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "hub.name",
                    message: "must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
                        .into(),
                });
            }
        }
        if let Some(dev) = self.dev.listen {
            if !dev.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    key: "dev.listen",
                    message: format!(
                        "{dev} is not a loopback address; the plaintext listener binds only 127.0.0.0/8 or ::1"
                    ),
                });
            }
        }
        if self.web.idle_days == 0 || self.web.idle_days > 366 {
            return Err(ConfigError::Invalid {
                key: "web.idle_days",
                message: "must be between 1 and 366 days".into(),
            });
        }
        if self.limits.max_connections == 0 || self.limits.max_connections > 100_000 {
            return Err(ConfigError::Invalid {
                key: "limits.max_connections",
                message: "must be between 1 and 100000".into(),
            });
        }
        if self.limits.max_payload < 1024 || self.limits.max_payload > 256 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.max_payload",
                message: "must be between 1024 bytes and 256 MiB".into(),
            });
        }
        if self.limits.handshake_timeout_secs == 0 || self.limits.handshake_timeout_secs > 300 {
            return Err(ConfigError::Invalid {
                key: "limits.handshake_timeout_secs",
                message: "must be between 1 and 300 seconds".into(),
            });
        }
        let l = &self.limits;
        for (key, value, low, high) in [
            (
                "limits.max_retained_per_device",
                l.max_retained_per_device,
                1,
                100_000,
            ),
            (
                "limits.max_retained_bytes_per_device",
                l.max_retained_bytes_per_device,
                1024,
                1 << 30,
            ),
            ("limits.max_retained", l.max_retained, 1, 1_000_000),
            (
                "limits.max_retained_bytes",
                l.max_retained_bytes,
                1024,
                4_000_000_000,
            ),
            (
                "limits.max_subscriptions_per_client",
                l.max_subscriptions_per_client,
                1,
                10_000,
            ),
            (
                "limits.max_router_topics",
                l.max_router_topics,
                16,
                1_000_000,
            ),
            (
                "limits.max_queued_bytes_per_filter",
                l.max_queued_bytes_per_filter,
                4096,
                1 << 30,
            ),
            ("limits.max_queued_bytes", l.max_queued_bytes, 4096, 1 << 34),
            // rumqttd's outgoing window (and its packet ids) is 100.
            ("limits.max_inflight", l.max_inflight, 1, 100),
            // At least one largest packet, counted twice, must fit.
            (
                "limits.max_large_packet_bytes",
                l.max_large_packet_bytes,
                2 * l.max_payload,
                1 << 34,
            ),
            (
                "limits.max_session_expiry_secs",
                l.max_session_expiry_secs as usize,
                1,
                365 * 24 * 3600,
            ),
        ] {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be between {low} and {high}"),
                });
            }
        }
        let limits = &self.limits;
        if limits.max_unauthenticated == 0 || limits.max_unauthenticated > 100_000 {
            return Err(ConfigError::Invalid {
                key: "limits.max_unauthenticated",
                message: "must be between 1 and 100000".into(),
            });
        }
        if limits.max_unauthenticated_per_source == 0
            || limits.max_unauthenticated_per_source > limits.max_unauthenticated
        {
            return Err(ConfigError::Invalid {
                key: "limits.max_unauthenticated_per_source",
                message: "must be between 1 and limits.max_unauthenticated".into(),
            });
        }
        if let Some(bad) = self
            .discovery
            .interfaces
            .iter()
            .find(|name| name.is_empty() || name.len() > 15 || name.contains(['/', ' ']))
        {
            return Err(ConfigError::Invalid {
                key: "discovery.interfaces",
                message: format!("{bad:?} is not an interface name"),
            });
        }
        let mailbox = &self.mailbox;
        if mailbox.expiry_secs < 5 || mailbox.expiry_secs > 90 * 86_400 {
            return Err(ConfigError::Invalid {
                key: "mailbox.expiry_secs",
                message: "must be between 5 seconds and 90 days".into(),
            });
        }
        if mailbox.max_text_bytes == 0 || mailbox.max_pending_per_device == 0 {
            return Err(ConfigError::Invalid {
                key: if mailbox.max_text_bytes == 0 {
                    "mailbox.max_text_bytes"
                } else {
                    "mailbox.max_pending_per_device"
                },
                message: "must be at least 1".into(),
            });
        }
        if mailbox.max_sender_bytes_per_day == 0
            || mailbox.max_pending_bytes_per_device == 0
            || mailbox.max_total_bytes == 0
        {
            return Err(ConfigError::Invalid {
                key: if mailbox.max_sender_bytes_per_day == 0 {
                    "mailbox.max_sender_bytes_per_day"
                } else if mailbox.max_pending_bytes_per_device == 0 {
                    "mailbox.max_pending_bytes_per_device"
                } else {
                    "mailbox.max_total_bytes"
                },
                message: "must be at least 1".into(),
            });
        }
        if self.audit.max_unidentified_entries_per_minute < 10
            || self.audit.max_unidentified_entries_per_minute > 100_000
        {
            return Err(ConfigError::Invalid {
                key: "audit.max_unidentified_entries_per_minute",
                message: "must be between 10 and 100000".into(),
            });
        }
        if self.audit.retention_days == 0 || self.audit.retention_days > 3650 {
            return Err(ConfigError::Invalid {
                key: "audit.retention_days",
                message: "must be between 1 and 3650".into(),
            });
        }
        self.bridge.check()?;
        Ok(())
    }

    /// The data dir, absolute: the config's, else the default rule of
    /// [`crate::datadir::default_dir`] (`$STATE_DIRECTORY`, `/var/lib/hearth`
    /// for root, `~/.local/state/hearth` for others). A relative path given
    /// in the config or on the command line is taken from the working
    /// directory, once, here.
    pub fn resolved_data_dir(&self) -> Result<PathBuf, String> {
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => crate::datadir::default_dir()?,
        };
        std::path::absolute(&dir).map_err(|e| format!("data dir {}: {e}", dir.display()))
    }

    /// The admin socket path, given the data dir.
    pub fn resolved_admin_socket(&self, data_dir: &Path) -> PathBuf {
        if let Some(path) = &self.admin.socket {
            return path.clone();
        }
        match std::env::var_os("RUNTIME_DIRECTORY") {
            Some(dirs) if !dirs.is_empty() => {
                let dirs = dirs.to_string_lossy().into_owned();
                PathBuf::from(dirs.split(':').next().unwrap_or_default()).join("admin.sock")
            }
            _ => data_dir.join("admin.sock"),
        }
    }
}

/// Why a prefix on the other broker is not usable.
pub fn check_remote_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() || prefix.len() > 128 {
        return Err("must be 1 to 128 characters");
    }
    if prefix.starts_with('$') || prefix.starts_with('/') || prefix.ends_with('/') {
        return Err("may not start with $ or /, nor end with /");
    }
    if prefix.contains(['+', '#', '\0']) || prefix.split('/').any(str::is_empty) {
        return Err("must be plain topic levels, without wildcards or empty levels");
    }
    Ok(())
}

/// Why a local filter of an `out` mapping is not usable: it must stay
/// below `tele/` or be `meta`, so no config reaches a device's inbox,
/// outbox, commands or state.
pub fn check_local_filter(filter: &str) -> Result<(), &'static str> {
    hearth_protocol::filter::check_filter(filter).map_err(|_| "not a valid MQTT filter")?;
    let mut levels = filter.split('/');
    match (levels.next(), filter) {
        (Some("tele"), _) if !filter.contains("..") => Ok(()),
        (_, "meta") => Ok(()),
        _ => Err("only tele/... or meta may be bridged (never inbox, outbox or cmd)"),
    }
}

/// The dotted key (`mqtt.listen`) set on 1-based line `line` of a TOML
/// text, for error messages; `None` when that line sets no simple key.
fn key_at(text: &str, line: usize) -> Option<String> {
    let mut section = None;
    for (number, content) in text.lines().enumerate() {
        let content = content.trim();
        if number + 1 == line {
            let (key, _) = content.split_once('=')?;
            let key = key.trim();
            if key.is_empty() || key.starts_with(['[', '#']) {
                return None;
            }
            return Some(match section {
                Some(section) => format!("{section}.{key}"),
                None => key.to_owned(),
            });
        }
        if let Some(header) = content.strip_prefix('[') {
            section = header.split_once(']').map(|(name, _)| name.trim());
        }
    }
    None
}

/// Every setting's dotted key (each optional one set, so none is left
/// out), for the tests that keep the packaged file and the reload's lists
/// complete.
#[cfg(test)]
pub(crate) fn every_key() -> Vec<String> {
    let mut all = Config {
        data_dir: Some("/x".into()),
        ..Config::default()
    };
    all.admin.socket = Some("/x".into());
    all.dev.listen = Some("127.0.0.1:1".parse().unwrap());
    all.hub.name = Some("x".into());
    all.bridge.ca_file = Some("/x".into());
    all.bridge.cert_file = Some("/x".into());
    all.bridge.key_file = Some("/x".into());
    all.bridge.username = Some("x".into());
    all.bridge.password_file = Some("/x".into());
    table_keys(&toml::Table::try_from(&all).unwrap())
}

/// The dotted keys of a TOML table's values.
#[cfg(test)]
pub(crate) fn table_keys(table: &toml::Table) -> Vec<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let key = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => walk(&format!("{key}."), inner, out),
                _ => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_plain_levels() {
        for good in ["hearth", "school/toys", "a-b_c"] {
            check_remote_prefix(good).unwrap();
        }
        for bad in ["", "$SYS", "/x", "x/", "a/+/b", "a/#", "a//b"] {
            assert!(check_remote_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_filters_stay_in_telemetry_or_the_description() {
        for good in ["tele/#", "tele/+", "tele/battery", "meta"] {
            check_local_filter(good).unwrap();
        }
        for bad in [
            "inbox",
            "outbox",
            "cmd/#",
            "#",
            "+",
            "+/battery",
            "state",
            "tele/#/x",
        ] {
            assert!(check_local_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.mqtt.listen, "0.0.0.0:8883".parse().unwrap());
        assert_eq!(c.limits.handshake_timeout(), Duration::from_secs(10));
        assert!(c.dev.listen.is_none());
        assert_eq!(c.enroll.listen, "0.0.0.0:8443".parse().unwrap());
        assert!(c.discovery.enabled);
        assert!(c.discovery.interfaces.is_empty());
        c.check().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_and_named() {
        let err = Config::parse("[mqtt]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        assert!(err.contains("listen_port"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_bad_address_is_refused() {
        let err = Config::parse("[mqtt]\nlisten = \"nowhere:88x\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn dev_listener_must_be_loopback() {
        let c = Config::parse("[dev]\nlisten = \"0.0.0.0:1883\"\n").unwrap();
        let err = c.check().unwrap_err().to_string();
        assert!(err.contains("dev.listen"), "{err}");
        let c = Config::parse("[dev]\nlisten = \"[::1]:1883\"\n").unwrap();
        c.check().unwrap();
    }

    #[test]
    fn errors_name_the_dotted_key() {
        let err = Config::parse("# x\n[mqtt]\nlisten = \"nowhere:88x\"\n").unwrap_err();
        assert!(err.starts_with("line 3: mqtt.listen: "), "{err}");
        let err = Config::parse("[limits]\nmax_payload = \"big\"\n").unwrap_err();
        assert!(err.starts_with("line 2: limits.max_payload: "), "{err}");
        let err = Config::parse("data_dir = 3\n").unwrap_err();
        assert!(err.starts_with("line 1: data_dir: "), "{err}");
    }

    #[test]
    fn the_bridge_refuses_plain_tcp_off_loopback_and_mappings_into_private_topics() {
        let on =
            |extra: &str| Config::parse(&format!("[bridge]\nenabled = true\n{extra}")).unwrap();
        let err = on("tls = false\nhost = \"192.0.2.7\"\n")
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bridge.tls"), "{err}");
        on("tls = false\nhost = \"127.0.0.1\"\n").check().unwrap();
        on("tls = false\nhost = \"192.0.2.7\"\nallow_plain = [\"192.0.2.7\"]\n")
            .check()
            .unwrap();
        let err = on("").check().unwrap_err().to_string();
        assert!(err.contains("bridge.ca_file"), "{err}");
        for local in ["inbox", "outbox", "cmd/#", "#", "+/x", "tele/../inbox"] {
            let c = on(&format!(
                "tls = false\nmode = \"generic\"\nout = [{{ local = \"{local}\", remote = \"x\" }}]\n"
            ));
            let err = c.check().unwrap_err().to_string();
            assert!(err.contains("bridge.out"), "{local}: {err}");
        }
        let c = on("tls = false\nmode = \"generic\"\nout = [{ local = \"tele/#\", remote = \"school/toys\" }]\n");
        c.check().unwrap();
        let err = on("tls = false\ntopic_prefix = \"a/#\"\n")
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bridge.topic_prefix"), "{err}");
        // Off, nothing about the section is checked.
        Config::parse("[bridge]\ntls = false\nhost = \"192.0.2.7\"\n")
            .unwrap()
            .check()
            .unwrap();
    }

    /// The packaged file with every `#key = value` and `#[section]` line
    /// uncommented: what an administrator gets by uncommenting everything.
    fn uncommented_default_file() -> String {
        DEFAULT_CONFIG_TOML
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.starts_with(|c: char| c.is_ascii_lowercase()) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_packaged_file_as_shipped_means_all_defaults() {
        let c = Config::parse(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_packaged_file_states_exactly_the_defaults() {
        let text = uncommented_default_file();
        let mut c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        c.check().unwrap();
        // Settings without a fixed default show what systemd's
        // environment (or the example) gives; the rest must equal the code.
        assert_eq!(c.data_dir.take(), Some("/var/lib/hearth".into()));
        assert_eq!(c.admin.socket.take(), Some("/run/hearth/admin.sock".into()));
        assert_eq!(c.dev.listen.take(), Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(c.hub.name.take(), Some("living-room-hub".into()));
        assert_eq!(
            c.bridge.ca_file.take(),
            Some("/etc/hearth/bridge-ca.pem".into())
        );
        assert_eq!(
            c.bridge.cert_file.take(),
            Some("/etc/hearth/bridge.pem".into())
        );
        assert_eq!(
            c.bridge.key_file.take(),
            Some("/etc/hearth/bridge.key".into())
        );
        assert_eq!(c.bridge.username.take(), Some("hearth".into()));
        assert_eq!(
            c.bridge.password_file.take(),
            Some("/etc/hearth/bridge-password".into())
        );
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_packaged_file_lists_every_setting() {
        let mut want = every_key();
        let file: toml::Table = toml::from_str(&uncommented_default_file()).unwrap();
        let mut have = table_keys(&file);
        want.sort();
        have.sort();
        assert_eq!(have, want, "packaging/hearth.toml must list every setting");
    }
}
