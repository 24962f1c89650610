//! The benchmark scenarios: each drives one running broker with the load
//! generator and returns the figures of that run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{self, Broker, Device, Kind, Pool};
use crate::budget;
use crate::mqtt::{self, encode_puback, encode_publish, Client, Packet};

/// Scale of a session.
#[derive(Debug, Clone)]
pub struct Params {
    /// Toy scale, no generator-CPU refusal.
    pub smoke: bool,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
    /// Payload bytes.
    pub payload: usize,
    /// QoS 1 publisher's in-flight window.
    pub qos1_window: usize,
    /// Fan-out subscribers.
    pub fanout_subs: usize,
    /// Fan-in devices.
    pub fanin_devices: usize,
    /// Fan-in messages per second per device.
    pub fanin_rate: u32,
    /// Paced run: messages per second.
    pub paced_rate: u32,
    /// Idle connections.
    pub idle: usize,
    /// Handshakes in flight while opening idle connections.
    pub idle_concurrency: usize,
    /// Outstanding mailbox sends.
    pub mailbox_window: usize,
    /// Home scenario: devices sending telemetry once a second.
    pub home_slow: usize,
    /// Home scenario: devices sending telemetry 20 times a second.
    pub home_fast: usize,
    /// Budget run: devices connected.
    pub budget_devices: usize,
}

impl Params {
    /// Toy scale for `--smoke` and the tests: about a second per run.
    pub fn smoke() -> Params {
        Params {
            smoke: true,
            warmup: Duration::from_millis(300),
            window: Duration::from_millis(800),
            payload: 256,
            qos1_window: 100,
            fanout_subs: 5,
            fanin_devices: 5,
            fanin_rate: 50,
            paced_rate: 2000,
            idle: 20,
            idle_concurrency: 8,
            mailbox_window: 8,
            home_slow: 10,
            home_fast: 2,
            budget_devices: 10,
        }
    }
}

/// Smoke mode: messages flowed and every figure is a number (no timing).
pub fn check_smoke(o: &Outcome) -> Result<()> {
    if o.count == 0 {
        bail!("nothing flowed");
    }
    if let Some(f) = o.figures.iter().find(|f| !f.value.is_finite()) {
        bail!("figure {} is not a number", f.name);
    }
    Ok(())
}

/// One run: a fresh broker process, ready, the scenario, stopped.
pub async fn run_one(
    env: &broker::Env,
    pool: &Pool,
    s: Scenario,
    kind: Kind,
    p: &Params,
) -> Result<Outcome> {
    let mut b = env.start_with(kind, s.limits())?;
    let result = async {
        let ready = broker::wait_ready(&mut b, &pool.parents[0], Duration::from_secs(20)).await?;
        run(s, &b, pool, p, ready).await
    }
    .await;
    b.stop();
    result
}

/// The scenarios, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One publisher, one subscriber, QoS 0 flood.
    Qos0,
    /// Same at QoS 1.
    Qos1,
    /// One publisher, many subscribers.
    FanOut,
    /// Many paced devices, one wildcard subscriber.
    FanIn,
    /// One publisher at a fixed rate.
    Paced,
    /// Many idle mutual-TLS connections.
    Idle,
    /// Spawn to first CONNACK; idle RSS.
    Startup,
    /// Hearth's durable mailbox (no Mosquitto equivalent).
    Mailbox,
    /// A home: many devices, a little telemetry each, a parent's phone
    /// watching all of it, a command and a family message every second.
    Home,
    /// hearthd's memory budget at its default limits: every bound driven
    /// at once with 200 devices connected (Hearth only).
    Budget,
}

