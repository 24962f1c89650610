//! The conformance harness: a hub with both listeners, two devices (a toy
//! that publishes under its own prefix and a parent's phone that may
//! subscribe there), MQTT 3.1.1 and 5 clients (rumqttc) whose incoming
//! packets land in a channel, and raw connections for what no library
//! lets a client do.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Connect, LastWill, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::*;

/// Which listener a test goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Mutual TLS, device certificates.
    Tls,
    /// The plaintext development listener (loopback, full access).
    Dev,
}

/// Who a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The toy: publishes under its `tele` prefix.
    Toy,
    /// A parent's phone: may subscribe to the toy's telemetry.
    Phone,
}

/// A hub and two devices.
pub struct Bench {
    pub hub: TestHub,
    pub via: Via,
    pub toy: Device,
    pub phone: Device,
}

impl Bench {
    pub fn start(via: Via) -> Bench {
        Bench::start_with(via, "")
    }

    /// A hub with extra config (e.g. a `[limits]` section) appended.
    pub fn start_with(via: Via, extra_config: &str) -> Bench {
        let config = format!("[dev]\nlisten = \"127.0.0.1:0\"\n{extra_config}");
        let hub = TestHub::start_with(&config, &[]);
        let toy = hub.device("Ada", "child");
        let phone = hub.device("Mum", "parent");
        Bench {
            hub,
            via,
            toy,
            phone,
        }
    }

    /// A topic the toy may publish to and the phone may subscribe to.
    pub fn topic(&self, leaf: &str) -> String {
        format!("hearth/v1/dev/{}/tele/{leaf}", self.toy.id)
    }

    fn device(&self, who: Who) -> &Device {
        match who {
            Who::Toy => &self.toy,
            Who::Phone => &self.phone,
        }
    }

    /// The client id: the device id over TLS (the edge requires it).
    pub fn client_id(&self, who: Who) -> String {
        match self.via {
            Via::Tls => self.device(who).id.clone(),
            Via::Dev => format!("conformance-{who:?}").to_lowercase(),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self.via {
            Via::Tls => self.hub.mqtt,
            Via::Dev => self.hub.dev.expect("dev listener"),
        }
    }

    /// rumqttc 3.1.1 options for `who`.
    pub fn v4(&self, who: Who) -> rumqttc::MqttOptions {
        let addr = self.addr();
        let mut options = rumqttc::MqttOptions::new(self.client_id(who), "127.0.0.1", addr.port());
        if self.via == Via::Tls {
            options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                self.device(who).tls(),
            )));
        }
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    /// rumqttc 5 options for `who`.
    pub fn v5(&self, who: Who) -> rumqttc::v5::MqttOptions {
        let addr = self.addr();
        let mut options =
            rumqttc::v5::MqttOptions::new(self.client_id(who), "127.0.0.1", addr.port());
        if self.via == Via::Tls {
            options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                self.device(who).tls(),
            )));
        }
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    /// A raw connection (TLS done when `Via::Tls`), nothing sent yet.
    pub async fn raw(&self, who: Who) -> RawConn {
        let stream: Box<dyn Stream> = match self.via {
            Via::Tls => Box::new(
                raw_tls(self.hub.mqtt, self.device(who).tls())
                    .await
                    .expect("TLS handshake"),
            ),
            Via::Dev => Box::new(
                tokio::net::TcpStream::connect(self.addr())
                    .await
                    .expect("connect"),
            ),
        };
        RawConn {
            stream: Box::into_pin(stream),
            inbound: BytesMut::new(),
        }
    }
}

pub trait Stream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Stream for T {}

/// A raw MQTT connection.
pub struct RawConn {
    stream: Pin<Box<dyn Stream>>,
    inbound: BytesMut,
}

/// What a raw connection saw next.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// The first byte (packet type and flags) and the whole packet.
    Packet(u8, Vec<u8>),
    /// The server closed the connection.
    Closed,
    /// Nothing within the limit.
    Nothing,
}

