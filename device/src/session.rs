//! The device's MQTT session over mutual TLS (client id = device id, the
//! hub CA as the only root): telemetry and commands (`run_telemetry`), and
//! the family mailbox — send, receive with de-duplication, acknowledge
//! ([`Session`]). What arrives from the network is handed to the caller as
//! events, to show or store; it is never obeyed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_protocol::hub_info::HubInfo;
use hearth_protocol::mailbox::{Delivery, Inbox, Receipt, ReceiptStatus};
use hearth_protocol::{terminal, topic, DeviceId};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::discovery::{self, FoundHub};
use crate::inbox::{self, Content, Seen};
use crate::state::{DeviceDir, Paired, Pairing};
use crate::{tls, Error, Result};

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long the hub has to accept the session or answer a message.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest packet accepted from the hub: attachments are large, and the
/// hub's own limit is below this.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// How many failures to reach the hub in a row before the device looks
/// for it on the LAN: one can be a hub restarting, two in a row with the
/// connect timeout between them rarely is.
pub const BROWSE_AFTER: u32 = 2;
/// How long the device browses mDNS for its hub (less once it is seen).
pub const BROWSE_SECS: u64 = 3;
/// How long telemetry may go unacknowledged before the connection is
/// taken for dead. A hub that changed address leaves the old connection
/// silent, not closed, and MQTT keep-alive would take two periods (60 s)
/// to notice.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How many places advertised for the hub's CA that failed to prove it
/// are remembered (not tried again until the hub is reached).
const MAX_TRIED: usize = 16;

/// MQTT over mutual TLS as this device, to the hub where `device.toml`
/// says it is.
pub fn mqtt_options(paired: &Paired) -> Result<MqttOptions> {
    mqtt_options_to(paired, &paired.pairing, Arc::default())
}

/// MQTT over mutual TLS as this device, to the hub at `to`'s host and MQTT
/// port. Whatever the address, the hub must prove its CA and its name;
/// `proven` is set when it did.
fn mqtt_options_to(paired: &Paired, to: &Pairing, proven: Arc<AtomicBool>) -> Result<MqttOptions> {
    let ca = CertificateDer::from_pem_slice(&paired.ca_pem)?;
    let tls = tls::client_config_proving(&ca, Some((&paired.chain_pem, &paired.key_pem)), proven)?;
    let pairing = to;
    let mut options = MqttOptions::new(
        pairing.device_id.as_str(),
        pairing.host.as_str(),
        pairing.mqtt_port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok(options)
}

/// What happens while the device runs.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunEvent<'a> {
    /// The hub accepted the session.
    Connected(&'a Pairing),
    /// A command arrived on the device's `cmd` topic.
    Command {
        /// Its topic.
        topic: &'a str,
        /// Its payload, as sent.
        payload: &'a [u8],
    },
    /// The connection was lost; the next attempt is after `retry_in`.
    ConnectionLost {
        /// Why.
        error: &'a Error,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// mDNS showed a hub claiming this device's CA at another place; the
    /// device tries it now. Nothing is stored until it proves itself.
    Trying(&'a FoundHub),
    /// The hub proved itself (CA and name) at a new address, which is now
    /// stored in `device.toml`.
    Moved(&'a Pairing),
}

impl RunEvent<'_> {
    /// Whether it is a problem (for stderr) rather than news (stdout).
    pub fn is_problem(&self) -> bool {
        matches!(self, RunEvent::ConnectionLost { .. })
    }
}

/// One line for a terminal. What came over the network is escaped, so a
/// command cannot retitle the terminal or fake output.
impl std::fmt::Display for RunEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunEvent::Connected(p) => {
                write!(
                    f,
                    "connected to {}:{} as {}",
                    p.host, p.mqtt_port, p.device_id
                )
            }
            RunEvent::Command { topic, payload } => write!(
                f,
                "cmd {} {}",
                terminal::field(topic),
                terminal::text(&String::from_utf8_lossy(payload))
            ),
            RunEvent::ConnectionLost { error, retry_in } => write!(
                f,
                "connection lost: {}; retrying in {}s",
                terminal::text(&error.to_string()),
                retry_in.as_secs()
            ),
            // The address came from mDNS: printed as a field.
            RunEvent::Trying(hub) => write!(
                f,
                "a hub claiming this CA is advertised at {}; trying it",
                terminal::field(&discovery::place(&hub.address, hub.mqtt_port))
            ),
            RunEvent::Moved(p) => write!(
                f,
                "hub moved to {}; stored in {}",
                terminal::field(&discovery::place(&p.host, p.mqtt_port)),
                crate::state::SETTINGS
            ),
        }
    }
}