impl Scenario {
    /// All, in order.
    pub const ALL: [Scenario; 10] = [
        Scenario::Qos0,
        Scenario::Qos1,
        Scenario::FanOut,
        Scenario::FanIn,
        Scenario::Paced,
        Scenario::Idle,
        Scenario::Startup,
        Scenario::Mailbox,
        Scenario::Home,
        Scenario::Budget,
    ];
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Qos0 => "qos0",
            Scenario::Qos1 => "qos1",
            Scenario::FanOut => "fanout",
            Scenario::FanIn => "fanin",
            Scenario::Paced => "paced",
            Scenario::Idle => "idle",
            Scenario::Startup => "startup",
            Scenario::Mailbox => "mailbox",
            Scenario::Home => "home",
            Scenario::Budget => "budget",
        }
    }
    /// Whether Mosquitto can run it (it has no mailbox, and none of the
    /// bounds the budget run drives).
    pub fn both(self) -> bool {
        !matches!(self, Scenario::Mailbox | Scenario::Budget)
    }
    /// The limits hearthd runs it with: the budget is stated for the
    /// defaults; the others need more connections from one address.
    pub fn limits(self) -> broker::Limits {
        match self {
            Scenario::Budget => broker::Limits::Defaults,
            _ => broker::Limits::Bench,
        }
    }
}

/// One measured number of one run.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What.
    pub name: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Value.
    pub value: f64,
    /// Higher is better.
    pub higher_better: bool,
    /// A rate the generator could cap (withheld when it was saturated).
    pub rate: bool,
}

fn fig(
    name: &'static str,
    unit: &'static str,
    value: f64,
    higher_better: bool,
    rate: bool,
) -> Figure {
    Figure {
        name,
        unit,
        value,
        higher_better,
        rate,
    }
}

/// Figures of one run plus the generator's own CPU share.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Figures.
    pub figures: Vec<Figure>,
    /// Generator CPU over the window, fraction of one core.
    pub gen_cpu: f64,
    /// Messages (or connections) counted in the window: proof of flow.
    pub count: u64,
}

/// Nanoseconds since the process's first call: the payload timestamp.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn payload(size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    p[..8].copy_from_slice(&now_ns().to_be_bytes());
    p
}

fn stamp(p: &mut [u8]) {
    p[..8].copy_from_slice(&now_ns().to_be_bytes());
}

fn latency_us(payload: &[u8]) -> Option<u32> {
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    Some((now_ns().saturating_sub(sent) / 1000) as u32)
}

/// A measurement point.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    broker: broker::ProcStat,
    gen_us: u64,
    count: u64,
}

fn mark(b: &Broker, counter: &AtomicU64) -> Result<Mark> {
    Ok(Mark {
        at: Instant::now(),
        broker: b.stat()?,
        gen_us: broker::proc_stat("self")?.cpu_us,
        count: counter.load(Ordering::Relaxed),
    })
}

/// Window deltas: (seconds, messages, broker CPU µs, generator share).
fn delta(a: &Mark, b: &Mark) -> (f64, u64, f64, f64) {
    let secs = (b.at - a.at).as_secs_f64();
    (
        secs,
        b.count - a.count,
        b.broker.cpu_us.saturating_sub(a.broker.cpu_us) as f64,
        b.gen_us.saturating_sub(a.gen_us) as f64 / 1e6 / secs,
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] as f64
}

async fn conn(b: &Broker, d: &Device) -> Result<Client> {
    mqtt::connect(b.addr, d.tls.clone(), d.id(), 300, Duration::from_secs(10)).await
}

/// Where a subscriber puts latencies (µs), and whether to record now.
type Recorder = (Arc<Mutex<Vec<u32>>>, watch::Receiver<bool>);

/// A subscriber task: counts publishes into `counter`, PUBACKs QoS 1, and
/// records latencies while `record` is true.
fn spawn_subscriber(
    mut c: Client,
    counter: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    record: Option<Recorder>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut lat = Vec::new();
        loop {
            let mut n = 0;
            let recording = record.as_ref().is_some_and(|(_, r)| *r.borrow());
            tokio::select! {
                _ = stop.changed() => break,
                r = c.rx.read(|p| {
                    if let Packet::Publish { qos, pid, payload, .. } = p {
                        n += 1;
                        if qos > 0 {
                            encode_puback(&mut c.tx.buf, pid);
                        }
                        if recording {
                            if let Some(l) = latency_us(payload) {
                                lat.push(l);
                            }
                        }
                    }
                }) => r?,
            }
            counter.fetch_add(n, Ordering::Relaxed);
            if !c.tx.buf.is_empty() {
                c.tx.flush().await?;
            }
            if let Some((sink, _)) = &record {
                if !lat.is_empty() {
                    sink.lock().expect("latency sink").append(&mut lat);
                }
            }
        }
        Ok(())
    })
}

