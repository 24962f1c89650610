use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

use std::{
    collections::VecDeque,
    io::{self, ErrorKind},
};
use tokio::time::{error::Elapsed, Duration};

use crate::protocol::{self, Packet, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O = {0}")]
    Io(#[from] io::Error),
    #[error("Invalid data = {0}")]
    Protocol(#[from] protocol::Error),
    #[error["Keep alive timeout"]]
    KeepAlive(#[from] Elapsed),
    /// Hearth: the same, from the connection's own timer.
    #[error["Keep alive timeout"]]
    KeepAliveExpired,
}

thread_local! {
    /// Hearth: where reads land before they are appended to a connection's
    /// buffer; one per thread.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network<P> {
    /// Socket for IO
    socket: Box<dyn N>,
    /// Buffered reads
    read: BytesMut,
    /// Buffered writes
    write: BytesMut,
    /// Maximum packet size
    max_incoming_size: usize,
    /// Maximum connection buffer count. TODO: Change this to use bytes for deterministicness
    max_connection_buffer_len: usize,
    /// Keep alive timeout
    keepalive: Duration,
    /// Protocol
    protocol: P,
}

impl<P: Protocol> Network<P> {
    pub fn new(
        socket: Box<dyn N>,
        max_incoming_size: usize,
        max_connection_buffer_len: usize,
        protocol: P,
    ) -> Network<P> {
        Network {
            socket,
            // Hearth: grown on first use (BytesMut reserves as it reads),
            // so an idle connection does not hold 20 KiB of buffers.
            read: BytesMut::new(),
            write: BytesMut::new(),
            max_incoming_size,
            max_connection_buffer_len,
            // Overwritten by keepalive value in connect packet, otherwise we
            // would wait indefinitely until we get a packet / network error
            // when we call read.
            keepalive: Duration::MAX,
            protocol,
        }
    }

    pub fn set_keepalive(&mut self, keepalive: u16) {
        let keepalive = Duration::from_secs(keepalive as u64);
        self.keepalive = keepalive + keepalive.mul_f32(0.5);
    }

    /// Reads more than 'required' bytes to frame a packet into self.read buffer
    async fn read_bytes(&mut self, required: usize) -> io::Result<usize> {
        // TODO: Fix this cancellation bug and write unit test
        let mut total_read = 0;
        loop {
            // Hearth: read into a per-thread scratch buffer and append, so an
            // idle connection holds no read buffer while it waits and a busy
            // one still reads up to 16 KiB at a time (an empty, shared
            // BytesMut would otherwise grow 64 bytes per read).
            let socket = &mut self.socket;
            let read_buf = &mut self.read;
            let read = std::future::poll_fn(|cx| {
                READ_SCRATCH.with_borrow_mut(|scratch| {
                    let mut buf = tokio::io::ReadBuf::new(scratch);
                    std::task::ready!(std::pin::Pin::new(&mut *socket).poll_read(cx, &mut buf))?;
                    read_buf.extend_from_slice(buf.filled());
                    std::task::Poll::Ready(Ok::<_, io::Error>(buf.filled().len()))
                })
            })
            .await?;
            if 0 == read {
                let error = if self.read.is_empty() {
                    io::Error::new(ErrorKind::ConnectionAborted, "connection closed by peer")
                } else {
                    io::Error::new(ErrorKind::ConnectionReset, "connection reset by peer")
                };

                return Err(error);
            }

            total_read += read;
            if total_read >= required {
                return Ok(total_read);
            }
        }
    }

    /// Waits on network for 1 packet
    pub async fn read(&mut self) -> Result<Packet, Error> {
        loop {
            let required = match Protocol::read_mut(
                &mut self.protocol,
                &mut self.read,
                self.max_incoming_size,
            ) {
                Ok(packet) => return Ok(packet),
                Err(protocol::Error::InsufficientBytes(required)) => required,
                Err(e) => return Err(e.into()),
            };

            // read more packets until a frame can be created. This function
            // blocks until a frame can be created. Use this in a select! branch
            timeout(self.keepalive, self.read_bytes(required)).await??;
        }
    }

    /// Hearth: `read` without a keep-alive timer of its own: the caller
    /// keeps one for the connection (`RemoteLink::start`) instead of one
    /// made and dropped per read.
    pub async fn read_untimed(&mut self) -> Result<Packet, Error> {
        loop {
            let required = match Protocol::read_mut(
                &mut self.protocol,
                &mut self.read,
                self.max_incoming_size,
            ) {
                Ok(packet) => return Ok(packet),
                Err(protocol::Error::InsufficientBytes(required)) => required,
                Err(e) => return Err(e.into()),
            };
            self.read_bytes(required).await?;
        }
    }

    /// Hearth: how long the connection may stay silent.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub fn readv(&mut self, packets: &mut VecDeque<Packet>) -> Result<usize, Error> {
        loop {
            match self
                .protocol
                .read_mut(&mut self.read, self.max_incoming_size)
            {
                Ok(mut packet) => {
                    own_small_publish(&mut packet);
                    packets.push_back(packet);
                    let connection_buffer_length = packets.len();
                    if connection_buffer_length >= self.max_connection_buffer_len {
                        return Ok(connection_buffer_length);
                    }
                }
                Err(protocol::Error::InsufficientBytes(_)) => return Ok(packets.len()),
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e.to_string()).into()),
            }
        }
    }

    /// Hearth: empties the write buffer, and gives it back if a large
    /// packet grew it (it would otherwise stay that size while idle).
    fn release_write(&mut self) {
        if self.write.capacity() > 64 * 1024 {
            self.write = BytesMut::new();
        } else {
            self.write.clear();
        }
    }

    pub async fn write(&mut self, packet: Packet) -> Result<(), Error> {
        Protocol::write(&self.protocol, packet, &mut self.write)?;
        self.socket.write_all(&self.write).await?;
        self.release_write();
        Ok(())
    }

    pub async fn writev(&mut self, packets: VecDeque<Packet>) -> Result<(), Error> {
        for packet in packets {
            Protocol::write(&self.protocol, packet, &mut self.write)?;
        }
        self.socket.write_all(&self.write).await?;
        self.release_write();
        Ok(())
    }
}

