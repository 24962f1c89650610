//! Client → broker: split the client's bytes into packets, judge each one (policy, topic aliases, quotas, Receive Maximum), keep large ones within the hub's budget, and pace a flooding publisher.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hearth_protocol::filter;
use hearth_protocol::household::Owner;
use hearth_protocol::mqtt::{self, inspect, kind, reason, Frame};
use hearth_protocol::policy::{Action, Decision, DenyReason};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::ack_order::AckOrder;
use super::allowed::AllowedTopics;
use super::downstream::ToClient;
use super::queue;
use super::receive_window::InboundWindow;
use super::suback::Refusal;
use super::{budget_kib, printable, Connection, Shared, DENIAL_LIMIT, DENIAL_WINDOW};
use super::{LARGE_PACKET, LARGE_PACKET_TIME};
use crate::audit::Event;
use crate::edge::{codec, Edge, EdgeLimits, Peer, SessionEnd};
use crate::hub::device_check::MetaSeen;
use crate::sync::lock;

/// rumqttd accepts topic aliases 1..=4096 (and says so in its CONNACK).
const TOPIC_ALIAS_MAX: u16 = 4096;
/// Bytes of aliased topics one connection may keep, so aliases cannot be
/// used to make the hub hold unbounded memory.
const ALIAS_BYTES_MAX: usize = 64 * 1024;
/// How often the edge pings the broker for a client that asked for no
/// keep-alive, well within the broker's 1.5 × [`codec::SILENT_CLIENT_KEEP_ALIVE`].
const BROKER_PING: Duration = Duration::from_secs(codec::SILENT_CLIENT_KEEP_ALIVE as u64 / 3);
/// PINGREQ.
const PINGREQ: [u8; 2] = [kind::PINGREQ << 4, 0];
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
/// The longest a sender waits for room in the hub's large-packet budget.
const RECEIVE_WAIT: Duration = Duration::from_secs(30);
/// The fixed-header flags a PUBREL or an UNSUBSCRIBE must carry (3.1.1
/// §2.2.2, 5 §2.1.3): anything else is a malformed packet.
const REQUIRED_FLAGS: u8 = 0b0010;
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
pub(in crate::edge) async fn read_client<R>(
    client: &mut R,
    inbound: &mut BytesMut,
) -> std::io::Result<usize>
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

/// Gives back a buffer once it is empty again (also the share it may
/// hold of another's allocation, which would make that one copy itself
/// on its next growth).
fn release_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() {
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

/// A judged batch of client packets.
struct Judged {
    /// The bytes of the batch taken from the client's.
    taken: usize,
    /// The last of them, which go to the broker as they came.
    unchanged: std::ops::Range<usize>,
}

/// Why a batch of client packets stopped short.
enum Stop {
    /// The stream is no longer MQTT: the connection ends at once.
    Broken(SessionEnd),
    /// A packet was refused in a way that ends the connection: what was
    /// allowed before it still goes to the broker.
    Refused(SessionEnd),
}

/// What a client published since the edge last paced it (see
/// [`PACE_PUBLISHES`]).
#[derive(Debug, Default)]
struct Pace {
    publishes: usize,
    bytes: usize,
    /// Once the client said DISCONNECT, nothing is paced any more.
    leaving: bool,
}

impl Pace {
    /// A packet of `kind` and `len` bytes went on.
    fn passed(&mut self, kind: u8, len: usize) {
        if kind == kind::PUBLISH {
            self.publishes += 1;
            self.bytes += len;
        }
        self.leaving |= kind == kind::DISCONNECT;
    }

    /// Whether the client published enough to be paced now.
    fn due(&self) -> bool {
        (self.publishes >= PACE_PUBLISHES || self.bytes >= PACE_BYTES) && !self.leaving
    }

    /// A pace was asked for.
    fn reset(&mut self) {
        (self.publishes, self.bytes) = (0, 0);
    }
}

/// Denied publishes within [`DENIAL_WINDOW`]: more than [`DENIAL_LIMIT`]
/// end the connection, so a client cannot make the hub audit without end.
#[derive(Debug, Default)]
struct Denials {
    at: VecDeque<Instant>,
}

impl Denials {
    /// A publish was denied `now`: false if that is one too many.
    fn denied(&mut self, now: Instant) -> bool {
        self.at.push_back(now);
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) > DENIAL_WINDOW)
        {
            self.at.pop_front();
        }
        self.at.len() <= DENIAL_LIMIT
    }
}

