//! Broker → client: pass the broker's packets on within what the client accepts (Receive Maximum, Maximum Packet Size, DUP on a redelivery), merge SUBACKs, extend the CONNACK, and write large packets by their deadline.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, BytesMut};
use hearth_protocol::mqtt::{self, inspect, kind, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ack_order::AckOrder;
use super::queue;
use super::receive_window::{ends_inbound_flow, send_window, InboundWindow, ReceiveWindow};
use super::suback::PendingSubAcks;
use super::{budget_kib, Connection, Shared, LARGE_PACKET, LARGE_PACKET_TIME};
use crate::broker::BrokerLink;
use crate::edge::SessionEnd;
use crate::hub::sessions::Sessions;
use crate::sync::lock;

/// How much room a read from the broker gets.
const BROKER_READ: usize = 16 * 1024;
/// How much larger than a client's a broker packet may be (its properties).
const BROKER_EXTRA: usize = 64 * 1024;
/// The DUP flag of a PUBLISH's fixed header (3.1.1 and 5 §3.3.1.1).
const DUP: u8 = 0x08;

/// Waits until the broker's link has bytes for the edge, or has closed,
/// without a buffer to read into (an idle connection holds none): the
/// first byte, or `None` at the end.
async fn first_byte<R: AsyncRead + Unpin>(broker: &mut R) -> std::io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    let read = broker.read(&mut byte).await?;
    Ok((read == 1).then_some(byte[0]))
}

/// Appends what the link holds now to `buf`, without waiting for more.
async fn read_available<R: AsyncRead + Unpin>(
    broker: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    std::future::poll_fn(|cx| {
        match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *broker), cx, buf) {
            std::task::Poll::Pending => std::task::Poll::Ready(Ok(())),
            std::task::Poll::Ready(result) => std::task::Poll::Ready(result.map(drop)),
        }
    })
    .await
}

/// What the upstream half asks the downstream half (the client's writer).
#[derive(Debug)]
pub(super) enum ToClient {
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

/// Whether the broker's side is still open after a read.
#[derive(Debug, PartialEq, Eq)]
enum Broker {
    Open,
    Closed,
}

/// The half of a connection that reads the broker and writes the client.
pub(super) struct Downstream<'a> {
    v5: bool,
    /// The largest packet read from the broker.
    limit: usize,
    /// PINGRESPs owed to the edge's own PINGREQs.
    edge_pings: Arc<AtomicU32>,
    /// Told when one of them arrives.
    pong: Arc<Notify>,
    sessions: &'a Sessions,
    /// Counts what is delivered.
    metrics: &'a crate::metrics::Metrics,
    client_id: &'a str,
    /// Properties to add to the CONNACK (v5).
    connack: Option<inspect::ConnAckExtras>,
    /// Wakes the upstream half when the edge answered for the client.
    to_broker: queue::Sender<()>,
    /// Acknowledgement order towards the broker (with `client_max`).
    order: Option<Arc<Mutex<AckOrder>>>,
    /// The client's Maximum Packet Size.
    client_max: Option<usize>,
    /// The client's Receive Maximum, applied.
    window: Option<ReceiveWindow>,
    /// The hub's budget for large packets.
    budget: Arc<Semaphore>,
    /// What the client has in flight towards the hub (v5), freed by the
    /// broker's answers as they pass.
    in_flight: Option<Arc<Mutex<InboundWindow>>>,
    /// SUBACKs that need the edge's refusals merged in.
    merges: PendingSubAcks,
    /// QoS 2 messages discarded for the client, whose PUBREL the edge answers.
    discarded_qos2: HashSet<u16>,
    /// A large packet from the broker still arriving: the budget it needs
    /// (KiB).
    wanted: Option<u32>,
    /// The budget it holds, with the time it must be written by.
    sending: Option<(OwnedSemaphorePermit, Instant)>,
}

