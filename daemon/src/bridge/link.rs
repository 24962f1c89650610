//! The bridge's I/O: reads bridged devices' traffic from a rumqttd link
//! inside the process, keeps it in the bounded [`Queue`] and sends it to
//! the other broker with rumqttc; takes commands from there through the
//! household policy back into the router. Settings arrive on a watch
//! channel, so a reload takes effect without a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::meta::DeviceMeta;
use hearth_protocol::policy::{self, Action, Decision, DeviceRole, Direction, Grant, Subject};
use hearth_protocol::DeviceId;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing as Sent, QoS};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Filter, Packet, RetainForwardRule, Subscribe};
use rumqttd::Notification;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::discovery;
use super::queue::{Outgoing, Queue};
use super::routes::{split_local, Routes};
use crate::audit::Event as AuditEvent;
use crate::config::BridgeSection;
use crate::hub::Hub;

/// What the bridge reads from the router: telemetry and descriptions.
/// Nothing else is subscribed, so inbox, outbox and `$hearth/...` never
/// even reach the bridge.
pub const LOCAL_FILTERS: [&str; 2] = ["hearth/v1/dev/+/tele/#", "hearth/v1/dev/+/meta"];

/// The bridge's service identity, for the household policy (no device
/// has it: ids are random, this one is all zeros).
pub fn identity() -> DeviceId {
    DeviceId::from_entropy([0; 16])
}

/// How often the bridge looks at which devices are online.
const PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to reach the other broker.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lasted this long starts the backoff over; one the
/// other broker cuts sooner (a message too large for the client, another
/// client with the same id) keeps it growing, so it is not a 1 Hz loop.
const STABLE: Duration = Duration::from_secs(30);
/// How long the bridge may take to say goodbye (withdraw its entries, or
/// mark its devices offline) before it lets go of a connection.
const FAREWELL: Duration = Duration::from_secs(2);

/// Runs the bridge until `stop`: idle while `[bridge] enabled` is off,
/// connected (and reconnecting) while it is on.
pub async fn run(
    hub: Arc<Hub>,
    link: (LinkTx, LinkRx),
    mut settings: watch::Receiver<BridgeSection>,
    max_payload: usize,
    stop: CancellationToken,
) {
    let (mut tx, mut rx) = link;
    let mut state = State::new(Arc::clone(&hub), max_payload);
    let mut subscribed = false;
    loop {
        let now = settings.borrow_and_update().clone();
        hub.metrics.bridge_enabled.set(i64::from(now.enabled));
        state.set_max(now.queue_max, now.queue_max_bytes);
        if now.enabled && !subscribed {
            // Retained descriptions are forwarded on subscribe: the
            // bridge learns every device's description at once.
            let filters = LOCAL_FILTERS
                .iter()
                .map(|f| Filter {
                    path: (*f).to_owned(),
                    qos: rumqttd::protocol::QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: true,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                })
                .collect();
            let subscribe = Packet::Subscribe(Subscribe { pkid: 0, filters }, None);
            if let Err(e) = tx.send(subscribe).await {
                tracing::error!(error = %e, "the bridge cannot subscribe in the router; bridge stopped");
                return;
            }
            subscribed = true;
        }
        let outcome = if now.enabled {
            state
                .connected_run(&now, &mut rx, &mut tx, &mut settings, &stop)
                .await
        } else {
            tokio::select! {
                _ = stop.cancelled() => Outcome::Stop,
                changed = settings.changed() => match changed {
                    Ok(()) => Outcome::Reload,
                    Err(_) => Outcome::Stop,
                },
                note = rx.next(), if subscribed => {
                    // Off after a reload: what arrives is only read, so
                    // the router never holds it for the bridge; only
                    // descriptions are remembered.
                    match note {
                        Ok(Some(Notification::Unschedule)) => {
                            let _ = rx.wake().await;
                        }
                        Ok(Some(Notification::Forward(forward))) => {
                            let topic = std::str::from_utf8(&forward.publish.topic).unwrap_or_default();
                            if let Some((device, "meta")) = split_local(topic) {
                                state.note_meta(device, &forward.publish.payload);
                            }
                        }
                        _ => {}
                    }
                    Outcome::Reload
                }
            }
        };
        if let Outcome::Stop = outcome {
            hub.metrics.bridge_connected.set(0);
            return;
        }
    }
}

enum Outcome {
    /// Settings changed (or a wake-up while off): read them again.
    Reload,
    /// The daemon is stopping.
    Stop,
}

