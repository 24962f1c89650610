//! The edge: every client connection enters here. It terminates TLS, binds
//! the connection to the device its certificate names, checks the CONNECT,
//! logs in to the embedded broker with the edge's own credential, and then
//! relays packets both ways, inspecting everything the client sends.

pub mod codec;
mod relay;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::BrokerLink;
use bytes::BytesMut;
use hearth_protocol::DeviceId;
use rumqttd::protocol::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Event;
use crate::ca::fingerprint;
use crate::hub::device_check::SessionSeen;
use crate::hub::retained;
use crate::metrics::RefusalClass;
use crate::registry::DeviceIdentity;
use hearth_protocol::mqtt::{self, inspect, kind, FrameError, MqttVersion};
use hearth_protocol::policy::{self, Action, Decision, DenyReason};

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Mutual TLS: the device is who its certificate says.
    MutualTls,
    /// Plaintext development listener on loopback: full access, any id.
    Development,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A registered device, from its certificate.
    Device(DeviceIdentity),
    /// A client of the development listener.
    Developer,
}

impl Peer {
    /// The household policy's answer for this peer: a device by its role, a
    /// development client everywhere but the hub's own `$` topics.
    pub(crate) fn decide(&self, action: Action, topic: &str) -> Decision {
        match self {
            Peer::Device(identity) => policy::decide(&identity.subject(), action, topic),
            Peer::Developer => policy::decide_development(action, topic),
        }
    }

    /// The device, for a device.
    pub(crate) fn device(&self) -> Option<DeviceId> {
        match self {
            Peer::Device(identity) => Some(identity.device),
            Peer::Developer => None,
        }
    }
}

/// How long a session outlives its connection (5 §3.1.2.11.2; 3.1.1
/// §3.1.2.4 keeps a Clean Session 0 session without limit, which Hearth
/// bounds like every stored thing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionLifetime {
    /// It ends with the connection.
    Ends,
    /// It resumes or starts, and lives this long after the connection.
    Kept(Duration),
    /// A clean start whose new session lives this long after it.
    FreshKept(Duration),
}

impl SessionLifetime {
    fn of(version: MqttVersion, connect: &Packet, cap: Duration) -> SessionLifetime {
        let Packet::Connect(c, properties, ..) = connect else {
            return SessionLifetime::Ends;
        };
        let asked = match version {
            MqttVersion::V311 if c.clean_session => return SessionLifetime::Ends,
            MqttVersion::V311 => cap,
            MqttVersion::V5 => {
                let secs = properties
                    .as_ref()
                    .and_then(|p| p.session_expiry_interval)
                    .unwrap_or(0);
                if secs == 0 {
                    return SessionLifetime::Ends;
                }
                Duration::from_secs(u64::from(secs))
            }
        };
        let kept = asked.min(cap);
        if c.clean_session {
            SessionLifetime::FreshKept(kept)
        } else {
            SessionLifetime::Kept(kept)
        }
    }

    /// The lifetime after a DISCONNECT that set a Session Expiry Interval
    /// (5 §3.14.2.2.2): 0 ends the session with the connection, another
    /// value replaces the CONNECT's (capped). A session that was to end
    /// with its connection stays so (the edge refused such a DISCONNECT).
    fn at_disconnect(self, expiry: Option<u32>, cap: Duration) -> SessionLifetime {
        let kept = |secs: u32| Duration::from_secs(u64::from(secs)).min(cap);
        match (self, expiry) {
            (SessionLifetime::Ends, _) | (_, None) => self,
            (_, Some(0)) => SessionLifetime::Ends,
            (SessionLifetime::Kept(_), Some(secs)) => SessionLifetime::Kept(kept(secs)),
            (SessionLifetime::FreshKept(_), Some(secs)) => SessionLifetime::FreshKept(kept(secs)),
        }
    }

    fn kept_for(self) -> Option<Duration> {
        match self {
            SessionLifetime::Ends => None,
            SessionLifetime::Kept(d) | SessionLifetime::FreshKept(d) => Some(d),
        }
    }
}