impl<'a> Downstream<'a> {
    /// The downstream half of `conn`: `shared` with the upstream half,
    /// `connack` what the broker's CONNACK gets, `to_broker` to wake the
    /// upstream half when the edge answered for the client.
    pub(super) fn new(
        conn: &'a Connection<'a>,
        shared: Shared,
        connack: Option<inspect::ConnAckExtras>,
        to_broker: queue::Sender<()>,
    ) -> Downstream<'a> {
        let limits = &conn.limits;
        Downstream {
            v5: conn.v5(),
            limit: limits.max_packet + BROKER_EXTRA,
            edge_pings: shared.edge_pings,
            pong: shared.pong,
            sessions: &conn.edge.hub.sessions,
            metrics: &conn.edge.hub.metrics,
            client_id: conn.client_id,
            connack,
            to_broker,
            order: shared.order,
            client_max: conn.traits.max_packet,
            window: send_window(conn.traits.receive_max, limits.max_inflight),
            budget: Arc::clone(&conn.edge.large_packets),
            in_flight: shared.in_flight,
            merges: PendingSubAcks::default(),
            discarded_qos2: HashSet::new(),
            wanted: None,
            sending: None,
        }
    }

    /// Writes to the client: broker packets as they come, the packets the
    /// upstream half sends itself (`from_upstream`), and held ones as the
    /// client acknowledges earlier ones (`acks`).
    pub(super) async fn run<W>(
        &mut self,
        mut broker: ReadHalf<&mut BrokerLink>,
        mut client: W,
        mut from_upstream: queue::Receiver<ToClient>,
        mut acks: queue::Receiver<u16>,
    ) -> Result<(), SessionEnd>
    where
        W: AsyncWrite + Unpin,
    {
        // Allocated when the broker has something to say, released when all
        // of it was passed on: an idle connection holds no buffer here.
        let mut buf = BytesMut::new();
        loop {
            let need = self.wanted.filter(|_| self.sending.is_none());
            let acquire = {
                let budget = Arc::clone(&self.budget);
                async move {
                    match need {
                        Some(kib) => Box::pin(budget.acquire_many_owned(kib)).await.ok(),
                        None => std::future::pending().await,
                    }
                }
            };
            let due = self.sending.as_ref().map(|(_, due)| *due);
            let packet_due = async move {
                match due {
                    Some(due) => Box::pin(tokio::time::sleep_until(due)).await,
                    None => std::future::pending().await,
                }
            };
            // The broker waits while a large packet has no budget yet, or
            // while the client's receive window holds a lot.
            let may_read = need.is_none() && !self.window.as_ref().is_some_and(ReceiveWindow::full);
            tokio::select! {
                biased;
                Some(pkid) = acks.recv() => self.client_acked(&mut client, pkid).await?,
                message = from_upstream.recv() => match message {
                    Some(ToClient::Packet(bytes)) => client.write_all(&bytes).await?,
                    Some(ToClient::MergeSubAck { pkid, refused, total }) => {
                        self.merges.expect(pkid, refused, total);
                    }
                    Some(ToClient::Close(end)) => {
                        let _ = client.flush().await;
                        let _ = client.shutdown().await;
                        return Err(end);
                    }
                    None => return Ok(()),
                },
                Some(permit) = acquire => {
                    self.sending = Some((permit, Instant::now() + LARGE_PACKET_TIME));
                }
                _ = packet_due => return Err(SessionEnd::SlowPacket),
                first = first_byte(&mut broker), if may_read => {
                    if self.read_broker(first?, &mut broker, &mut buf, &mut client).await? == Broker::Closed {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The client acknowledged `pkid`: held PUBLISHes its window now has
    /// room for go.
    async fn client_acked<W>(&mut self, client: &mut W, pkid: u16) -> Result<(), SessionEnd>
    where
        W: AsyncWrite + Unpin,
    {
        if let Some(window) = self.window.as_mut() {
            for raw in window.acked(pkid) {
                let bytes = mark_redelivery(self.sessions, self.client_id, self.v5, raw);
                client.write_all(&bytes).await?;
            }
        }
        Ok(())
    }

    /// Reads what the broker has and passes every complete packet on.
    async fn read_broker<W>(
        &mut self,
        first: Option<u8>,
        broker: &mut ReadHalf<&mut BrokerLink>,
        buf: &mut BytesMut,
        client: &mut W,
    ) -> Result<Broker, SessionEnd>
    where
        W: AsyncWrite + Unpin,
    {
        let Some(first) = first else {
            let _ = client.shutdown().await;
            return Ok(Broker::Closed);
        };
        buf.reserve(BROKER_READ);
        buf.put_u8(first);
        read_available(broker, buf).await?;
        let (complete, changed) = self.pass_all(buf)?;
        // A large packet must be written by its budget's time too.
        let due = self.sending.as_ref().map(|(_, due)| *due);
        match changed {
            Some(bytes) => write_by(client, &bytes, due).await?,
            None if complete > 0 => write_by(client, &buf[..complete], due).await?,
            None => {}
        }
        buf.advance(complete);
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
        // The packet that held the budget was written: it goes back; a
        // large one now arriving needs its own.
        if complete > 0 {
            self.sending = None;
        }
        self.wanted = mqtt::announced_len(buf)
            .filter(|len| *len > LARGE_PACKET)
            .map(budget_kib);
        Ok(Broker::Open)
    }

    /// Every complete packet at the start of `buf`, as the client gets
    /// them: the bytes they took, and the bytes to write instead when any
    /// packet changed (`None`: write those bytes as they are).
    fn pass_all(&mut self, buf: &[u8]) -> Result<(usize, Option<Vec<u8>>), SessionEnd> {
        let mut complete = 0;
        let mut out: Option<Vec<u8>> = None;
        while let Some(f) = mqtt::next_frame(&buf[complete..], self.limit)? {
            let packet = &buf[complete..complete + f.len];
            match (self.pass(&f, packet), out.as_mut()) {
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
        Ok((complete, out))
    }

    /// What the client gets of one broker packet: `None` for the packet
    /// unchanged, otherwise these bytes (empty: nothing).
    fn pass(&mut self, f: &Frame, packet: &[u8]) -> Option<Vec<u8>> {
        let owed_pong = self.edge_pong(f);
        if let Some(in_flight) = &self.in_flight {
            if let Some(pkid) = ends_inbound_flow(f, packet) {
                lock(in_flight).answered(pkid);
            }
        }
        if owed_pong {
            // The answer to the edge's own PINGREQ: not the client's.
            return Some(Vec::new());
        }
        if self.client_max.is_some_and(|max| f.len > max)
            || (f.kind() == kind::PUBREL && !self.discarded_qos2.is_empty())
        {
            return self.discard_for_client(f, packet);
        }
        match f.kind() {
            kind::CONNACK if self.connack.is_some() => self
                .connack
                .take()
                .and_then(|extras| inspect::connack_with(packet, f.header_len, &extras)),
            kind::PUBLISH => self.publish(f, packet),
            kind::PUBREL if self.order.is_some() => {
                // A PUBREL the client will answer (the edge's own were
                // taken above).
                if let (Some(order), Ok(pkid)) =
                    (&self.order, inspect::packet_id(packet, f.header_len))
                {
                    lock(order).expect(true, pkid, None);
                }
                None
            }
            kind::SUBACK if !self.merges.is_empty() => self.merges.merge(self.v5, f, packet),
            _ => None,
        }
    }

    /// Whether this is the answer to one of the edge's own PINGREQs (which
    /// the client never sent); the upstream half is told.
    fn edge_pong(&self, f: &Frame) -> bool {
        let owed = f.kind() == kind::PINGRESP
            && self
                .edge_pings
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if owed {
            self.pong.notify_one();
        }
        owed
    }

    /// A PUBLISH for the client: it takes its place in the acknowledgement
    /// order, and waits if the client's receive window is full.
    fn publish(&mut self, f: &Frame, packet: &[u8]) -> Option<Vec<u8>> {
        let (sessions, client_id, v5) = (self.sessions, self.client_id, self.v5);
        let header = inspect::publish(packet, f.header_len, v5).ok();
        if let Some(h) = &header {
            self.metrics.message(false, h.qos, h.payload_len);
        }
        let pkid = header.and_then(|h| h.pkid);
        if let (Some(order), Some(pkid)) = (&self.order, pkid) {
            lock(order).expect(false, pkid, None);
        }
        match (self.window.as_mut(), pkid) {
            // Marked as sent (for DUP) only when it is sent.
            (Some(window), Some(pkid)) => Some(
                window
                    .offer(pkid, packet.to_vec())
                    .map(|raw| mark_redelivery(sessions, client_id, v5, raw))
                    .unwrap_or_default(),
            ),
            _ => redelivery_marked(sessions, client_id, v5, f, packet),
        }
    }

    /// 5 §3.1.2.11.4 [MQTT-3.1.2-25, -26]: a packet larger than the client's
    /// Maximum Packet Size is not sent; a PUBLISH is discarded "as if it had
    /// completed sending", so the edge acknowledges it to the broker (PUBACK,
    /// or PUBREC and later PUBCOMP). Returns `Some(empty)` to drop the
    /// packet, `None` to forward it unchanged.
    fn discard_for_client(&mut self, frame: &Frame, packet: &[u8]) -> Option<Vec<u8>> {
        let order = self.order.as_deref();
        let wake = &self.to_broker;
        let answer = |completion: bool, pkid: u16, bytes: Vec<u8>| {
            if let Some(order) = order {
                lock(order).expect(completion, pkid, Some(bytes));
                let _ = wake.push(());
            }
        };
        if frame.kind() == kind::PUBREL {
            let pkid = inspect::packet_id(packet, frame.header_len).ok()?;
            if !self.discarded_qos2.remove(&pkid) {
                // The client's to answer: its place in the order is kept.
                if let Some(order) = order {
                    lock(order).expect(true, pkid, None);
                }
                return None;
            }
            answer(true, pkid, inspect::ack(kind::PUBCOMP, pkid, None));
            return Some(Vec::new());
        }
        if self.client_max.is_none_or(|max| frame.len <= max) {
            return None;
        }
        if frame.kind() == kind::PUBLISH {
            if let Ok(header) = inspect::publish(packet, frame.header_len, self.v5) {
                match (header.qos, header.pkid) {
                    (1, Some(pkid)) => answer(false, pkid, inspect::ack(kind::PUBACK, pkid, None)),
                    (2, Some(pkid)) => {
                        self.discarded_qos2.insert(pkid);
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

/// [`redelivery_marked`] for a whole PUBLISH held back earlier.
fn mark_redelivery(sessions: &Sessions, client_id: &str, v5: bool, raw: Vec<u8>) -> Vec<u8> {
    match mqtt::next_frame(&raw, usize::MAX) {
        Ok(Some(f)) => redelivery_marked(sessions, client_id, v5, &f, &raw).unwrap_or(raw),
        _ => raw,
    }
}

/// A QoS 1/2 PUBLISH whose packet id the client has not acknowledged
/// since it was last sent is a redelivery: 3.1.1 §3.3.1.1 [MQTT-3.3.1-1]
/// and 5 §3.3.1.1 require DUP 1, which rumqttd does not set. Records the
/// sending; `None` if the packet goes unchanged.
fn redelivery_marked(
    sessions: &Sessions,
    client_id: &str,
    v5: bool,
    frame: &Frame,
    packet: &[u8],
) -> Option<Vec<u8>> {
    let header = inspect::publish(packet, frame.header_len, v5).ok()?;
    let pkid = header.pkid?;
    if sessions.outbound_sent(client_id, pkid) {
        return with_dup(packet);
    }
    None
}

/// The PUBLISH with its DUP flag set; `None` if it already was.
fn with_dup(packet: &[u8]) -> Option<Vec<u8>> {
    let first = *packet.first()?;
    if first & DUP != 0 {
        return None;
    }
    let mut marked = packet.to_vec();
    marked[0] = first | DUP;
    Some(marked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_broker_pipe_is_read_without_a_buffer_while_idle() {
        let (mut edge, mut broker) = tokio::io::duplex(64);
        // Nothing written: nothing to read.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), first_byte(&mut edge));
        assert!(waiting.await.is_err(), "a byte from an empty pipe");
        // Bytes written: the first, then the rest without waiting.
        broker.write_all(b"abc").await.unwrap();
        assert_eq!(first_byte(&mut edge).await.unwrap(), Some(b'a'));
        let mut got = BytesMut::new();
        read_available(&mut edge, &mut got).await.unwrap();
        assert_eq!(&got[..], b"bc");
        // Nothing more: returns at once with nothing.
        read_available(&mut edge, &mut got).await.unwrap();
        assert_eq!(&got[..], b"bc");
        // The other end gone: the end.
        drop(broker);
        assert_eq!(first_byte(&mut edge).await.unwrap(), None);
    }

    #[test]
    fn a_redelivered_publish_gets_its_dup_flag_once() {
        // QoS 1 PUBLISH on "t", packet id 1, payload "x".
        let publish = [0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x01, b'x'];
        let marked = with_dup(&publish).expect("marked");
        assert_eq!(marked[0], 0x3a, "DUP set, QoS and retain kept");
        assert_eq!(&marked[1..], &publish[1..], "nothing else changes");
        assert_eq!(with_dup(&marked), None, "already marked: unchanged");
    }
}