/// What the bridge knows and holds across reconnections.
struct State {
    hub: Arc<Hub>,
    queue: Queue,
    /// The last valid description of each device seen, in memory only.
    metas: HashMap<DeviceId, DeviceMeta>,
    /// What discovery configs were published per device, to take back.
    published: BTreeMap<DeviceId, Vec<String>>,
    bridged: watch::Receiver<BTreeSet<DeviceId>>,
    /// The bridged set as last acted on.
    known: BTreeSet<DeviceId>,
    online: BTreeSet<DeviceId>,
    /// Devices whose drop was audited during this outage.
    drop_audited: BTreeSet<DeviceId>,
    /// `limits.max_payload`: no larger command comes in.
    max_payload: usize,
}

impl State {
    fn new(hub: Arc<Hub>, max_payload: usize) -> State {
        let bridged = hub.bridged.subscribe();
        State {
            hub,
            queue: Queue::new(1, 0),
            metas: HashMap::new(),
            published: BTreeMap::new(),
            bridged,
            known: BTreeSet::new(),
            online: BTreeSet::new(),
            drop_audited: BTreeSet::new(),
            max_payload,
        }
    }

    fn set_max(&mut self, max: usize, max_bytes: usize) {
        for dropped in self.queue.set_max(max, max_bytes) {
            self.dropped(dropped);
        }
        self.gauge();
    }

    fn gauge(&self) {
        let depth = i64::try_from(self.queue.len()).unwrap_or(i64::MAX);
        self.hub.metrics.bridge_queue.set(depth);
    }

    fn push(&mut self, message: Outgoing) {
        for dropped in self.queue.push(message) {
            self.dropped(dropped);
        }
        self.gauge();
    }

    /// Counted always; audited once per device and outage, by id only.
    fn dropped(&mut self, message: Outgoing) {
        self.hub.metrics.bridge_drops.inc();
        // Only about a device still bridged: one that left (or was erased)
        // is not written about again.
        if let Some(device) = message.device.filter(|d| self.known.contains(d)) {
            if self.drop_audited.insert(device) {
                self.hub.audit.record(AuditEvent {
                    device: Some(device),
                    event: "bridge",
                    action: Some("drop".into()),
                    reason: Some(
                        "bridge queue full (bridge.queue_max or bridge.queue_max_bytes)".into(),
                    ),
                    ..AuditEvent::default()
                });
            }
        }
    }

    /// The discovery configs and availability of a bridged device.
    fn announce(&mut self, routes: &Routes, device: &DeviceId) -> Vec<Outgoing> {
        let Some(ha) = &routes.home_assistant else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(meta) = self.metas.get(device) {
            let entries = discovery::entries(ha, device, meta);
            let topics: Vec<String> = entries.iter().map(|e| e.topic.clone()).collect();
            // Entries published before and not in this description go.
            if let Some(before) = self.published.get(device) {
                for gone in before.iter().filter(|t| !topics.contains(t)) {
                    out.push(retained(gone.clone(), Vec::new(), ha.qos, *device));
                }
            }
            for entry in entries {
                out.push(retained(
                    entry.topic,
                    entry.config.to_string().into_bytes(),
                    ha.qos,
                    *device,
                ));
            }
            self.published.insert(*device, topics);
        }
        let presence = if self.online.contains(device) {
            "online"
        } else {
            "offline"
        };
        out.push(retained(
            ha.availability(device),
            presence.as_bytes().to_vec(),
            ha.qos,
            *device,
        ));
        out
    }

    /// Empty retained messages where a device's configs and availability
    /// were: Home Assistant forgets the device.
    fn withdraw(&mut self, routes: &Routes, device: &DeviceId) -> Vec<Outgoing> {
        let Some(ha) = &routes.home_assistant else {
            return Vec::new();
        };
        let mut out: Vec<Outgoing> = self
            .published
            .remove(device)
            .unwrap_or_default()
            .into_iter()
            .map(|topic| retained(topic, Vec::new(), ha.qos, *device))
            .collect();
        out.push(retained(
            ha.availability(device),
            Vec::new(),
            ha.qos,
            *device,
        ));
        out
    }

