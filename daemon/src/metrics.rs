//! The hub's counters and gauges for Prometheus: what the edge counts as
//! traffic passes (handshakes, messages, bytes, policy denials) and what
//! is read at each scrape (connections, mailbox, audit, process). Labels
//! are fixed words and numbers only: never a member's name, a label, a
//! device id or anything a device typed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A handshake's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// "accepted" or "refused".
    pub result: &'static str,
    /// For a refusal, its class ([`RefusalClass::label`]); "" if accepted.
    pub reason: &'static str,
}

/// Why a handshake was refused, as a metric label: set where the refusal
/// is made, so a label never depends on the words of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalClass {
    /// No client certificate.
    NoCertificate,
    /// A certificate from another CA.
    UnknownCa,
    /// Expired.
    Expired,
    /// Not valid yet.
    NotYetValid,
    /// Revoked (or its device removed).
    Revoked,
    /// Signed by the hub, but not in the registry.
    UnknownDevice,
    /// Names another device than the one it is registered for.
    WrongDevice,
    /// Anything else (a TLS error, a connection error).
    Other,
}

impl RefusalClass {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RefusalClass::NoCertificate => "no_certificate",
            RefusalClass::UnknownCa => "unknown_ca",
            RefusalClass::Expired => "expired",
            RefusalClass::NotYetValid => "not_yet_valid",
            RefusalClass::Revoked => "revoked",
            RefusalClass::UnknownDevice => "unknown_device",
            RefusalClass::WrongDevice => "wrong_device",
            RefusalClass::Other => "other",
        }
    }
}

/// A message's direction and QoS.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// "in" (from devices) or "out" (to devices).
    pub direction: &'static str,
    /// 0, 1 or 2.
    pub qos: u8,
}

/// A direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// "in" or "out".
    pub direction: &'static str,
}

/// What a policy denial was of.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// "publish", "subscribe" or "will".
    pub action: &'static str,
}

