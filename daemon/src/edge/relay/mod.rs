//! The relay between one client and the broker, with the policy applied to
//! every packet the client sends: PUBLISH (topic aliases resolved),
//! SUBSCRIBE (each filter decided alone, the SUBACK merged), PUBREL of
//! refused QoS 2 publishes. Broker packets pass through, except SUBACKs
//! that need the refused filters' failure codes put back in place.

mod ack_order;
mod receive_window;
mod suback;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hearth_protocol::filter;
use hearth_protocol::household::Owner;
use hearth_protocol::mqtt::reason::{self, NOT_AUTHORIZED, QUOTA_EXCEEDED};
use hearth_protocol::mqtt::{self, inspect, kind, Frame, MqttVersion};
use hearth_protocol::policy::{Action, Decision, DenyReason};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::sync::lock;
use tokio_util::sync::CancellationToken;

use super::codec;
use super::{Edge, Peer, SessionEnd};
use crate::audit::Event;
use ack_order::AckOrder;
use receive_window::{ends_inbound_flow, send_window, InboundWindow, ReceiveWindow};
use suback::{PendingSubAcks, Refusal};

pub(super) use receive_window::holds_back;

/// rumqttd accepts topic aliases 1..=4096 (and says so in its CONNACK).
const TOPIC_ALIAS_MAX: u16 = 4096;
/// Bytes of aliased topics one connection may keep, so aliases cannot be
/// used to make the hub hold unbounded memory.
const ALIAS_BYTES_MAX: usize = 64 * 1024;
/// Denied publishes tolerated within [`DENIAL_WINDOW`] before disconnecting.
pub const DENIAL_LIMIT: usize = 10;
/// The window for [`DENIAL_LIMIT`].
pub const DENIAL_WINDOW: Duration = Duration::from_secs(10);
/// How often the edge pings the broker for a client that asked for no
/// keep-alive, well within the broker's 1.5 × [`codec::SILENT_CLIENT_KEEP_ALIVE`].
const BROKER_PING: Duration = Duration::from_secs(codec::SILENT_CLIENT_KEEP_ALIVE as u64 / 3);
/// PINGREQ.
const PINGREQ: [u8; 2] = [0xc0, 0x00];
/// After this many publishes (or [`PACE_BYTES`]) from one client, the edge
/// asks the broker for a PINGRESP and reads no more from that client until
/// it comes: the router answers in order, after it has taken every earlier
/// publish, and only when the connection's turn comes round with the
/// subscribers'. A flooding publisher then goes as fast as the router
/// delivers instead of filling its log with messages no subscriber reads.
const PACE_PUBLISHES: usize = 100;
/// Bytes of publishes between two paces.
const PACE_BYTES: usize = 256 * 1024;
/// Longest wait for a pace's answer (a stuck router is not waited for).
const PACE_WAIT: Duration = Duration::from_millis(100);

/// What the edge must do for this client that the broker does not.
#[derive(Debug, Default)]
pub(super) struct ClientTraits {
    /// It asked for no keep-alive: the edge keeps the broker side alive.
    pub silent: bool,
    /// What the edge adds to the broker's CONNACK (v5): an assigned id, a
    /// capped session expiry, the hub's Receive Maximum.
    pub connack: Option<inspect::ConnAckExtras>,
    /// Its Maximum Packet Size (v5): larger packets are not sent to it.
    pub max_packet: Option<usize>,
    /// Its Receive Maximum (v5): QoS 1/2 PUBLISHes it may have unacknowledged.
    pub receive_max: Option<u16>,
    /// Its CONNECT asked for no Session Expiry Interval (v5): its session
    /// ends with the connection, and a DISCONNECT may not set one.
    pub no_expiry: bool,
    /// The Session Expiry Interval its DISCONNECT set (v5), for the edge
    /// to apply when the connection has ended.
    pub expiry_at_disconnect: std::sync::Arc<std::sync::Mutex<Option<u32>>>,
}

/// What the upstream half asks the downstream half (the client's writer).
#[derive(Debug)]
enum ToClient {
    /// Send these bytes.
    Packet(Vec<u8>),
    /// The broker's SUBACK for `pkid` lacks the refused filters: put their
    /// codes back at their positions (of `total`).
    MergeSubAck {
        pkid: u16,
        refused: Vec<(usize, u8)>,
        total: usize,
    },
    /// Close the connection, for this reason.
    Close(SessionEnd),
}

