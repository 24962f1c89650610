//! The embedded rumqttd router: a task on the edge's thread (daemon::EdgeThread),
//! configured with bounded memory, reached only in-process (each client's
//! connection task drives its own link to the router, a [`BrokerLink`];
//! there is no listener), and watched by a liveness probe that makes a real
//! round trip through the router.

use std::time::Duration;

use hearth_protocol::mqtt::MqttVersion;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::DirectLink;
use rumqttd::{
    Broker, Config, ConnectionSettings, Connector, Notification, RouterConfig, WillHandlers,
};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How often the liveness probe runs.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);
/// How long one probe may take before the router is declared dead.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
/// The topic the probe publishes to and listens on. Clients never reach it:
/// the edge's policy only admits the `hearth/` namespace.
/// Under `$hearth/`: `#` and `+` never match it (MQTT §4.7.2) and the edge
/// refuses it to every client.
const LIVENESS_TOPIC: &str = "$hearth/liveness";
/// The filter the mailbox's link subscribes to: every device's outbox.
pub const OUTBOX_FILTER: &str = "hearth/v1/dev/+/outbox";

/// The broker could not start or has stopped working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The router refused a local link.
    #[error("cannot link to the router: {0}")]
    Link(String),
    /// A liveness probe did not come back.
    #[error("liveness probe failed: {0}")]
    Dead(String),
}

/// How the edge (and the hub's own short sessions) reach the broker: one
/// in-process connector per protocol. Nothing outside the process can.
#[derive(Clone, Default)]
pub struct BrokerEndpoint {
    /// None for a hub built without a broker (unit tests): every
    /// connection is refused at once.
    connectors: Option<std::sync::Arc<(Connector<V4>, Connector<V5>)>>,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("in_process", &self.connectors.is_some())
            .finish()
    }
}

impl BrokerEndpoint {
    /// Opens a connection to the broker for the client whose CONNECT is
    /// `connect` (one whole packet, speaking `version`): the router's link
    /// for it, driven by the caller's task. The CONNACK is the first thing
    /// read from it.
    pub async fn open(&self, version: MqttVersion, connect: &[u8]) -> std::io::Result<BrokerLink> {
        let Some(connectors) = &self.connectors else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "this hub has no broker",
            ));
        };
        let refused = |e: rumqttd::OpenError| std::io::Error::other(e.to_string());
        Ok(match version {
            MqttVersion::V311 => BrokerLink::V4(connectors.0.open(connect).await.map_err(refused)?),
            MqttVersion::V5 => BrokerLink::V5(connectors.1.open(connect).await.map_err(refused)?),
        })
    }
}

/// One client's connection to the broker, read and written as a byte
/// stream of MQTT packets (rumqttd's [`DirectLink`]): what is written is
/// framed and handed to the router, what is read is what the router sends
/// the client. Shutting it down ends the connection as a closed socket
/// would (the will stays, unless a DISCONNECT was written first).
pub enum BrokerLink {
    V4(DirectLink<V4>),
    V5(DirectLink<V5>),
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerLink::V4(_) => "BrokerLink::V4",
            BrokerLink::V5(_) => "BrokerLink::V5",
        })
    }
}

impl AsyncRead for BrokerLink {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BrokerLink::V4(link) => Pin::new(link).poll_read(cx, buf),
            BrokerLink::V5(link) => Pin::new(link).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BrokerLink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BrokerLink::V4(link) => Pin::new(link).poll_write(cx, buf),
            BrokerLink::V5(link) => Pin::new(link).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BrokerLink::V4(link) => Pin::new(link).poll_flush(cx),
            BrokerLink::V5(link) => Pin::new(link).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BrokerLink::V4(link) => Pin::new(link).poll_shutdown(cx),
            BrokerLink::V5(link) => Pin::new(link).poll_shutdown(cx),
        }
    }
}

/// Sizes that bound the router's memory.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// Connections the router accepts (edge connections plus internal links).
    pub max_connections: usize,
    /// Largest packet, in bytes.
    pub max_payload: usize,
    /// Distinct topic names whose matching filters the router remembers.
    pub max_topics: usize,
    /// Bytes one filter's log holds (`limits.max_queued_bytes_per_filter`).
    pub max_queued_per_filter: usize,
    /// Bytes all logs hold together (`limits.max_queued_bytes`).
    pub max_queued: usize,
}

