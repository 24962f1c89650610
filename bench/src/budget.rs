//! The memory-budget run (issue 20): hearthd at its default limits with 200
//! devices connected over mutual TLS, every bound of docs/ARCHITECTURE.md's
//! "Memory budget" table that a paired device can drive pushed towards its
//! limit at once, and the peak RSS (VmHWM) compared with the budget stated
//! there.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{Broker, Device, Pool};
use crate::mqtt::{self, encode_publish, encode_subscribe, Client, Packet, Writer};
use crate::scenarios::{Figure, Outcome};

/// The worst case docs/ARCHITECTURE.md ("Memory budget", the **worst
/// case** row, 200-device column) states for hearthd at its default limits,
/// in MiB. The run fails when the peak RSS exceeds it. Change both
/// together, and never to make a run pass.
pub const BUDGET_MIB: f64 = 375.0;

/// RSS at which the run stops loading the hub early (it has failed).
const GUARD_MIB: f64 = 4.0 * BUDGET_MIB;

/// hearthd's default limits that the run drives, copied from
/// `LimitsSection::default` and `MailboxSection::default` in
/// daemon/src/config.rs (the bench does not link the daemon). A default
/// changed there and not here makes the run drive the old figure; the
/// budget row in docs/ARCHITECTURE.md changes with it anyway.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `limits.max_payload`.
    pub max_payload: usize,
    /// `limits.max_retained_per_device`.
    pub max_retained_per_device: usize,
    /// `limits.max_retained_bytes_per_device`.
    pub max_retained_bytes_per_device: usize,
    /// `limits.max_retained`.
    pub max_retained: usize,
    /// `limits.max_retained_bytes`.
    pub max_retained_bytes: usize,
    /// `limits.max_subscriptions_per_client`.
    pub max_subscriptions_per_client: usize,
    /// `limits.max_queued_bytes_per_filter`.
    pub max_queued_bytes_per_filter: usize,
    /// `limits.max_queued_bytes`.
    pub max_queued_bytes: usize,
    /// `limits.max_large_packet_bytes` (each packet counted twice).
    pub max_large_packet_bytes: usize,
    /// `limits.max_unauthenticated` (per listener).
    pub max_unauthenticated: usize,
    /// `limits.max_unauthenticated_per_source`.
    pub max_unauthenticated_per_source: usize,
    /// `mailbox.max_image_bytes`.
    pub max_image_bytes: usize,
    /// `mailbox.max_sender_bytes_per_day`.
    pub max_sender_bytes_per_day: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_payload: 8 * 1024 * 1024,
            max_retained_per_device: 100,
            max_retained_bytes_per_device: 1024 * 1024,
            max_retained: 10_000,
            max_retained_bytes: 32 * 1024 * 1024,
            max_subscriptions_per_client: 128,
            max_queued_bytes_per_filter: 8 * 1024 * 1024,
            max_queued_bytes: 64 * 1024 * 1024,
            max_large_packet_bytes: 128 * 1024 * 1024,
            max_unauthenticated: 128,
            max_unauthenticated_per_source: 8,
            max_image_bytes: 5 * 1024 * 1024,
            max_sender_bytes_per_day: 64 * 1024 * 1024,
        }
    }
}

/// Large packets are those the edge holds whole: over 64 KiB.
const LARGE: usize = 64 * 1024;
/// Bytes the hub counts for a retained message besides its payload, at
/// most: its key (the topic, `hearth/v1/dev/<26>/tele/retained<k>`, ≤ 64)
/// and the whole packet (the topic again, its length, the fixed header).
const RETAINED_OVERHEAD: usize = 2 * 64 + 8;
/// Retained messages the hub keeps besides one state per device, at most.
const HUB_RETAINED: usize = 64;
/// Room for topic, headers and the JSON around a payload.
const ENVELOPE: usize = 4096;