/// The half of a connection that reads the client and writes the broker.
pub(super) struct Upstream<'a> {
    /// Acknowledgement order towards the broker, when the edge may answer
    /// for the client.
    order: Option<Arc<Mutex<AckOrder>>>,
    /// Packet ids the client acknowledged (PUBACK, PUBCOMP), for the
    /// downstream half's receive window.
    client_acks: queue::Sender<u16>,
    client_id: &'a str,
    /// For a client without keep-alive: the edge's PINGREQs in flight.
    ping_broker: Option<Arc<AtomicU32>>,
    /// The edge's PINGREQs in flight, for pacing a publisher.
    paces: Arc<AtomicU32>,
    /// Signalled when the broker answered one of the edge's PINGREQs.
    pong: Arc<Notify>,
    edge: &'a Edge,
    /// The limits in force when the connection was accepted.
    limits: EdgeLimits,
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
    expiry_at_disconnect: Arc<Mutex<Option<u32>>>,
    /// What a v5 client has in flight towards the hub.
    in_flight: Option<Arc<Mutex<InboundWindow>>>,
    denials: Denials,
    to_client: queue::Sender<ToClient>,
    /// The device's own topics the hub watches for `hearth device check`
    /// and checks (its description), by prefix.
    own: Option<OwnTopics>,
    /// Telemetry seen since the last report to the hub's observations.
    telemetry: TelemetrySeen,
    started: Instant,
    /// Topics the policy allowed this connection's plain publishes to.
    allowed: AllowedTopics,
}

/// A device's own `tele/` prefix and `meta` topic.
struct OwnTopics {
    device: hearth_protocol::DeviceId,
    tele: Vec<u8>,
    meta: Vec<u8>,
}

/// Telemetry counted on the connection and handed to the hub's
/// observations once a second and at the end: no shared lock per message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TelemetrySeen {
    /// The second (since the connection began) being counted.
    second: u64,
    in_second: u32,
    peak: u32,
    count: u64,
    max_bytes: usize,
}

impl TelemetrySeen {
    /// Counts one message of `bytes` in second `second`; true when a new
    /// second began (time to report what was counted).
    pub(super) fn seen(&mut self, second: u64, bytes: usize) -> bool {
        let new_second = second != self.second;
        if new_second {
            self.second = second;
            self.in_second = 0;
        }
        self.in_second += 1;
        self.peak = self.peak.max(self.in_second);
        self.count += 1;
        self.max_bytes = self.max_bytes.max(bytes);
        new_second
    }
}