/// An encoded CONNECT with the given keep-alive, client id, clean flag and will.
pub fn connect(
    v5: bool,
    keep_alive: u16,
    client_id: &str,
    clean: bool,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let will = will.map(|(topic, message)| LastWill {
        topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
        message: bytes::Bytes::copy_from_slice(message),
        qos: rumqttd::protocol::QoS::AtMostOnce,
        retain: false,
    });
    let packet = Packet::Connect(
        Connect {
            keep_alive,
            client_id: client_id.to_owned(),
            clean_session: clean,
        },
        None,
        will,
        None,
        None,
    );
    let mut out = BytesMut::new();
    if v5 {
        rumqttd::protocol::v5::V5.write(packet, &mut out).unwrap();
    } else {
        rumqttd::protocol::v4::V4.write(packet, &mut out).unwrap();
    }
    out.to_vec()
}

/// Any packet rumqttd can encode, for a raw connection.
pub fn encode(v5: bool, packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    if v5 {
        rumqttd::protocol::v5::V5.write(packet, &mut out).unwrap();
    } else {
        rumqttd::protocol::v4::V4.write(packet, &mut out).unwrap();
    }
    out.to_vec()
}

/// A SUBSCRIBE of `filters` at QoS 1.
pub fn subscribe_packet(v5: bool, pkid: u16, filters: &[String]) -> Vec<u8> {
    let filters = filters
        .iter()
        .map(|path| rumqttd::protocol::Filter {
            path: path.clone(),
            qos: rumqttd::protocol::QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: rumqttd::protocol::RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    encode(
        v5,
        Packet::Subscribe(rumqttd::protocol::Subscribe { pkid, filters }, None),
    )
}

/// An UNSUBSCRIBE of `filters`.
pub fn unsubscribe_packet(v5: bool, pkid: u16, filters: &[String]) -> Vec<u8> {
    let unsubscribe = rumqttd::protocol::Unsubscribe {
        pkid,
        filters: filters.to_vec(),
    };
    encode(v5, Packet::Unsubscribe(unsubscribe, None))
}

impl RawConn {
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next whole packet, the close, or nothing within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(packet) = take_packet(&mut self.inbound) {
                return Seen::Packet(packet[0], packet);
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return Seen::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::Closed,
                Ok(Ok(n)) => self.inbound.extend_from_slice(&buf[..n]),
            }
        }
    }
}

fn take_packet(buf: &mut BytesMut) -> Option<Vec<u8>> {
    let len = packet_len(buf)?;
    Some(buf.split_to(len).to_vec())
}