/// Relays until either side closes or `stop` fires.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub(super) async fn run<S>(
    edge: &Edge,
    peer: &Peer,
    version: MqttVersion,
    client_id: &str,
    client: S,
    broker: &mut TcpStream,
    inbound: BytesMut,
    traits: ClientTraits,
    stop: CancellationToken,
) -> Result<(), SessionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (broker_read, broker_write) = broker.split();
    let (to_client, from_upstream) = mpsc::channel(64);
    // Acknowledgements the edge owes the broker for messages it discarded
    // for the client (too large for it); bounded by the broker's inflight.
    let (to_broker, from_downstream) = mpsc::unbounded_channel();
    // Only a client with a Maximum Packet Size can make the edge answer for
    // it, so only then are acknowledgements sequenced.
    let order = traits
        .max_packet
        .map(|_| std::sync::Arc::new(std::sync::Mutex::new(AckOrder::default())));
    // The client's PUBACKs and PUBCOMPs, which free its receive window.
    let (client_acks, acks) = mpsc::unbounded_channel();
    // A v5 client's own window: it was told the hub's Receive Maximum.
    let in_flight = (version == MqttVersion::V5).then(|| {
        std::sync::Arc::new(std::sync::Mutex::new(InboundWindow::new(
            edge.limits.max_inflight,
        )))
    });
    // PINGRESPs owed to the edge's own PINGREQs, dropped on the way down.
    let edge_pings = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    // Told when one of them came back.
    let pong = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut upstream = Upstream {
        order: order.clone(),
        client_acks,
        client_id,
        ping_broker: traits.silent.then(|| std::sync::Arc::clone(&edge_pings)),
        paces: std::sync::Arc::clone(&edge_pings),
        pong: std::sync::Arc::clone(&pong),
        edge,
        peer,
        v5: version == MqttVersion::V5,
        aliases: HashMap::new(),
        alias_bytes: 0,
        refused_qos2: HashSet::new(),
        in_flight: in_flight.clone(),
        no_expiry: traits.no_expiry,
        expiry_at_disconnect: std::sync::Arc::clone(&traits.expiry_at_disconnect),
        denials: VecDeque::new(),
        to_client,
    };
    let up = upstream.run(client_read, broker_write, inbound, from_downstream);
    let down = downstream(
        broker_read,
        client_write,
        from_upstream,
        Downstream {
            v5: version == MqttVersion::V5,
            max_packet: edge.limits.max_packet,
            edge_pings,
            pong,
            sessions: &edge.hub.sessions,
            client_id,
            connack: traits.connack,
            to_broker,
            order,
            client_max: traits.max_packet,
            window: send_window(traits.receive_max, edge.limits.max_inflight),
            budget: std::sync::Arc::clone(&edge.large_packets),
            in_flight,
            acks,
        },
    );
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
        result = up => result,
        result = down => result,
    }
}

/// A packet larger than this, from a client or to one, takes its size from
/// the hub's budget (`limits.max_large_packet_bytes`) while the edge holds
/// it, so that many devices sending or receiving their largest packets at
/// once cannot exhaust the hub's memory.
pub(super) const LARGE_PACKET: usize = 64 * 1024;

/// The budget a large packet of `len` bytes takes, in KiB: twice its size,
/// for the copy on the other side of the edge (the buffer it is written
/// from towards the broker, or rumqttd's write buffer towards the edge).
fn budget_kib(len: usize) -> u32 {
    u32::try_from((2 * len).div_ceil(1024)).unwrap_or(u32::MAX)
}
/// The longest a sender waits for room in that budget.
const RECEIVE_WAIT: Duration = Duration::from_secs(30);
/// The longest a large packet may take to arrive once it has its budget (an
/// 8 MiB photo at 1 Mbit/s takes about 70 s).
const LARGE_PACKET_TIME: Duration = Duration::from_secs(120);

/// How much room a read from the broker gets.
const BROKER_READ: usize = 16 * 1024;
/// How much one read from a client takes (a TLS record's plaintext).
const CLIENT_READ: usize = 16 * 1024;

thread_local! {
    /// Where client reads land first, one per runtime thread.
    static CLIENT_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; CLIENT_READ].into_boxed_slice());
}

/// Reads what a client sent and appends it to `inbound`, through a
/// per-thread buffer: a connection waiting for its client holds no read
/// buffer of its own, and a busy one still reads a whole record at a time.
/// Returns the bytes read (0: the client closed).
pub(super) async fn read_client<R>(client: &mut R, inbound: &mut BytesMut) -> std::io::Result<usize>
where
    R: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        CLIENT_SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = tokio::io::ReadBuf::new(scratch);
            std::task::ready!(std::pin::Pin::new(&mut *client).poll_read(cx, &mut buf))?;
            inbound.extend_from_slice(buf.filled());
            std::task::Poll::Ready(Ok(buf.filled().len()))
        })
    })
    .await
}

/// Gives back a buffer once it is empty again.
fn release_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

/// A 64-bit digest of bytes the edge keeps or passes on in place of the
/// bytes themselves (a filter in the subscription count, a member's name
/// in a shared-group scope).
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What to do with one client packet.
enum Verdict {
    /// Pass it to the broker unchanged.
    Forward,
    /// Pass these bytes instead.
    Replace(Vec<u8>),
    /// Keep it from the broker.
    Drop,
}

struct Upstream<'a> {
    /// Acknowledgement order towards the broker, when the edge may answer
    /// for the client.
    order: Option<std::sync::Arc<std::sync::Mutex<AckOrder>>>,
    /// Packet ids the client acknowledged (PUBACK, PUBCOMP), for the
    /// downstream half's receive window.
    client_acks: mpsc::UnboundedSender<u16>,
    client_id: &'a str,
    /// For a client without keep-alive: the edge's PINGREQs in flight.
    ping_broker: Option<std::sync::Arc<std::sync::atomic::AtomicU32>>,
    /// The edge's PINGREQs in flight, for pacing a publisher.
    paces: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Signalled when the broker answered one of the edge's PINGREQs.
    pong: std::sync::Arc<tokio::sync::Notify>,
    edge: &'a Edge,
    peer: &'a Peer,
    v5: bool,
    /// Topic aliases as the client defined them, raw: a definition that is
    /// not a valid topic stays invalid when the alias is used.
    aliases: HashMap<u16, Vec<u8>>,
    alias_bytes: usize,
    refused_qos2: HashSet<u16>,
    /// Its CONNECT set no session expiry (v5).
    no_expiry: bool,
    /// Where a DISCONNECT's Session Expiry Interval goes.
    expiry_at_disconnect: std::sync::Arc<std::sync::Mutex<Option<u32>>>,
    /// What a v5 client has in flight towards the hub.
    in_flight: Option<std::sync::Arc<std::sync::Mutex<InboundWindow>>>,
    denials: VecDeque<Instant>,
    to_client: mpsc::Sender<ToClient>,
}

