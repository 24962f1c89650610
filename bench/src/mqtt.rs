//! A small MQTT 3.1.1 client over mutual TLS: just the packets the benchmark
//! needs, with batched writes and in-place parsing so the generator stays cheap.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hearth_protocol::mqtt::{kind, next_frame, reason, write_varint};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A client's TLS identity: its certificate and key, and the CA it trusts.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The MQTT client id (the device id in the certificate's CN).
    pub id: String,
    /// Certificate chain, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key, DER.
    pub key: Vec<u8>,
}

/// Builds a rustls client configuration for one identity. Each identity gets
/// its own configuration, hence its own (empty) session cache: every
/// connection is a full handshake.
pub fn client_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).context("CA certificate")?;
    let key = PrivateKeyDer::Pkcs8(identity.key.clone().into());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(identity.chain.clone(), key)?;
    Ok(Arc::new(config))
}

/// A connected, CONNACKed client.
#[derive(Debug)]
pub struct Client {
    /// Incoming packets.
    pub rx: Reader,
    /// Outgoing packets.
    pub tx: Writer,
}

/// Connects over TLS (TCP_NODELAY), sends CONNECT with a clean session and
/// waits for a successful CONNACK, all within `limit`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
    keep_alive: u16,
    limit: Duration,
) -> Result<Client> {
    connect_session(addr, config, client_id, keep_alive, true, limit).await
}

/// [`connect`] with the clean-session flag chosen: `clean: false` asks the
/// broker to keep the session (subscriptions and queued messages) after
/// the connection ends.
pub async fn connect_session(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
    limit: Duration,
) -> Result<Client> {
    tokio::time::timeout(
        limit,
        connect_inner(addr, config, client_id, keep_alive, clean),
    )
    .await
    .with_context(|| format!("connect as {client_id} timed out after {limit:?}"))?
}

async fn connect_inner(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
) -> Result<Client> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (r, w) = tokio::io::split(tls);
    let mut client = Client {
        rx: Reader::new(r),
        tx: Writer::new(w),
    };
    encode_connect(&mut client.tx.buf, client_id, keep_alive, clean);
    client.tx.flush().await?;
    let mut code = None;
    while code.is_none() {
        client
            .rx
            .read(|p| {
                if let Packet::Connack { code: c } = p {
                    code = Some(c);
                }
            })
            .await?;
    }
    match code {
        Some(0) => Ok(client),
        other => bail!("CONNACK refused: {other:?}"),
    }
}

/// An incoming packet, borrowed from the read buffer.
#[derive(Debug)]
pub enum Packet<'a> {
    /// CONNACK with its return code.
    Connack {
        /// 0 = accepted.
        code: u8,
    },
    /// PUBLISH.
    Publish {
        /// QoS 0..2.
        qos: u8,
        /// Packet id (0 for QoS 0).
        pid: u16,
        /// Topic name.
        topic: &'a [u8],
        /// Payload.
        payload: &'a [u8],
    },
    /// PUBACK.
    Puback {
        /// Packet id.
        pid: u16,
    },
    /// SUBACK with the first granted QoS (0x80 = refused).
    Suback {
        /// Granted QoS of the first filter.
        granted: u8,
    },
    /// Anything else (PINGRESP...).
    Other(u8),
}

/// Buffered reader of MQTT packets.
#[derive(Debug)]
pub struct Reader {
    inner: ReadHalf<TlsStream<TcpStream>>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    chunk: usize,
}

impl Reader {
    /// Caps how many bytes one `read` pulls from the socket (a deliberately
    /// slow reader in tests).
    pub fn set_chunk(&mut self, chunk: usize) {
        self.chunk = chunk.max(1);
    }

    fn new(inner: ReadHalf<TlsStream<TcpStream>>) -> Self {
        Reader {
            inner,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            chunk: usize::MAX,
        }
    }

    /// Reads what is available (at least one byte) and calls `f` for every
    /// complete packet. Errors on EOF or a malformed packet.
    pub async fn read(&mut self, mut f: impl FnMut(Packet<'_>)) -> Result<()> {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < 16 * 1024) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            if len > 16 * 1024 * 1024 {
                bail!("packet larger than 16 MiB");
            }
            self.buf.resize(len, 0);
        }
        let upto = self.end.saturating_add(self.chunk).min(self.buf.len());
        let n = self.inner.read(&mut self.buf[self.end..upto]).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        self.end += n;
        while let Some(frame) = next_frame(&self.buf[self.start..self.end], usize::MAX)? {
            let body = &self.buf[self.start + frame.header_len..self.start + frame.len];
            f(parse(frame.first_byte, body)?);
            self.start += frame.len;
        }
        Ok(())
    }
}