    /// Acts on a change of the bridged set.
    fn follow_bridged(&mut self, routes: &Routes) {
        let now = self.bridged.borrow_and_update().clone();
        let gone: Vec<DeviceId> = self.known.difference(&now).copied().collect();
        let new: Vec<DeviceId> = now.difference(&self.known).copied().collect();
        self.known = now;
        // What still waits about a device no longer bridged is never sent;
        // only the withdrawal of its entries goes.
        for device in gone {
            self.queue.forget_device(&device);
            self.drop_audited.remove(&device);
            let withdraw = self.withdraw(routes, &device);
            for m in withdraw {
                self.push(m);
            }
            tracing::info!(device = %device, "no longer bridged");
        }
        for device in new {
            let announce = self.announce(routes, &device);
            for m in announce {
                self.push(m);
            }
        }
    }

    /// Publishes availability for bridged devices whose presence changed.
    fn follow_presence(&mut self, routes: &Routes) {
        let now: BTreeSet<DeviceId> = self.hub.sessions.connected_devices().into_iter().collect();
        if now == self.online {
            return;
        }
        let changed: Vec<DeviceId> = now.symmetric_difference(&self.online).copied().collect();
        self.online = now;
        let Some(ha) = routes.home_assistant.clone() else {
            return;
        };
        let changed: Vec<DeviceId> = changed
            .into_iter()
            .filter(|d| self.known.contains(d))
            .collect();
        for device in changed {
            let presence = if self.online.contains(&device) {
                "online"
            } else {
                "offline"
            };
            self.push(retained(
                ha.availability(&device),
                presence.as_bytes().to_vec(),
                ha.qos,
                device,
            ));
        }
    }

    /// Remembers a device's description (or its clearing); false for a
    /// description that does not parse. Done while the bridge is off too,
    /// so turning it on announces what devices say now.
    fn note_meta(&mut self, device: DeviceId, payload: &[u8]) -> bool {
        match hearth_protocol::meta::parse(payload) {
            Ok(meta) => {
                self.metas.insert(device, meta);
                true
            }
            // An empty retained message clears the description.
            Err(_) if payload.is_empty() => {
                self.metas.remove(&device);
                true
            }
            Err(_) => false,
        }
    }

    /// One message from the router.
    fn on_hub_message(&mut self, routes: &Routes, topic: &str, payload: &[u8]) {
        let Some((device, below)) = split_local(topic) else {
            return;
        };
        if below == "meta" && !self.note_meta(device, payload) {
            return;
        }
        if !self.known.contains(&device) {
            return;
        }
        if below == "meta" && payload.is_empty() {
            // No description any more: its entities go, its availability
            // stays.
            if let (Some(ha), Some(topics)) =
                (&routes.home_assistant, self.published.remove(&device))
            {
                let qos = ha.qos;
                for topic in topics {
                    self.push(retained(topic, Vec::new(), qos, device));
                }
            }
        } else if below == "meta" && routes.home_assistant.is_some() {
            let announce = self.announce(routes, &device);
            for m in announce {
                self.push(m);
            }
        }
        for (remote, qos) in routes.outward(&device, below) {
            self.push(Outgoing {
                topic: remote,
                payload: payload.to_vec(),
                qos,
                retain: false,
                device: Some(device),
            });
        }
    }

    /// One command from the other broker: through the policy, as the
    /// bridge's service identity granted `cmd/#` of bridged devices only.
    fn on_remote_command(&mut self, routes: &Routes, tx: &mut LinkTx, topic: &str, payload: &[u8]) {
        let Some((device, local)) = routes.inward(topic) else {
            return;
        };
        let grants: Vec<Grant> = self
            .known
            .iter()
            .filter_map(|d| {
                Grant::new(&format!("hearth/v1/dev/{d}/cmd/#"), Direction::Publish).ok()
            })
            .collect();
        let me = identity();
        let subject = Subject {
            device: &me,
            role: DeviceRole::Service,
            grants: &grants,
        };
        // The limit in force now (a reload may have lowered it).
        let too_large = payload.len() > self.hub.config.borrow().limits.max_payload;
        match policy::decide(&subject, Action::Publish { retain: false }, &local) {
            Decision::Allow if !too_large => {
                if let Err(e) = tx.publish(local, payload.to_vec()) {
                    tracing::warn!(error = %e, "the bridge cannot publish a command in the router");
                    return;
                }
                self.hub.metrics.bridged(false);
            }
            decision => {
                let reason = match decision {
                    Decision::Deny(why) => why.to_string(),
                    Decision::Allow => "payload larger than limits.max_payload".into(),
                };
                self.hub.metrics.denial("publish");
                // The device the command named, if it is one of ours; the
                // topic is not kept (it came from outside the household).
                self.hub.audit.record(AuditEvent {
                    device: Some(device).filter(|d| self.known.contains(d)),
                    event: "bridge",
                    action: Some("command-denied".into()),
                    reason: Some(reason),
                    ..AuditEvent::default()
                });
            }
        }
    }

