//! The embedded rumqttd router: configured with bounded memory, listening on
//! loopback only behind a random per-boot credential, and watched by a
//! liveness probe that makes a real round trip through the router.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::time::Duration;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
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
    /// A loopback port could not be reserved.
    #[error("cannot reserve a loopback port for the broker: {0}")]
    Port(std::io::Error),
    /// The router refused a local link.
    #[error("cannot link to the router: {0}")]
    Link(String),
    /// The internal listeners did not come up.
    #[error("the broker's internal listener {0} did not start")]
    NotListening(SocketAddr),
    /// A liveness probe did not come back.
    #[error("liveness probe failed: {0}")]
    Dead(String),
}

/// Where and how the edge reaches the broker.
#[derive(Clone)]
pub struct BrokerEndpoint {
    /// The MQTT 3.1.1 listener.
    pub v4: SocketAddr,
    /// The MQTT 5 listener.
    pub v5: SocketAddr,
    /// The per-boot username.
    pub username: String,
    /// The per-boot password.
    pub password: String,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the per-boot password.
        f.debug_struct("BrokerEndpoint")
            .field("v4", &self.v4)
            .field("v5", &self.v5)
            .field("username", &self.username)
            .finish_non_exhaustive()
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
    /// Says why, when the router thread ends (its sender dropped: it
    /// panicked).
    stopped: Option<oneshot::Receiver<String>>,
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Starts rumqttd on two loopback ports and waits until both accept.
pub async fn start(limits: BrokerLimits) -> Result<RunningBroker, BrokerError> {
    let endpoint = BrokerEndpoint {
        v4: free_loopback_port()?,
        v5: free_loopback_port()?,
        username: "hearth-edge".to_owned(),
        password: hex::encode(crate::random_bytes::<32>()),
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: limits.max_payload,
        max_inflight_count: 100,
        auth: Some(HashMap::from([(
            endpoint.username.clone(),
            endpoint.password.clone(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
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
        v4: Some(HashMap::from([(
            "v4".to_owned(),
            server("hearth-v4", endpoint.v4),
        )])),
        v5: Some(HashMap::from([(
            "v5".to_owned(),
            server("hearth-v5", endpoint.v5),
        )])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    let (mut tx, rx) = broker
        .link("hearth-liveness")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    tx.subscribe(LIVENESS_TOPIC)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let (mut mailbox_tx, mailbox_rx) = broker
        .link("hearth-mailbox")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    mailbox_tx
        .subscribe(OUTBOX_FILTER)
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let web = broker
        .link("hearth-web")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    let bridge = broker
        .link("hearth-bridge")
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    // The router thread reports its end as a value; the daemon decides to
    // exit (and drains first).
    let (ended, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("rumqttd".to_owned())
        .spawn(move || {
            if debug_fault("router-thread-ends") {
                // Debug builds only: the router goes on in a thread of its
                // own while this one reports an end a few seconds in, as
                // when every server thread has stopped.
                let _ = std::thread::Builder::new()
                    .name("rumqttd".to_owned())
                    .spawn(move || {
                        let _ = broker.start();
                    });
                std::thread::sleep(Duration::from_secs(5));
                let _ = ended.send("the broker's listeners stopped (injected fault)".to_owned());
                return;
            }
            let why = match broker.start() {
                Err(e) => format!("the broker stopped: {e}"),
                Ok(()) => "the broker's listeners stopped".to_owned(),
            };
            // Every server thread has ended: nothing routes any more.
            let _ = ended.send(why);
        })
        .map_err(|e| BrokerError::Link(e.to_string()))?;
    for addr in [endpoint.v4, endpoint.v5] {
        wait_listening(&endpoint, addr).await?;
    }
    Ok(RunningBroker {
        endpoint,
        probe: Some((tx, rx)),
        mailbox: Some((mailbox_tx, mailbox_rx)),
        web: Some(web),
        bridge: Some(bridge),
        stopped: Some(stopped),
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
                    let why = ended.unwrap_or_else(|_| "the router thread ended".to_owned());
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
            // The listeners serve the edge; check they still log clients in.
            for addr in [self.endpoint.v4, self.endpoint.v5] {
                tokio::time::timeout(LIVENESS_TIMEOUT, login_round_trip(&self.endpoint, addr))
                    .await
                    .map_err(|_| BrokerError::Dead(format!("{addr} does not answer CONNECT")))??;
            }
        }
    }
}

/// In debug builds, `HEARTH_DEBUG_FAULT=<name>` injects a named fault so the
/// end-to-end tests can prove the daemon notices it. Release builds ignore it.
pub fn debug_fault(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("HEARTH_DEBUG_FAULT").is_ok_and(|v| v == name)
}

/// Asks the kernel for a free loopback port. rumqttd binds its own
/// listeners from a configured address, so the port is chosen here and
/// handed over; `wait_listening` proves rumqttd got it.
/// A free port on a random address of 127.0.0.0/8. The port is found free
/// and released before rumqttd binds it; on a random loopback address no
/// other program (nor another hub, as in the tests) is likely to take it in
/// between, as it could on 127.0.0.1.
fn free_loopback_port() -> Result<SocketAddr, BrokerError> {
    let [a, b, c] = crate::random_bytes::<3>().map(|x| x.clamp(1, 254));
    let ip = Ipv4Addr::new(127, a, b, c);
    let listener = StdTcpListener::bind((ip, 0))
        .or_else(|_| StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .map_err(BrokerError::Port)?;
    listener.local_addr().map_err(BrokerError::Port)
}

async fn wait_listening(endpoint: &BrokerEndpoint, addr: SocketAddr) -> Result<(), BrokerError> {
    for _ in 0..200 {
        if login_round_trip(endpoint, addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BrokerError::NotListening(addr))
}

/// Logs in to one internal listener with the per-boot credential and logs
/// out again: CONNECT, CONNACK accepted, DISCONNECT. A plain TCP connect
/// would leave rumqttd waiting for a CONNECT and logging an error each time.
async fn login_round_trip(endpoint: &BrokerEndpoint, addr: SocketAddr) -> Result<(), BrokerError> {
    let v5 = addr == endpoint.v5;
    let client_id = if v5 {
        "hearth-probe-v5"
    } else {
        "hearth-probe-v4"
    };
    internal_session(endpoint, addr, client_id, &[]).await
}

/// Ends whatever session the broker keeps for `client_id` (subscriptions,
/// queued messages of a persistent session): logs in as that client with
/// a clean session and logs out. Used when a device loses permissions, so
/// nothing it was allowed before outlives the change.
pub async fn purge_session(endpoint: &BrokerEndpoint, client_id: &str) -> Result<(), BrokerError> {
    internal_session(endpoint, endpoint.v4, client_id, &[]).await
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
    internal_session(endpoint, endpoint.v4, "hearth-janitor", &publishes).await
}

/// Publishes one of the hub's own retained messages (`hearth/v1/hub/info`).
pub async fn publish_retained(
    endpoint: &BrokerEndpoint,
    topic: &str,
    payload: &[u8],
) -> Result<(), BrokerError> {
    let mut publish = Vec::new();
    retained_publish(topic, payload, &mut publish);
    internal_session(endpoint, endpoint.v4, "hearth-hub-info", &publish).await
}

/// A v3.1.1 PUBLISH, QoS 0, retain.
fn retained_publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x31);
    hearth_protocol::mqtt::write_varint(2 + topic.len() + payload.len(), out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

/// CONNECT (clean session, the per-boot credential), CONNACK, the given
/// packets, DISCONNECT, and wait for the broker to close.
async fn internal_session(
    endpoint: &BrokerEndpoint,
    addr: SocketAddr,
    client_id: &str,
    packets: &[u8],
) -> Result<(), BrokerError> {
    use rumqttd::protocol::{
        v4::V4, v5::V5, Connect, Disconnect, DisconnectReasonCode, Login, Packet, Protocol,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dead = |what: String| BrokerError::Dead(format!("{addr}: {what}"));
    let v5 = addr == endpoint.v5;
    let connect = Packet::Connect(
        Connect {
            keep_alive: 10,
            client_id: client_id.to_owned(),
            clean_session: true,
        },
        None,
        None,
        None,
        Some(Login {
            username: endpoint.username.clone(),
            password: endpoint.password.clone(),
        }),
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
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| dead(e.to_string()))?;
    stream
        .write_all(&connect_bytes)
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