/// Publishes QoS 0 as fast as TCP back-pressure allows, in batches.
fn spawn_flood0(
    mut c: Client,
    topic: String,
    size: usize,
    sent: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut p = payload(size);
        loop {
            for _ in 0..32 {
                stamp(&mut p);
                encode_publish(&mut c.tx.buf, &topic, 0, 0, &p);
            }
            tokio::select! {
                _ = stop.changed() => break,
                r = c.tx.flush() => r?,
            }
            sent.fetch_add(32, Ordering::Relaxed);
        }
        Ok(())
    })
}

/// Publishes QoS 1 keeping at most `window` unacknowledged.
fn spawn_flood1(
    mut c: Client,
    topic: String,
    size: usize,
    window: usize,
    sent: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut p = payload(size);
        let mut inflight = 0usize;
        let mut pid: u16 = 0;
        loop {
            while inflight < window {
                pid = pid.checked_add(1).unwrap_or(1);
                stamp(&mut p);
                encode_publish(&mut c.tx.buf, &topic, 1, pid, &p);
                inflight += 1;
            }
            c.tx.flush().await?;
            let mut acked = 0;
            tokio::select! {
                _ = stop.changed() => break,
                r = c.rx.read(|p| if let Packet::Puback { .. } = p { acked += 1 }) => r?,
            }
            inflight = inflight.saturating_sub(acked);
            sent.fetch_add(acked as u64, Ordering::Relaxed);
        }
        Ok(())
    })
}

/// Publishes QoS 0 at `rate` msg/s (1 ms ticks, bounded catch-up).
fn spawn_paced(
    mut c: Client,
    topic: String,
    size: usize,
    rate: u32,
    phase: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut p = payload(size);
        let tick = if rate >= 1000 {
            Duration::from_millis(1)
        } else {
            Duration::from_secs_f64(1.0 / rate as f64)
        };
        tokio::time::sleep(phase).await;
        let start = Instant::now();
        let mut sent: u64 = 0;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = interval.tick() => {}
            }
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
            let n = due.saturating_sub(sent).min(1000);
            for _ in 0..n {
                stamp(&mut p);
                encode_publish(&mut c.tx.buf, &topic, 0, 0, &p);
            }
            sent += n;
            c.tx.flush().await?;
        }
        Ok(())
    })
}

/// Stops the tasks and surfaces the first error.
async fn finish(stop: watch::Sender<bool>, tasks: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    let _ = stop.send(true);
    let mut first = Ok(());
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if first.is_ok() => first = Err(e),
            Ok(Err(e)) if first.is_ok() => first = Err(e.into()),
            Err(_) if first.is_ok() => first = Err(anyhow::anyhow!("a task did not stop in 5 s")),
            _ => {}
        }
    }
    first
}