    /// Connected to the other broker (and reconnecting) until the settings
    /// change or the daemon stops.
    async fn connected_run(
        &mut self,
        settings: &BridgeSection,
        rx: &mut LinkRx,
        tx: &mut LinkTx,
        watch_settings: &mut watch::Receiver<BridgeSection>,
        stop: &CancellationToken,
    ) -> Outcome {
        let routes = Routes::new(settings);
        let options = match options(settings, self.max_payload) {
            Ok(options) => options,
            Err(e) => {
                // Logged once; the next reload may mend it.
                tracing::error!(error = %e, "the bridge cannot start");
                return tokio::select! {
                    _ = stop.cancelled() => Outcome::Stop,
                    changed = watch_settings.changed() => match changed {
                        Ok(()) => Outcome::Reload,
                        Err(_) => Outcome::Stop,
                    },
                };
            }
        };
        let (mut client, mut eventloop) = AsyncClient::new(options.clone(), queue_capacity());
        self.follow_bridged(&routes);
        let mut connected = false;
        let mut connected_at: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        let mut retry_at: Option<Instant> = None;
        let mut presence = tokio::time::interval(PRESENCE_INTERVAL);
        let mut warned = false;
        tracing::info!(host = %settings.host, port = settings.port, "bridge connecting");
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    if connected {
                        // Home Assistant shows the devices unavailable
                        // rather than stale while the hub is away.
                        self.farewell(&routes, &client, &mut eventloop, Goodbye::Offline).await;
                    }
                    return Outcome::Stop;
                }
                changed = watch_settings.changed() => {
                    let next = watch_settings.borrow().clone();
                    self.hub.metrics.bridge_connected.set(0);
                    if elsewhere(settings, &next) {
                        // Off, or another broker or layout: the old one
                        // forgets the devices, and nothing queued for it
                        // goes anywhere else.
                        if connected {
                            self.farewell(&routes, &client, &mut eventloop, Goodbye::Withdraw).await;
                        } else {
                            let _ = client.try_disconnect();
                        }
                        self.queue.clear();
                        self.published.clear();
                    } else {
                        self.queue.disconnected();
                        let _ = client.try_disconnect();
                    }
                    return match changed {
                        Ok(()) => Outcome::Reload,
                        Err(_) => Outcome::Stop,
                    };
                }
                _ = self.bridged.changed() => self.follow_bridged(&routes),
                _ = presence.tick() => self.follow_presence(&routes),
                note = rx.next() => match note {
                    Ok(Some(Notification::Forward(forward))) => {
                        let publish = forward.publish;
                        if let Ok(topic) = std::str::from_utf8(&publish.topic) {
                            self.on_hub_message(&routes, topic, &publish.payload);
                        }
                    }
                    Ok(Some(Notification::Unschedule)) => {
                        let _ = rx.wake().await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "the bridge's router link closed; bridge stopped");
                        return Outcome::Stop;
                    }
                },
                _ = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => retry_at = None,
                event = eventloop.poll(), if retry_at.is_none() => match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        if ack.code != rumqttc::ConnectReturnCode::Success {
                            continue;
                        }
                        connected = true;
                        connected_at = Some(Instant::now());
                        warned = false;
                        self.drop_audited.clear();
                        self.hub.metrics.bridge_connected.set(1);
                        tracing::info!(host = %settings.host, port = settings.port, "bridge connected");
                        for (filter, qos) in routes.remote_filters() {
                            let _ = client.try_subscribe(filter, qos_of(qos));
                        }
                        // A new session at the other broker: what it must
                        // know comes before the backlog.
                        let known: Vec<DeviceId> = self.known.iter().copied().collect();
                        let mut first = Vec::new();
                        for device in &known {
                            first.extend(self.announce(&routes, device));
                        }
                        for dropped in self.queue.push_front(first) {
                            self.dropped(dropped);
                        }
                    }
                    // A retained command would run again at every
                    // reconnection: commands are for now, never kept.
                    Ok(Event::Incoming(Incoming::Publish(publish))) if publish.retain => {
                        tracing::debug!("a retained command from the other broker was ignored");
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        self.on_remote_command(&routes, tx, &publish.topic, &publish.payload);
                    }
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => self.queue.acked(ack.pkid),
                    Ok(Event::Outgoing(Sent::Publish(pkid))) => {
                        self.queue.written(pkid);
                        self.hub.metrics.bridged(true);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected || !warned {
                            tracing::warn!(error = %e, retry_in = ?backoff, "bridge not connected");
                            warned = true;
                        }
                        connected = false;
                        if connected_at.take().is_some_and(|at| at.elapsed() >= STABLE) {
                            backoff = Duration::from_secs(1);
                        }
                        self.hub.metrics.bridge_connected.set(0);
                        self.queue.disconnected();
                        // A fresh client for the next attempt: the old
                        // one may still hold events of the lost
                        // connection (packet ids the queue must not
                        // match against the new one's messages).
                        (client, eventloop) = AsyncClient::new(options.clone(), queue_capacity());
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
            }
            if connected {
                while let Some(m) = self.queue.hand() {
                    let qos = qos_of(m.qos);
                    if client
                        .try_publish(m.topic, qos, m.retain, m.payload)
                        .is_err()
                    {
                        self.queue.unhand();
                        break;
                    }
                }
            }
            self.gauge();
        }
    }
}