impl<'a> Upstream<'a> {
    /// The upstream half of `conn`, talking to the downstream half through
    /// `shared`, `to_client` (packets to write) and `client_acks`.
    pub(super) fn new(
        conn: &'a Connection<'a>,
        shared: &Shared,
        to_client: queue::Sender<ToClient>,
        client_acks: queue::Sender<u16>,
    ) -> Upstream<'a> {
        let traits = &conn.traits;
        Upstream {
            order: shared.order.clone(),
            client_acks,
            client_id: conn.client_id,
            ping_broker: traits.silent.then(|| Arc::clone(&shared.edge_pings)),
            paces: Arc::clone(&shared.edge_pings),
            pong: Arc::clone(&shared.pong),
            edge: conn.edge,
            limits: conn.limits,
            peer: conn.peer,
            v5: conn.v5(),
            aliases: HashMap::new(),
            alias_bytes: 0,
            refused_qos2: HashSet::new(),
            no_expiry: traits.no_expiry,
            expiry_at_disconnect: Arc::clone(&traits.expiry_at_disconnect),
            in_flight: shared.in_flight.clone(),
            denials: Denials::default(),
            to_client,
            own: conn.peer.device().map(|device| OwnTopics {
                device,
                tele: hearth_protocol::topic::tele(&device, "").into_bytes(),
                meta: hearth_protocol::topic::meta(&device).into_bytes(),
            }),
            telemetry: TelemetrySeen::default(),
            started: Instant::now(),
            allowed: AllowedTopics::default(),
        }
    }

    /// Hands the telemetry counted so far to the hub's observations.
    fn report_telemetry(&self) {
        let (Some(own), seen) = (&self.own, self.telemetry) else {
            return;
        };
        if seen.count == 0 {
            return;
        }
        self.edge.hub.observations.update(&own.device, |s| {
            s.telemetry = seen.count;
            s.telemetry_max_bytes = s.telemetry_max_bytes.max(seen.max_bytes);
            s.telemetry_peak_per_sec = s.telemetry_peak_per_sec.max(seen.peak);
        });
    }

    /// What the hub makes of a PUBLISH on the device's own topics (which
    /// the policy allows it): telemetry is counted; a description is
    /// checked against docs/schema/meta-v1.json's rules, and a bad one
    /// refused.
    fn watch_own(
        &mut self,
        header: &inspect::PublishHeader<'_>,
        topic: &[u8],
        packet: &[u8],
    ) -> Option<(String, u8)> {
        let own = self.own.as_ref()?;
        if topic.starts_with(&own.tele) && topic.len() > own.tele.len() {
            let second = self.started.elapsed().as_secs();
            if self.telemetry.seen(second, header.payload_len) {
                self.report_telemetry();
            }
            return None;
        }
        // An empty retained message clears the description: allowed.
        if topic != own.meta.as_slice() || header.payload_len == 0 {
            return None;
        }
        let payload = &packet[packet.len().saturating_sub(header.payload_len)..];
        let (seen, refusal) = match hearth_protocol::meta::parse(payload) {
            Ok(_) => (MetaSeen::Valid, None),
            Err(e) => (
                MetaSeen::Refused(e.to_string()),
                Some((e.to_string(), reason::PAYLOAD_FORMAT_INVALID)),
            ),
        };
        self.edge
            .hub
            .observations
            .update(&own.device, |s| s.meta = seen);
        refusal
    }

    /// Relays the client's packets until it closes; `from_downstream` says
    /// when the edge answered for the client.
    pub(super) async fn run<R, W>(
        &mut self,
        mut client: R,
        mut broker: W,
        mut inbound: BytesMut,
        mut from_downstream: queue::Receiver<()>,
    ) -> Result<(), SessionEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        let mut pace = Pace::default();
        // The receive budget a large packet still arriving holds, and when
        // it must be complete.
        let mut receiving: Option<(OwnedSemaphorePermit, Instant)> = None;
        loop {
            let took_any = match self.judge_batch(&inbound, &mut out, &mut pace).await {
                Ok(Judged { taken, unchanged }) => {
                    if taken > 0 && out.is_empty() && unchanged.start == 0 {
                        // All of it goes on as it came: handed over, not
                        // copied (a large packet is then held twice, as
                        // its budget counts: here and on the broker's side).
                        out = inbound.split_to(taken);
                    } else {
                        out.extend_from_slice(&inbound[unchanged]);
                        inbound.advance(taken);
                    }
                    taken > 0
                }
                Err(Stop::Broken(end)) => return Err(end),
                Err(Stop::Refused(end)) => {
                    // Flush what was allowed before, then let the client's
                    // writer send any last word and close.
                    let _ = broker.write_all(&out).await;
                    self.to_client.send(ToClient::Close(end)).await;
                    return std::future::pending().await;
                }
            };
            self.pass_on(&mut broker, &mut out, &mut pace).await?;
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
                        owed.fetch_add(1, Ordering::SeqCst);
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

    /// Judges every complete packet in `inbound`. What goes to the broker
    /// is what `out` holds followed by `inbound[unchanged]` (the packets
    /// that pass as they came since the last one that did not); on a
    /// refusal, `out` holds all that was allowed before it.
    async fn judge_batch(
        &mut self,
        inbound: &[u8],
        out: &mut BytesMut,
        pace: &mut Pace,
    ) -> Result<Judged, Stop> {
        let max = self.limits.max_packet;
        let mut taken = 0;
        let mut unchanged_from = 0;
        while let Some(frame) =
            mqtt::next_frame(&inbound[taken..], max).map_err(|e| Stop::Broken(e.into()))?
        {
            let packet = &inbound[taken..taken + frame.len];
            let verdict = match self.inspect(&frame, packet).await {
                Ok(verdict) => verdict,
                Err(end) => {
                    out.extend_from_slice(&inbound[unchanged_from..taken]);
                    return Err(Stop::Refused(end));
                }
            };
            match verdict {
                Verdict::Forward => {}
                Verdict::Replace(bytes) => {
                    out.extend_from_slice(&inbound[unchanged_from..taken]);
                    out.extend_from_slice(&bytes);
                    unchanged_from = taken + frame.len;
                }
                Verdict::Drop => {
                    out.extend_from_slice(&inbound[unchanged_from..taken]);
                    unchanged_from = taken + frame.len;
                }
            }
            taken += frame.len;
            pace.passed(frame.kind(), frame.len);
        }
        Ok(Judged {
            taken,
            unchanged: unchanged_from..taken,
        })
    }

    /// Writes `out` to the broker, and paces the client when it is due:
    /// a PINGREQ follows the batch, and its answer is waited for.
    async fn pass_on<W>(
        &self,
        broker: &mut W,
        out: &mut BytesMut,
        pace: &mut Pace,
    ) -> Result<(), SessionEnd>
    where
        W: AsyncWrite + Unpin,
    {
        // The router answers a PINGREQ only when it would give the
        // connection its turn; a client still owing acknowledgements
        // for QoS 1/2 messages it was sent gets no turn until those come
        // in, which the edge would not read while it waits. Such a
        // client is not paced (QoS 1/2 already paces it).
        let paced = pace.due() && !self.edge.hub.sessions.owes_acks(self.client_id);
        if !out.is_empty() {
            broker.write_all(&out[..]).await?;
            out.clear();
        }
        if paced {
            // Written on its own: `out` may be the client's own bytes,
            // handed over whole, which a PINGREQ appended would copy.
            self.paces.fetch_add(1, Ordering::SeqCst);
            broker.write_all(&PINGREQ).await?;
            pace.reset();
            // Until every PINGREQ of the edge's is answered (a late
            // answer's wake-up only causes a look at the count).
            let answered = async {
                while self.paces.load(Ordering::SeqCst) > 0 {
                    self.pong.notified().await;
                }
            };
            let _ = tokio::time::timeout(PACE_WAIT, answered).await;
        }
        Ok(())
    }

    /// Waits for room in the hub's receive budget for a packet of `len`
    /// bytes (counted twice: it is copied on its way to the broker), at most
    /// `RECEIVE_WAIT`; then the packet has `LARGE_PACKET_TIME` to arrive.
    async fn receive_budget(
        &self,
        len: usize,
    ) -> Result<(OwnedSemaphorePermit, Instant), SessionEnd> {
        let kib = budget_kib(len);
        let budget = Arc::clone(&self.edge.large_packets);
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
        self.to_client.send(ToClient::Packet(packet)).await;
    }

    async fn inspect(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        if let (kind::DISCONNECT, Some(own)) = (frame.kind(), &self.own) {
            // A session the device ended itself: the next one is no
            // reconnection after a loss.
            self.edge
                .hub
                .observations
                .update(&own.device, |s| s.said_goodbye = true);
        }
        match frame.kind() {
            kind::PUBLISH => self.publish(frame, packet).await,
            kind::SUBSCRIBE => self.subscribe(frame, packet).await,
            kind::PUBREL => self.pubrel(frame, packet).await,
            kind::UNSUBSCRIBE => self.unsubscribe(frame, packet),
            kind::PUBACK | kind::PUBREC | kind::PUBCOMP => Ok(self.client_ack(frame, packet)),
            kind::DISCONNECT if self.v5 => self.disconnect_v5(frame, packet).await,
            kind::PINGREQ | kind::DISCONNECT => Ok(Verdict::Forward),
            other => Err(SessionEnd::ForbiddenPacket(other)),
        }
    }

    /// A PUBREL: the edge finishes the flow of a QoS 2 publish it refused.
    async fn pubrel(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        if frame.flags() != REQUIRED_FLAGS {
            return Err(SessionEnd::Malformed("PUBREL flags"));
        }
        let pkid =
            inspect::packet_id(packet, frame.header_len).map_err(|e| SessionEnd::Malformed(e.0))?;
        if self.refused_qos2.remove(&pkid) {
            // The broker never saw this publish: finish the flow here.
            self.reply(inspect::ack(kind::PUBCOMP, pkid, None)).await;
            return Ok(Verdict::Drop);
        }
        Ok(Verdict::Forward)
    }

    /// An UNSUBSCRIBE: the subscription count goes down, and shared
    /// filters get the client's scope as they did when subscribed.
    fn unsubscribe(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        if frame.flags() != REQUIRED_FLAGS {
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

    /// The client's PUBACK, PUBREC or PUBCOMP for a message the hub sent:
    /// it frees the client's receive window and takes its place in the
    /// acknowledgement order.
    fn client_ack(&mut self, frame: &Frame, packet: &[u8]) -> Verdict {
        let Ok(pkid) = inspect::packet_id(packet, frame.header_len) else {
            return Verdict::Forward;
        };
        if frame.kind() != kind::PUBCOMP {
            self.edge.hub.sessions.outbound_acked(self.client_id, pkid);
        }
        // A PUBREC with a failure reason (v5) ends the QoS 2 flow too
        // (5 §4.9): its receive slot is free.
        let failed_pubrec = frame.kind() == kind::PUBREC
            && self.v5
            && packet
                .get(frame.header_len + 2)
                .is_some_and(|r| reason::is_failure(*r));
        if frame.kind() != kind::PUBREC || failed_pubrec {
            let _ = self.client_acks.push(pkid);
        }
        if let Some(order) = &self.order {
            let mut order = lock(order);
            if order.answered(frame.kind() == kind::PUBCOMP, pkid, packet) {
                return Verdict::Replace(order.drain());
            }
        }
        Verdict::Forward
    }

    /// A v5 DISCONNECT: the Session Expiry Interval it sets, if any, is
    /// kept for when the connection has ended.
    async fn disconnect_v5(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
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

    /// A PUBLISH: within the client's Receive Maximum, its topic (alias
    /// resolved) allowed by the policy and a retained one within the
    /// retained quota; a refused one is answered here and kept from the
    /// broker.
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
        let topic_bytes = self.topic_of(&header).await?;
        let action = Action::Publish {
            retain: header.retain,
        };
        // The description is checked before the retained quota counts it:
        // a refused one must not take the place of the stored one there.
        let refusal = match self.watch_own(&header, &topic_bytes, packet) {
            None => self.publish_refusal(action, &header, &topic_bytes, packet),
            refused => refused,
        };
        let Some((why, code)) = refusal else {
            self.edge
                .hub
                .metrics
                .message(true, header.qos, header.payload_len);
            return Ok(Verdict::Forward);
        };
        self.deny_audit(action, &printable(&topic_bytes), &why);
        self.refuse_publish(&header, code).await;
        if code != reason::NOT_AUTHORIZED
            && header.topic_alias.is_some()
            && !header.topic.is_empty()
        {
            // The edge's alias table now names a topic the policy allows
            // (the refusal was the retained quota or a description's
            // format), which the broker never learnt for this alias: the
            // next use of the alias alone would be checked against one
            // topic and published to another, the one the alias named
            // before. Ending the connection resets both tables. After a
            // policy denial the edge's topic is denied for any use that its
            // definition was, so the alias stays refused and the
            // connection may go on.
            self.reply(inspect::disconnect_v5(code)).await;
            return Err(SessionEnd::Protocol(
                "a refused publish defined a topic alias",
            ));
        }
        if !self.denials.denied(Instant::now()) {
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
                self.reply(inspect::disconnect_v5(reason::NOT_AUTHORIZED))
                    .await;
            }
            return Err(SessionEnd::TooManyDenials);
        }
        Ok(Verdict::Drop)
    }

    /// The topic a PUBLISH goes to: its own, or the one its topic alias
    /// (5 §3.3.2.3.4) stands for, defining the alias if it carries both.
    async fn topic_of<'p>(
        &mut self,
        header: &inspect::PublishHeader<'p>,
    ) -> Result<Cow<'p, [u8]>, SessionEnd> {
        let Some(alias) = header.topic_alias else {
            return Ok(Cow::Borrowed(header.topic));
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            self.reply(inspect::disconnect_v5(reason::TOPIC_ALIAS_INVALID))
                .await;
            return Err(SessionEnd::Protocol("topic alias out of range"));
        }
        if header.topic.is_empty() {
            return match self.aliases.get(&alias) {
                Some(topic) => Ok(Cow::Owned(topic.clone())),
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
                    Err(SessionEnd::Protocol("topic alias never defined"))
                }
            };
        }
        let old = self
            .aliases
            .insert(alias, header.topic.to_vec())
            .map(|t| t.len())
            .unwrap_or(0);
        self.alias_bytes = (self.alias_bytes + header.topic.len()).saturating_sub(old);
        if self.alias_bytes > ALIAS_BYTES_MAX {
            self.reply(inspect::disconnect_v5(reason::QUOTA_EXCEEDED))
                .await;
            return Err(SessionEnd::Protocol("topic aliases hold too many bytes"));
        }
        Ok(Cow::Borrowed(header.topic))
    }

    /// Why a PUBLISH to `topic` may not go on, for the audit, and its
    /// reason code; `None` if it may.
    fn publish_refusal(
        &mut self,
        action: Action,
        header: &inspect::PublishHeader<'_>,
        topic: &[u8],
        packet: &[u8],
    ) -> Option<(String, u8)> {
        let plain = action == Action::Publish { retain: false };
        if plain && self.allowed.contains(topic) {
            return None;
        }
        let decision = match filter::topic_from_bytes(topic) {
            Ok(topic) => self.peer.decide(action, topic),
            Err(e) => Decision::Deny(DenyReason::Malformed(e)),
        };
        if plain && decision == Decision::Allow {
            self.allowed.remember(topic);
        }
        match decision {
            Decision::Deny(why) => Some((why.to_string(), reason::NOT_AUTHORIZED)),
            Decision::Allow if header.retain => {
                let topic = String::from_utf8_lossy(topic);
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
                    .map(|quota| (quota.to_string(), reason::QUOTA_EXCEEDED))
            }
            Decision::Allow => None,
        }
    }

    /// Answers a refused QoS 1/2 PUBLISH, ending its flow (3.1.1 has no
    /// way to refuse one: it is acknowledged and dropped).
    async fn refuse_publish(&mut self, header: &inspect::PublishHeader<'_>, code: u8) {
        let code = self.v5.then_some(code);
        let answer = match (header.qos, header.pkid) {
            (1, Some(pkid)) => inspect::ack(kind::PUBACK, pkid, code),
            (2, Some(pkid)) => {
                self.refused_qos2.insert(pkid);
                inspect::ack(kind::PUBREC, pkid, code)
            }
            _ => return,
        };
        self.reply(answer).await;
        // A PUBACK, or a PUBREC with a failure code (5 §4.3.3), ends the
        // flow: its place in the client's window is free.
        if let (Some(in_flight), Some(pkid)) = (&self.in_flight, header.pkid) {
            lock(in_flight).answered(pkid);
        }
    }

    /// A SUBSCRIBE: each filter decided alone; the allowed ones go to the
    /// broker (shared ones scoped), the refused ones are answered here or
    /// merged into the broker's SUBACK.
    async fn subscribe(&mut self, frame: &Frame, packet: &[u8]) -> Result<Verdict, SessionEnd> {
        let sub = inspect::subscribe(packet, frame.header_len, self.v5)
            .map_err(|e| SessionEnd::Malformed(e.0))?;
        let mut refused = Vec::new();
        let mut allowed = Vec::new();
        for (index, (filter_bytes, options)) in sub.filters.iter().enumerate() {
            match self.subscribe_refusal(filter_bytes) {
                None => allowed.push((*filter_bytes, *options)),
                Some((why, refusal)) => {
                    self.deny_audit(Action::Subscribe, &printable(filter_bytes), &why);
                    refused.push((index, refusal.code(self.v5)));
                }
            }
        }
        if let Some(own) = &self.own {
            let (inbox, commands) = watched_subscriptions(&own.device, &allowed);
            if inbox || commands {
                self.edge.hub.observations.update(&own.device, |s| {
                    s.inbox |= inbox;
                    s.commands |= commands;
                });
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
        self.to_client
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

    /// Why a filter may not be subscribed to, for the audit; `None` if it
    /// may (and then it counts towards the session's subscriptions).
    fn subscribe_refusal(&self, filter_bytes: &[u8]) -> Option<(String, Refusal)> {
        let decision = match filter::filter_from_bytes(filter_bytes) {
            Ok(f) => self.peer.decide(Action::Subscribe, f),
            Err(e) => Decision::Deny(DenyReason::Malformed(e)),
        };
        if let Decision::Deny(why) = decision {
            return Some((why.to_string(), Refusal::Policy));
        }
        // The quota is the session's (`max_subscriptions_per_client`).
        let max = self.limits.max_subscriptions;
        if self
            .edge
            .hub
            .sessions
            .subscribe_within(self.client_id, digest(filter_bytes), max)
        {
            None
        } else {
            Some((
                "subscription quota of the client exceeded".into(),
                Refusal::Quota,
            ))
        }
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
        self.edge.hub.metrics.denial(action.name());
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

impl Drop for Upstream<'_> {
    fn drop(&mut self) {
        self.report_telemetry();
    }
}

/// Whether the allowed filters of a SUBSCRIBE reach the device's own inbox
/// and its own commands.
fn watched_subscriptions(
    device: &hearth_protocol::DeviceId,
    allowed: &[(&[u8], u8)],
) -> (bool, bool) {
    let inbox = hearth_protocol::topic::inbox(device);
    let command = hearth_protocol::topic::cmd(device, "x");
    let matches = |topic: &str| {
        allowed.iter().any(|(f, _)| {
            std::str::from_utf8(f).is_ok_and(|f| filter::matches(filter::levels(f), topic))
        })
    };
    (matches(&inbox), matches(&command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_is_counted_per_second_and_reported_when_a_second_ends() {
        let mut seen = TelemetrySeen::default();
        assert!(!seen.seen(0, 10));
        assert!(!seen.seen(0, 300));
        assert!(!seen.seen(0, 20));
        assert!(seen.seen(1, 5));
        assert_eq!((seen.count, seen.peak, seen.max_bytes), (4, 3, 300));
        assert!(!seen.seen(1, 5));
        assert_eq!(seen.peak, 3);
    }

    #[test]
    fn a_subscription_is_seen_reaching_the_devices_inbox_or_commands() {
        let me = hearth_protocol::DeviceId::from_entropy([3; 16]);
        let own = |rest: &str| format!("hearth/v1/dev/{me}/{rest}");
        let (cmd_all, inbox, tele) = (own("cmd/#"), own("inbox"), own("tele/x"));
        assert_eq!(
            watched_subscriptions(&me, &[(cmd_all.as_bytes(), 0)]),
            (false, true)
        );
        assert_eq!(
            watched_subscriptions(&me, &[(inbox.as_bytes(), 1), (tele.as_bytes(), 0)]),
            (true, false)
        );
    }

    #[test]
    fn a_publisher_is_paced_after_so_many_publishes_or_bytes() {
        let mut pace = Pace::default();
        for _ in 1..PACE_PUBLISHES {
            pace.passed(kind::PUBLISH, 10);
        }
        assert!(!pace.due());
        pace.passed(kind::PUBACK, 4);
        assert!(!pace.due(), "only publishes count");
        pace.passed(kind::PUBLISH, 10);
        assert!(pace.due());
        pace.reset();
        assert!(!pace.due());
        pace.passed(kind::PUBLISH, PACE_BYTES);
        assert!(pace.due(), "one large publish is as many bytes");
    }

    #[test]
    fn a_client_that_said_disconnect_is_not_paced() {
        let mut pace = Pace::default();
        pace.passed(kind::DISCONNECT, 2);
        for _ in 0..PACE_PUBLISHES {
            pace.passed(kind::PUBLISH, 10);
        }
        assert!(!pace.due());
    }

    #[test]
    fn more_than_the_limit_of_denials_within_the_window_is_too_many() {
        let start = Instant::now();
        let mut denials = Denials::default();
        for _ in 0..DENIAL_LIMIT {
            assert!(denials.denied(start));
        }
        assert!(!denials.denied(start + Duration::from_secs(1)));
    }

    #[test]
    fn denials_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut denials = Denials::default();
        for _ in 0..DENIAL_LIMIT {
            assert!(denials.denied(start));
        }
        let later = start + DENIAL_WINDOW + Duration::from_millis(1);
        assert!(denials.denied(later));
        assert_eq!(denials.at.len(), 1, "the old ones no longer held");
    }
}
