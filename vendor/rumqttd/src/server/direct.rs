//! Hearth: one client connection served in the caller's own task — the router's link driven directly, without a pipe, a second task or a socket.
//!
//! [`DirectLink`] is what `Connector::serve`'s `remote` task did for a
//! stream, turned inside out: the caller writes the client's bytes into it
//! (they are framed here, once, and handed to the router) and reads the
//! router's packets out of it, already encoded. It keeps the link's rules:
//! the keep-alive (one and a half times the CONNECT's, from the last bytes
//! written), a will settled with the previous connection of its client id,
//! the router told when the connection ends (unless the router ended it, or
//! the client's DISCONNECT did), and the will published after its delay.
//!
//! Measured in Hearth's home benchmark (issue 20): each message used to
//! cross an in-memory pipe and a link task on each side of the router, so
//! four task wake-ups, two copies and a second parse per message more than
//! this.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use flume::r#async::{RecvFut, SendFut};
use flume::Sender;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{self, Instant, Sleep};

use super::broker::{settle_previous_will, AwaitingWill};
use crate::link::local::{LinkRx, LinkTx};
use crate::link::network::{keepalive_due, own_small_publish};
use crate::local::LinkBuilder;
use crate::protocol::{self, Packet, Protocol};
use crate::router::{Event, Notification};
use crate::ConnectionId;

type RouterTx = Sender<(ConnectionId, Event)>;
type WillHandlers = Arc<Mutex<std::collections::HashMap<String, Sender<AwaitingWill>>>>;

/// A buffer that grew past this for a large packet is given back once
/// empty, rather than kept while the connection idles.
const KEEP_BUFFER: usize = 64 * 1024;

/// One connection's link to the router, read and written like a stream.
pub struct DirectLink<P> {
    protocol: P,
    connection_id: ConnectionId,
    link_tx: LinkTx,
    link_rx: LinkRx,
    /// Resolves when the router has put notifications in the link.
    woken: RecvFut<'static, ()>,
    notifications: VecDeque<Notification>,
    /// The client's bytes not yet a whole packet.
    incoming: BytesMut,
    /// The router's packets, encoded, not yet read.
    outgoing: BytesMut,
    /// The size `outgoing` grew to for what it holds (its `capacity()`
    /// shrinks as it is read).
    outgoing_room: usize,
    max_incoming_size: usize,
    /// The CONNECT's keep-alive and a half; `Duration::MAX` for none.
    keepalive: Duration,
    last_write: Instant,
    /// Fires at `last_write + keepalive` or later; moved on lazily.
    expiry: Pin<Box<Sleep>>,
    /// "The link has packets" on its way to a full router channel.
    data_sent: Option<SendFut<'static, (ConnectionId, Event)>>,
    /// "The link has room again", the same.
    ready_sent: Option<SendFut<'static, (ConnectionId, Event)>>,
    /// How the connection is ending, once it is.
    ending: Ending,
    /// What is settled once it has ended; `None` once handed over.
    end: Option<LinkEnd>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    /// Still connected.
    No,
    /// The caller shut it down; the router is being (or has been) told.
    Shutdown,
    /// The router dropped the link (a takeover, its own disconnect): it
    /// must not be told, the connection id may be someone else's now.
    ByRouter,
    /// The client sent DISCONNECT: the router ends the link on it.
    ByClient,
}

/// What the end of a connection settles: its will.
struct LinkEnd {
    router_tx: RouterTx,
    client_id: String,
    /// The sender this connection put in `will_handlers`, to tell it from
    /// a newer connection's. Nothing drops a handler unsent (the next
    /// connection sends before it drops), so keeping it changes no wait.
    will_tx: Sender<AwaitingWill>,
    will_rx: flume::Receiver<AwaitingWill>,
    will_delay_interval: u32,
    has_will: bool,
    will_handlers: WillHandlers,
}

/// Why a CONNECT was not served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not a CONNECT: {0}")]
    NotConnect(String),
    #[error("invalid CONNECT: {0:?}")]
    Protocol(protocol::Error),
    #[error("the router refused the connection: {0}")]
    Router(String),
}