impl Upstream<'_> {
    async fn run<R, W>(
        &mut self,
        mut client: R,
        mut broker: W,
        mut inbound: BytesMut,
        mut from_downstream: mpsc::UnboundedReceiver<()>,
    ) -> Result<(), SessionEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.edge.limits.max_packet;
        let mut out = BytesMut::new();
        // Publishes and their bytes passed on since the last pace.
        let (mut unpaced, mut unpaced_bytes) = (0usize, 0usize);
        // Once the client said DISCONNECT, nothing is paced any more.
        let mut leaving = false;
        // The receive budget a large packet still arriving holds, and when
        // it must be complete.
        let mut receiving: Option<(tokio::sync::OwnedSemaphorePermit, Instant)> = None;
        loop {
            let mut took_any = false;
            // What goes on is usually what came in (plus a pace's PINGREQ):
            // one allocation for the batch, not a growth per packet.
            if !inbound.is_empty() {
                out.reserve(inbound.len() + PINGREQ.len());
            }
            while let Some(frame) = mqtt::next_frame(&inbound, max)? {
                let packet = &inbound[..frame.len];
                let publish = frame.kind() == kind::PUBLISH;
                match self.inspect(&frame, packet).await {
                    Ok(Verdict::Forward) => out.extend_from_slice(packet),
                    Ok(Verdict::Replace(bytes)) => out.extend_from_slice(&bytes),
                    Ok(Verdict::Drop) => {}
                    Err(end) => {
                        // Flush what was allowed before, then let the
                        // client's writer send any last word and close.
                        let _ = broker.write_all(&out).await;
                        let _ = self.to_client.send(ToClient::Close(end)).await;
                        return std::future::pending().await;
                    }
                }
                inbound.advance(frame.len);
                took_any = true;
                if publish {
                    unpaced += 1;
                    unpaced_bytes += frame.len;
                }
                leaving |= frame.kind() == kind::DISCONNECT;
            }
            // The router answers a PINGREQ only when it would give the
            // connection its turn; a client still owing acknowledgements
            // for QoS 1/2 messages it was sent gets no turn until those come
            // in, which the edge would not read while it waits. Such a
            // client is not paced (QoS 1/2 already paces it).
            let pace = (unpaced >= PACE_PUBLISHES || unpaced_bytes >= PACE_BYTES)
                && !leaving
                && !self.edge.hub.sessions.owes_acks(self.client_id);
            if pace {
                self.paces.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                out.extend_from_slice(&PINGREQ);
                (unpaced, unpaced_bytes) = (0, 0);
            }
            if !out.is_empty() {
                broker.write_all(&out).await?;
                out.clear();
            }
            if pace {
                // Until every PINGREQ of the edge's is answered (a late
                // answer's wake-up only causes a look at the count).
                let answered = async {
                    while self.paces.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                        self.pong.notified().await;
                    }
                };
                let _ = tokio::time::timeout(PACE_WAIT, answered).await;
            }
            // The packet that held the budget was passed on (and `out`
            // written): its budget goes back before another is taken.
            if took_any {
                receiving = None;
            }
            release_if_idle(&mut inbound);
            release_if_idle(&mut out);
            match mqtt::announced_len(&inbound).filter(|len| *len > LARGE_PACKET) {
                None => receiving = None,
                Some(len) if receiving.is_none() => {
                    // Boxed, as are the other rare waits below: a future
                    // kept inline makes every connection's task larger.
                    receiving = Some(Box::pin(self.receive_budget(len)).await?);
                }
                Some(_) => {}
            }
            let packet_due = async {
                match &receiving {
                    Some((_, due)) => Box::pin(tokio::time::sleep_until(*due)).await,
                    None => std::future::pending().await,
                }
            };
            let ping_due = async {
                match self.ping_broker {
                    Some(_) => tokio::time::sleep(BROKER_PING).await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                read = read_client(&mut client, &mut inbound) => read?,
                _ = packet_due => return Err(SessionEnd::SlowPacket),
                Some(()) = from_downstream.recv() => {
                    // The edge answered for the client: send what is now
                    // in order.
                    let owed = self.order.as_ref().map(|o| lock(o).drain()).unwrap_or_default();
                    if !owed.is_empty() {
                        broker.write_all(&owed).await?;
                    }
                    continue;
                }
                _ = ping_due => {
                    if let Some(owed) = &self.ping_broker {
                        owed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        broker.write_all(&PINGREQ).await?;
                    }
                    continue;
                }
            };
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// Waits for room in the hub's receive budget for a packet of `len`
    /// bytes (counted twice: it is copied on its way to the broker), at most
    /// `RECEIVE_WAIT`; then the packet has `LARGE_PACKET_TIME` to arrive.
    async fn receive_budget(
        &self,
        len: usize,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Instant), SessionEnd> {
        let kib = budget_kib(len);
        let budget = std::sync::Arc::clone(&self.edge.large_packets);
        match tokio::time::timeout(RECEIVE_WAIT, budget.acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok((permit, Instant::now() + LARGE_PACKET_TIME)),
            _ => {
                if self.v5 {
                    self.reply(inspect::disconnect_v5(reason::SERVER_BUSY))
                        .await;
                }
                Err(SessionEnd::LargePacketBudget)
            }
        }
    }

    async fn reply(&self, packet: Vec<u8>) {
        let _ = self.to_client.send(ToClient::Packet(packet)).await;
    }

    async fn inspect(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        match frame.kind() {
            kind::PUBLISH => self.publish(frame, packet).await,
            kind::SUBSCRIBE => self.subscribe(frame, packet).await,
            kind::PUBREL => {
                if frame.flags() != 0b0010 {
                    return Err(SessionEnd::Malformed("PUBREL flags"));
                }
                let pkid = inspect::packet_id(packet, frame.header_len)
                    .map_err(|e| SessionEnd::Malformed(e.0))?;
                if self.refused_qos2.remove(&pkid) {
                    // The broker never saw this publish: finish the flow here.
                    self.reply(inspect::ack(kind::PUBCOMP, pkid, None)).await;
                    return Ok(Verdict::Drop);
                }
                Ok(Verdict::Forward)
            }
            kind::UNSUBSCRIBE => {
                if frame.flags() != 0b0010 {
                    return Err(SessionEnd::Malformed("UNSUBSCRIBE flags"));
                }
                let unsub = inspect::unsubscribe(packet, frame.header_len, self.v5)
                    .map_err(|e| SessionEnd::Malformed(e.0))?;
                for filter in &unsub.filters {
                    self.edge
                        .hub
                        .sessions
                        .unsubscribed(self.client_id, digest(filter));
                }
                let Some(scope) = self.share_scope() else {
                    return Ok(Verdict::Forward);
                };
                let scoped: Vec<Option<Vec<u8>>> = unsub
                    .filters
                    .iter()
                    .map(|f| inspect::scoped_share(f, &scope))
                    .collect();
                if scoped.iter().all(Option::is_none) {
                    return Ok(Verdict::Forward);
                }
                let filters: Vec<&[u8]> = unsub
                    .filters
                    .iter()
                    .zip(&scoped)
                    .map(|(f, s)| s.as_deref().unwrap_or(f))
                    .collect();
                let mut rewritten = Vec::new();
                inspect::encode_unsubscribe(unsub.pkid, unsub.properties, &filters, &mut rewritten);
                Ok(Verdict::Replace(rewritten))
            }
            kind::PUBACK | kind::PUBREC | kind::PUBCOMP => {
                if let Ok(pkid) = inspect::packet_id(packet, frame.header_len) {
                    if frame.kind() != kind::PUBCOMP {
                        self.edge.hub.sessions.outbound_acked(self.client_id, pkid);
                    }
                    // A PUBREC with an error reason (v5, >= 0x80) ends the
                    // QoS 2 flow too (5 §4.9): its receive slot is free.
                    let failed_pubrec = frame.kind() == kind::PUBREC
                        && self.v5
                        && packet
                            .get(frame.header_len + 2)
                            .is_some_and(|r| reason::is_failure(*r));
                    if frame.kind() != kind::PUBREC || failed_pubrec {
                        let _ = self.client_acks.send(pkid);
                    }
                    if let Some(order) = &self.order {
                        let mut order = lock(order);
                        if order.answered(frame.kind() == kind::PUBCOMP, pkid, packet) {
                            return Ok(Verdict::Replace(order.drain()));
                        }
                    }
                }
                Ok(Verdict::Forward)
            }
            kind::DISCONNECT if self.v5 => {
                let expiry = inspect::disconnect_session_expiry(packet, frame.header_len)
                    .map_err(|e| SessionEnd::Malformed(e.0))?;
                if let Some(expiry) = expiry {
                    // 5 §3.14.2.2.2: not a valid DISCONNECT (the will
                    // stays due) after a CONNECT without an expiry.
                    if expiry > 0 && self.no_expiry {
                        self.reply(inspect::disconnect_v5(reason::PROTOCOL_ERROR))
                            .await;
                        return Err(SessionEnd::Protocol(
                            "session expiry set at DISCONNECT after none at CONNECT",
                        ));
                    }
                    *lock(&self.expiry_at_disconnect) = Some(expiry);
                }
                Ok(Verdict::Forward)
            }
            kind::PINGREQ | kind::DISCONNECT => Ok(Verdict::Forward),
            other => Err(SessionEnd::ForbiddenPacket(other)),
        }
    }

    async fn publish(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        let header = inspect::publish(packet, frame.header_len, self.v5)
            .map_err(|e| SessionEnd::Malformed(e.0))?;
        if let (Some(in_flight), Some(pkid)) = (&self.in_flight, header.pkid) {
            // 5 §3.3.4: more unanswered QoS 1/2 PUBLISHes than the CONNACK's
            // Receive Maximum allowed.
            if !lock(in_flight).received(pkid) {
                self.reply(inspect::disconnect_v5(reason::RECEIVE_MAXIMUM_EXCEEDED))
                    .await;
                return Err(SessionEnd::Protocol("receive maximum exceeded"));
            }
        }
        let topic_bytes: Vec<u8> = match header.topic_alias {
            None => header.topic.to_vec(),
            Some(alias) => {
                if alias == 0 || alias > TOPIC_ALIAS_MAX {
                    self.reply(inspect::disconnect_v5(reason::TOPIC_ALIAS_INVALID))
                        .await;
                    return Err(SessionEnd::Protocol("topic alias out of range"));
                }
                if header.topic.is_empty() {
                    match self.aliases.get(&alias) {
                        Some(topic) => topic.clone(),
                        None => {
                            self.deny_audit(
                                Action::Publish {
                                    retain: header.retain,
                                },
                                &format!("(alias {alias})"),
                                "topic alias never defined",
                            );
                            self.reply(inspect::disconnect_v5(reason::PROTOCOL_ERROR))
                                .await;
                            return Err(SessionEnd::Protocol("topic alias never defined"));
                        }
                    }
                } else {
                    let old = self
                        .aliases
                        .insert(alias, header.topic.to_vec())
                        .map(|t| t.len())
                        .unwrap_or(0);
                    self.alias_bytes = (self.alias_bytes + header.topic.len()).saturating_sub(old);
                    if self.alias_bytes > ALIAS_BYTES_MAX {
                        self.reply(inspect::disconnect_v5(QUOTA_EXCEEDED)).await;
                        return Err(SessionEnd::Protocol("topic aliases hold too many bytes"));
                    }
                    header.topic.to_vec()
                }
            }
        };
        let action = Action::Publish {
            retain: header.retain,
        };
        let decision = match filter::topic_from_bytes(&topic_bytes) {
            Ok(topic) => self.peer.decide(action, topic),
            Err(e) => Decision::Deny(DenyReason::Malformed(e)),
        };
        let refusal = match decision {
            Decision::Deny(reason) => Some((reason.to_string(), NOT_AUTHORIZED)),
            Decision::Allow if header.retain => {
                let topic = String::from_utf8_lossy(&topic_bytes);
                // The whole packet: properties are stored with the message.
                let weight = if header.payload_len == 0 {
                    0
                } else {
                    packet.len()
                };
                self.edge
                    .hub
                    .retained
                    .admit(self.peer.device().as_ref(), &topic, weight)
                    .err()
                    .map(|quota| (quota.to_string(), QUOTA_EXCEEDED))
            }
            Decision::Allow => None,
        };
        let Some((reason, code)) = refusal else {
            return Ok(Verdict::Forward);
        };
        self.deny_audit(action, &printable(&topic_bytes), &reason);
        match (header.qos, header.pkid) {
            (1, Some(pkid)) => {
                // 3.1.1 has no way to refuse a publish: acknowledge and drop.
                let code = self.v5.then_some(code);
                self.reply(inspect::ack(kind::PUBACK, pkid, code)).await;
                if let Some(in_flight) = &self.in_flight {
                    lock(in_flight).answered(pkid);
                }
            }
            (2, Some(pkid)) => {
                let code = self.v5.then_some(code);
                self.refused_qos2.insert(pkid);
                self.reply(inspect::ack(kind::PUBREC, pkid, code)).await;
                // A PUBREC with an error code ends the flow (5 §4.3.3).
                if let Some(in_flight) = &self.in_flight {
                    lock(in_flight).answered(pkid);
                }
            }
            _ => {}
        }
        if code == QUOTA_EXCEEDED && header.topic_alias.is_some() && !header.topic.is_empty() {
            // The edge's alias table now names an allowed topic the broker
            // never learnt for this alias: the next use of the alias alone
            // would be checked against one topic and published to another.
            // Ending the connection resets both tables.
            self.reply(inspect::disconnect_v5(QUOTA_EXCEEDED)).await;
            return Err(SessionEnd::Protocol(
                "quota exceeded on a topic alias definition",
            ));
        }
        let now = Instant::now();
        self.denials.push_back(now);
        while self
            .denials
            .front()
            .is_some_and(|t| now.duration_since(*t) > DENIAL_WINDOW)
        {
            self.denials.pop_front();
        }
        if self.denials.len() > DENIAL_LIMIT {
            self.edge.hub.audit.record(Event {
                device: self.peer.device(),
                event: "disconnected",
                reason: Some(format!(
                    "more than {DENIAL_LIMIT} denied publishes in {}s",
                    DENIAL_WINDOW.as_secs()
                )),
                ..Event::default()
            });
            if self.v5 {
                self.reply(inspect::disconnect_v5(NOT_AUTHORIZED)).await;
            }
            return Err(SessionEnd::TooManyDenials);
        }
        Ok(Verdict::Drop)
    }

    async fn subscribe(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        let sub = inspect::subscribe(packet, frame.header_len, self.v5)
            .map_err(|e| SessionEnd::Malformed(e.0))?;
        let mut refused = Vec::new();
        let mut allowed = Vec::new();
        for (index, (filter_bytes, options)) in sub.filters.iter().enumerate() {
            let decision = match filter::filter_from_bytes(filter_bytes) {
                Ok(f) => self.peer.decide(Action::Subscribe, f),
                Err(e) => Decision::Deny(DenyReason::Malformed(e)),
            };
            let refusal = match decision {
                Decision::Deny(reason) => Some((reason.to_string(), Refusal::Policy.code(self.v5))),
                Decision::Allow => {
                    // The quota is the session's (`max_subscriptions_per_client`).
                    let max = self.edge.limits.max_subscriptions;
                    if self.edge.hub.sessions.subscribe_within(
                        self.client_id,
                        digest(filter_bytes),
                        max,
                    ) {
                        None
                    } else {
                        Some((
                            "subscription quota of the client exceeded".into(),
                            Refusal::Quota.code(self.v5),
                        ))
                    }
                }
            };
            match refusal {
                None => allowed.push((*filter_bytes, *options)),
                Some((reason, code)) => {
                    self.deny_audit(Action::Subscribe, &printable(filter_bytes), &reason);
                    refused.push((index, code));
                }
            }
        }
        if let (Some(watch), Peer::Device(identity)) = (&self.edge.inbox_watch, self.peer) {
            let filters = allowed
                .iter()
                .filter_map(|(bytes, _)| std::str::from_utf8(bytes).ok());
            watch.subscribed(&identity.device, filters);
        }
        let scoped: Vec<Option<Vec<u8>>> = match self.share_scope() {
            Some(scope) => allowed
                .iter()
                .map(|(f, _)| inspect::scoped_share(f, &scope))
                .collect(),
            None => Vec::new(),
        };
        if refused.is_empty() && scoped.iter().all(Option::is_none) {
            return Ok(Verdict::Forward);
        }
        let allowed: Vec<(&[u8], u8)> = allowed
            .iter()
            .enumerate()
            .map(|(i, (f, o))| match scoped.get(i) {
                Some(Some(s)) => (s.as_slice(), *o),
                _ => (*f, *o),
            })
            .collect();
        if refused.is_empty() {
            let mut rewritten = Vec::new();
            inspect::encode_subscribe(sub.pkid, sub.properties, &allowed, &mut rewritten);
            return Ok(Verdict::Replace(rewritten));
        }
        if allowed.is_empty() {
            let codes: Vec<u8> = refused.iter().map(|(_, code)| *code).collect();
            let mut suback = Vec::new();
            inspect::encode_suback(sub.pkid, self.v5, &[], &codes, &mut suback);
            self.reply(suback).await;
            return Ok(Verdict::Drop);
        }
        let _ = self
            .to_client
            .send(ToClient::MergeSubAck {
                pkid: sub.pkid,
                refused,
                total: sub.filters.len(),
            })
            .await;
        let mut rewritten = Vec::new();
        inspect::encode_subscribe(sub.pkid, sub.properties, &allowed, &mut rewritten);
        Ok(Verdict::Replace(rewritten))
    }

    /// Whose shared-subscription groups this client joins: a member's
    /// devices share theirs, a service has its own; development clients
    /// use plain MQTT groups.
    fn share_scope(&self) -> Option<String> {
        let Peer::Device(identity) = self.peer else {
            return None;
        };
        Some(match &identity.owner {
            // A digest, not the name: the group name reaches the broker.
            Owner::Member(name) => format!("m{:016x}", digest(name.as_str().as_bytes())),
            Owner::Service => format!("s{}", identity.device),
        })
    }

    fn deny_audit(&self, action: Action, topic: &str, reason: &str) {
        let device = self.peer.device();
        self.edge.hub.audit.record(Event {
            device,
            event: "denied",
            action: Some(action.name().to_owned()),
            topic: Some(topic.to_owned()),
            reason: Some(reason.to_owned()),
            ..Event::default()
        });
    }
}