/// Connects, publishes telemetry to `tele/status` every `interval`,
/// reports commands on `cmd/#`, and reconnects with exponential backoff.
/// When the hub cannot be reached [`BROWSE_AFTER`] times in a row, looks
/// for it on the LAN (mDNS, filtered by the pinned CA) and, if it is
/// advertised elsewhere, dials it there; the new address is stored once
/// the hub proved its CA and name over TLS. With `count`, returns once
/// that many telemetry messages were acknowledged (and the DISCONNECT
/// sent); otherwise runs until an error that reconnecting cannot mend.
pub async fn run_telemetry(
    dir: &DeviceDir,
    interval: Duration,
    count: Option<u64>,
    mut on: impl FnMut(RunEvent<'_>),
) -> Result<u64> {
    let paired = dir.load()?;
    // Where device.toml says the hub is, and where the device dials now.
    let mut pairing = paired.pairing.clone();
    let mut dialled = pairing.clone();
    let id = pairing.device_id;
    // Whether the server of the current attempt proved to be the hub.
    let mut proven = Arc::new(AtomicBool::new(false));
    let (mut client, mut events) =
        AsyncClient::new(mqtt_options_to(&paired, &dialled, Arc::clone(&proven))?, 16);
    let tele = topic::tele(&id, "status");
    let commands = topic::cmd(&id, "#");
    let interval = interval.max(Duration::from_millis(10));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    let mut connected = false;
    let mut backoff = Duration::from_secs(1);
    let mut failures = Failures::default();
    let mut acks = AckWatch::default();
    // Places mDNS pointed at that did not prove to be the hub.
    let mut tried: Vec<String> = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    loop {
        let failure = tokio::select! {
            _ = ticker.tick(), if connected && count.is_none_or(|n| sent < n) => {
                if acks.silent(Instant::now()) {
                    Some(Error::Timeout("the hub did not acknowledge telemetry within 10 s"))
                } else {
                    let reading = serde_json::json!({
                        "seq": sent + 1,
                        "uptime_s": started.elapsed().as_secs(),
                    });
                    // A full queue means the hub is slow or gone: this
                    // reading is skipped, and the watch above decides.
                    if client.try_publish(&tele, QoS::AtLeastOnce, false, reading.to_string()).is_ok() {
                        sent += 1;
                        acks.published(Instant::now());
                    }
                    None
                }
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = Duration::from_secs(1);
                    failures.reached();
                    acks = AckWatch::default();
                    tried.clear();
                    if dialled != pairing {
                        // The hub proved its CA and name at the new place.
                        dir.store_settings(&dialled)?;
                        pairing = dialled.clone();
                        on(RunEvent::Moved(&pairing));
                    }
                    on(RunEvent::Connected(&pairing));
                    client.try_subscribe(&commands, QoS::AtLeastOnce)?;
                    None
                }
                Ok(Event::Incoming(Packet::Publish(command))) => {
                    on(RunEvent::Command { topic: &command.topic, payload: &command.payload });
                    None
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    acks.acknowledged(Instant::now());
                    if count.is_some_and(|n| acked >= n) {
                        client.try_disconnect()?;
                        flush_disconnect(&mut events).await;
                        return Ok(acked);
                    }
                    None
                }
                Ok(_) => None,
                Err(e) => Some(Error::from(e)),
            }
        };
        let Some(error) = failure else {
            continue;
        };
        if is_final(&error, proven.load(Ordering::Relaxed)) {
            return Err(error);
        }
        connected = false;
        // Readings not acknowledged went with the connection.
        sent = acked;
        acks = AckWatch::default();
        on(RunEvent::ConnectionLost {
            error: &error,
            retry_in: backoff,
        });
        let mut next = dialled.clone();
        if failures.failed() {
            if dialled != pairing {
                // The place mDNS pointed at did not prove to be the hub.
                // Bounded: anyone on the LAN can advertise many places.
                if tried.len() >= MAX_TRIED {
                    tried.clear();
                }
                tried.push(discovery::place(&dialled.host, dialled.mqtt_port));
            }
            next = pairing.clone();
            if let Some(hub) = look_for_hub(&pairing, &tried).await {
                on(RunEvent::Trying(&hub));
                next = Pairing {
                    host: hub.address.clone(),
                    mqtt_port: hub.mqtt_port,
                    enroll_port: hub.enroll_port,
                    ..pairing.clone()
                };
            } else if !tried.is_empty() {
                // Every place seen was tried; they may be tried again.
                tried.clear();
            }
        }
        // Another place is tried soon, the same one after the backoff; the
        // backoff grows either way, so a hub that is down (or a stale
        // advertisement) is not dialled ever faster.
        let wait = if next != dialled {
            Duration::from_secs(1)
        } else {
            backoff
        };
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // A fresh client: a silent connection is dropped, not waited on.
        dialled = next;
        proven = Arc::new(AtomicBool::new(false));
        (client, events) =
            AsyncClient::new(mqtt_options_to(&paired, &dialled, Arc::clone(&proven))?, 16);
    }
}