/// Runs one scenario against a ready broker.
pub async fn run(
    s: Scenario,
    b: &Broker,
    pool: &Pool,
    p: &Params,
    ready: Duration,
) -> Result<Outcome> {
    match s {
        Scenario::Qos0 | Scenario::Qos1 => {
            flood(b, pool, p, if s == Scenario::Qos0 { 0 } else { 1 }).await
        }
        Scenario::FanOut => fanout(b, pool, p).await,
        Scenario::FanIn => fanin(b, pool, p).await,
        Scenario::Paced => paced(b, pool, p).await,
        Scenario::Idle => idle(b, pool, p).await,
        Scenario::Startup => startup(b, p, ready).await,
        Scenario::Mailbox => mailbox(b, pool, p).await,
        Scenario::Home => home(b, pool, p).await,
        Scenario::Budget => {
            if b.kind != Kind::Hearth {
                bail!("the budget run is Hearth's only");
            }
            let plan = if p.smoke {
                budget::Plan::smoke(p.budget_devices)
            } else {
                budget::Plan::new(p.budget_devices, &budget::Defaults::default())
            };
            let skip = std::env::var("HEARTH_BENCH_BUDGET_SKIP").unwrap_or_default();
            let result = budget::run(b, pool, &plan.without(&skip)?).await;
            // A hub that stops itself (its router watchdog) closes every
            // connection first and exits within its drain time: a failed
            // run waits a little to tell that from a bench error.
            let mut exited = false;
            if result.is_err() {
                for _ in 0..50 {
                    if !broker::alive(&b.pid()) {
                        exited = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            result.map_err(|e| {
                    if !exited {
                        e
                    } else {
                        e.context(format!(
                            "hearthd exited during the budget run (its log: {}, kept with HEARTH_BENCH_KEEP=1)",
                            b.dir.with_extension("log").display()
                        ))
                    }
                })
        }
    }
}

/// Warm-up, then the window; returns the marks around the window.
async fn measure(
    b: &Broker,
    p: &Params,
    counter: &AtomicU64,
    rec: Option<&watch::Sender<bool>>,
) -> Result<(Mark, Mark)> {
    tokio::time::sleep(p.warmup).await;
    if let Some(r) = rec {
        let _ = r.send(true);
    }
    let m0 = mark(b, counter)?;
    tokio::time::sleep(p.window).await;
    let m1 = mark(b, counter)?;
    if let Some(r) = rec {
        let _ = r.send(false);
    }
    Ok((m0, m1))
}

async fn flood(b: &Broker, pool: &Pool, p: &Params, qos: u8) -> Result<Outcome> {
    let publisher = &pool.children[0];
    let mut sub = conn(b, &pool.parents[1]).await?;
    sub.subscribe(&publisher.tele(), qos).await?;
    let pc = conn(b, publisher).await?;
    let (stop_tx, stop) = watch::channel(false);
    let got = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![spawn_subscriber(sub, got.clone(), stop.clone(), None)];
    tasks.push(if qos == 0 {
        spawn_flood0(pc, publisher.tele(), p.payload, sent.clone(), stop.clone())
    } else {
        spawn_flood1(
            pc,
            publisher.tele(),
            p.payload,
            p.qos1_window,
            sent.clone(),
            stop.clone(),
        )
    });
    tokio::time::sleep(p.warmup).await;
    let s0 = sent.load(Ordering::Relaxed);
    let (m0, m1) = measure(
        b,
        &Params {
            warmup: Duration::ZERO,
            ..p.clone()
        },
        &got,
        None,
    )
    .await?;
    let s1 = sent.load(Ordering::Relaxed);
    finish(stop_tx, tasks).await?;
    let (secs, n, cpu, gen) = delta(&m0, &m1);
    Ok(Outcome {
        figures: vec![
            fig("delivered", "msg/s", n as f64 / secs, true, true),
            fig("published", "msg/s", (s1 - s0) as f64 / secs, true, true),
            fig("broker CPU", "µs/msg", cpu / n.max(1) as f64, false, false),
            fig(
                "broker RSS end",
                "MiB",
                mib(m1.broker.rss_kib),
                false,
                false,
            ),
            fig(
                "broker RSS peak",
                "MiB",
                mib(m1.broker.hwm_kib),
                false,
                false,
            ),
        ],
        gen_cpu: gen,
        count: n,
    })
}

async fn fanout(b: &Broker, pool: &Pool, p: &Params) -> Result<Outcome> {
    let publisher = &pool.children[0];
    let (stop_tx, stop) = watch::channel(false);
    let got = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for d in pool.parents.iter().skip(1).take(p.fanout_subs) {
        let mut c = conn(b, d).await?;
        c.subscribe(&publisher.tele(), 0).await?;
        tasks.push(spawn_subscriber(c, got.clone(), stop.clone(), None));
    }
    let pc = conn(b, publisher).await?;
    let sent = Arc::new(AtomicU64::new(0));
    tasks.push(spawn_flood0(
        pc,
        publisher.tele(),
        p.payload,
        sent,
        stop.clone(),
    ));
    let (m0, m1) = measure(b, p, &got, None).await?;
    finish(stop_tx, tasks).await?;
    let (secs, n, cpu, gen) = delta(&m0, &m1);
    Ok(Outcome {
        figures: vec![
            fig("deliveries", "msg/s", n as f64 / secs, true, true),
            fig(
                "broker CPU",
                "µs/delivery",
                cpu / n.max(1) as f64,
                false,
                false,
            ),
            fig(
                "broker RSS peak",
                "MiB",
                mib(m1.broker.hwm_kib),
                false,
                false,
            ),
        ],
        gen_cpu: gen,
        count: n,
    })
}

fn latency_figures(lat: &Mutex<Vec<u32>>) -> Vec<Figure> {
    let mut l = std::mem::take(&mut *lat.lock().expect("latencies"));
    l.sort_unstable();
    vec![
        fig("latency p50", "µs", percentile(&l, 0.5), false, false),
        fig("latency p99", "µs", percentile(&l, 0.99), false, false),
        fig("latency p99.9", "µs", percentile(&l, 0.999), false, false),
    ]
}

/// The end of a latency scenario: the measured window, then latency
/// percentiles, messages delivered and broker CPU per message.
async fn latency_outcome(
    b: &Broker,
    p: &Params,
    got: &AtomicU64,
    lat: &Mutex<Vec<u32>>,
    rec_tx: watch::Sender<bool>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
) -> Result<Outcome> {
    let (m0, m1) = measure(b, p, got, Some(&rec_tx)).await?;
    finish(stop_tx, tasks).await?;
    let (secs, n, cpu, gen) = delta(&m0, &m1);
    let mut figures = latency_figures(lat);
    figures.push(fig("delivered", "msg/s", n as f64 / secs, true, true));
    figures.push(fig(
        "broker CPU",
        "µs/msg",
        cpu / n.max(1) as f64,
        false,
        false,
    ));
    Ok(Outcome {
        figures,
        gen_cpu: gen,
        count: n,
    })
}

async fn fanin(b: &Broker, pool: &Pool, p: &Params) -> Result<Outcome> {
    let (stop_tx, stop) = watch::channel(false);
    let (rec_tx, rec) = watch::channel(false);
    let got = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut sub = conn(b, &pool.parents[1]).await?;
    sub.subscribe("hearth/v1/dev/+/tele/#", 0).await?;
    let mut tasks = vec![spawn_subscriber(
        sub,
        got.clone(),
        stop.clone(),
        Some((lat.clone(), rec)),
    )];
    let period = Duration::from_secs_f64(1.0 / p.fanin_rate as f64);
    let n = p.fanin_devices.min(pool.children.len());
    for (i, d) in pool.children.iter().take(n).enumerate() {
        let c = conn(b, d).await?;
        let phase = period.mul_f64(i as f64 / n as f64);
        tasks.push(spawn_paced(
            c,
            d.tele(),
            p.payload,
            p.fanin_rate,
            phase,
            stop.clone(),
        ));
    }
    latency_outcome(b, p, &got, &lat, rec_tx, stop_tx, tasks).await
}

async fn paced(b: &Broker, pool: &Pool, p: &Params) -> Result<Outcome> {
    let publisher = &pool.children[0];
    let (stop_tx, stop) = watch::channel(false);
    let (rec_tx, rec) = watch::channel(false);
    let got = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut sub = conn(b, &pool.parents[1]).await?;
    sub.subscribe(&publisher.tele(), 0).await?;
    let mut tasks = vec![spawn_subscriber(
        sub,
        got.clone(),
        stop.clone(),
        Some((lat.clone(), rec)),
    )];
    let pc = conn(b, publisher).await?;
    tasks.push(spawn_paced(
        pc,
        publisher.tele(),
        p.payload,
        p.paced_rate,
        Duration::ZERO,
        stop.clone(),
    ));
    latency_outcome(b, p, &got, &lat, rec_tx, stop_tx, tasks).await
}

async fn idle(b: &Broker, pool: &Pool, p: &Params) -> Result<Outcome> {
    let n = p.idle.min(pool.children.len());
    tokio::time::sleep(p.warmup.min(Duration::from_millis(500))).await;
    let done = AtomicU64::new(0);
    let m0 = mark(b, &done)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(p.idle_concurrency));
    let mut handles = Vec::with_capacity(n);
    for d in pool.children.iter().take(n) {
        let sem = sem.clone();
        let (addr, tls, id) = (b.addr, d.tls.clone(), d.id().to_owned());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            mqtt::connect(addr, tls, &id, 600, Duration::from_secs(30)).await
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for h in handles {
        clients.push(h.await?.context("idle connection")?);
    }
    done.store(n as u64, Ordering::Relaxed);
    let m1 = mark(b, &done)?;
    tokio::time::sleep(if p.smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    })
    .await;
    let settled = b.stat()?;
    let (secs, n, cpu, gen) = delta(&m0, &m1);
    let per_conn = settled.rss_kib.saturating_sub(m0.broker.rss_kib) as f64 / n.max(1) as f64;
    drop(clients);
    Ok(Outcome {
        figures: vec![
            fig("handshakes", "conn/s", n as f64 / secs, true, true),
            fig(
                "broker CPU",
                "ms/handshake",
                cpu / 1000.0 / n.max(1) as f64,
                false,
                false,
            ),
            fig("RSS per connection", "KiB", per_conn, false, false),
            fig(
                "broker RSS with all open",
                "MiB",
                mib(settled.rss_kib),
                false,
                false,
            ),
        ],
        gen_cpu: gen,
        count: n,
    })
}

async fn startup(b: &Broker, p: &Params, ready: Duration) -> Result<Outcome> {
    tokio::time::sleep(if p.smoke {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(500)
    })
    .await;
    let s = b.stat()?;
    Ok(Outcome {
        figures: vec![
            fig(
                "start to ready",
                "ms",
                ready.as_secs_f64() * 1000.0,
                false,
                false,
            ),
            fig("idle RSS", "MiB", mib(s.rss_kib), false, false),
        ],
        gen_cpu: 0.0,
        count: 1,
    })
}

async fn mailbox(b: &Broker, pool: &Pool, p: &Params) -> Result<Outcome> {
    if b.kind != Kind::Hearth {
        bail!("the mailbox scenario is Hearth's only");
    }
    let sender = &pool.parents[1];
    let mut c = conn(b, sender).await?;
    c.subscribe(&format!("hearth/v1/dev/{}/inbox", sender.id()), 1)
        .await?;
    let outbox = format!("hearth/v1/dev/{}/outbox", sender.id());
    let stored = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop) = watch::channel(false);
    let counter = stored.clone();
    let window = p.mailbox_window;
    let task: JoinHandle<Result<()>> = tokio::spawn(async move {
        let mut outstanding = 0usize;
        let mut next_ref: u64 = 0;
        let mut pid: u16 = 0;
        let body = "b".repeat(200);
        loop {
            while outstanding < window {
                next_ref += 1;
                pid = pid.checked_add(1).unwrap_or(1);
                let send = serde_json::json!({
                    "v": 1, "type": "send", "ref": format!("bench-{next_ref}"),
                    "to": "Bo", "kind": "text", "body": body,
                });
                encode_publish(&mut c.tx.buf, &outbox, 1, pid, send.to_string().as_bytes());
                outstanding += 1;
            }
            c.tx.flush().await?;
            let mut done = 0;
            let mut refused = None;
            tokio::select! {
                _ = stop.changed() => break,
                r = c.rx.read(|pk| if let Packet::Publish { qos, pid, payload, .. } = pk {
                    if qos > 0 {
                        encode_puback(&mut c.tx.buf, pid);
                    }
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                        if v["type"] == "receipt" {
                            match v["status"].as_str() {
                                Some("stored") => done += 1,
                                Some("refused") => refused = Some(v.to_string()),
                                _ => {}
                            }
                        }
                    }
                }) => r?,
            }
            if let Some(r) = refused {
                bail!("the hub refused a send: {r}");
            }
            outstanding = outstanding.saturating_sub(done);
            counter.fetch_add(done as u64, Ordering::Relaxed);
        }
        Ok(())
    });
    let (m0, m1) = measure(b, p, &stored, None).await?;
    finish(stop_tx, vec![task]).await?;
    let (secs, n, cpu, gen) = delta(&m0, &m1);
    Ok(Outcome {
        figures: vec![
            fig("stored receipts", "msg/s", n as f64 / secs, true, true),
            fig("broker CPU", "µs/msg", cpu / n.max(1) as f64, false, false),
        ],
        gen_cpu: gen,
        count: n,
    })
}