/// A started broker and the link its liveness probe uses.
pub struct RunningBroker {
    /// How the edge reaches it.
    pub endpoint: BrokerEndpoint,
    probe: Option<(LinkTx, LinkRx)>,
    /// The mailbox's link, subscribed to every outbox; taken once.
    pub mailbox: Option<(LinkTx, LinkRx)>,
    /// The web app's link (browsers' outboxes and inboxes, and the
    /// household's telemetry while a parent's page is open); taken once.
    pub web: Option<(LinkTx, LinkRx)>,
    /// The bridge's link, subscribed to nothing until the bridge is on
    /// (so nothing is held for it while it is off); taken once.
    pub bridge: Option<(LinkTx, LinkRx)>,
    /// Says why, when the router task ends.
    stopped: Option<oneshot::Receiver<String>>,
    /// For the tests that stand a hub's broker in for another broker.
    #[cfg(test)]
    broker: Broker,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// rumqttd's settings for the connections the edge hands over.
fn connection_settings(limits: &BrokerLimits) -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: limits.max_payload,
        max_inflight_count: 100,
        // Only the edge reaches the broker: no listener, no credential.
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

/// Starts rumqttd's router as a task on the current runtime, with the
/// hub's internal links, and proves it answers a login.
pub async fn start(limits: BrokerLimits) -> Result<RunningBroker, BrokerError> {
    // rumqttd keeps one in-memory log per filter; its default lets that log
    // grow to 1 GiB. A segment closes once it holds this many bytes, so a
    // larger packet still fits; two of them bound a busy filter's log to
    // `max_queued_per_filter` (plus one packet and rumqttd's per-entry
    // overhead), and all logs together are held to `max_queued`. A
    // subscriber (or offline session) further behind loses the oldest
    // messages; mailbox deliveries are resent until acknowledged.
    let segment = (limits.max_queued_per_filter / 2).max(1024);
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: limits.max_connections + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: segment,
            max_segment_count: 2,
            max_remembered_topics: Some(limits.max_topics),
            max_log_bytes: Some(limits.max_queued as u64),
            ..RouterConfig::default()
        },
        ..Config::default()
    };
    let (broker, router) = Broker::on_runtime(config);
    let link = |name: &'static str| {
        let broker = &broker;
        async move {
            broker
                .link_async(name)
                .await
                .map_err(|e| BrokerError::Link(e.to_string()))
        }
    };
    // `try_subscribe`: this runs on the edge's thread (daemon::EdgeThread),
    // where a blocking send into a full router channel would wait for the
    // router task on the same thread for ever. The channel is all but
    // empty now; a full one is a startup error, not a hang.
    let (mut tx, rx) = link("hearth-liveness").await?;
    tx.try_subscribe(LIVENESS_TOPIC)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let (mut mailbox_tx, mailbox_rx) = link("hearth-mailbox").await?;
    mailbox_tx
        .try_subscribe(OUTBOX_FILTER)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let web = link("hearth-web").await?;
    let bridge = link("hearth-bridge").await?;
    let settings = connection_settings(&limits);
    let wills = WillHandlers::default();
    let endpoint = BrokerEndpoint {
        connectors: Some(std::sync::Arc::new((
            broker.connector(V4, settings.clone(), &wills),
            broker.connector(V5, settings, &wills),
        ))),
    };
    // The router task reports its end as a value; the daemon decides to
    // exit (and drains first).
    let (ended, stopped) = oneshot::channel();
    tokio::spawn(async move {
        if debug_fault("router-thread-ends") {
            // Debug builds only: the router goes on while this reports an
            // end a few seconds in, as when the router task has stopped.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = ended.send("the router stopped (injected fault)".to_owned());
            drop(router);
            return;
        }
        let why = match router.await {
            Ok(why) => format!("the router stopped: {why}"),
            Err(e) => format!("the router task failed: {e}"),
        };
        let _ = ended.send(why);
    });
    for version in [MqttVersion::V311, MqttVersion::V5] {
        login_round_trip(&endpoint, version).await?;
    }
    Ok(RunningBroker {
        endpoint,
        probe: Some((tx, rx)),
        mailbox: Some((mailbox_tx, mailbox_rx)),
        web: Some(web),
        bridge: Some(bridge),
        stopped: Some(stopped),
        #[cfg(test)]
        broker,
    })
}