/// What the bridge says as it lets go of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goodbye {
    /// Its devices are offline (the hub stops; it will be back).
    Offline,
    /// Its devices' entries are taken back (bridging off, or elsewhere).
    Withdraw,
}

impl State {
    /// Says `goodbye` for every bridged device on this connection, then
    /// disconnects; gives up after [`FAREWELL`].
    async fn farewell(
        &mut self,
        routes: &Routes,
        client: &AsyncClient,
        eventloop: &mut rumqttc::EventLoop,
        goodbye: Goodbye,
    ) {
        let mut last_words: std::collections::VecDeque<Outgoing> = Default::default();
        if let Some(ha) = routes.home_assistant.clone() {
            let devices: Vec<DeviceId> = self.known.iter().copied().collect();
            for device in devices {
                match goodbye {
                    Goodbye::Withdraw => last_words.extend(self.withdraw(routes, &device)),
                    Goodbye::Offline => last_words.push_back(retained(
                        ha.availability(&device),
                        b"offline".to_vec(),
                        ha.qos,
                        device,
                    )),
                }
            }
        }
        // Every last word is acknowledged (QoS 1) or written (QoS 0)
        // before the DISCONNECT: a broker may drop what a client sent just
        // before it left.
        let deadline = Instant::now() + FAREWELL;
        // What the client already holds is acknowledged first (in order),
        // then the last words.
        let mut owed = self.queue.in_flight();
        let mut disconnecting = false;
        loop {
            while let Some(m) = last_words.front() {
                let sent =
                    client.try_publish(m.topic.clone(), qos_of(m.qos), m.retain, m.payload.clone());
                if sent.is_err() {
                    break;
                }
                owed += 1;
                last_words.pop_front();
            }
            if last_words.is_empty() && owed == 0 && !disconnecting {
                disconnecting = client.try_disconnect().is_ok();
            }
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Sent::Disconnect))) | Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        unsaid = last_words.len() + owed,
                        "the bridge left before the other broker took every last word"
                    );
                    return;
                }
                Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => owed = owed.saturating_sub(1),
                // A QoS 0 word is done once written.
                Ok(Ok(Event::Outgoing(Sent::Publish(0)))) => owed = owed.saturating_sub(1),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Whether new settings send the bridge somewhere else (or nowhere): what
/// waited for the old destination must not go to the new one.
fn elsewhere(old: &BridgeSection, new: &BridgeSection) -> bool {
    !new.enabled
        || new.host != old.host
        || new.port != old.port
        || new.mode != old.mode
        || new.topic_prefix != old.topic_prefix
        || new.discovery_prefix != old.discovery_prefix
        || new.out != old.out
}

fn retained(topic: String, payload: Vec<u8>, qos: u8, device: DeviceId) -> Outgoing {
    Outgoing {
        topic,
        payload,
        qos,
        retain: true,
        device: Some(device),
    }
}

