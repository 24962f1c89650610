//! The relay between one client and the broker, once its CONNECT was admitted: the hub's policy on every packet the client sends.
//!
//! A [`Connection`] runs two halves in one task, until either side closes
//! or its stop token fires:
//!
//! - `upstream.rs`, client → broker: splits the client's bytes into
//!   packets and judges each one: PUBLISH (topic aliases resolved, the
//!   policy, the retained quota, the Receive Maximum the hub announced),
//!   SUBSCRIBE (each filter decided alone), UNSUBSCRIBE, PUBREL of refused
//!   QoS 2 publishes, a v5 DISCONNECT's session expiry. Large packets wait
//!   for the hub's budget, and a flooding publisher is paced.
//! - `downstream.rs`, broker → client: the broker's packets pass through,
//!   except a CONNACK the edge extends, SUBACKs that need the refused
//!   filters' codes put back (`suback.rs`), PUBLISHes beyond the client's
//!   Receive Maximum (held, `receive_window.rs`) or Maximum Packet Size
//!   (discarded and acknowledged for it, in order: `ack_order.rs`), and
//!   redeliveries, which get DUP.
//!
//! The halves share little: the acknowledgement order, the client's
//! inbound window, and the count of the edge's own PINGREQs; the upstream
//! half hands the downstream half the packets it answers itself.

mod ack_order;
mod allowed;
mod downstream;
mod queue;
mod receive_window;
mod suback;
mod upstream;

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use hearth_protocol::mqtt::{inspect, MqttVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Edge, EdgeLimits, Peer, SessionEnd};
use crate::broker::BrokerLink;
use ack_order::AckOrder;
use downstream::Downstream;
use receive_window::InboundWindow;
use upstream::Upstream;

pub(super) use receive_window::holds_back;
pub(super) use upstream::read_client;

/// Denied publishes tolerated within [`DENIAL_WINDOW`] before disconnecting.
pub const DENIAL_LIMIT: usize = 10;
/// The window for [`DENIAL_LIMIT`].
pub const DENIAL_WINDOW: Duration = Duration::from_secs(10);

/// A packet larger than this, from a client or to one, takes its size from
/// the hub's budget (`limits.max_large_packet_bytes`) while the edge holds
/// it, so that many devices sending or receiving their largest packets at
/// once cannot exhaust the hub's memory.
pub(super) const LARGE_PACKET: usize = 64 * 1024;

/// The longest a large packet may take to arrive once it has its budget (an
/// 8 MiB photo at 1 Mbit/s takes about 70 s).
const LARGE_PACKET_TIME: Duration = Duration::from_secs(120);

/// The budget a large packet of `len` bytes takes, in KiB: twice its size,
/// for the copy on the other side of the edge (the buffer it is written
/// from towards the broker, or rumqttd's write buffer towards the edge).
fn budget_kib(len: usize) -> u32 {
    u32::try_from((2 * len).div_ceil(1024)).unwrap_or(u32::MAX)
}

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
    pub expiry_at_disconnect: Arc<Mutex<Option<u32>>>,
}

/// One relayed connection: whose it is and what the edge does for it.
pub(super) struct Connection<'a> {
    pub edge: &'a Edge,
    /// The limits in force when the connection was accepted.
    pub limits: EdgeLimits,
    /// Who is connected, for the policy and the audit.
    pub peer: &'a Peer,
    pub version: MqttVersion,
    /// The client id the broker knows the session by.
    pub client_id: &'a str,
    pub traits: ClientTraits,
    /// Ends the relay (revocation, takeover, shutdown).
    pub stop: CancellationToken,
}

/// What the two halves of one connection share.
struct Shared {
    /// Acknowledgement order towards the broker. Only a client with a
    /// Maximum Packet Size can make the edge answer for it, so only then
    /// are acknowledgements sequenced.
    order: Option<Arc<Mutex<AckOrder>>>,
    /// A v5 client's own window: it was told the hub's Receive Maximum.
    in_flight: Option<Arc<Mutex<InboundWindow>>>,
    /// PINGRESPs owed to the edge's own PINGREQs, dropped on the way down.
    edge_pings: Arc<AtomicU32>,
    /// Told when one of them came back.
    pong: Arc<Notify>,
}

impl Connection<'_> {
    fn v5(&self) -> bool {
        self.version == MqttVersion::V5
    }

    /// Relays between `client` and `broker` until either side closes or
    /// `stop` fires; `inbound` is what the client sent after its CONNECT.
    pub(super) async fn run<S>(
        &mut self,
        client: S,
        broker: &mut BrokerLink,
        inbound: BytesMut,
    ) -> Result<(), SessionEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (client_read, client_write) = tokio::io::split(client);
        let (broker_read, broker_write) = tokio::io::split(broker);
        let connack = self.traits.connack.take();
        let shared = Shared {
            order: self
                .traits
                .max_packet
                .map(|_| Arc::new(Mutex::new(AckOrder::default()))),
            in_flight: self
                .v5()
                .then(|| Arc::new(Mutex::new(InboundWindow::new(self.limits.max_inflight)))),
            edge_pings: Arc::new(AtomicU32::new(0)),
            pong: Arc::new(Notify::new()),
        };
        // Packets the upstream half answers itself, for the client's writer.
        let (to_client, from_upstream) = queue::bounded(64);
        // Acknowledgements the edge owes the broker for messages it discarded
        // for the client (too large for it); bounded by the broker's inflight.
        let (to_broker, from_downstream) = queue::unbounded();
        // The client's PUBACKs and PUBCOMPs, which free its receive window.
        let (client_acks, acks) = queue::unbounded();
        let this = &*self;
        let mut upstream = Upstream::new(this, &shared, to_client, client_acks);
        let up = upstream.run(client_read, broker_write, inbound, from_downstream);
        let mut downstream = Downstream::new(this, shared, connack, to_broker);
        let down = downstream.run(broker_read, client_write, from_upstream, acks);
        tokio::select! {
            _ = this.stop.cancelled() => Ok(()),
            result = up => result,
            result = down => result,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audited_topic_cannot_carry_control_characters_or_invalid_utf8() {
        assert_eq!(printable(b"hearth/v1/dev/1/state"), "hearth/v1/dev/1/state");
        let text = printable(b"a\nb\x1b[31m\xff");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(text, "a\\nb\\u{1b}[31m\u{fffd}");
    }

    #[test]
    fn an_audited_topic_is_cut_at_a_character_boundary() {
        let long = "é".repeat(1000);
        let text = printable(long.as_bytes());
        assert!(text.ends_with('…'));
        assert!(text.len() <= 512 + '…'.len_utf8());
        assert!(text.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_large_packet_takes_twice_its_size_from_the_budget() {
        assert_eq!(budget_kib(LARGE_PACKET + 1), 129, "rounded up");
        assert_eq!(budget_kib(8 * 1024 * 1024), 16 * 1024);
        assert_eq!(budget_kib(usize::MAX / 2), u32::MAX, "capped, not wrapped");
    }
}