/// The home workload (issue 20): `home_slow` devices at 1 msg/s and
/// `home_fast` at 20 msg/s publish telemetry (QoS 0) to a parent's phone
/// subscribed to `hearth/v1/dev/+/tele/#`; another parent device sends one
/// command (QoS 0) and one family message (QoS 1) a second to a child's
/// device. On Hearth the message is a mailbox `send`, stored with a full
/// sync and delivered to the child's inbox, which acknowledges it; on
/// Mosquitto, which has no mailbox, the same envelope is published to the
/// inbox directly. Latency covers every delivery: telemetry, commands and
/// messages.
async fn home(b: &Broker, pool: &Pool, p: &Params) -> Result<Outcome> {
    let needed = 1 + p.home_slow + p.home_fast;
    if pool.children.len() < needed || pool.parents.len() < 3 {
        bail!("the home scenario needs {needed} child devices and 3 parent devices");
    }
    let (stop_tx, stop) = watch::channel(false);
    let (rec_tx, rec) = watch::channel(false);
    let got = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut phone = conn(b, &pool.parents[1]).await?;
    phone.subscribe("hearth/v1/dev/+/tele/#", 0).await?;
    let mut tasks = vec![spawn_subscriber(
        phone,
        got.clone(),
        stop.clone(),
        Some((lat.clone(), rec.clone())),
    )];
    // The child's device that gets the commands and the messages.
    let toy = &pool.children[0];
    let mut toy_conn = conn(b, toy).await?;
    toy_conn
        .subscribe(&format!("hearth/v1/dev/{}/cmd/#", toy.id()), 0)
        .await?;
    toy_conn
        .subscribe(&format!("hearth/v1/dev/{}/inbox", toy.id()), 1)
        .await?;
    tasks.push(spawn_home_toy(
        toy_conn,
        toy.id().to_owned(),
        got.clone(),
        stop.clone(),
        (lat.clone(), rec),
    ));
    let publishers = pool.children[1..needed].iter();
    for (i, d) in publishers.enumerate() {
        let rate = if i < p.home_slow { 1 } else { 20 };
        let period = Duration::from_secs_f64(1.0 / f64::from(rate));
        let phase = period.mul_f64(i as f64 / needed as f64);
        let c = conn(b, d).await?;
        tasks.push(spawn_paced(
            c,
            d.tele(),
            p.payload,
            rate,
            phase,
            stop.clone(),
        ));
    }
    let commander = conn(b, &pool.parents[0]).await?;
    tasks.push(spawn_paced(
        commander,
        format!("hearth/v1/dev/{}/cmd/led", toy.id()),
        p.payload,
        1,
        Duration::from_millis(500),
        stop.clone(),
    ));
    let sender = conn(b, &pool.parents[2]).await?;
    tasks.push(spawn_home_messages(
        sender,
        pool.parents[2].id().to_owned(),
        toy.id().to_owned(),
        b.kind,
        stop.clone(),
    ));
    let (m0, m1) = measure(b, p, &got, Some(&rec_tx)).await?;
    let rss = b.stat()?.rss_kib;
    finish(stop_tx, tasks).await?;
    let (secs, n, cpu, gen) = delta(&m0, &m1);
    let mut figures = latency_figures(&lat);
    figures.push(fig("delivered", "msg/s", n as f64 / secs, true, true));
    figures.push(fig(
        "broker CPU",
        "µs/msg",
        cpu / n.max(1) as f64,
        false,
        false,
    ));
    figures.push(fig("broker RSS", "MiB", mib(rss), false, false));
    Ok(Outcome {
        figures,
        gen_cpu: gen,
        count: n,
    })
}