impl RunningBroker {
    /// Runs the liveness probe until cancelled; returns an error the moment
    /// a round trip through the router fails.
    pub async fn watch(&mut self, stop: CancellationToken) -> Result<(), BrokerError> {
        let Some((mut tx, mut rx)) = self.probe.take() else {
            return Ok(());
        };
        let mut stopped = self.stopped.take();
        let mut seq: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                ended = async {
                    match stopped.as_mut() {
                        Some(ended) => ended.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let why = ended.unwrap_or_else(|_| "the router task ended".to_owned());
                    return Err(BrokerError::Dead(why));
                }
                _ = tokio::time::sleep(LIVENESS_INTERVAL) => {}
            }
            seq += 1;
            let nonce = seq.to_string();
            let topic = if debug_fault("router-unreachable") {
                // Debug builds only: publish where nobody listens, exactly
                // what a dead router looks like from here.
                "$hearth/nowhere"
            } else {
                LIVENESS_TOPIC
            };
            tx.publish(topic, nonce.clone().into_bytes())
                .map_err(|e| BrokerError::Dead(format!("cannot publish: {e}")))?;
            let round_trip = async {
                loop {
                    match rx.next().await {
                        Ok(Some(Notification::Forward(forward)))
                            if forward.publish.payload.as_ref() == nonce.as_bytes() =>
                        {
                            return Ok(())
                        }
                        Ok(_) => continue,
                        Err(e) => return Err(BrokerError::Dead(format!("link closed: {e}"))),
                    }
                }
            };
            match tokio::time::timeout(LIVENESS_TIMEOUT, round_trip).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(BrokerError::Dead(format!(
                        "no answer from the router within {LIVENESS_TIMEOUT:?}"
                    )))
                }
            }
            // The connectors serve the edge; check they still log clients in.
            for version in [MqttVersion::V311, MqttVersion::V5] {
                tokio::time::timeout(LIVENESS_TIMEOUT, login_round_trip(&self.endpoint, version))
                    .await
                    .map_err(|_| {
                        BrokerError::Dead(format!(
                            "the {version:?} connector does not answer CONNECT"
                        ))
                    })??;
            }
        }
    }
}

#[cfg(test)]
impl RunningBroker {
    /// A loopback MQTT 3.1.1 listener into this broker that admits one
    /// user name and password: a hub's broker standing in for another
    /// broker (the bridge's tests).
    pub async fn listen_on_loopback(&self, username: &str, password: &str) -> std::net::SocketAddr {
        let mut settings = connection_settings(&BrokerLimits {
            max_connections: 16,
            max_payload: 65_536,
            max_topics: 1000,
            max_queued_per_filter: 1 << 20,
            max_queued: 1 << 24,
        });
        settings.auth = Some(std::collections::HashMap::from([(
            username.to_owned(),
            password.to_owned(),
        )]));
        let connector = self
            .broker
            .connector(V4, settings, &WillHandlers::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(connector.serve(stream));
            }
        });
        addr
    }
}

/// In debug builds, `HEARTH_DEBUG_FAULT=<name>` injects a named fault so the
/// end-to-end tests can prove the daemon notices it. Release builds ignore it.
pub fn debug_fault(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("HEARTH_DEBUG_FAULT").is_ok_and(|v| v == name)
}

/// Logs in through one connector and logs out again: CONNECT, CONNACK
/// accepted, DISCONNECT.
async fn login_round_trip(
    endpoint: &BrokerEndpoint,
    version: MqttVersion,
) -> Result<(), BrokerError> {
    let client_id = match version {
        MqttVersion::V311 => "hearth-probe-v4",
        MqttVersion::V5 => "hearth-probe-v5",
    };
    internal_session(endpoint, version, client_id, &[]).await
}

/// Ends whatever session the broker keeps for `client_id` (subscriptions,
/// queued messages of a persistent session): logs in as that client with
/// a clean session and logs out. Used when a device loses permissions, so
/// nothing it was allowed before outlives the change.
pub async fn purge_session(endpoint: &BrokerEndpoint, client_id: &str) -> Result<(), BrokerError> {
    internal_session(endpoint, MqttVersion::V311, client_id, &[]).await
}