/// Whether `error` ends `run_telemetry`: a refusal of this device by the
/// hub. CONNACK "not authorized" comes over a session the hub's keys
/// began, so it is the hub's; a TLS alert counts only once the server
/// proved to be the hub, since anyone on the network (or at an address
/// mDNS named) can send one before its certificate.
fn is_final(error: &Error, proven: bool) -> bool {
    match error {
        Error::NotAccepted(why) => proven || why.starts_with("CONNACK"),
        _ => false,
    }
}

/// Browses mDNS for the hub of the pinned CA; the place it moved to, if it
/// is advertised somewhere other than where `pairing` says and not in
/// `tried`. mDNS failing is no reason to stop: the device keeps retrying
/// where it knows the hub.
async fn look_for_hub(pairing: &Pairing, tried: &[String]) -> Option<FoundHub> {
    let here = (pairing.host.as_str(), pairing.mqtt_port);
    let ca = pairing.ca_sha256.as_str();
    // Enough once the hub is seen where the device knows it, or elsewhere.
    let hubs = discovery::discover_until(BROWSE_SECS, |hubs| {
        let there = |h: &FoundHub| h.address == here.0 && h.mqtt_port == here.1;
        discovery::moved_to(hubs, ca, here, tried).is_some()
            || hubs.iter().any(|h| discovery::claims_ca(h, ca) && there(h))
    })
    .await
    .ok()?;
    discovery::moved_to(&hubs, ca, here, tried).cloned()
}

/// Failures to reach the hub in a row, and when to look for it on the LAN.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    in_a_row: u32,
}

impl Failures {
    /// One more failure (lost, refused by the network, timed out);
    /// whether to look for the hub on the LAN now.
    pub fn failed(&mut self) -> bool {
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.in_a_row >= BROWSE_AFTER
    }

    /// The hub accepted a session: the count starts again.
    pub fn reached(&mut self) {
        self.in_a_row = 0;
    }
}

/// Whether the hub still acknowledges telemetry: since when the oldest
/// outstanding publish has waited without any acknowledgement coming.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AckWatch {
    outstanding: u64,
    waiting_since: Option<Instant>,
}

impl AckWatch {
    /// A publish went out at `now`.
    pub fn published(&mut self, now: Instant) {
        if self.outstanding == 0 {
            self.waiting_since = Some(now);
        }
        self.outstanding += 1;
    }

    /// An acknowledgement came at `now`: the hub is alive, and what is
    /// still outstanding waits from now.
    pub fn acknowledged(&mut self, now: Instant) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.waiting_since = (self.outstanding > 0).then_some(now);
    }

    /// Whether nothing was acknowledged for [`ACK_TIMEOUT`] while
    /// something was outstanding.
    pub fn silent(&self, now: Instant) -> bool {
        self.waiting_since
            .is_some_and(|since| now.saturating_duration_since(since) >= ACK_TIMEOUT)
    }
}