/// A topic as text for the audit: invalid UTF-8 and control characters
/// escaped, long topics cut.
pub(super) fn printable(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes).escape_debug().collect();
    if text.len() > 512 {
        let mut cut = 512;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &text[..cut])
    } else {
        text
    }
}

/// What the downstream half needs besides its streams.
struct Downstream<'a> {
    v5: bool,
    /// The largest packet a client may send (broker packets may exceed it
    /// by their properties).
    max_packet: usize,
    /// PINGRESPs owed to the edge's own PINGREQs.
    edge_pings: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Told when one of them arrives.
    pong: std::sync::Arc<tokio::sync::Notify>,
    sessions: &'a crate::hub::sessions::Sessions,
    client_id: &'a str,
    /// Properties to add to the CONNACK (v5).
    connack: Option<inspect::ConnAckExtras>,
    /// Wakes the upstream half when the edge answered for the client.
    to_broker: mpsc::UnboundedSender<()>,
    /// Acknowledgement order towards the broker (with `client_max`).
    order: Option<std::sync::Arc<std::sync::Mutex<AckOrder>>>,
    /// The client's Maximum Packet Size.
    client_max: Option<usize>,
    /// The client's Receive Maximum, applied.
    window: Option<ReceiveWindow>,
    /// What the client has in flight towards the hub (v5), freed by the
    /// broker's answers as they pass.
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// What the client has in flight towards the hub (v5), freed by the
    /// broker's answers as they pass.
    in_flight: Option<std::sync::Arc<std::sync::Mutex<InboundWindow>>>,
    /// Packet ids the client acknowledged.
    acks: mpsc::UnboundedReceiver<u16>,
}