/// Hearth: when a connection silent since `last` has outlived its
/// `keepalive` (`Duration::MAX` for none: a century on, as a timer must
/// have a deadline).
pub(crate) fn keepalive_due(last: tokio::time::Instant, keepalive: Duration) -> tokio::time::Instant {
    last.checked_add(keepalive)
        .unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 86_400))
}

pub trait N: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> N for T where T: AsyncRead + AsyncWrite + Unpin + Send {}

/// Hearth: publishes smaller than this get their topic and payload copied
/// into one allocation of their own.
const OWN_BELOW: usize = 16 * 1024;

/// Hearth: a decoded packet's topic and payload are slices of the read
/// buffer, and keep all of it alive as long as any of them lives. A small
/// publish kept in a filter's log (or as a retained message) would pin a
/// whole read buffer of other packets, so the router's byte budgets
/// (`max_log_bytes`, the edge's retained quotas) would not bound memory:
/// small ones are copied out (one allocation, exact size); large ones are
/// mostly their own buffer already.
pub(crate) fn own_small_publish(packet: &mut Packet) {
    let Packet::Publish(publish, _) = packet else {
        return;
    };
    let (topic_len, payload_len) = (publish.topic.len(), publish.payload.len());
    if topic_len + payload_len >= OWN_BELOW {
        return;
    }
    let mut owned = BytesMut::with_capacity(topic_len + payload_len);
    owned.extend_from_slice(&publish.topic);
    owned.extend_from_slice(&publish.payload);
    let mut owned = owned.freeze();
    publish.topic = owned.split_to(topic_len);
    publish.payload = owned;
}