/// The message body carries its send time, as the telemetry payload does.
fn stamped_body() -> String {
    format!("t={}", now_ns())
}

fn body_latency_us(body: &str) -> Option<u32> {
    let sent: u64 = body.strip_prefix("t=")?.parse().ok()?;
    Some((now_ns().saturating_sub(sent) / 1000) as u32)
}

/// The child's device: counts commands and messages, records their
/// latency, acknowledges QoS 1 and every mailbox delivery.
fn spawn_home_toy(
    mut c: Client,
    id: String,
    counter: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    (sink, record): Recorder,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let outbox = format!("hearth/v1/dev/{id}/outbox");
        let mut pid: u16 = 0;
        let mut lat = Vec::new();
        loop {
            let mut n = 0;
            let mut acks = Vec::new();
            let recording = *record.borrow();
            tokio::select! {
                _ = stop.changed() => break,
                r = c.rx.read(|pk| {
                    let Packet::Publish { qos, pid: id, payload, topic } = pk else {
                        return;
                    };
                    n += 1;
                    if qos > 0 {
                        encode_puback(&mut c.tx.buf, id);
                    }
                    let latency = if topic.ends_with(b"/inbox") {
                        let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
                        if let Some(message) = v["id"].as_str() {
                            acks.push(message.to_owned());
                        }
                        v["body"].as_str().and_then(body_latency_us)
                    } else {
                        latency_us(payload)
                    };
                    if let (true, Some(l)) = (recording, latency) {
                        lat.push(l);
                    }
                }) => r?,
            }
            for message in acks {
                pid = pid.checked_add(1).unwrap_or(1);
                let ack = serde_json::json!({"v": 1, "type": "ack", "id": message});
                encode_publish(&mut c.tx.buf, &outbox, 1, pid, ack.to_string().as_bytes());
            }
            counter.fetch_add(n, Ordering::Relaxed);
            if !c.tx.buf.is_empty() {
                c.tx.flush().await?;
            }
            if !lat.is_empty() {
                sink.lock().expect("latency sink").append(&mut lat);
            }
        }
        Ok(())
    })
}

/// A parent's device sending one family message a second to `to`: a
/// mailbox `send` on Hearth, the delivery envelope straight to the inbox
/// on Mosquitto.
fn spawn_home_messages(
    mut c: Client,
    me: String,
    to: String,
    kind: Kind,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
                // Drain PUBACKs and receipts.
                r = c.rx.read(|_| {}) => { r?; continue; }
            }
            n += 1;
            let pid = u16::try_from(n % 60_000 + 1).unwrap_or(1);
            let (topic, envelope) = match kind {
                Kind::Hearth => (
                    format!("hearth/v1/dev/{me}/outbox"),
                    serde_json::json!({"v": 1, "type": "send", "ref": format!("home-{n}"),
                        "to": to, "kind": "text", "body": stamped_body()}),
                ),
                _ => (
                    format!("hearth/v1/dev/{to}/inbox"),
                    serde_json::json!({"v": 1, "type": "delivery", "id": format!("m{n}"),
                        "kind": "text", "body": stamped_body()}),
                ),
            };
            encode_publish(
                &mut c.tx.buf,
                &topic,
                1,
                pid,
                envelope.to_string().as_bytes(),
            );
            c.tx.flush().await?;
        }
        Ok(())
    })
}