impl<P: Protocol> DirectLink<P> {
    /// Registers the client whose CONNECT is `connect` (one whole packet)
    /// with the router; the CONNACK is the first thing read.
    pub(super) async fn open(
        mut protocol: P,
        connect: &[u8],
        max_incoming_size: usize,
        dynamic_filters: bool,
        router_tx: RouterTx,
        will_handlers: WillHandlers,
    ) -> Result<DirectLink<P>, OpenError> {
        let mut bytes = BytesMut::from(connect);
        let packet = protocol
            .read_mut(&mut bytes, max_incoming_size)
            .map_err(OpenError::Protocol)?;
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = packet else {
            return Err(OpenError::NotConnect(format!("{packet:?}")));
        };
        // The edge names every client (and gives a client without a
        // keep-alive one of its own, pinging for it).
        if connect.client_id.is_empty() {
            return Err(OpenError::NotConnect("no client id".into()));
        }
        let client_id = connect.client_id.clone();
        let clean_session = connect.clean_session;
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);
        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);
        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        // 5 §3.1.3.2.2: the will waits for its delay or the session's end,
        // whichever comes first.
        let will_delay_interval = session_expiry.min(delay_interval);
        let has_will = lastwill.is_some();

        settle_previous_will(&will_handlers, &client_id, clean_session);
        let (will_tx, will_rx) = flume::bounded::<AwaitingWill>(1);
        will_handlers
            .lock()
            .unwrap()
            .insert(client_id.clone(), will_tx.clone());

        let built = LinkBuilder::new(&client_id, router_tx.clone())
            .clean_session(clean_session)
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            .build_async()
            .await;
        let (link_tx, link_rx, notification) = match built {
            Ok(built) => built,
            Err(e) => {
                forget_will_handler(&will_handlers, &client_id, &will_tx);
                return Err(OpenError::Router(e.to_string()));
            }
        };
        let mut outgoing = BytesMut::new();
        if let Some(packet @ Packet::ConnAck(..)) = Option::<Packet>::from(notification) {
            protocol
                .write(packet, &mut outgoing)
                .map_err(OpenError::Protocol)?;
        }
        let keepalive = match connect.keep_alive {
            0 => Duration::MAX,
            secs => Duration::from_secs(u64::from(secs)).mul_f32(1.5),
        };
        let last_write = Instant::now();
        Ok(DirectLink {
            protocol,
            connection_id: link_rx.id(),
            woken: link_rx.wakeup(),
            link_tx,
            link_rx,
            notifications: VecDeque::new(),
            incoming: BytesMut::new(),
            outgoing_room: outgoing.capacity(),
            outgoing,
            max_incoming_size,
            keepalive,
            last_write,
            expiry: Box::pin(time::sleep_until(keepalive_due(last_write, keepalive))),
            data_sent: None,
            ready_sent: None,
            ending: Ending::No,
            end: Some(LinkEnd {
                router_tx,
                client_id,
                will_tx,
                will_rx,
                will_delay_interval,
                has_will,
                will_handlers,
            }),
        })
    }

    /// Frames what the client wrote and hands the packets to the router.
    /// Nothing after a DISCONNECT counts; packets framed before a
    /// malformed one still go to the router, then the error ends the link.
    fn take_in(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut framed = 0;
        let mut malformed = None;
        {
            let mut buffer = self.link_tx.buffer();
            loop {
                match self
                    .protocol
                    .read_mut(&mut self.incoming, self.max_incoming_size)
                {
                    Ok(mut packet) => {
                        let disconnect = matches!(packet, Packet::Disconnect(..));
                        own_small_publish(&mut packet);
                        buffer.push_back(packet);
                        framed += 1;
                        if disconnect {
                            self.ending = Ending::ByClient;
                            self.incoming.clear();
                            break;
                        }
                    }
                    Err(protocol::Error::InsufficientBytes(_)) => break,
                    Err(e) => {
                        malformed = Some(e);
                        break;
                    }
                }
            }
        }
        if self.incoming.is_empty() {
            // An idle connection holds no buffer.
            self.incoming = BytesMut::new();
        }
        if framed > 0 {
            let event = (self.connection_id, Event::DeviceData);
            start_send(&mut self.data_sent, &self.end, event, cx)?;
        }
        match malformed {
            Some(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            None => Ok(()),
        }
    }

    /// Moves what the router has for the client into `outgoing`.
    fn take_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.woken).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => {
                self.ending = Ending::ByRouter;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Ok(())) => {}
        }
        self.woken = self.link_rx.wakeup();
        self.link_rx.take_notifications(&mut self.notifications);
        let mut unscheduled = false;
        for notification in self.notifications.drain(..) {
            match Option::<Packet>::from(notification) {
                Some(packet) => {
                    if let Err(e) = self.protocol.write(packet, &mut self.outgoing) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{e:?}"),
                        )));
                    }
                }
                None => unscheduled = true,
            }
        }
        self.outgoing_room = self.outgoing.capacity();
        if unscheduled {
            // The router paused this link while it was full: it has room
            // again once these are read.
            let event = (self.connection_id, Event::Ready);
            start_send(&mut self.ready_sent, &self.end, event, cx)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the keep-alive ran out; moves the timer on if not.
    fn keepalive_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.expiry.as_mut().poll(cx).is_ready() {
            let next = keepalive_due(self.last_write, self.keepalive);
            if next <= Instant::now() {
                return true;
            }
            self.expiry.as_mut().reset(next);
        }
        false
    }

    /// Drives the sends that waited for room in the router's channel.
    fn poll_sends(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        for sent in [&mut self.data_sent, &mut self.ready_sent] {
            if let Some(send) = sent {
                let done = ready!(Pin::new(send).poll(cx));
                *sent = None;
                done.map_err(|_| router_gone())?;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn release_outgoing(&mut self) {
        if self.outgoing.is_empty() && self.outgoing_room > KEEP_BUFFER {
            self.outgoing = BytesMut::new();
            self.outgoing_room = 0;
        }
    }

    /// Whether the router has to be told the connection ended: not when
    /// it ended it (seen now or before), nor after the client's DISCONNECT.
    fn router_must_be_told(&mut self) -> bool {
        self.note_router_drop();
        matches!(self.ending, Ending::No | Ending::Shutdown)
    }

}

/// Sends `event` now if the router's channel has room, or leaves it in
/// `slot` to be driven by the next poll.
fn start_send(
    slot: &mut Option<SendFut<'static, (ConnectionId, Event)>>,
    end: &Option<LinkEnd>,
    event: (ConnectionId, Event),
    cx: &mut Context<'_>,
) -> io::Result<()> {
    if slot.is_some() {
        // One "look at the link" on its way is enough: the router takes
        // everything the link holds when it gets to it.
        return Ok(());
    }
    let Some(end) = end else {
        return Err(router_gone());
    };
    match end.router_tx.try_send(event) {
        Ok(()) => Ok(()),
        Err(flume::TrySendError::Disconnected(_)) => Err(router_gone()),
        Err(flume::TrySendError::Full(event)) => {
            let mut send = end.router_tx.clone().into_send_async(event);
            match Pin::new(&mut send).poll(cx) {
                Poll::Ready(done) => done.map_err(|_| router_gone()),
                Poll::Pending => {
                    *slot = Some(send);
                    Ok(())
                }
            }
        }
    }
}


fn router_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the router is gone")
}

/// Removes `client_id`'s will handler if it is still `ours`.
fn forget_will_handler(will_handlers: &WillHandlers, client_id: &str, ours: &Sender<AwaitingWill>) {
    let mut handlers = will_handlers.lock().unwrap();
    if handlers
        .get(client_id)
        .is_some_and(|sender| sender.same_channel(ours))
    {
        handlers.remove(client_id);
    }
}

impl<P: Protocol + Unpin> AsyncWrite for DirectLink<P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_sends(cx))?;
        if this.ending != Ending::No {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection has ended",
            )));
        }
        this.incoming.extend_from_slice(buf);
        this.last_write = Instant::now();
        this.take_in(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_sends(cx)
    }

    /// Ends the connection: the router is told (unless it ended it, or the
    /// client's DISCONNECT does) before this returns; the will is settled
    /// when the link is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ending == Ending::No {
            // Whatever was written goes first.
            let _ = ready!(this.poll_sends(cx));
            if this.router_must_be_told() {
                this.ending = Ending::Shutdown;
                let event = (this.connection_id, Event::Disconnect);
                let _ = start_send(&mut this.data_sent, &this.end, event, cx);
            }
        }
        let _ = ready!(this.poll_sends(cx));
        Poll::Ready(Ok(()))
    }
}