fn parse(header: u8, body: &[u8]) -> Result<Packet<'_>> {
    let short = || anyhow::anyhow!("short packet 0x{header:02x}");
    Ok(match header >> 4 {
        kind::CONNACK => Packet::Connack {
            code: *body.get(1).ok_or_else(short)?,
        },
        kind::PUBLISH => {
            let qos = (header >> 1) & 3;
            let tlen = u16::from_be_bytes([
                *body.first().ok_or_else(short)?,
                *body.get(1).ok_or_else(short)?,
            ]) as usize;
            let topic = body.get(2..2 + tlen).ok_or_else(short)?;
            let mut at = 2 + tlen;
            let mut pid = 0;
            if qos > 0 {
                let b = body.get(at..at + 2).ok_or_else(short)?;
                pid = u16::from_be_bytes([b[0], b[1]]);
                at += 2;
            }
            Packet::Publish {
                qos,
                pid,
                topic,
                payload: &body[at..],
            }
        }
        kind::PUBACK => {
            let b = body.get(0..2).ok_or_else(short)?;
            Packet::Puback {
                pid: u16::from_be_bytes([b[0], b[1]]),
            }
        }
        kind::SUBACK => Packet::Suback {
            granted: *body.get(2).ok_or_else(short)?,
        },
        t => Packet::Other(t),
    })
}

/// Batched writer: encode packets into `buf`, then `flush` sends them.
#[derive(Debug)]
pub struct Writer {
    inner: WriteHalf<TlsStream<TcpStream>>,
    /// Encoded packets not yet sent.
    pub buf: Vec<u8>,
}

impl Writer {
    fn new(inner: WriteHalf<TlsStream<TcpStream>>) -> Self {
        Writer {
            inner,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends what was encoded. Awaits while the socket is full: TCP
    /// back-pressure reaches the caller, nothing piles up here.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends DISCONNECT and closes the TLS session (best effort).
    pub async fn disconnect(mut self) {
        self.buf.extend_from_slice(&[0xe0, 0]);
        let _ = self.flush().await;
        let _ = self.inner.shutdown().await;
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// CONNECT, MQTT 3.1.1, no credentials; `clean` sets the clean-session flag.
pub fn encode_connect(buf: &mut Vec<u8>, client_id: &str, keep_alive: u16, clean: bool) {
    buf.push(0x10);
    write_varint(10 + 2 + client_id.len(), buf);
    put_str(buf, b"MQTT");
    buf.push(4);
    buf.push(if clean { 0x02 } else { 0x00 });
    buf.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(buf, client_id.as_bytes());
}

/// PUBLISH at QoS 0 or 1 (`pid` ignored at QoS 0).
pub fn encode_publish(buf: &mut Vec<u8>, topic: &str, qos: u8, pid: u16, payload: &[u8]) {
    buf.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    write_varint(2 + topic.len() + id_len + payload.len(), buf);
    put_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.extend_from_slice(&pid.to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

/// PUBACK.
pub fn encode_puback(buf: &mut Vec<u8>, pid: u16) {
    buf.extend_from_slice(&[0x40, 2]);
    buf.extend_from_slice(&pid.to_be_bytes());
}

/// SUBSCRIBE to one filter.
pub fn encode_subscribe(buf: &mut Vec<u8>, pid: u16, filter: &str, qos: u8) {
    buf.push(0x82);
    write_varint(2 + 2 + filter.len() + 1, buf);
    buf.extend_from_slice(&pid.to_be_bytes());
    put_str(buf, filter.as_bytes());
    buf.push(qos);
}

impl Client {
    /// Subscribes to one filter and waits for the SUBACK; refusals are errors.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<()> {
        encode_subscribe(&mut self.tx.buf, 1, filter, qos);
        self.tx.flush().await?;
        let mut granted = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while granted.is_none() {
            tokio::time::timeout_at(
                deadline,
                self.rx.read(|p| {
                    if let Packet::Suback { granted: g } = p {
                        granted = Some(g);
                    }
                }),
            )
            .await
            .context("no SUBACK within 10 s")??;
        }
        match granted {
            Some(g) if !reason::is_failure(g) => Ok(()),
            _ => bail!("subscription to {filter} refused"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_the_parser() {
        let mut buf = Vec::new();
        encode_publish(&mut buf, "a/b", 1, 7, &[9; 300]);
        encode_puback(&mut buf, 7);
        let f = next_frame(&buf, usize::MAX).unwrap().unwrap();
        match parse(f.first_byte, &buf[f.header_len..f.len]).unwrap() {
            Packet::Publish {
                qos,
                pid,
                topic,
                payload,
            } => {
                assert_eq!((qos, pid, topic, payload.len()), (1, 7, &b"a/b"[..], 300));
            }
            other => panic!("{other:?}"),
        }
        let rest = &buf[f.len..];
        let f = next_frame(rest, usize::MAX).unwrap().unwrap();
        assert!(matches!(
            parse(f.first_byte, &rest[f.header_len..f.len]).unwrap(),
            Packet::Puback { pid: 7 }
        ));
        assert!(next_frame(&buf[..3], usize::MAX).unwrap().is_none());
    }
}