/// How hard the run pushes each bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Devices connected (the children of the pool).
    pub devices: usize,
    /// Retained messages each device publishes.
    pub retained_per_device: usize,
    /// Payload bytes of each retained message.
    pub retained_payload: usize,
    /// Filters each device subscribes to (its inbox among them).
    pub subscriptions_per_device: usize,
    /// Persistent sessions that subscribe and go offline.
    pub queue_sessions: usize,
    /// Messages each device publishes for the offline sessions.
    pub queued_per_device: usize,
    /// Payload bytes of each of those (a small packet: under 64 KiB).
    pub queued_payload: usize,
    /// Devices publishing large packets at once.
    pub large_senders: usize,
    /// Large packets each of them sends.
    pub large_per_sender: usize,
    /// Payload bytes of each large packet.
    pub large_payload: usize,
    /// Source addresses (127.0.1.x) holding handshakes open.
    pub handshake_sources: usize,
    /// Handshakes each source holds open per listener.
    pub handshakes_per_source: usize,
    /// Parent devices sending pictures to the child's devices.
    pub mailbox_senders: usize,
    /// Pictures each sends.
    pub pictures_per_sender: usize,
    /// Bytes of each picture (before base64).
    pub picture_bytes: usize,
    /// How long the concurrent phase (large packets, handshakes, mailbox)
    /// holds.
    pub hold: Duration,
    /// Pause after each phase before its RSS is read.
    pub settle: Duration,
}

impl Plan {
    /// The plan for `devices` devices at the limits `d`: every row driven
    /// to its bound, and past it where the hub holds the excess back rather
    /// than refusing it (the hub's bound, not the plan, is what stops it).
    pub fn new(devices: usize, d: &Defaults) -> Plan {
        let devices = devices.max(1);
        // Retained messages up to the hub's count and bytes, spread over
        // the devices, each within its own allowance. Not past them: the
        // hub denies a retained message over its bound, and a device denied
        // too often is disconnected (and would drive nothing after).
        // The hub retains messages of its own in the same bounds (every
        // device's state, the hub's info): room is left for them.
        let room = d.max_retained.saturating_sub(devices + HUB_RETAINED);
        let retained_per_device = (room / devices).clamp(1, d.max_retained_per_device);
        let room_bytes = d.max_retained_bytes.saturating_sub(64 * 1024);
        let retained_payload = (room_bytes / (devices * retained_per_device))
            .min(d.max_retained_bytes_per_device / retained_per_device)
            .saturating_sub(RETAINED_OVERHEAD)
            .max(64);
        // Small packets only, twice the hub's queue bound, on one filter
        // per device held by offline sessions.
        let queued_payload = LARGE - ENVELOPE;
        let queue_sessions = devices.div_ceil(d.max_subscriptions_per_client - 1);
        let queued_per_device = (2 * d.max_queued_bytes)
            .div_ceil(devices * queued_payload)
            .max(1);
        // Largest packets, twice what the hub lets in flight.
        let large_payload = d.max_payload - ENVELOPE;
        let large_per_sender = 2;
        // Each packet counts twice against the bound: senders for twice
        // what it lets in.
        let large_senders = d
            .max_large_packet_bytes
            .div_ceil(large_payload * large_per_sender);
        let handshake_sources = d
            .max_unauthenticated
            .div_ceil(d.max_unauthenticated_per_source);
        // Pictures: base64 must fit a packet; a sender's day allows
        // max_sender_bytes_per_day.
        let picture_bytes = d.max_image_bytes.min((d.max_payload - ENVELOPE) / 4 * 3) / 3 * 3;
        let pictures_per_sender = 4.min(d.max_sender_bytes_per_day / picture_bytes);
        Plan {
            devices,
            retained_per_device,
            retained_payload,
            subscriptions_per_device: d.max_subscriptions_per_client,
            queue_sessions,
            queued_per_device,
            queued_payload,
            large_senders: large_senders.min(devices),
            large_per_sender,
            large_payload,
            handshake_sources,
            handshakes_per_source: d.max_unauthenticated_per_source,
            mailbox_senders: 2,
            pictures_per_sender,
            picture_bytes,
            hold: Duration::from_secs(30),
            settle: Duration::from_secs(2),
        }
    }