impl<P: Protocol + Unpin> AsyncRead for DirectLink<P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A send waiting for room is driven from here too: the reading
        // half is always waiting, the writing one only when it has bytes.
        if let Poll::Ready(Err(e)) = this.poll_sends(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if !this.outgoing.is_empty() {
                let n = this.outgoing.len().min(buf.remaining());
                buf.put_slice(&this.outgoing[..n]);
                this.outgoing.advance(n);
                this.release_outgoing();
                return Poll::Ready(Ok(()));
            }
            if this.ending != Ending::No {
                // End of stream, once the router has been told all.
                ready!(this.poll_sends(cx))?;
                return Poll::Ready(Ok(()));
            }
            if this.keepalive_expired(cx) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "keep-alive expired",
                )));
            }
            ready!(this.take_out(cx))?;
        }
    }
}

impl<P> DirectLink<P> {
    /// Takes a drop by the router into account even when the reading half
    /// has not seen it (the edge may not be reading).
    fn note_router_drop(&mut self) {
        if self.ending == Ending::No && self.link_rx.router_dropped() {
            self.ending = Ending::ByRouter;
        }
    }
}

impl<P> Drop for DirectLink<P> {
    /// Settles the end in line where it can, so that it is queued to the
    /// router before the client id's next connection can be: the router
    /// told (unless it must not be), and a will without a delay published.
    /// Only what must wait (a full channel, a will's delay) is spawned.
    fn drop(&mut self) {
        let Some(end) = self.end.take() else {
            return;
        };
        self.note_router_drop();
        let tell = self.ending == Ending::No;
        // The router deleted the will on the client's DISCONNECT, and a
        // link it dropped itself has no will left there either.
        let will = end.has_will && matches!(self.ending, Ending::No | Ending::Shutdown);
        let id = self.connection_id;
        let mut unsent: Vec<SendFut<'static, (ConnectionId, Event)>> =
            [self.data_sent.take(), self.ready_sent.take()]
                .into_iter()
                .flatten()
                .collect();
        let mut queue = |event: Event| {
            if unsent.is_empty() {
                match end.router_tx.try_send((id, event)) {
                    Ok(()) | Err(flume::TrySendError::Disconnected(_)) => return,
                    Err(flume::TrySendError::Full((_, event))) => {
                        unsent.push(end.router_tx.clone().into_send_async((id, event)));
                    }
                }
            } else {
                unsent.push(end.router_tx.clone().into_send_async((id, event)));
            }
        };
        if tell {
            queue(Event::Disconnect);
        }
        let delayed_will = will && end.will_delay_interval > 0;
        if will && !delayed_will && end.will_fires_now() {
            queue(Event::PublishWill((end.client_id.clone(), None)));
        }
        if !delayed_will {
            end.forget();
        }
        if unsent.is_empty() && !delayed_will {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                for send in unsent {
                    let _ = send.await;
                }
                if delayed_will {
                    end.will_after_delay(id).await;
                }
            })),
            // The process is ending: nothing is left to tell.
            Err(_) => {}
        }
    }
}

impl LinkEnd {
    /// For a will without a delay, at the end: whether it is published now
    /// (the client id's next connection may already have settled it).
    fn will_fires_now(&self) -> bool {
        match self.will_rx.try_recv() {
            Ok(will) => will == AwaitingWill::Fire,
            Err(flume::TryRecvError::Empty) => true,
            Err(flume::TryRecvError::Disconnected) => false,
        }
    }

    /// Forgets this connection's will handler, if a newer connection has
    /// not put its own in its place.
    fn forget(&self) {
        forget_will_handler(&self.will_handlers, &self.client_id, &self.will_tx);
    }

    /// What `remote` did for a will with a delay: publish it after the
    /// delay, unless the client id's next connection settled it first.
    async fn will_after_delay(self, connection_id: ConnectionId) {
        let delay = Duration::from_secs(u64::from(self.will_delay_interval));
        let publish = match time::timeout(delay, self.will_rx.recv_async()).await {
            Ok(will) => will.is_ok_and(|w| w == AwaitingWill::Fire),
            Err(_) => {
                self.forget();
                true
            }
        };
        if publish {
            let event = Event::PublishWill((self.client_id, None));
            let _ = self.router_tx.send_async((connection_id, event)).await;
        }
    }
}