/// Writes `bytes` to the client, by `due` if given.
async fn write_by<W>(client: &mut W, bytes: &[u8], due: Option<Instant>) -> Result<(), SessionEnd>
where
    W: AsyncWrite + Unpin,
{
    match due {
        None => Ok(client.write_all(bytes).await?),
        Some(due) => match Box::pin(tokio::time::timeout_at(due, client.write_all(bytes))).await {
            Ok(written) => Ok(written?),
            Err(_) => Err(SessionEnd::SlowPacket),
        },
    }
}

/// Writes to the client: broker packets as they come (SUBACKs merged when
/// asked), and the packets the upstream half sends itself.
async fn downstream<W>(
    broker: tokio::net::tcp::ReadHalf<'_>,
    mut client: W,
    mut from_upstream: mpsc::Receiver<ToClient>,
    state: Downstream<'_>,
) -> Result<(), SessionEnd>
where
    W: AsyncWrite + Unpin,
{
    let Downstream {
        v5,
        max_packet,
        edge_pings,
        pong,
        sessions,
        client_id,
        mut connack,
        to_broker,
        order,
        client_max,
        mut window,
        budget,
        in_flight,
        mut acks,
    } = state;
    // A large packet from the broker still arriving: the budget it needs
    // (KiB), and the budget it holds with the time it must be written by.
    let mut wanted: Option<u32> = None;
    let mut sending: Option<(tokio::sync::OwnedSemaphorePermit, Instant)> = None;
    // Allocated when the broker has something to say, released when all
    // of it was passed on: an idle connection holds no buffer here.
    let mut buf = BytesMut::new();
    let mut merges = PendingSubAcks::default();
    // QoS 2 messages discarded for the client, whose PUBREL the edge answers.
    let mut discarded_qos2: HashSet<u16> = HashSet::new();
    // Broker packets may be a little larger than client ones (properties).
    let limit = max_packet + 64 * 1024;
    loop {
        let need = wanted.filter(|_| sending.is_none());
        let acquire = {
            let budget = std::sync::Arc::clone(&budget);
            async move {
                match need {
                    Some(kib) => Box::pin(budget.acquire_many_owned(kib)).await.ok(),
                    None => std::future::pending().await,
                }
            }
        };
        let due = sending.as_ref().map(|(_, due)| *due);
        let packet_due = async move {
            match due {
                Some(due) => Box::pin(tokio::time::sleep_until(due)).await,
                None => std::future::pending().await,
            }
        };
        // The broker waits while a large packet has no budget yet, or while
        // the client's receive window holds a lot.
        let may_read = need.is_none() && !window.as_ref().is_some_and(ReceiveWindow::full);
        tokio::select! {
            biased;
            Some(pkid) = acks.recv() => {
                if let Some(window) = window.as_mut() {
                    for raw in window.acked(pkid) {
                        let bytes = mark_redelivery(sessions, client_id, v5, raw);
                        client.write_all(&bytes).await?;
                    }
                }
            }
            message = from_upstream.recv() => match message {
                Some(ToClient::Packet(bytes)) => client.write_all(&bytes).await?,
                Some(ToClient::MergeSubAck { pkid, refused, total }) => {
                    merges.expect(pkid, refused, total);
                }
                Some(ToClient::Close(end)) => {
                    let _ = client.flush().await;
                    let _ = client.shutdown().await;
                    return Err(end);
                }
                None => return Ok(()),
            },
            Some(permit) = acquire => {
                sending = Some((permit, Instant::now() + LARGE_PACKET_TIME));
            }
            _ = packet_due => return Err(SessionEnd::SlowPacket),
            ready = broker.readable(), if may_read => {
                ready?;
                buf.reserve(BROKER_READ);
                let read = match broker.try_read_buf(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Readiness was stale: wait again without a buffer.
                        if buf.is_empty() {
                            buf = BytesMut::new();
                        }
                        continue;
                    }
                    read => read?,
                };
                if read == 0 {
                    let _ = client.shutdown().await;
                    return Ok(());
                }
                let mut complete = 0;
                let mut out: Option<Vec<u8>> = None;
                while let Some(f) = mqtt::next_frame(&buf[complete..], limit)? {
                    let packet = &buf[complete..complete + f.len];
                    let owed_pong = f.kind() == kind::PINGRESP
                        && edge_pings
                            .fetch_update(
                                std::sync::atomic::Ordering::SeqCst,
                                std::sync::atomic::Ordering::SeqCst,
                                |n| n.checked_sub(1),
                            )
                            .is_ok();
                    if owed_pong {
                        pong.notify_one();
                    }
                    if let Some(in_flight) = &in_flight {
                        if let Some(pkid) = ends_inbound_flow(&f, packet) {
                            lock(in_flight).answered(pkid);
                        }
                    }
                    let merged = if owed_pong {
                        // The answer to the edge's own PINGREQ: not the client's.
                        Some(Vec::new())
                    } else if client_max.is_some_and(|max| f.len > max)
                        || (f.kind() == kind::PUBREL && !discarded_qos2.is_empty())
                    {
                        discard_for_client(
                            v5,
                            &f,
                            packet,
                            client_max,
                            &mut discarded_qos2,
                            (order.as_deref(), &to_broker),
                        )
                    } else if f.kind() == kind::CONNACK && connack.is_some() {
                        connack
                            .take()
                            .and_then(|extras| inspect::connack_with(packet, f.header_len, &extras))
                    } else if f.kind() == kind::PUBLISH {
                        let pkid = inspect::publish(packet, f.header_len, v5)
                            .ok()
                            .and_then(|h| h.pkid);
                        if let (Some(order), Some(pkid)) = (&order, pkid) {
                            lock(order).expect(false, pkid, None);
                        }
                        match (window.as_mut(), pkid) {
                            // Marked as sent (for DUP) only when it is sent.
                            (Some(window), Some(pkid)) => Some(
                                window
                                    .offer(pkid, packet.to_vec())
                                    .map(|raw| mark_redelivery(sessions, client_id, v5, raw))
                                    .unwrap_or_default(),
                            ),
                            _ => redelivery_marked(sessions, client_id, v5, &f, packet),
                        }
                    } else if f.kind() == kind::PUBREL && order.is_some() {
                        // A PUBREL the client will answer (the edge's own
                        // were taken above).
                        if let (Some(order), Ok(pkid)) =
                            (&order, inspect::packet_id(packet, f.header_len))
                        {
                            lock(order).expect(true, pkid, None);
                        }
                        None
                    } else {
                        (f.kind() == kind::SUBACK && !merges.is_empty())
                            .then(|| merges.merge(v5, &f, packet))
                            .flatten()
                    };
                    match (merged, out.as_mut()) {
                        (Some(bytes), Some(o)) => o.extend_from_slice(&bytes),
                        (Some(bytes), None) => {
                            let mut o = buf[..complete].to_vec();
                            o.extend_from_slice(&bytes);
                            out = Some(o);
                        }
                        (None, Some(o)) => o.extend_from_slice(packet),
                        (None, None) => {}
                    }
                    complete += f.len;
                }
                // A large packet must be written by its budget's time too.
                let due = sending.as_ref().map(|(_, due)| *due);
                match out {
                    Some(bytes) => write_by(&mut client, &bytes, due).await?,
                    None if complete > 0 => write_by(&mut client, &buf[..complete], due).await?,
                    None => {}
                }
                buf.advance(complete);
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                // The packet that held the budget was written: it goes back;
                // a large one now arriving needs its own.
                if complete > 0 {
                    sending = None;
                }
                wanted = mqtt::announced_len(&buf)
                    .filter(|len| *len > LARGE_PACKET)
                    .map(budget_kib);
            }
        }
    }
}