/// Limits the edge applies to a client: those in force when its TCP
/// connection was accepted, for the whole connection (a reload changes
/// them for connections accepted after it).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Largest packet a client may send.
    pub max_packet: usize,
    /// From accept to CONNECT.
    pub handshake_timeout: Duration,
    /// Filters one client session may be subscribed to at once.
    pub max_subscriptions: usize,
    /// The longest a session outlives its connection.
    pub max_session_expiry: Duration,
    /// QoS 1/2 PUBLISHes unacknowledged per connection, each way
    /// (`limits.max_inflight`, at most rumqttd's window of 100).
    pub max_inflight: u16,
}

impl EdgeLimits {
    /// The edge's limits in `config`.
    pub fn of(config: &crate::config::Config) -> EdgeLimits {
        let limits = &config.limits;
        EdgeLimits {
            max_packet: limits.max_payload,
            handshake_timeout: limits.handshake_timeout(),
            max_subscriptions: limits.max_subscriptions_per_client,
            max_session_expiry: Duration::from_secs(limits.max_session_expiry_secs),
            // Validated to 1..=100.
            max_inflight: u16::try_from(limits.max_inflight).unwrap_or(100),
        }
    }
}

/// What every connection task shares.
pub struct Edge {
    /// TLS for the mutual-TLS listener.
    pub tls: TlsAcceptor,
    /// The domain core: registry, live sessions, retained topics, audit
    /// and the broker's address all come from it.
    pub hub: Arc<crate::hub::Hub>,
    /// Connection slots shared by every listener, taken once a client has
    /// authenticated (the development listener's at accept).
    pub slots: Arc<Semaphore>,
    /// The mutual-TLS listener's budget of connections still in their
    /// handshake.
    pub admission: Arc<crate::admission::Admission>,
    /// Tells the mailbox when a device subscribes to its inbox.
    pub inbox_watch: Option<crate::mailbox::InboxWatch>,
    /// The hub's budget of bytes of large packets the edge holds, in KiB
    /// (`limits.max_large_packet_bytes`; see `relay::LARGE_PACKET`).
    pub large_packets: Arc<Semaphore>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("broker", &self.hub.broker)
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

/// Accepts connections until `stop`; each one runs in its own task. The
/// loop only accepts: handshakes happen in the connection task.
pub async fn serve(
    listener: TcpListener,
    listener_kind: ListenerKind,
    edge: Arc<Edge>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        // The development listener serves loopback only: its clients take
        // a slot at once. TLS clients take one once authenticated.
        let permit = match listener_kind {
            ListenerKind::Development => Some(tokio::select! {
                _ = stop.cancelled() => return,
                permit = Arc::clone(&edge.slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            }),
            ListenerKind::MutualTls => None,
        };
        let (tcp, peer_addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ticket = match listener_kind {
            ListenerKind::MutualTls => match edge.admission.admit(peer_addr.ip()) {
                Some(ticket) => Some(ticket),
                None => {
                    // Its source holds its share of handshakes already:
                    // closed unread, not audited (that would be the flood).
                    tracing::debug!(peer = %peer_addr, "too many handshakes from this source");
                    continue;
                }
            },
            ListenerKind::Development => None,
        };
        let _ = tcp.set_nodelay(true);
        let edge = Arc::clone(&edge);
        let stop = stop.child_token();
        tracker.spawn(async move {
            let _permit = permit;
            // Read once: this connection keeps these limits, whatever a
            // reload changes while it lasts.
            let limits = edge.limits();
            let deadline = Instant::now() + limits.handshake_timeout;
            match (listener_kind, ticket) {
                (ListenerKind::MutualTls, Some(ticket)) => {
                    edge.serve_tls(tcp, peer_addr, (deadline, limits), stop, ticket)
                        .await
                }
                (ListenerKind::MutualTls, None) => {}
                // Boxed: the plain-TCP session's future would otherwise
                // set the size of every connection's task, TLS ones too.
                (ListenerKind::Development, _) => {
                    Box::pin(edge.run_session(
                        tcp,
                        Peer::Developer,
                        (None, "none"),
                        (deadline, limits),
                        stop,
                    ))
                    .await
                }
            }
        });
    }
}

/// Why a session ended early, for the log.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("no CONNECT before the deadline")]
    Timeout,
    #[error("closed before CONNECT")]
    ClosedEarly,
    #[error("first packet was not CONNECT")]
    NotConnect,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("client id {0:?} is not the certificate's device id")]
    WrongClientId(String),
    #[error("zero-byte client id without a clean session")]
    IdentifierRejected,
    #[error("broker unreachable: {0}")]
    Broker(std::io::Error),
    #[error("client sent a packet only a server may send (type {0})")]
    ForbiddenPacket(u8),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("will refused: {0}")]
    WillDenied(DenyReason),
    #[error("will refused: {0}")]
    WillOverQuota(retained::RetainRefusal),
    #[error("too many denied publishes")]
    TooManyDenials,
    #[error("the previous connection of this client id did not close in time")]
    Busy,
    #[error("a large packet did not complete in time")]
    SlowPacket,
    #[error("the hub's budget for large packets stayed full")]
    LargePacketBudget,
    #[error("certificate no longer accepted")]
    Revoked,
    #[error("closed by the hub")]
    Stopped,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Edge {
    /// The limits in force now (the hub's settings, as the last reload
    /// left them).
    pub fn limits(&self) -> EdgeLimits {
        EdgeLimits::of(&self.hub.config.borrow())
    }

    /// A plain fn returning an async block, here and in `run_session`: an
    /// `async fn` stores its arguments twice in its future
    /// (rust-lang/rust#62958), for every connection's life.
    #[allow(clippy::manual_async_fn)]
    fn serve_tls(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        (deadline, limits): (Instant, EdgeLimits),
        stop: CancellationToken,
        ticket: crate::admission::Ticket,
    ) -> impl std::future::Future<Output = ()> + '_ {
        async move {
            // The handshake's result is scoped and the stream boxed, so the
            // task's future does not reserve the TLS stream (~1.2 KiB) in every
            // state that encloses it: 6 KiB less per idle connection (issue 20).
            let mut stream = match {
                tokio::select! {
                    // Closed to make room for a source holding fewer handshakes.
                    _ = ticket.evicted() => return,
                    handshake = timeout_at(deadline, self.tls.accept(tcp)) => handshake,
                }
            } {
                Ok(Ok(stream)) => Box::new(stream),
                Ok(Err(e)) => {
                    let (reason, device, class) = tls::refusal_reason(&e);
                    tracing::warn!(peer = %peer_addr, reason = %reason, "handshake refused");
                    self.hub.metrics.handshake(Some(class));
                    self.hub.audit.record(Event {
                        device,
                        event: "handshake-refused",
                        reason: Some(reason),
                        peer: Some(peer_addr.to_string()),
                        ..Event::default()
                    });
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %peer_addr, "handshake timed out");
                    return;
                }
            };
            // The verifier accepted the certificate; look it up again (cheap,
            // in memory) to bind the session. If it was revoked in between,
            // refuse: fail closed.
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first());
            // From the hub's own chain (verified now or when the resumed
            // session began), so the id it names can go in the audit.
            let named = cert.and_then(|cert| crate::ca::device_id_of(cert));
            let sha = cert.map(|cert| fingerprint(cert));
            let Some((sha, identity)) =
                sha.and_then(|sha| Some((sha, self.hub.registry.lookup(&sha)?)))
            else {
                self.refuse_revoked(named, sha, peer_addr);
                answer_not_authorized(&mut stream, limits.max_packet, deadline).await;
                return;
            };
            // Reachable by a revocation from here on; the lookup after it is
            // the one that counts (a revocation between the two is seen by one
            // of them).
            let _admitted = self.hub.sessions.admit(identity.device, stop.clone());
            let Some(identity) = self
                .hub
                .registry
                .lookup(&sha)
                .filter(|now| now.device == identity.device)
            else {
                self.refuse_revoked(Some(identity.device), Some(sha), peer_addr);
                answer_not_authorized(&mut stream, limits.max_packet, deadline).await;
                return;
            };
            // Authenticated: out of the handshake budget, into a slot.
            drop(ticket);
            self.hub.metrics.handshake(None);
            let Ok(Ok(_permit)) =
                timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await
            else {
                tracing::warn!(device = %identity.device, "no connection slot free before the deadline");
                return;
            };
            if self.hub.registry.is_renewing(&identity.device) {
                self.retire_predecessors(&identity.device, &sha).await;
            }
            let tls = match stream.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1_3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1_2",
                _ => "other",
            };
            self.run_session(
                stream,
                Peer::Device(identity),
                (Some(sha), tls),
                (deadline, limits),
                stop,
            )
            .await
        }
    }

    /// A certificate the verifier accepted was revoked before the session
    /// began (also the path of a resumed TLS session, which skips the
    /// verifier): audited like any refused handshake.
    fn refuse_revoked(
        &self,
        device: Option<DeviceId>,
        sha: Option<[u8; 32]>,
        peer_addr: SocketAddr,
    ) {
        tracing::warn!(peer = %peer_addr, "certificate no longer accepted");
        // The same words as the verifier's refusals.
        let (reason, class) = match sha {
            Some(sha) if self.hub.registry.is_revoked(&sha) => {
                ("certificate revoked", RefusalClass::Revoked)
            }
            Some(_) => ("unknown device", RefusalClass::UnknownDevice),
            None => ("no client certificate", RefusalClass::NoCertificate),
        };
        self.hub.metrics.handshake(Some(class));
        self.hub.audit.record(Event {
            device,
            event: "handshake-refused",
            reason: Some(reason.into()),
            peer: Some(peer_addr.to_string()),
            ..Event::default()
        });
    }

    /// A renewed certificate was just used: its predecessors stop working
    /// now rather than at the end of their grace. The store's commit runs
    /// on a blocking thread: the connections' thread never waits for the
    /// disk (`daemon::EdgeThread`).
    async fn retire_predecessors(&self, device: &DeviceId, used: &[u8; 32]) {
        let (hub, device, used) = (Arc::clone(&self.hub), *device, *used);
        let retired = tokio::task::spawn_blocking(move || hub.retire_predecessors(&device, &used))
            .await
            .map_err(|e| e.to_string())
            .and_then(|done| done.map_err(|e| e.to_string()));
        match retired {
            Ok(retired) if retired > 0 => {
                tracing::info!(device = %device, "renewed certificate in use; the previous one is retired");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(device = %device, error = %e, "cannot retire the previous certificate")
            }
        }
    }

    /// Reads the CONNECT, checks it, connects to the broker and relays.
    /// `fingerprint` is the client certificate's, looked up again at
    /// CONNECT: a session starts only for a certificate accepted then.
    #[allow(clippy::manual_async_fn)] // see `serve_tls`
    fn run_session<'a, S>(
        &'a self,
        mut client: S,
        peer: Peer,
        (fingerprint, tls): (Option<[u8; 32]>, &'a str),
        (deadline, limits): (Instant, EdgeLimits),
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + 'a,
    {
        async move {
            let device = match &peer {
                Peer::Device(identity) => Some(identity.device),
                Peer::Developer => None,
            };
            let mut inbound = BytesMut::new();
            let mut connected = false;
            // The session's number in the hub's observations.
            let mut observed = 0;
            let result = async {
            let (version, mut connect, connect_len) = tokio::select! {
                // Revoked (or the hub stopping) while waiting for CONNECT.
                _ = stop.cancelled() => return Err(SessionEnd::Stopped),
                read = timeout_at(deadline, self.read_connect(&mut client, &mut inbound, limits.max_packet)) => {
                    match read {
                        Ok(result) => result?,
                        Err(_) => return Err(SessionEnd::Timeout),
                    }
                }
            };
            // The certificate's standing now, not at the handshake: revoked,
            // removed or with narrowed grants since, it counts as it is.
            let current = match fingerprint {
                Some(sha) => match self.hub.registry.lookup(&sha) {
                    Some(now) if Some(now.device) == device => Some(Peer::Device(now)),
                    _ => None,
                },
                None => Some(peer.clone()),
            };
            let checked = match &current {
                Some(peer) => client_id_for(peer, version, &connect).and_then(|id| {
                    check_will(peer, &connect)?;
                    self.admit_retained_will(peer, &connect)?;
                    Ok(id)
                }),
                None => Err(SessionEnd::Revoked),
            };
            let client_id = match checked {
                Ok(id) => id,
                Err(end) => {
                    let connack = match end {
                        SessionEnd::IdentifierRejected => inspect::CONNACK_IDENTIFIER_REJECTED,
                        _ => inspect::connack_not_authorized(version),
                    };
                    let _ = client.write_all(connack).await;
                    let _ = client.shutdown().await;
                    if let Some(device) = device {
                        let (action, topic) = match &end {
                            SessionEnd::WillDenied(_) | SessionEnd::WillOverQuota(_) => {
                                ("will", will_topic(&connect))
                            }
                            _ => ("connect", None),
                        };
                        self.hub.audit.record(Event {
                            device: Some(device),
                            event: "connect-refused",
                            action: Some(action.to_owned()),
                            topic,
                            reason: Some(end.to_string()),
                            ..Event::default()
                        });
                    }
                    return Err(end);
                }
            };
            let peer = current.unwrap_or(peer);
            let _ = inbound.split_to(connect_len);
            let mut traits = relay::ClientTraits::default();
            let mut purge_on_close = false;
            let lifetime = SessionLifetime::of(version, &connect, limits.max_session_expiry);
            if let (SessionLifetime::FreshKept(_), Packet::Connect(c, ..)) =
                (lifetime, &mut connect)
            {
                // rumqttd keeps no session made with a clean start: the
                // edge discards the old one itself (below, on its turn)
                // and asks rumqttd for a session that outlives the
                // connection.
                c.clean_session = false;
            }
            if let Packet::Connect(c, properties, ..) = &connect {
                if c.clean_session || matches!(lifetime, SessionLifetime::FreshKept(_)) {
                    self.hub.sessions.reset_session(&client_id);
                }
                traits.silent = c.keep_alive == 0;
                if version == MqttVersion::V5 {
                    // 5 §3.2.2.3.7 [MQTT-3.2.2-16]: an empty id is answered
                    // with the one assigned.
                    let mut extras = inspect::ConnAckExtras {
                        receive_max: Some(limits.max_inflight),
                        ..inspect::ConnAckExtras::default()
                    };
                    if c.client_id.is_empty() {
                        extras.assigned_id = Some(client_id.clone());
                    }
                    // 5 §3.1.2.11.2: with no Session Expiry Interval the
                    // session ends with the connection; rumqttd keeps it.
                    let expiry = properties.as_ref().and_then(|p| p.session_expiry_interval);
                    traits.max_packet = properties
                        .as_ref()
                        .and_then(|p| p.max_packet_size)
                        .map(|n| n as usize);
                    traits.receive_max = properties.as_ref().and_then(|p| p.receive_maximum);
                    purge_on_close = !c.clean_session && expiry.unwrap_or(0) == 0;
                    traits.no_expiry = expiry.unwrap_or(0) == 0;
                    // 5 §3.2.2.3.2: the hub says so when it keeps the session
                    // for less than the client asked.
                    if let Some(kept) = lifetime.kept_for() {
                        if u64::from(expiry.unwrap_or(0)) > kept.as_secs() {
                            extras.session_expiry = u32::try_from(kept.as_secs()).ok();
                        }
                    }
                    traits.connack = Some(extras);
                }
            }
            if let Packet::Connect(_, Some(properties), ..) = &mut connect {
                // The edge may hold back a QoS 1/2 PUBLISH (the client's
                // Receive Maximum) or drop one too large for the client,
                // while later ones go on: a topic alias the broker defined
                // in it would be unknown when a later one used it. Such a
                // client gets no aliases from the hub (they are optional,
                // 5 §3.3.2.3.4).
                if traits.max_packet.is_some()
                    || relay::holds_back(traits.receive_max, limits.max_inflight)
                {
                    properties.topic_alias_max = None;
                }
            }
            let will = match &connect {
                Packet::Connect(_, _, Some(will), _, _) => Some((will.topic.clone(), will.retain)),
                _ => None,
            };
            // For `hearth device check`, before the CONNECT is rewritten.
            let (keep_alive, named_itself) = match &connect {
                Packet::Connect(c, ..) => (c.keep_alive, !c.client_id.is_empty()),
                _ => (0, false),
            };
            let mut connect_out = BytesMut::new();
            codec::encode(
                version,
                codec::rewrite_connect(connect, client_id.clone()),
                &mut connect_out,
            )
            .map_err(FrameError::MalformedConnect)?;
            // The previous connection may not have registered yet when this
            // one arrives; asking it to go again while waiting covers that.
            let waiting = async {
                loop {
                    self.hub.sessions.take_over(&client_id);
                    let turn = self.hub.sessions.broker_turn(&client_id);
                    if let Ok(turn) = tokio::time::timeout(TAKEOVER_RETRY, turn).await {
                        return turn;
                    }
                }
            };
            let _turn = tokio::time::timeout(TURN_WAIT, waiting)
                .await
                .map_err(|_| SessionEnd::Busy)?;
            if matches!(lifetime, SessionLifetime::FreshKept(_)) {
                crate::broker::purge_session(&self.hub.broker, &client_id)
                    .await
                    .map_err(|e| SessionEnd::Broker(std::io::Error::other(e.to_string())))?;
            }
            let mut broker = {
                // Moved here, so its bytes are freed before the relay
                // starts rather than kept for the connection's life.
                let connect_out = connect_out;
                self.hub
                    .broker
                    .open(version, &connect_out)
                    .await
                    .map_err(SessionEnd::Broker)?
            };
            let session = self.hub.sessions.register(device, &client_id, stop.clone());
            connected = true;
            if let Some(device) = &device {
                observed = self.hub.observations.begin(
                    *device,
                    SessionSeen {
                        started_ms: crate::unix_now_ms(),
                        tls: tls.to_owned(),
                        mqtt: if version == MqttVersion::V5 { 5 } else { 4 },
                        keep_alive,
                        named_itself,
                        ..SessionSeen::default()
                    },
                );
            }
            if let Some(device) = &device {
                // The audit writer also records it as the device's last_seen.
                tracing::info!(device = %device, "connected");
                self.hub.audit.record(Event {
                    device: Some(*device),
                    event: "connect",
                    ..Event::default()
                });
            }
            let expiry_at_disconnect = Arc::clone(&traits.expiry_at_disconnect);
            // Run by reference: a future holding the connection by value
            // stores it twice.
            let mut relay = relay::Connection {
                edge: self,
                limits,
                peer: &peer,
                version,
                client_id: &client_id,
                traits,
                stop,
            };
            let result = relay.run(client, &mut broker, inbound).await;
            drop(relay);
            // 5 §3.14.2.2.2: a DISCONNECT may change the session's expiry.
            let at_disconnect = *crate::sync::lock(&expiry_at_disconnect);
            let ended = lifetime.at_disconnect(at_disconnect, limits.max_session_expiry);
            if lifetime.kept_for().is_some() && ended.kept_for().is_none() {
                // rumqttd holds the session: end it on close.
                purge_on_close = true;
            }
            let lifetime = ended;
            // A device revoked (or no longer allowed its will) leaves no
            // will behind: the broker drops it on a DISCONNECT.
            let discard_will = match (&will, fingerprint) {
                (Some((topic, retain)), Some(sha)) => self
                    .hub
                    .registry
                    .lookup(&sha)
                    .is_none_or(|now| will_decision(&now, topic, *retain) != Decision::Allow),
                _ => false,
            };
            close_broker_connection(broker, discard_will).await;
            match lifetime.kept_for() {
                Some(after) => self.expire_later(&client_id, session.generation(), after),
                // The session ended with its connection (still on the
                // client id's turn): forget what the edge kept for it.
                None => self.hub.sessions.reset_session(&client_id),
            }
            drop(session);
            if purge_on_close {
                self.hub.sessions.reset_session(&client_id);
                // Still holding the client id's broker turn: no newer
                // connection of it can be hit.
                if let Err(e) = crate::broker::purge_session(&self.hub.broker, &client_id).await {
                    tracing::warn!(error = %e, "cannot end an expired session");
                }
            }
            result
        }
        .await;
            // Most MQTT clients close TCP without a TLS close_notify after
            // DISCONNECT, and a toy losing power does the same: an ordinary
            // end, not a warning.
            let result = match result {
                Err(SessionEnd::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
                other => other,
            };
            match (&device, &result) {
                (Some(device), Ok(())) => tracing::info!(device = %device, "disconnected"),
                (None, Ok(())) => {}
                (Some(device), Err(end)) => {
                    tracing::warn!(device = %device, reason = %end, "session ended")
                }
                (None, Err(end)) => tracing::info!(reason = %end, "development session ended"),
            }
            if let (Some(device), true) = (device, connected) {
                self.hub
                    .observations
                    .ended(&device, observed, crate::unix_now_ms());
                self.hub.audit.record(Event {
                    device: Some(device),
                    event: "disconnect",
                    reason: result.err().map(|e| e.to_string()),
                    ..Event::default()
                });
            }
        }
    }

    /// A retained will is a retained message the client may leave: it is
    /// held to the same quotas (and, known, cleared when the device is
    /// revoked). Counted from the CONNECT on, whether or not it fires.
    fn admit_retained_will(&self, peer: &Peer, connect: &Packet) -> Result<(), SessionEnd> {
        let Packet::Connect(_, _, Some(will), _, _) = connect else {
            return Ok(());
        };
        if !will.retain {
            return Ok(());
        }
        let topic = String::from_utf8_lossy(&will.topic);
        self.hub
            .retained
            .admit(
                peer.device().as_ref(),
                &topic,
                will.topic.len() + will.message.len(),
            )
            .map_err(SessionEnd::WillOverQuota)
    }

    /// Ends the session connection `generation` of `client_id` left, after
    /// `after`, unless a connection of that client id resumed it first.
    fn expire_later(&self, client_id: &str, generation: u64, after: Duration) {
        self.hub.sessions.session_left(client_id, generation);
        let sessions = Arc::clone(&self.hub.sessions);
        let broker = self.hub.broker.clone();
        let client_id = client_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // On the client id's turn: a connection cannot resume the
            // session while it is being ended.
            let _turn = sessions.broker_turn(&client_id).await;
            if sessions.session_expired(&client_id, generation) {
                sessions.reset_session(&client_id);
                if let Err(e) = crate::broker::purge_session(&broker, &client_id).await {
                    tracing::warn!(error = %e, "cannot end an expired session");
                }
            }
        });
    }

    async fn read_connect<S>(
        &self,
        client: &mut S,
        inbound: &mut BytesMut,
        max_packet: usize,
    ) -> Result<(MqttVersion, Packet, usize), SessionEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let frame = loop {
            if let Some(frame) = mqtt::next_frame(inbound, max_packet)? {
                break frame;
            }
            if relay::read_client(client, inbound).await? == 0 {
                return Err(SessionEnd::ClosedEarly);
            }
        };
        if frame.kind() != kind::CONNECT {
            return Err(SessionEnd::NotConnect);
        }
        let version = match mqtt::connect_version(inbound, &frame) {
            Ok(version) => version,
            Err(e) => {
                // MQTT 3.1.1 §3.2.2.3: answer return code 1, then close.
                let _ = client
                    .write_all(inspect::CONNACK_UNACCEPTABLE_PROTOCOL)
                    .await;
                return Err(e.into());
            }
        };
        let packet = codec::decode(version, &inbound[..frame.len], max_packet)
            .map_err(FrameError::MalformedConnect)?;
        Ok((version, packet, frame.len))
    }
}