/// Lets a DISCONNECT (and what was queued before it) go out before the
/// session is dropped, for at most two seconds.
async fn flush_disconnect(events: &mut EventLoop) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// What the inbox hands the caller.
#[derive(Debug)]
#[non_exhaustive]
pub enum InboxEvent<'a> {
    /// A text message, the first time it arrives.
    Text {
        /// The delivery (sender, id, body).
        delivery: &'a Delivery,
        /// Its text.
        body: &'a str,
    },
    /// A picture or voice note, saved the first time it arrives.
    Saved {
        /// The delivery.
        delivery: &'a Delivery,
        /// Where it was saved.
        path: &'a std::path::Path,
        /// Its size.
        bytes: usize,
    },
    /// A delivery with neither text nor data.
    Empty(&'a Delivery),
    /// A delivery ignored because its id cannot name a file.
    Malformed,
    /// A receipt for a message this device sent.
    Receipt(&'a Receipt),
}

impl InboxEvent<'_> {
    /// Whether it is a problem (for stderr) rather than news (stdout).
    pub fn is_problem(&self) -> bool {
        matches!(self, InboxEvent::Malformed)
    }
}

/// One line for a terminal. Names, bodies and ids came from other devices:
/// a message must not retitle the terminal or fake output.
impl std::fmt::Display for InboxEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = |d: &Delivery| {
            format!(
                "{} ({})",
                terminal::field(d.from.member.as_str()),
                terminal::field(&d.from.device.to_string())
            )
        };
        match self {
            InboxEvent::Text { delivery: d, body } => write!(
                f,
                "message {} from {}: {}",
                terminal::field(&d.id),
                from(d),
                terminal::text(body)
            ),
            // The id names the file, so it is the hub's hex already.
            InboxEvent::Saved {
                delivery: d,
                path,
                bytes,
            } => write!(
                f,
                "{} {} from {}: saved {} ({bytes} bytes)",
                d.kind.as_str(),
                d.id,
                from(d),
                path.display()
            ),
            InboxEvent::Empty(d) => {
                write!(
                    f,
                    "message {} from {} (empty)",
                    terminal::field(&d.id),
                    from(d)
                )
            }
            InboxEvent::Malformed => write!(f, "ignoring a delivery with a malformed id"),
            InboxEvent::Receipt(r) => {
                let status = match r.status {
                    ReceiptStatus::Stored => "stored",
                    ReceiptStatus::Delivered => "delivered",
                    ReceiptStatus::Expired => "expired",
                    ReceiptStatus::Refused => "refused",
                };
                write!(f, "receipt {} {status}", terminal::field(&r.reference))?;
                if let Some(device) = r.device {
                    write!(f, " to {device}")?;
                }
                if let Some(why) = &r.reason {
                    write!(f, ": {}", terminal::field(why))?;
                }
                Ok(())
            }
        }
    }
}

/// The retained hub info that follows the SUBACK; none if nothing came
/// within a second (a hub that publishes none) or it does not parse.
async fn read_hub_info(events: &mut EventLoop) -> Result<Option<HubInfo>> {
    let wait = Duration::from_secs(1);
    loop {
        match tokio::time::timeout(wait, events.poll()).await {
            Err(_) => return Ok(None),
            Ok(event) => {
                if let Event::Incoming(Packet::Publish(p)) = event? {
                    if p.topic == topic::HUB_INFO {
                        return Ok(serde_json::from_slice(&p.payload).ok());
                    }
                }
            }
        }
    }
}

/// A message the hub has stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The hub's id for it.
    pub id: String,
    /// The client reference it was sent under.
    pub reference: String,
}