/// 5 §3.1.2.11.4 [MQTT-3.1.2-25, -26]: a packet larger than the client's
/// Maximum Packet Size is not sent; a PUBLISH is discarded "as if it had
/// completed sending", so the edge acknowledges it to the broker (PUBACK,
/// or PUBREC and later PUBCOMP). Returns `Some(empty)` to drop the packet,
/// `None` to forward it unchanged.
fn discard_for_client(
    v5: bool,
    frame: &Frame,
    packet: &[u8],
    client_max: Option<usize>,
    discarded_qos2: &mut HashSet<u16>,
    (order, wake): (
        Option<&std::sync::Mutex<AckOrder>>,
        &mpsc::UnboundedSender<()>,
    ),
) -> Option<Vec<u8>> {
    let answer = |completion: bool, pkid: u16, bytes: Vec<u8>| {
        if let Some(order) = order {
            lock(order).expect(completion, pkid, Some(bytes));
            let _ = wake.send(());
        }
    };
    if frame.kind() == kind::PUBREL {
        let pkid = inspect::packet_id(packet, frame.header_len).ok()?;
        if !discarded_qos2.remove(&pkid) {
            // The client's to answer: its place in the order is kept.
            if let Some(order) = order {
                lock(order).expect(true, pkid, None);
            }
            return None;
        }
        answer(true, pkid, inspect::ack(kind::PUBCOMP, pkid, None));
        return Some(Vec::new());
    }
    if client_max.is_none_or(|max| frame.len <= max) {
        return None;
    }
    if frame.kind() == kind::PUBLISH {
        if let Ok(header) = inspect::publish(packet, frame.header_len, v5) {
            match (header.qos, header.pkid) {
                (1, Some(pkid)) => answer(false, pkid, inspect::ack(kind::PUBACK, pkid, None)),
                (2, Some(pkid)) => {
                    discarded_qos2.insert(pkid);
                    answer(false, pkid, inspect::ack(kind::PUBREC, pkid, None));
                }
                _ => {}
            }
        }
    }
    tracing::debug!(
        size = frame.len,
        "packet larger than the client accepts; discarded"
    );
    Some(Vec::new())
}