/// What is read at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Devices with a live session.
    pub connected_devices: u64,
    /// Messages the mailbox holds.
    pub mailbox_messages: u64,
    /// Their sealed bytes.
    pub mailbox_bytes: u64,
    /// Age of the oldest, seconds (0 if none).
    pub mailbox_oldest_secs: u64,
    /// Rows in the audit.
    pub audit_rows: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// The hub's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// TLS handshakes by outcome.
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// PUBLISH packets relayed, by direction and QoS.
    pub messages: Family<MessageLabels, Counter>,
    /// Payload bytes relayed, by direction.
    pub bytes: Family<DirectionLabels, Counter>,
    /// Actions the household policy refused.
    pub denials: Family<ActionLabels, Counter>,
    /// The message and byte counters by [in, out] and QoS, taken from the
    /// families once: counting a relayed message is one atomic add.
    by_qos: [[Counter; 3]; 2],
    payload_bytes: [Counter; 2],
    connected: Gauge,
    mailbox_messages: Gauge,
    mailbox_bytes: Gauge,
    mailbox_oldest: Gauge,
    audit_rows: Gauge,
    rss: Gauge,
    open_fds: Gauge,
    /// Messages in the bridge's local queue, waiting or awaiting their
    /// acknowledgement (set by the bridge).
    pub bridge_queue: Gauge,
    /// 1 while the bridge is connected to the other broker, else 0.
    pub bridge_connected: Gauge,
    /// 1 while `[bridge] enabled` is on, else 0.
    pub bridge_enabled: Gauge,
    /// Messages the bridge carried: "out" to the other broker, "in" (a
    /// command) from it.
    pub bridge_messages: Family<DirectionLabels, Counter>,
    /// Messages the bridge dropped because its queue was full.
    pub bridge_drops: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hearth");
        let metrics = Metrics {
            handshakes: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            denials: Family::default(),
            connected: Gauge::default(),
            mailbox_messages: Gauge::default(),
            mailbox_bytes: Gauge::default(),
            mailbox_oldest: Gauge::default(),
            audit_rows: Gauge::default(),
            rss: Gauge::default(),
            open_fds: Gauge::default(),
            bridge_queue: Gauge::default(),
            bridge_connected: Gauge::default(),
            bridge_enabled: Gauge::default(),
            bridge_messages: Family::default(),
            bridge_drops: Counter::default(),
            by_qos: Default::default(),
            payload_bytes: Default::default(),
            registry: Registry::default(),
        };
        let direction = |inbound: usize| if inbound == 0 { "in" } else { "out" };
        let by_qos = [0, 1].map(|d| {
            [0u8, 1, 2].map(|qos| {
                metrics
                    .messages
                    .get_or_create(&MessageLabels {
                        direction: direction(d),
                        qos,
                    })
                    .clone()
            })
        });
        let payload_bytes = [0, 1].map(|d| {
            metrics
                .bytes
                .get_or_create(&DirectionLabels {
                    direction: direction(d),
                })
                .clone()
        });
        registry.register(
            "handshakes",
            "Mutual-TLS handshakes, by result and refusal class",
            metrics.handshakes.clone(),
        );
        registry.register(
            "messages",
            "PUBLISH packets relayed, by direction and QoS",
            metrics.messages.clone(),
        );
        registry.register(
            "payload_bytes",
            "Payload bytes relayed, by direction",
            metrics.bytes.clone(),
        );
        registry.register(
            "policy_denials",
            "Actions the household policy refused",
            metrics.denials.clone(),
        );
        registry.register(
            "connected_devices",
            "Devices with a live session",
            metrics.connected.clone(),
        );
        registry.register(
            "mailbox_messages",
            "Family messages the mailbox holds",
            metrics.mailbox_messages.clone(),
        );
        registry.register(
            "mailbox_bytes",
            "Sealed bytes of the messages the mailbox holds",
            metrics.mailbox_bytes.clone(),
        );
        registry.register(
            "mailbox_oldest_seconds",
            "Age of the oldest message waiting",
            metrics.mailbox_oldest.clone(),
        );
        registry.register(
            "audit_rows",
            "Entries in the audit",
            metrics.audit_rows.clone(),
        );
        registry.register(
            "process_resident_bytes",
            "hearthd's resident memory",
            metrics.rss.clone(),
        );
        registry.register(
            "process_open_fds",
            "hearthd's open file descriptors",
            metrics.open_fds.clone(),
        );
        registry.register(
            "bridge_queue_messages",
            "Messages in the bridge's local queue: waiting, or sent and not yet acknowledged",
            metrics.bridge_queue.clone(),
        );
        registry.register(
            "bridge_connected",
            "1 while the bridge is connected to the other broker",
            metrics.bridge_connected.clone(),
        );
        registry.register(
            "bridge_enabled",
            "1 while the bridge is switched on in the config",
            metrics.bridge_enabled.clone(),
        );
        registry.register(
            "bridge_messages",
            "Messages the bridge carried, by direction",
            metrics.bridge_messages.clone(),
        );
        registry.register(
            "bridge_drops",
            "Messages the bridge dropped because its queue was full",
            metrics.bridge_drops.clone(),
        );
        Metrics {
            registry,
            by_qos,
            payload_bytes,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts a handshake: accepted, or refused for `refusal`.
    pub fn handshake(&self, refusal: Option<RefusalClass>) {
        let labels = match refusal {
            None => HandshakeLabels {
                result: "accepted",
                reason: "",
            },
            Some(class) => HandshakeLabels {
                result: "refused",
                reason: class.label(),
            },
        };
        self.handshakes.get_or_create(&labels).inc();
    }

    /// Counts one relayed PUBLISH of `payload` bytes: `inbound` from a
    /// device, else to one.
    pub fn message(&self, inbound: bool, qos: u8, payload: usize) {
        let d = usize::from(!inbound);
        self.by_qos[d][usize::from(qos.min(2))].inc();
        self.payload_bytes[d].inc_by(payload as u64);
    }

    /// Counts a policy denial of `action` ("publish", "subscribe", "will").
    pub fn denial(&self, action: &'static str) {
        self.denials.get_or_create(&ActionLabels { action }).inc();
    }

    /// Counts one message the bridge carried: `outbound` to the other
    /// broker, else a command from it.
    pub fn bridged(&self, outbound: bool) {
        let direction = if outbound { "out" } else { "in" };
        self.bridge_messages
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// The text exposition format, with the gauges set from `now`.
    pub fn encode(&self, now: Snapshot) -> String {
        let set = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.connected, now.connected_devices);
        set(&self.mailbox_messages, now.mailbox_messages);
        set(&self.mailbox_bytes, now.mailbox_bytes);
        set(&self.mailbox_oldest, now.mailbox_oldest_secs);
        set(&self.audit_rows, now.audit_rows);
        set(&self.rss, now.rss_bytes);
        set(&self.open_fds, now.open_fds);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_the_counters_and_the_scraped_gauges() {
        let metrics = Metrics::default();
        metrics.handshake(None);
        metrics.handshake(Some(RefusalClass::Revoked));
        metrics.handshake(Some(RefusalClass::Other));
        metrics.message(true, 1, 300);
        metrics.message(false, 0, 10);
        metrics.denial("subscribe");
        metrics.bridged(true);
        metrics.bridge_drops.inc();
        metrics.bridge_queue.set(4);
        let text = metrics.encode(Snapshot {
            connected_devices: 3,
            mailbox_messages: 2,
            ..Snapshot::default()
        });
        for line in [
            "hearth_handshakes_total{result=\"accepted\",reason=\"\"} 1",
            "hearth_handshakes_total{result=\"refused\",reason=\"revoked\"} 1",
            "hearth_handshakes_total{result=\"refused\",reason=\"other\"} 1",
            "hearth_messages_total{direction=\"in\",qos=\"1\"} 1",
            "hearth_payload_bytes_total{direction=\"in\"} 300",
            "hearth_policy_denials_total{action=\"subscribe\"} 1",
            "hearth_connected_devices 3",
            "hearth_mailbox_messages 2",
            "hearth_bridge_messages_total{direction=\"out\"} 1",
            "hearth_bridge_drops_total 1",
            "hearth_bridge_queue_messages 4",
            "hearth_bridge_connected 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