/// A device's mailbox session: connected and subscribed to its inbox.
pub struct Session {
    id: DeviceId,
    dir: DeviceDir,
    client: AsyncClient,
    events: EventLoop,
    seen: Seen,
    hub_info: Option<HubInfo>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects, subscribes to the device's inbox, and returns once the
    /// subscription is in place (within [`ANSWER_TIMEOUT`]).
    pub async fn connect_inbox(dir: &DeviceDir) -> Result<Session> {
        let paired = dir.load()?;
        let mut options = mqtt_options(&paired)?;
        let id = paired.pairing.device_id;
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut events) = AsyncClient::new(options, 16);
        // The hub's info first, alone: its retained message follows the
        // SUBACK, and no delivery can arrive before the inbox subscription.
        let subscribed = async {
            let mut hub_info = None;
            loop {
                match events.poll().await? {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        client.subscribe(topic::HUB_INFO, QoS::AtMostOnce).await?;
                    }
                    Event::Incoming(Packet::SubAck(ack)) if hub_info.is_none() => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                        hub_info = Some(if granted {
                            read_hub_info(&mut events).await?
                        } else {
                            None
                        });
                        client
                            .subscribe(topic::inbox(&id), QoS::AtLeastOnce)
                            .await?;
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        return Ok::<_, Error>(hub_info.flatten());
                    }
                    _ => {}
                }
            }
        };
        let hub_info = tokio::time::timeout(ANSWER_TIMEOUT, subscribed)
            .await
            .map_err(|_| Error::Timeout("the hub did not answer within 15 s"))??;
        Ok(Session {
            id,
            dir: dir.clone(),
            client,
            events,
            seen: Seen::default(),
            hub_info,
        })
    }

    /// What the hub published about itself and its limits (absent from a
    /// hub that publishes none).
    pub fn hub_info(&self) -> Option<&HubInfo> {
        self.hub_info.as_ref()
    }

    /// Whether `content` and its envelope fit the hub's limits; checked
    /// before anything is sent, so the user gets the reason rather than a
    /// closed connection.
    fn check_fits_outgoing(
        &self,
        outgoing: hearth_protocol::hub_info::Outgoing,
        envelope_bytes: usize,
    ) -> Result<()> {
        let Some(info) = &self.hub_info else {
            return Ok(());
        };
        info.mailbox
            .check(outgoing)
            .map_err(|e| Error::TooLarge(e.to_string()))?;
        // The PUBLISH: fixed header, topic, packet id, payload.
        let packet = envelope_bytes + topic::outbox(&self.id).len() + 16;
        if packet > info.max_packet_bytes {
            return Err(Error::TooLarge(format!(
                "the message is {packet} bytes encoded; this hub takes packets of at most {} bytes",
                info.max_packet_bytes
            )));
        }
        Ok(())
    }

    /// The device's id.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// Sends a message through the hub's mailbox and waits until the hub
    /// has stored it. `reference` makes a retry idempotent (default: a new
    /// random one).
    pub async fn send(
        &mut self,
        to: &str,
        content: Content,
        reference: Option<String>,
    ) -> Result<Stored> {
        let reference = reference.unwrap_or_else(|| hex::encode(crate::random_bytes::<8>()));
        let outgoing = content.outgoing();
        let envelope = inbox::send_envelope(&reference, to, content);
        let payload = serde_json::to_vec(&envelope).map_err(|e| Error::Usage(e.to_string()))?;
        self.check_fits_outgoing(outgoing, payload.len())?;
        self.client
            .publish(topic::outbox(&self.id), QoS::AtLeastOnce, false, payload)
            .await?;
        let events = &mut self.events;
        let answer = async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = events.poll().await? {
                    if let Ok(Inbox::Receipt(r)) = serde_json::from_slice::<Inbox>(&p.payload) {
                        if r.reference == reference {
                            return Ok::<_, Error>(r);
                        }
                    }
                }
            }
        };
        let receipt = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| {
                Error::Timeout(
                    "no receipt from the hub within 15 s; send again with the same --ref",
                )
            })??;
        match receipt.status {
            ReceiptStatus::Stored => Ok(Stored {
                id: receipt.id.unwrap_or_default(),
                reference,
            }),
            _ => Err(Error::Refused(
                receipt.reason.unwrap_or_else(|| "no reason given".into()),
            )),
        }
    }

    /// Receives deliveries and receipts until nothing came for `wait`
    /// (forever with `follow`): each new message is handed to `on` (an
    /// attachment saved under the device's `inbox/` first), and every
    /// delivery is acknowledged, again if the hub resent it.
    pub async fn receive(
        &mut self,
        wait: Duration,
        follow: bool,
        mut on: impl FnMut(InboxEvent<'_>),
    ) -> Result<()> {
        loop {
            let event = match tokio::time::timeout(wait, self.events.poll()).await {
                Err(_) if !follow => return Ok(()),
                Err(_) => continue,
                Ok(event) => event?,
            };
            let Event::Incoming(Packet::Publish(p)) = event else {
                continue;
            };
            match serde_json::from_slice::<Inbox>(&p.payload) {
                Ok(Inbox::Delivery(d)) => {
                    if self.seen.first_time(&d.id) && !self.show(&d, &mut on)? {
                        // Not acknowledged: the id is not the hub's.
                        continue;
                    }
                    let ack = serde_json::to_vec(&inbox::ack_envelope(&d.id))
                        .map_err(|e| Error::Usage(e.to_string()))?;
                    self.client
                        .publish(topic::outbox(&self.id), QoS::AtLeastOnce, false, ack)
                        .await?;
                }
                Ok(Inbox::Receipt(r)) => on(InboxEvent::Receipt(&r)),
                Err(_) => {}
            }
        }
    }

    /// Hands a new delivery to `on`; false if it was malformed.
    fn show(&self, d: &Delivery, on: &mut impl FnMut(InboxEvent<'_>)) -> Result<bool> {
        use base64::Engine;
        match (&d.body, &d.data) {
            (Some(body), _) => on(InboxEvent::Text { delivery: d, body }),
            (None, Some(data)) => {
                let Some(name) = inbox::attachment_name(&d.id, d.content_type.as_deref()) else {
                    on(InboxEvent::Malformed);
                    return Ok(false);
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| Error::Mqtt(format!("an attachment is not base64: {e}")))?;
                let path: PathBuf = self.dir.save_attachment(&name, &bytes)?;
                on(InboxEvent::Saved {
                    delivery: d,
                    path: &path,
                    bytes: bytes.len(),
                });
            }
            (None, None) => on(InboxEvent::Empty(d)),
        }
        Ok(true)
    }

    /// Disconnects cleanly, letting the acknowledgements go out first.
    pub async fn close(mut self) {
        let _ = self.client.disconnect().await;
        flush_disconnect(&mut self.events).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hub_itself_can_make_the_device_stop() {
        let alert = Error::NotAccepted("TLS alert CertificateUnknown".into());
        // Before any certificate proved to be the hub's: anyone's alert.
        assert!(!is_final(&alert, false));
        assert!(is_final(&alert, true));
        let connack = Error::NotAccepted("CONNACK NotAuthorized".into());
        assert!(is_final(&connack, false));
        assert!(!is_final(&Error::Timeout("x"), true));
    }
    use hearth_protocol::mailbox::{Kind, Sender};

    #[test]
    fn the_lan_is_searched_after_failures_in_a_row_only() {
        let mut failures = Failures::default();
        assert!(!failures.failed(), "one failure can be a hub restarting");
        assert!(failures.failed());
        assert!(failures.failed(), "and at every failure after that");
        failures.reached();
        assert!(!failures.failed());
    }

    #[test]
    fn a_connection_is_dead_when_telemetry_goes_unacknowledged() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut acks = AckWatch::default();
        assert!(
            !acks.silent(at(100)),
            "nothing outstanding, nothing to miss"
        );
        acks.published(at(0));
        acks.published(at(5));
        assert!(!acks.silent(at(9)));
        acks.acknowledged(at(9));
        assert!(!acks.silent(at(18)), "the hub answered at 9 s");
        assert!(acks.silent(at(19)));
        acks.acknowledged(at(19));
        assert!(!acks.silent(at(60)), "all acknowledged");
        acks.acknowledged(at(61));
        assert_eq!(acks, AckWatch::default());
    }

    #[test]
    fn what_other_devices_sent_cannot_drive_the_terminal() {
        let delivery = Delivery {
            v: 1,
            id: "ab\x1b[2J".into(),
            from: Sender {
                member: "Mum".parse().unwrap(),
                device: DeviceId::from_entropy([1; 16]),
            },
            kind: Kind::Text,
            body: Some("Dinner\nis \x1b]0;pwned\x07".into()),
            data: None,
            content_type: None,
            sent_at: 0,
            expires_at: 0,
        };
        let line = InboxEvent::Text {
            delivery: &delivery,
            body: delivery.body.as_deref().unwrap(),
        }
        .to_string();
        assert!(!line.contains('\x1b') && !line.contains('\x07'), "{line:?}");
        assert!(
            line.starts_with("message ab") && line.contains("from Mum ("),
            "{line}"
        );
        assert!(
            line.contains("Dinner\nis "),
            "a body keeps its lines: {line:?}"
        );

        let command = RunEvent::Command {
            topic: "hearth/v1/dev/x/cmd/\x1b[31m",
            payload: b"go\x1b]0;t\x07",
        }
        .to_string();
        assert!(
            !command.contains('\x1b') && !command.contains('\x07'),
            "{command:?}"
        );
        let lost = RunEvent::ConnectionLost {
            error: &Error::Timeout("t"),
            retry_in: Duration::from_secs(4),
        };
        assert!(lost.is_problem() && lost.to_string().ends_with("retrying in 4s"));
        assert!(InboxEvent::Malformed.is_problem());
    }
}