    /// Toy scale for `--smoke`: every phase runs, a few seconds in all.
    pub fn smoke(devices: usize) -> Plan {
        let devices = devices.max(1);
        Plan {
            devices,
            retained_per_device: 3,
            retained_payload: 1024,
            subscriptions_per_device: 4,
            queue_sessions: 1,
            queued_per_device: 2,
            queued_payload: 4096,
            large_senders: 1,
            large_per_sender: 1,
            large_payload: 2 * LARGE,
            handshake_sources: 2,
            handshakes_per_source: 2,
            mailbox_senders: 1,
            pictures_per_sender: 1,
            picture_bytes: 96 * 1024,
            hold: Duration::from_millis(800),
            settle: Duration::from_millis(100),
        }
    }

    /// The plan without some of its loads (`HEARTH_BENCH_BUDGET_SKIP`, a
    /// comma-separated list of subscriptions (the inbox only), retained,
    /// queued, large, handshakes, mailbox), to tell which row a peak (or a
    /// stall) comes from. Unknown names are
    /// errors.
    pub fn without(mut self, skip: &str) -> Result<Plan> {
        for name in skip.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "retained" => self.retained_per_device = 0,
                "subscriptions" => self.subscriptions_per_device = 1,
                "queued" => self.queued_per_device = 0,
                "large" => self.large_senders = 0,
                "handshakes" => self.handshake_sources = 0,
                "mailbox" => self.pictures_per_sender = 0,
                other => bail!("HEARTH_BENCH_BUDGET_SKIP: unknown load {other}"),
            }
        }
        Ok(self)
    }

    /// Parent devices the run needs: the readiness probe, one slow reader
    /// of large packets, the offline sessions, the senders.
    pub fn parents(&self) -> usize {
        2 + self.queue_sessions + self.mailbox_senders
    }
}

/// Whether a peak RSS (KiB, VmHWM) is within the budget (MiB).
pub fn verdict(peak_kib: u64, budget_mib: f64) -> Result<(), String> {
    let peak = peak_kib as f64 / 1024.0;
    if peak <= budget_mib {
        Ok(())
    } else {
        Err(format!(
            "peak RSS {peak:.1} MiB is above the memory budget of {budget_mib:.0} MiB \
             (docs/ARCHITECTURE.md, Memory budget)"
        ))
    }
}

/// The budget scenario's verdict from its figures: the "peak RSS" against
/// the "budget".
pub fn check(o: &Outcome) -> Result<(), String> {
    let get = |name: &str| o.figures.iter().find(|f| f.name == name).map(|f| f.value);
    match (get(PEAK), get(BUDGET)) {
        (Some(peak), Some(budget)) => verdict((peak * 1024.0).round() as u64, budget),
        _ => Err("the budget run reported no peak RSS".into()),
    }
}

const PEAK: &str = "peak RSS (VmHWM)";
const BUDGET: &str = "budget (ARCHITECTURE.md)";