/// [`redelivery_marked`] for a whole PUBLISH held back earlier.
fn mark_redelivery(
    sessions: &crate::hub::sessions::Sessions,
    client_id: &str,
    v5: bool,
    raw: Vec<u8>,
) -> Vec<u8> {
    match mqtt::next_frame(&raw, usize::MAX) {
        Ok(Some(f)) => redelivery_marked(sessions, client_id, v5, &f, &raw).unwrap_or(raw),
        _ => raw,
    }
}

/// A QoS 1/2 PUBLISH whose packet id the client has not acknowledged
/// since it was last sent is a redelivery: 3.1.1 §3.3.1.1 [MQTT-3.3.1-1]
/// and 5 §3.3.1.1 require DUP 1, which rumqttd does not set.
fn redelivery_marked(
    sessions: &crate::hub::sessions::Sessions,
    client_id: &str,
    v5: bool,
    frame: &Frame,
    packet: &[u8],
) -> Option<Vec<u8>> {
    let header = inspect::publish(packet, frame.header_len, v5).ok()?;
    let pkid = header.pkid?;
    if sessions.outbound_sent(client_id, pkid) && packet[0] & 0x08 == 0 {
        let mut marked = packet.to_vec();
        marked[0] |= 0x08;
        return Some(marked);
    }
    None
}