fn qos_of(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The client's request channel: room for the hand-over window plus the
/// subscriptions and the DISCONNECT.
fn queue_capacity() -> usize {
    super::queue::WINDOW + 16
}

/// Why the bridge cannot be set up from its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A file named in `[bridge]` could not be read or used.
    #[error("bridge.{key}: {path}: {message}")]
    File {
        /// The setting.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The TLS settings are not usable.
    #[error("bridge TLS: {0}")]
    Tls(String),
}

/// Whether the files `[bridge]` names are usable, as a start, a reload
/// and `hearthd check-config` each ask before they take the settings:
/// nothing when the bridge is off.
pub fn check_files(settings: &BridgeSection, max_payload: usize) -> Result<(), BridgeError> {
    if settings.enabled {
        options(settings, max_payload)?;
    }
    Ok(())
}

/// The MQTT client's options from the settings: TLS with the CA file and
/// an optional client certificate, a user name and password from a file.
pub fn options(settings: &BridgeSection, max_payload: usize) -> Result<MqttOptions, BridgeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options.set_keep_alive(Duration::from_secs(30));
    // A new session each time: what was not acknowledged is resent from
    // the bridge's own queue, which outlives the connection.
    options.set_clean_session(true);
    options.set_max_packet_size(max_payload + 1024, max_payload + 1024);
    options.set_inflight(100);
    if let Some(user) = &settings.username {
        let password = match &settings.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| BridgeError::File {
                    key: "password_file",
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                text.lines().next().unwrap_or_default().to_owned()
            }
            None => String::new(),
        };
        options.set_credentials(user, password);
    }
    if !settings.tls {
        return Ok(options);
    }
    let file_error = |key: &'static str, path: &std::path::Path| {
        let path = path.display().to_string();
        move |e: rustls_pki_types::pem::Error| BridgeError::File {
            key,
            path,
            message: e.to_string(),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &settings.ca_file {
        for cert in CertificateDer::pem_file_iter(ca).map_err(file_error("ca_file", ca))? {
            let cert = cert.map_err(file_error("ca_file", ca))?;
            roots
                .add(cert)
                .map_err(|e| BridgeError::Tls(format!("ca_file: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(BridgeError::Tls("ca_file holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(file_error("cert_file", cert))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(file_error("cert_file", cert))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(file_error("key_file", key))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| BridgeError::Tls(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ));
    Ok(options)
}

#[cfg(test)]
mod tests {
    //! The reload contract, with real brokers: the hub's own rumqttd and a
    //! second one on loopback standing for the other broker.
    use super::*;
    use crate::broker::BrokerLimits;

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not reached within 10 s: {what}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn new_settings_take_effect_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(crate::hub::testing::hub(dir.path()));
        let limits = BrokerLimits {
            max_connections: 16,
            max_payload: 65_536,
            max_topics: 1000,
            max_queued_per_filter: 1 << 20,
            max_queued: 1 << 24,
        };
        let mut local = crate::broker::start(limits).await.unwrap();
        let other = crate::broker::start(limits).await.unwrap();
        let other_addr = other.listen_on_loopback("bridge", "its-password").await;
        let password = dir.path().join("password");
        std::fs::write(&password, "its-password\n").unwrap();
        let off = BridgeSection::default();
        let (settings, watched) = watch::channel(off.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            Arc::clone(&hub),
            local.bridge.take().unwrap(),
            watched,
            65_536,
            stop.clone(),
        ));
        let metrics = Arc::clone(&hub.metrics);
        until("off at start", || metrics.bridge_enabled.get() == 0).await;
        let on = BridgeSection {
            enabled: true,
            tls: false,
            host: other_addr.ip().to_string(),
            port: other_addr.port(),
            username: Some("bridge".to_owned()),
            password_file: Some(password),
            ..off
        };
        settings.send(on.clone()).unwrap();
        until("connected after switching on", || {
            metrics.bridge_enabled.get() == 1 && metrics.bridge_connected.get() == 1
        })
        .await;
        // A wrong password: the new settings are used, so it disconnects.
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "not it\n").unwrap();
        settings
            .send(BridgeSection {
                password_file: Some(wrong),
                ..on.clone()
            })
            .unwrap();
        until("refused with the new password", || {
            metrics.bridge_connected.get() == 0
        })
        .await;
        // And it stays refused (the old, right password is not used).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(metrics.bridge_connected.get(), 0);
        settings.send(on.clone()).unwrap();
        until("connected again", || metrics.bridge_connected.get() == 1).await;
        settings
            .send(BridgeSection {
                enabled: false,
                ..on
            })
            .unwrap();
        until("off again", || {
            metrics.bridge_enabled.get() == 0 && metrics.bridge_connected.get() == 0
        })
        .await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the bridge stops when asked")
            .unwrap();
    }
}