/// The largest CONNECT read from a client about to be refused.
const REFUSED_CONNECT_MAX: usize = 16 * 1024;

/// The protocol's answer to a client whose TLS session began (a resumed
/// session skips the certificate check) but whose certificate is no
/// longer accepted: its CONNECT gets CONNACK "not authorized", so a device
/// learns it was revoked instead of seeing the connection drop, and stops
/// retrying. Waits for the CONNECT no longer than the handshake deadline.
async fn answer_not_authorized<S>(client: &mut S, max_packet: usize, deadline: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Only the CONNECT's version is needed: a larger one is closed on, so a
    // refused client holds little memory while it waits.
    let limit = max_packet.min(REFUSED_CONNECT_MAX);
    let mut inbound = BytesMut::new();
    let version = timeout_at(deadline, async {
        loop {
            match mqtt::next_frame(&inbound, limit) {
                Ok(Some(frame)) if frame.kind() == kind::CONNECT => {
                    return mqtt::connect_version(&inbound, &frame).ok();
                }
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return None,
            }
            match relay::read_client(client, &mut inbound).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    if let Ok(Some(version)) = version {
        let _ = client
            .write_all(inspect::connack_not_authorized(version))
            .await;
    }
    let _ = client.shutdown().await;
}

/// How long a new connection waits for the previous connection of the same
/// client id to close at the broker.
const TURN_WAIT: Duration = Duration::from_secs(5);
/// How often a connection waiting for its client id's turn asks the
/// holder to go.
const TAKEOVER_RETRY: Duration = Duration::from_millis(200);

/// Closes the broker connection without a DISCONNECT (so the broker still
/// publishes the client's will), and waits until the broker has closed its
/// end: by then it has queued the disconnect in its router.
///
/// With `discard_will`, a DISCONNECT goes first: MQTT 3.1.1 §3.14.4 and 5
/// §3.14.4 have the broker drop the will then.
async fn close_broker_connection(mut broker: BrokerLink, discard_will: bool) {
    if discard_will {
        // The same two bytes in 3.1.1 and 5 (reason 0x00, normal).
        let _ = broker.write_all(&[0xe0, 0x00]).await;
    }
    let _ = broker.shutdown().await;
    // On the heap: an array here would be part of every connection's task.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(broker.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The will's topic as text, for the audit.
fn will_topic(connect: &Packet) -> Option<String> {
    match connect {
        Packet::Connect(_, _, Some(will), _, _) => Some(relay::printable(&will.topic)),
        _ => None,
    }
}

/// A will must be a publish the device could make itself.
fn check_will(peer: &Peer, connect: &Packet) -> Result<(), SessionEnd> {
    let Packet::Connect(_, _, Some(will), _, _) = connect else {
        return Ok(());
    };
    let action = Action::Will {
        retain: will.retain,
    };
    let decision = match hearth_protocol::filter::topic_from_bytes(&will.topic) {
        Ok(topic) => peer.decide(action, topic),
        Err(e) => Decision::Deny(DenyReason::Malformed(e)),
    };
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(SessionEnd::WillDenied(reason)),
    }
}

/// What the policy says of `identity` leaving this will.
fn will_decision(identity: &DeviceIdentity, topic: &[u8], retain: bool) -> Decision {
    match hearth_protocol::filter::topic_from_bytes(topic) {
        Ok(topic) => policy::decide(&identity.subject(), Action::Will { retain }, topic),
        Err(e) => Decision::Deny(DenyReason::Malformed(e)),
    }
}

/// The client id the broker will see, or why the CONNECT is refused.
fn client_id_for(
    peer: &Peer,
    version: MqttVersion,
    connect: &Packet,
) -> Result<String, SessionEnd> {
    let Packet::Connect(connect, ..) = connect else {
        return Err(SessionEnd::NotConnect);
    };
    // 3.1.1 §3.1.3.1 [MQTT-3.1.3-8]: a zero-byte id asks for a session
    // nobody could resume; it must be rejected unless the session is clean.
    if version == MqttVersion::V311 && connect.client_id.is_empty() && !connect.clean_session {
        return Err(SessionEnd::IdentifierRejected);
    }
    match peer {
        Peer::Device(identity) => {
            let wanted = identity.device.as_str();
            if connect.client_id.is_empty() || connect.client_id == wanted {
                Ok(wanted.to_owned())
            } else {
                Err(SessionEnd::WrongClientId(connect.client_id.clone()))
            }
        }
        Peer::Developer => {
            if connect.client_id.is_empty() {
                Ok(format!("dev-{}", hex::encode(crate::random_bytes::<8>())))
            } else {
                Ok(connect.client_id.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(3600);

    #[test]
    fn a_disconnect_may_end_shorten_or_keep_a_session() {
        let kept = SessionLifetime::Kept(Duration::from_secs(600));
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        assert_eq!(secs(kept.at_disconnect(None, CAP).kept_for()), Some(600));
        assert_eq!(secs(kept.at_disconnect(Some(0), CAP).kept_for()), None);
        assert_eq!(secs(kept.at_disconnect(Some(60), CAP).kept_for()), Some(60));
        assert_eq!(
            secs(kept.at_disconnect(Some(u32::MAX), CAP).kept_for()),
            Some(3600),
            "capped"
        );
        let fresh = SessionLifetime::FreshKept(Duration::from_secs(600));
        assert!(matches!(
            fresh.at_disconnect(Some(60), CAP),
            SessionLifetime::FreshKept(d) if d.as_secs() == 60
        ));
        let ends = SessionLifetime::Ends;
        assert_eq!(ends.at_disconnect(Some(60), CAP).kept_for(), None);
    }
}