/// A 3.1.1 client whose incoming packets arrive in a channel.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    pub connack: rumqttc::ConnAck,
    incoming: mpsc::UnboundedReceiver<rumqttc::Packet>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl V4 {
    pub async fn connect(options: rumqttc::MqttOptions) -> V4 {
        V4::try_connect(options).await.expect("CONNACK accepted")
    }

    pub async fn try_connect(options: rumqttc::MqttOptions) -> Result<V4, String> {
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        let connack = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Err(_) => return Err("no CONNACK within 10 s".into()),
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c)))) => break c,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e.to_string()),
            }
        };
        let (tx, incoming) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(V4 {
            client,
            connack,
            incoming,
            driver,
        })
    }

    async fn next_where<T>(
        &mut self,
        limit: Duration,
        pick: impl Fn(rumqttc::Packet) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(packet)) => {
                    if let Some(found) = pick(packet) {
                        return Some(found);
                    }
                }
                _ => return None,
            }
        }
    }

    pub async fn publish(&mut self, limit: Duration) -> Option<rumqttc::Publish> {
        self.next_where(limit, |p| match p {
            rumqttc::Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.next_where(Duration::from_secs(10), |p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.return_codes),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        self.next_where(Duration::from_secs(10), |p| match p {
            rumqttc::Packet::UnsubAck(_) => Some(()),
            _ => None,
        })
        .await
        .expect("UNSUBACK");
    }

    /// Publishes and, for QoS 1 and 2, waits for the flow to complete.
    pub async fn send(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        let done = match qos {
            rumqttc::QoS::AtMostOnce => return,
            rumqttc::QoS::AtLeastOnce => {
                self.next_where(Duration::from_secs(10), |p| {
                    matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                })
                .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.next_where(Duration::from_secs(10), |p| {
                    matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                })
                .await
            }
        };
        done.expect("publish acknowledged");
    }

    /// Ends with DISCONNECT (no will).
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Drops the connection without DISCONNECT (the will fires).
    pub fn drop_connection(self) {
        self.driver.abort();
    }
}

/// A 5 client whose incoming packets arrive in a channel.
pub struct V5 {
    pub client: rumqttc::v5::AsyncClient,
    pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
    incoming: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

pub use rumqttc::v5::mqttbytes::v5::Packet as P5;

impl V5 {
    pub async fn connect(options: rumqttc::v5::MqttOptions) -> V5 {
        V5::try_connect(options).await.expect("CONNACK accepted")
    }

    pub async fn try_connect(options: rumqttc::v5::MqttOptions) -> Result<V5, String> {
        let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
        let connack = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Err(_) => return Err("no CONNACK within 10 s".into()),
                Ok(Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(c)))) => break c,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e.to_string()),
            }
        };
        let (tx, incoming) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::v5::Event::Incoming(packet) = event {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(V5 {
            client,
            connack,
            incoming,
            driver,
        })
    }

    pub async fn next_where<T>(
        &mut self,
        limit: Duration,
        pick: impl Fn(P5) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(packet)) => {
                    if let Some(found) = pick(packet) {
                        return Some(found);
                    }
                }
                _ => return None,
            }
        }
    }

    pub async fn publish(
        &mut self,
        limit: Duration,
    ) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
        self.next_where(limit, |p| match p {
            P5::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }

    pub async fn subscribe_with(
        &mut self,
        filter: rumqttc::v5::mqttbytes::v5::Filter,
        properties: Option<rumqttc::v5::mqttbytes::v5::SubscribeProperties>,
    ) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        match properties {
            Some(p) => {
                self.client
                    .subscribe_many_with_properties([filter], p)
                    .await
            }
            None => self.client.subscribe_many([filter]).await,
        }
        .unwrap();
        self.next_where(Duration::from_secs(10), |p| match p {
            P5::SubAck(s) => Some(s.return_codes),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        let codes = self
            .subscribe_with(rumqttc::v5::mqttbytes::v5::Filter::new(filter, qos), None)
            .await;
        assert!(
            codes.iter().all(|c| !matches!(
                c,
                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Unspecified
                    | rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized
            )),
            "{codes:?}"
        );
    }

    /// Publishes with properties and waits for PUBACK at QoS 1.
    pub async fn send(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: &[u8],
        properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.to_vec(), properties)
            .await
            .unwrap();
        if qos == rumqttc::v5::mqttbytes::QoS::AtLeastOnce {
            self.next_where(Duration::from_secs(10), |p| {
                matches!(p, P5::PubAck(_)).then_some(())
            })
            .await
            .expect("PUBACK");
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    pub fn drop_connection(self) {
        self.driver.abort();
    }
}

/// Generates one test per listener for an `async fn(Bench)`; attributes in
/// the brackets (e.g. an `ignore` naming a known failure) go on that
/// listener's test.
#[macro_export]
macro_rules! on_both_listeners {
    ($f:ident) => {
        on_both_listeners!($f, [], []);
    };
    ($f:ident, [$($tls:meta),*], [$($dev:meta),*]) => {
        mod $f {
            #[tokio::test]
            $(#[$tls])*
            async fn mutual_tls() {
                super::$f($crate::harness::Bench::start($crate::harness::Via::Tls)).await
            }
            #[tokio::test]
            $(#[$dev])*
            async fn development() {
                super::$f($crate::harness::Bench::start($crate::harness::Via::Dev)).await
            }
        }
    };
}