/// Clears retained messages by publishing an empty retained message to
/// each topic.
pub async fn clear_retained(
    endpoint: &BrokerEndpoint,
    topics: &[String],
) -> Result<(), BrokerError> {
    if topics.is_empty() {
        return Ok(());
    }
    // PUBLISH, QoS 0, retain, empty payload: the MQTT way to clear.
    let mut publishes = Vec::new();
    for topic in topics {
        retained_publish(topic, &[], &mut publishes);
    }
    internal_session(endpoint, MqttVersion::V311, "hearth-janitor", &publishes).await
}

/// Publishes one of the hub's own retained messages (`hearth/v1/hub/info`).
pub async fn publish_retained(
    endpoint: &BrokerEndpoint,
    topic: &str,
    payload: &[u8],
) -> Result<(), BrokerError> {
    let mut publish = Vec::new();
    retained_publish(topic, payload, &mut publish);
    internal_session(endpoint, MqttVersion::V311, "hearth-hub-info", &publish).await
}

/// A v3.1.1 PUBLISH, QoS 0, retain.
fn retained_publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x31);
    hearth_protocol::mqtt::write_varint(2 + topic.len() + payload.len(), out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

/// CONNECT (clean session), CONNACK, the given packets, DISCONNECT, and
/// wait for the broker to close.
async fn internal_session(
    endpoint: &BrokerEndpoint,
    version: MqttVersion,
    client_id: &str,
    packets: &[u8],
) -> Result<(), BrokerError> {
    use rumqttd::protocol::{Connect, Disconnect, DisconnectReasonCode, Packet, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dead = |what: String| BrokerError::Dead(format!("{client_id}: {what}"));
    let v5 = version == MqttVersion::V5;
    let connect = Packet::Connect(
        Connect {
            keep_alive: 10,
            client_id: client_id.to_owned(),
            clean_session: true,
        },
        None,
        None,
        None,
        None,
    );
    let mut connect_bytes = bytes::BytesMut::new();
    let mut rest_bytes = bytes::BytesMut::new();
    let encode = |packet: Packet, out: &mut bytes::BytesMut| {
        if v5 {
            V5.write(packet, out)
        } else {
            V4.write(packet, out)
        }
        .map(|_| ())
        .map_err(|e| dead(format!("encode: {e:?}")))
    };
    encode(connect, &mut connect_bytes)?;
    rest_bytes.extend_from_slice(packets);
    encode(
        Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ),
        &mut rest_bytes,
    )?;
    let mut stream = endpoint
        .open(version, &connect_bytes)
        .await
        .map_err(|e| dead(e.to_string()))?;
    // rumqttd's codecs decode only what clients send (a CONNACK hits an
    // `unreachable!`), so the answer is checked by hand: CONNACK is
    // 0x20, a one-byte length, the session-present flags, then the return
    // code (3.1.1) or reason code (5), 0 meaning success.
    let mut answer = [0u8; 4];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(|e| dead(format!("reading CONNACK: {e}")))?;
    if answer[0] != 0x20 || answer[3] != 0 {
        return Err(dead(format!("login refused: {answer:02x?}")));
    }
    stream
        .write_all(&rest_bytes)
        .await
        .map_err(|e| dead(e.to_string()))?;
    // Let the broker close first, so it sees a clean DISCONNECT rather than
    // a reset.
    let mut rest = [0u8; 64];
    while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttd::protocol::{
        Connect, Disconnect, DisconnectReasonCode, Filter, LastWill, Packet, Protocol, Publish,
        QoS, RetainForwardRule, Subscribe,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn small_limits() -> BrokerLimits {
        BrokerLimits {
            max_connections: 16,
            max_payload: 65_536,
            max_topics: 1000,
            max_queued_per_filter: 1 << 20,
            max_queued: 1 << 24,
        }
    }

    async fn broker() -> RunningBroker {
        start(small_limits()).await.unwrap()
    }

    fn encode(packet: Packet) -> BytesMut {
        let mut out = BytesMut::new();
        V4.write(packet, &mut out).unwrap();
        out
    }

    fn connect(client_id: &str, keep_alive: u16, will: Option<&str>) -> BytesMut {
        let will = will.map(|topic| LastWill {
            topic: topic.to_owned().into(),
            message: "gone".into(),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        encode(Packet::Connect(
            Connect {
                keep_alive,
                client_id: client_id.to_owned(),
                clean_session: true,
            },
            None,
            will,
            None,
            None,
        ))
    }

    fn subscribe(filter: &str) -> BytesMut {
        encode(Packet::Subscribe(
            Subscribe {
                pkid: 1,
                filters: vec![Filter {
                    path: filter.to_owned(),
                    qos: QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::Never,
                }],
            },
            None,
        ))
    }

    /// Opens a link and reads its CONNACK (4 bytes, accepted).
    async fn open(broker: &RunningBroker, connect: &[u8]) -> BrokerLink {
        let mut link = broker
            .endpoint
            .open(MqttVersion::V311, connect)
            .await
            .unwrap();
        let mut connack = [0u8; 4];
        link.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, accepted");
        link
    }

    /// Reads one packet's bytes (a one-byte remaining length suffices here).
    async fn read_packet(link: &mut BrokerLink) -> Vec<u8> {
        let mut head = [0u8; 2];
        link.read_exact(&mut head).await.unwrap();
        let mut body = vec![0u8; usize::from(head[1])];
        link.read_exact(&mut body).await.unwrap();
        [head.to_vec(), body].concat()
    }

    /// A subscriber waiting on `topic`, its SUBACK read.
    async fn subscriber(broker: &RunningBroker, id: &str, topic: &str) -> BrokerLink {
        let mut sub = open(broker, &connect(id, 30, None)).await;
        sub.write_all(&subscribe(topic)).await.unwrap();
        assert_eq!(read_packet(&mut sub).await[0], 0x90, "SUBACK");
        sub
    }

    async fn next_publish(link: &mut BrokerLink) -> Option<Vec<u8>> {
        tokio::time::timeout(Duration::from_secs(2), read_packet(link))
            .await
            .ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_carries_packets_both_ways_written_in_any_pieces() {
        let broker = broker().await;
        let mut sub = subscriber(&broker, "sub", "t/1").await;
        let mut publisher = open(&broker, &connect("pub", 30, None)).await;
        let publish = encode(Packet::Publish(
            Publish::new(&b"t/1"[..], &b"hello"[..], false),
            None,
        ));
        // A byte at a time: framing is the link's job.
        for byte in publish.iter() {
            publisher.write_all(&[*byte]).await.unwrap();
        }
        let got = next_publish(&mut sub).await.expect("the PUBLISH");
        assert_eq!(got[0] & 0xf0, 0x30);
        assert!(got.ends_with(b"t/1hello"), "{got:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_link_ends_after_one_and_a_half_keep_alives() {
        let broker = broker().await;
        let mut link = open(&broker, &connect("quiet", 1, None)).await;
        let started = tokio::time::Instant::now();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), link.read(&mut byte)).await;
        let error = read
            .expect("ended within 5 s")
            .expect_err("ended by an error");
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_dropped_unannounced_leaves_its_will_and_one_ended_by_disconnect_does_not() {
        let broker = broker().await;
        let mut sub = subscriber(&broker, "watcher", "wills/#").await;

        let dropped = open(&broker, &connect("dropped", 30, Some("wills/dropped"))).await;
        drop(dropped);
        let will = next_publish(&mut sub)
            .await
            .expect("the will of a dropped link");
        assert!(will.ends_with(b"wills/droppedgone"), "{will:?}");

        let mut polite = open(&broker, &connect("polite", 30, Some("wills/polite"))).await;
        let disconnect = encode(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ));
        polite.write_all(&disconnect).await.unwrap();
        polite.shutdown().await.unwrap();
        let mut rest = Vec::new();
        polite.read_to_end(&mut rest).await.unwrap();
        drop(polite);
        assert_eq!(
            next_publish(&mut sub).await,
            None,
            "no will after DISCONNECT"
        );
    }

    fn disconnect() -> BytesMut {
        encode(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_after_a_disconnect_counts_and_the_disconnect_still_does() {
        let broker = broker().await;
        let mut sub = subscriber(&broker, "watcher", "wills/#").await;
        let mut link = open(&broker, &connect("dev", 30, Some("wills/dev"))).await;
        // DISCONNECT, then bytes no codec accepts, in one write.
        let mut bytes = disconnect();
        bytes.extend_from_slice(&[0xf0, 0x00]);
        link.write_all(&bytes)
            .await
            .expect("what follows DISCONNECT is not read");
        link.shutdown().await.unwrap();
        drop(link);
        assert_eq!(
            next_publish(&mut sub).await,
            None,
            "the will went with the DISCONNECT"
        );
        // The router ended that connection: its client id connects again.
        let _again = open(&broker, &connect("dev", 30, None)).await;
    }

    /// A broker for messages of a few MiB, as a hub's pictures are.
    async fn broker_for_large() -> RunningBroker {
        start(BrokerLimits {
            max_payload: 4 << 20,
            max_queued_per_filter: 8 << 20,
            max_queued: 64 << 20,
            ..small_limits()
        })
        .await
        .unwrap()
    }

    fn publish_of(topic: &'static str, len: usize) -> BytesMut {
        let payload = bytes::Bytes::from(vec![b'p'; len]);
        let topic = bytes::Bytes::from_static(topic.as_bytes());
        encode(Packet::Publish(Publish::new(topic, payload, false), None))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_subscriber_gets_a_message_larger_than_its_buffer_once() {
        let broker = broker_for_large().await;
        let mut member = subscriber(&broker, "member", "$share/g/big/#").await;
        let mut publisher = open(&broker, &connect("camera", 30, None)).await;
        let publish = publish_of("big/1", 1536 * 1024);
        publisher.write_all(&publish).await.unwrap();
        let mut got = vec![0u8; publish.len()];
        tokio::time::timeout(Duration::from_secs(5), member.read_exact(&mut got))
            .await
            .expect("the message arrives")
            .unwrap();
        assert!(got == publish[..]);
        let mut more = [0u8; 1];
        let again = tokio::time::timeout(Duration::from_secs(1), member.read(&mut more)).await;
        assert!(again.is_err(), "the message came again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_does_not_read_holds_a_bounded_buffer_and_loses_nothing() {
        let broker = broker_for_large().await;
        let mut slow = subscriber(&broker, "slow", "big/#").await;
        let mut publisher = open(&broker, &connect("camera", 30, None)).await;
        let publish = publish_of("big/1", 256 * 1024);
        let count = 16;
        for _ in 0..count {
            publisher.write_all(&publish).await.unwrap();
        }
        // Routed while the subscriber reads nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // One read returns what the router had put in the link's buffer.
        let mut got = vec![0u8; count * publish.len()];
        let first = slow.read(&mut got).await.unwrap();
        // 4 MiB were published; the router's bound is 1 MiB and a message.
        assert!(
            first <= (1 << 20) + publish.len(),
            "the router buffered {first} bytes for a subscriber that read nothing"
        );
        // The rest was kept in the filter's log and follows.
        let rest =
            tokio::time::timeout(Duration::from_secs(5), slow.read_exact(&mut got[first..])).await;
        rest.expect("every message arrives").unwrap();
        assert!(got.chunks(publish.len()).all(|p| p == &publish[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_the_router_dropped_does_not_end_the_connection_that_took_its_id() {
        let broker = broker().await;
        let mut first = open(&broker, &connect("twin", 30, None)).await;
        // The router's own takeover: the same client id again ends `first`,
        // and its connection id is free for the next connection (this one).
        let mut second = open(&broker, &connect("twin", 30, None)).await;
        // `first` is not read (as when its client's window is full): it
        // learns of the end only when it is shut down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.shutdown().await.unwrap();
        drop(first);
        let mut bystander = subscriber(&broker, "bystander", "t/2").await;
        second.write_all(&subscribe("t/2")).await.unwrap();
        let suback = tokio::time::timeout(Duration::from_secs(2), read_packet(&mut second)).await;
        assert_eq!(suback.expect("the second twin is still connected")[0], 0x90);
        let mut publisher = open(&broker, &connect("pub", 30, None)).await;
        let publish = encode(Packet::Publish(
            Publish::new(&b"t/2"[..], &b"hi"[..], false),
            None,
        ));
        publisher.write_all(&publish).await.unwrap();
        for link in [&mut second, &mut bystander] {
            let got = next_publish(link).await.expect("still connected");
            assert!(got.ends_with(b"t/2hi"), "{got:?}");
        }
    }
}