fn fig(name: &'static str, unit: &'static str, value: f64) -> Figure {
    Figure {
        name,
        unit,
        value,
        higher_better: false,
        rate: false,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RSS after each phase, with the peak so far.
#[derive(Debug, Default)]
struct Marks(Vec<Figure>);

impl Marks {
    fn take(&mut self, b: &Broker, name: &'static str) -> Result<()> {
        let s = b.stat()?;
        eprintln!(
            "  budget: {name}: RSS {:.1} MiB, peak {:.1} MiB",
            mib(s.rss_kib),
            mib(s.hwm_kib)
        );
        self.0.push(fig(name, "MiB", mib(s.rss_kib)));
        Ok(())
    }
}

async fn connect(b: &Broker, d: &Device, clean: bool) -> Result<Client> {
    mqtt::connect_session(
        b.addr,
        d.tls.clone(),
        d.id(),
        600,
        clean,
        Duration::from_secs(30),
    )
    .await
}

/// Subscribes to every filter in one flush and counts the SUBACKs:
/// (granted, refused).
async fn subscribe_all(c: &mut Client, filters: &[String], qos: u8) -> Result<(u64, u64)> {
    for (i, f) in filters.iter().enumerate() {
        encode_subscribe(&mut c.tx.buf, u16::try_from(i + 1).unwrap_or(1), f, qos);
    }
    c.tx.flush().await?;
    let (mut granted, mut refused) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ((granted + refused) as usize) < filters.len() {
        tokio::time::timeout_at(
            deadline,
            c.rx.read(|p| {
                if let Packet::Suback { granted: g } = p {
                    if hearth_protocol::mqtt::reason::is_failure(g) {
                        refused += 1;
                    } else {
                        granted += 1;
                    }
                }
            }),
        )
        .await
        .context("SUBACKs did not come within 60 s")??;
    }
    Ok((granted, refused))
}

/// Reads and discards everything a connection receives (acknowledging
/// nothing: the hostile device); counts the bytes.
fn spawn_drain(
    mut rx: mqtt::Reader,
    bytes: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut n = 0u64;
            tokio::select! {
                _ = stop.changed() => break,
                r = rx.read(|p| if let Packet::Publish { payload, .. } = p { n += payload.len() as u64 }) => {
                    if r.is_err() {
                        break;
                    }
                }
            }
            bytes.fetch_add(n, Ordering::Relaxed);
        }
    })
}

/// Has each device write what `encode` puts in its buffer, all at once;
/// returns the writers and how many connections failed to take it.
async fn each_writes(
    writers: Vec<Writer>,
    limit: Duration,
    encode: impl Fn(usize, &mut Vec<u8>),
) -> (Vec<Writer>, u64) {
    let mut tasks = Vec::with_capacity(writers.len());
    for (i, mut w) in writers.into_iter().enumerate() {
        encode(i, &mut w.buf);
        tasks.push(tokio::spawn(async move {
            let ok = tokio::time::timeout(limit, w.flush()).await;
            (w, matches!(ok, Ok(Ok(()))))
        }));
    }
    let mut back = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        if let Ok((mut w, ok)) = t.await {
            if !ok {
                failed += 1;
                w.buf.clear();
            }
            back.push(w);
        }
    }
    (back, failed)
}

/// Holds TLS handshakes open on `addr` from `source`: sends a ClientHello
/// and nothing more, so the hub keeps the handshake's state until its
/// timeout closes it, then opens the next. Returns how many it opened.
fn spawn_handshake_holder(
    addr: SocketAddr,
    source: Ipv4Addr,
    tls: Arc<rustls::ClientConfig>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut opened = 0u64;
        loop {
            let started = Instant::now();
            let attempt = async {
                let sock = TcpSocket::new_v4()?;
                sock.bind(SocketAddr::from((source, 0)))?;
                let mut s = sock.connect(addr).await?;
                let mut conn = rustls::ClientConnection::new(
                    tls.clone(),
                    ServerName::IpAddress(addr.ip().into()),
                )?;
                let mut hello = Vec::new();
                conn.write_tls(&mut hello)?;
                s.write_all(&hello).await?;
                anyhow::Ok(s)
            };
            let held = tokio::select! {
                _ = stop.changed() => return opened,
                r = attempt => r,
            };
            if let Ok(mut s) = held {
                opened += 1;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    tokio::select! {
                        _ = stop.changed() => return opened,
                        r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                    }
                }
            }
            // A hub refusing at once (over its bound) is not hammered.
            if started.elapsed() < Duration::from_millis(500) {
                tokio::select! {
                    _ = stop.changed() => return opened,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    })
}

/// The budget run against a hearthd started at its default limits.
pub async fn run(b: &Broker, pool: &Pool, plan: &Plan) -> Result<Outcome> {
    if pool.children.len() < plan.devices || pool.parents.len() < plan.parents() {
        bail!(
            "the budget run needs {} child devices and {} parent devices",
            plan.devices,
            plan.parents()
        );
    }
    let started = Instant::now();
    let mut marks = Marks::default();
    let mut counts: Vec<Figure> = Vec::new();
    marks.take(b, "RSS at rest")?;
    let (stop_tx, stop) = watch::channel(false);

    // 1. The devices connect, at most 4 handshakes at once: they all come
    // from 127.0.0.1, and the hub lets one source hold only
    // max_unauthenticated_per_source (8) unfinished handshakes.
    let devices = &pool.children[..plan.devices];
    let mut clients = Vec::with_capacity(devices.len());
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut handles = Vec::with_capacity(devices.len());
    for d in devices {
        let (sem, addr, tls, id) = (sem.clone(), b.addr, d.tls.clone(), d.id().to_owned());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            mqtt::connect(addr, tls, &id, 600, Duration::from_secs(30)).await
        }));
    }
    for h in handles {
        clients.push(h.await?.context("a device's connection")?);
    }
    marks.take(b, "RSS with the devices connected")?;

    // 2. Each device subscribes to as many filters as a session may hold:
    // its inbox (the mailbox phase's recipient) and commands.
    let mut tasks = Vec::with_capacity(clients.len());
    for (c, d) in clients.into_iter().zip(devices) {
        let mut filters = vec![format!("hearth/v1/dev/{}/inbox", d.id())];
        filters.extend(
            (1..plan.subscriptions_per_device)
                .map(|k| format!("hearth/v1/dev/{}/cmd/budget{k}", d.id())),
        );
        tasks.push(tokio::spawn(async move {
            let mut c = c;
            let r = subscribe_all(&mut c, &filters, 1).await;
            (c, r)
        }));
    }
    let (mut granted, mut refused) = (0u64, 0u64);
    let mut writers = Vec::with_capacity(tasks.len());
    let received = Arc::new(AtomicU64::new(0));
    let mut drains = Vec::new();
    for t in tasks {
        let (c, r) = t.await?;
        let (g, n) = r?;
        granted += g;
        refused += n;
        drains.push(spawn_drain(c.rx, received.clone(), stop.clone()));
        writers.push(c.tx);
    }
    counts.push(fig("subscriptions granted", "filters", granted as f64));
    counts.push(fig("subscriptions refused", "filters", refused as f64));
    tokio::time::sleep(plan.settle).await;
    marks.take(b, "RSS with the subscriptions")?;

    // 3. Retained messages, past the hub's count and bytes.
    let ids: Vec<String> = devices.iter().map(|d| d.id().to_owned()).collect();
    let body = vec![b'r'; plan.retained_payload];
    let (w, failed) = each_writes(writers, Duration::from_secs(60), |i, buf| {
        for k in 0..plan.retained_per_device {
            let topic = format!("hearth/v1/dev/{}/tele/retained{k}", ids[i]);
            // Retain flag on a QoS 0 PUBLISH.
            let at = buf.len();
            encode_publish(buf, &topic, 0, 0, &body);
            buf[at] |= 0x01;
        }
    })
    .await;
    writers = w;
    let mut write_failures = failed;
    counts.push(fig(
        "retained sent",
        "MiB",
        (plan.devices * plan.retained_per_device * plan.retained_payload) as f64 / 1048576.0,
    ));
    tokio::time::sleep(plan.settle).await;
    marks.take(b, "RSS with the retained messages")?;

    // 4. Queued messages: offline persistent sessions, one filter per
    // device, and every device publishing small packets for them.
    let per_session = plan.devices.div_ceil(plan.queue_sessions);
    for (s, chunk) in ids.chunks(per_session).enumerate() {
        let parent = &pool.parents[2 + s];
        let mut c = connect(b, parent, false).await?;
        let filters: Vec<String> = chunk
            .iter()
            .map(|id| format!("hearth/v1/dev/{id}/tele/queued"))
            .collect();
        subscribe_all(&mut c, &filters, 1).await?;
        c.tx.disconnect().await;
    }
    let body = vec![b'q'; plan.queued_payload];
    let (w, failed) = each_writes(writers, Duration::from_secs(60), |i, buf| {
        let topic = format!("hearth/v1/dev/{}/tele/queued", ids[i]);
        for _ in 0..plan.queued_per_device {
            encode_publish(buf, &topic, 0, 0, &body);
        }
    })
    .await;
    writers = w;
    write_failures += failed;
    counts.push(fig(
        "queued sent",
        "MiB",
        (plan.devices * plan.queued_per_device * plan.queued_payload) as f64 / 1048576.0,
    ));
    tokio::time::sleep(plan.settle).await;
    marks.take(b, "RSS with the queues full")?;

    // 5. At once, for `hold`: handshakes held open on both listeners from
    // many sources; large packets both ways (a parent reading them slowly);
    // pictures through the mailbox to every device of the child, which
    // never acknowledges them (so they are sent again every round).
    let mut background: Vec<JoinHandle<u64>> = Vec::new();
    for listener in [b.addr, b.est] {
        for s in 0..plan.handshake_sources {
            let source = Ipv4Addr::new(127, 0, 1, u8::try_from(s + 1).unwrap_or(1));
            for h in 0..plan.handshakes_per_source {
                let d = &devices[(s * plan.handshakes_per_source + h) % devices.len()];
                background.push(spawn_handshake_holder(
                    listener,
                    source,
                    d.tls.clone(),
                    stop.clone(),
                ));
            }
        }
    }
    let mut slow = connect(b, &pool.parents[1], true).await?;
    slow.subscribe("hearth/v1/dev/+/tele/large", 0).await?;
    slow.rx.set_chunk(16 * 1024);
    let large_read = Arc::new(AtomicU64::new(0));
    let slow_task = {
        let (mut stop, large_read) = (stop.clone(), large_read.clone());
        let mut rx = slow.rx;
        tokio::spawn(async move {
            loop {
                let mut n = 0u64;
                tokio::select! {
                    _ = stop.changed() => break,
                    r = rx.read(|p| if let Packet::Publish { payload, .. } = p { n += payload.len() as u64 }) => {
                        if r.is_err() { break; }
                    }
                }
                large_read.fetch_add(n, Ordering::Relaxed);
                // About 3 MiB/s: a phone on a poor link.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut large_writers: Vec<Writer> = writers.drain(..plan.large_senders).collect();
    let large_sent = Arc::new(AtomicU64::new(0));
    let mut large_tasks = Vec::new();
    for (i, mut w) in large_writers.drain(..).enumerate() {
        let topic = format!("hearth/v1/dev/{}/tele/large", ids[i]);
        let (mut stop, sent, plan) = (stop.clone(), large_sent.clone(), plan.clone());
        large_tasks.push(tokio::spawn(async move {
            let body = vec![b'L'; plan.large_payload];
            for _ in 0..plan.large_per_sender {
                encode_publish(&mut w.buf, &topic, 0, 0, &body);
                tokio::select! {
                    _ = stop.changed() => break,
                    r = w.flush() => if r.is_err() { break },
                }
                sent.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let stored = Arc::new(AtomicU64::new(0));
    let mut mail_tasks = Vec::new();
    for s in 0..plan.mailbox_senders {
        let d = &pool.parents[2 + plan.queue_sessions + s];
        let mut c = connect(b, d, true).await?;
        c.subscribe(&format!("hearth/v1/dev/{}/inbox", d.id()), 1)
            .await?;
        let outbox = format!("hearth/v1/dev/{}/outbox", d.id());
        let (mut stop, stored, plan) = (stop.clone(), stored.clone(), plan.clone());
        mail_tasks.push(tokio::spawn(async move {
            // Zero bytes in base64 are all 'A'.
            let data = "A".repeat(plan.picture_bytes / 3 * 4);
            for k in 0..plan.pictures_per_sender {
                let send = serde_json::json!({
                    "v": 1, "type": "send", "ref": format!("budget-{s}-{k}"),
                    "to": "Ada", "kind": "image", "content_type": "image/png", "data": data,
                });
                encode_publish(
                    &mut c.tx.buf,
                    &outbox,
                    1,
                    u16::try_from(k + 1).unwrap_or(1),
                    send.to_string().as_bytes(),
                );
            }
            if c.tx.flush().await.is_err() {
                return;
            }
            loop {
                let mut n = 0;
                let mut acks = Vec::new();
                tokio::select! {
                    _ = stop.changed() => break,
                    r = c.rx.read(|p| if let Packet::Publish { payload, qos, pid, .. } = p {
                        if qos > 0 {
                            acks.push(pid);
                        }
                        if payload.windows(8).any(|w| w == b"\"stored\"") {
                            n += 1;
                        }
                    }) => if r.is_err() { break },
                }
                for pid in acks {
                    mqtt::encode_puback(&mut c.tx.buf, pid);
                }
                stored.fetch_add(n, Ordering::Relaxed);
                if c.tx.flush().await.is_err() {
                    break;
                }
            }
        }));
    }
    let hold_started = Instant::now();
    let mut under_load_peak = 0u64;
    while hold_started.elapsed() < plan.hold {
        tokio::time::sleep(plan.settle.min(Duration::from_secs(1))).await;
        under_load_peak = under_load_peak.max(b.stat()?.rss_kib);
        // A hub far past its budget has failed already; the run stops
        // before it takes the machine's memory from the rest.
        if mib(under_load_peak) > GUARD_MIB {
            eprintln!("  budget: RSS past {GUARD_MIB} MiB: the load stops early");
            break;
        }
    }
    counts.push(fig("load held", "s", hold_started.elapsed().as_secs_f64()));
    marks.take(b, "RSS under load (the last sample)")?;
    marks.0.push(fig(
        "RSS under load (largest sample)",
        "MiB",
        mib(under_load_peak),
    ));
    let _ = stop_tx.send(true);
    let mut handshakes = 0u64;
    for t in background {
        t.abort();
        handshakes += t.await.unwrap_or(0);
    }
    for t in large_tasks
        .into_iter()
        .chain(mail_tasks)
        .chain(drains)
        .chain([slow_task])
    {
        t.abort();
        let _ = t.await;
    }
    drop(writers);
    counts.push(fig("handshakes held open", "opened", handshakes as f64));
    counts.push(fig(
        "large sent",
        "MiB",
        large_sent.load(Ordering::Relaxed) as f64 / 1048576.0,
    ));
    counts.push(fig(
        "large read by the slow parent",
        "MiB",
        large_read.load(Ordering::Relaxed) as f64 / 1048576.0,
    ));
    counts.push(fig(
        "pictures stored",
        "msgs",
        stored.load(Ordering::Relaxed) as f64,
    ));
    counts.push(fig(
        "received by the devices",
        "MiB",
        received.load(Ordering::Relaxed) as f64 / 1048576.0,
    ));
    counts.push(fig(
        "writes the hub refused",
        "conns",
        write_failures as f64,
    ));
    tokio::time::sleep(plan.settle).await;
    let end = b.stat()?;
    marks.take(b, "RSS after the load")?;
    // VmHWM is the kernel's peak, but it is folded from per-thread counters
    // lazily and can trail a VmRSS sample: the larger of the two counts.
    let sampled = marks.0.iter().map(|f| f.value).fold(0.0, f64::max);
    let peak = mib(end.hwm_kib).max(sampled);
    let mut figures = marks.0;
    figures.push(fig(PEAK, "MiB", peak));
    figures.push(fig(BUDGET, "MiB", BUDGET_MIB));
    figures.extend(counts.iter().cloned());
    for f in &counts {
        eprintln!("  budget: {}: {:.1} {}", f.name, f.value, f.unit);
    }
    eprintln!(
        "  budget: peak {peak:.1} MiB of {BUDGET_MIB} MiB in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Outcome {
        figures,
        gen_cpu: 0.0,
        count: plan.devices as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_within_the_budget_passes_and_one_above_fails() {
        assert!(verdict(375 * 1024, 375.0).is_ok());
        assert!(verdict(100 * 1024, 375.0).is_ok());
        let e = verdict(375 * 1024 + 1, 375.0).unwrap_err();
        assert!(e.contains("above the memory budget of 375 MiB"), "{e}");
    }

    #[test]
    fn the_check_reads_the_figures_and_fails_without_them() {
        let mut o = Outcome {
            figures: vec![fig(PEAK, "MiB", 400.0), fig(BUDGET, "MiB", BUDGET_MIB)],
            gen_cpu: 0.0,
            count: 1,
        };
        assert!(check(&o).is_err());
        o.figures[0].value = 200.0;
        assert!(check(&o).is_ok());
        o.figures.remove(0);
        assert!(check(&o).is_err());
    }

    #[test]
    fn the_plan_for_200_devices_drives_every_bound_to_its_limit() {
        let d = Defaults::default();
        let p = Plan::new(200, &d);
        // Retained: with the hub's own, its count and bytes to within 5 %,
        // each device within its own allowance.
        let entries = p.devices * p.retained_per_device;
        let bytes = entries * (p.retained_payload + RETAINED_OVERHEAD);
        assert!(entries + p.devices + HUB_RETAINED <= d.max_retained);
        assert!(entries * 100 >= d.max_retained * 95);
        assert!(bytes <= d.max_retained_bytes && bytes * 100 >= d.max_retained_bytes * 95);
        assert!(p.retained_per_device <= d.max_retained_per_device);
        assert!(
            p.retained_per_device * (p.retained_payload + RETAINED_OVERHEAD)
                <= d.max_retained_bytes_per_device
        );
        // Subscriptions: the session's whole allowance.
        assert_eq!(p.subscriptions_per_device, d.max_subscriptions_per_client);
        // Queues: small packets, past the hub's bytes; each session within
        // its subscription allowance.
        assert!(p.queued_payload < LARGE);
        assert!(p.devices * p.queued_per_device * p.queued_payload >= d.max_queued_bytes);
        assert!(p.devices.div_ceil(p.queue_sessions) <= d.max_subscriptions_per_client);
        // Large packets: within a packet, past the bound (counted twice).
        assert!(p.large_payload > LARGE && p.large_payload < d.max_payload);
        assert!(
            2 * p.large_senders * p.large_per_sender * p.large_payload >= d.max_large_packet_bytes
        );
        // Handshakes: the listener's whole allowance.
        assert!(p.handshake_sources * p.handshakes_per_source >= d.max_unauthenticated);
        assert!(p.handshake_sources <= 250);
        // Pictures: within the sender's day and a packet.
        assert!(p.picture_bytes <= d.max_image_bytes);
        assert!(p.picture_bytes / 3 * 4 + ENVELOPE <= d.max_payload);
        assert!(p.pictures_per_sender * p.picture_bytes <= d.max_sender_bytes_per_day);
        assert!(p.pictures_per_sender * p.picture_bytes > 16 * 1024 * 1024);
    }

    #[test]
    fn loads_can_be_left_out_by_name_and_a_typo_is_refused() {
        let p = Plan::smoke(10).without("mailbox, large").unwrap();
        assert_eq!((p.pictures_per_sender, p.large_senders), (0, 0));
        assert_eq!(p.retained_per_device, Plan::smoke(10).retained_per_device);
        assert!(Plan::smoke(10).without("mailbx").is_err());
        assert_eq!(Plan::smoke(10).without("").unwrap(), Plan::smoke(10));
    }

    #[test]
    fn the_smoke_plan_fits_a_small_pool() {
        let p = Plan::smoke(10);
        assert_eq!(p.devices, 10);
        assert!(p.large_payload > LARGE);
        assert!(p.parents() <= 8);
    }
}
