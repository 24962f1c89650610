//! The soak (issue 13): many devices publishing QoS 1 at a steady rate for
//! minutes, a parent subscribed to all telemetry, some devices reconnecting
//! in churn; hearthd's RSS sampled at intervals and every acknowledged
//! message accounted for at the parent. Bounded in count and time, loopback
//! only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::broker::{proc_stat, Broker, Device};
use crate::mqtt::{self, encode_puback, encode_publish, Client, Packet};

/// The parent's subscription: every device's telemetry.
pub const TELEMETRY_FILTER: &str = "hearth/v1/dev/+/tele/#";

/// How long a device waits for its PUBACK before it counts the message as
/// unacknowledged and reconnects (as a real QoS 1 client would).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the parent may take, after the last publish, to receive every
/// acknowledged message before the rest count as lost.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// Handshakes in flight while the devices first connect.
const CONNECT_CONCURRENCY: usize = 32;

/// What the soak does.
#[derive(Debug, Clone, Serialize)]
pub struct SoakParams {
    /// Publishing devices.
    pub devices: usize,
    /// Messages per second per device.
    pub rate: f64,
    /// How long the devices publish.
    pub duration: Duration,
    /// Devices (the first ones) that disconnect and reconnect in churn.
    pub churn: usize,
    /// How often a churning device reconnects.
    pub churn_every: Duration,
    /// RSS before this is warm-up; flatness is judged after it.
    pub warmup: Duration,
    /// RSS sampling interval.
    pub sample_every: Duration,
    /// Payload bytes (at least the 8 that identify a message).
    pub payload: usize,
    /// Allowed RSS growth after warm-up, as a fraction (0.10 = 10 %).
    pub rss_tolerance: f64,
}

/// One RSS sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the devices started publishing.
    pub at_s: f64,
    /// hearthd's resident set, KiB.
    pub rss_kib: u64,
    /// Acknowledged publishes so far.
    pub acked: u64,
    /// Distinct messages the parent has received so far.
    pub delivered: u64,
    /// Reconnections so far.
    pub reconnects: u64,
}

/// The soak's result.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// What ran.
    pub params: SoakParams,
    /// hearthd's open-file limit and the generator's, as read from /proc.
    pub nofile: (u64, u64),
    /// RSS over time.
    pub samples: Vec<Sample>,
    /// Publishes sent.
    pub published: u64,
    /// Publishes the hub acknowledged (PUBACK).
    pub acked: u64,
    /// Publishes sent that were not acknowledged within the timeout (the
    /// device reconnected; not counted as lost: no promise was made).
    pub unacked: u64,
    /// Distinct messages the parent received.
    pub delivered: u64,
    /// Messages the parent received more than once (allowed by QoS 1).
    pub duplicates: u64,
    /// Acknowledged but never delivered to the parent.
    pub lost: u64,
    /// Reconnections done (churn and after ack timeouts).
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// hearthd's largest RSS in the first window after warm-up, KiB.
    pub baseline_rss_kib: u64,
    /// hearthd's largest RSS in the last window of the run, KiB.
    pub final_rss_kib: u64,
    /// Largest RSS after warm-up, KiB.
    pub max_rss_after_warmup_kib: u64,
    /// How hearthd ended, if it did during the soak.
    pub crashed: Option<String>,
    /// Why the soak failed (empty: passed).
    pub failures: Vec<String>,
}

impl SoakReport {
    /// Zero lost, zero crashes, RSS flat after warm-up, and the load ran.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Counters the device tasks and the parent share with the sampler.
#[derive(Debug, Default)]
struct Progress {
    published: AtomicU64,
    acked: AtomicU64,
    unacked: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
}

/// Message numbers seen, one bit each.
#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `n`; false if it was set already.
    fn insert(&mut self, n: u32) -> bool {
        let (word, bit) = (n as usize / 64, n % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }

    /// How many bits of `self` are not in `other`.
    fn missing_from(&self, other: &Bits) -> u64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, w)| (w & !other.0.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

/// The open-file soft limit of a process, from /proc/PID/limits.
pub fn nofile_limit(pid: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files line in /proc limits")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("malformed open-files line")?;
    Ok(if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse()?
    })
}

/// File descriptors hearthd holds per device: the client's TLS socket at
/// the edge, the edge's loopback connection to the broker, and the
/// broker's end of it.
const FDS_PER_DEVICE: u64 = 3;

/// Runs the soak against a ready hearthd. `parent` subscribes to every
/// device's telemetry; `devices` publish.
pub async fn run(
    broker: &mut Broker,
    parent: &Device,
    devices: &[Device],
    p: &SoakParams,
) -> Result<SoakReport> {
    if p.payload < 8 {
        bail!("the payload must hold at least 8 bytes (device and message number)");
    }
    let n = p.devices.min(devices.len());
    let hub_nofile = nofile_limit(&broker.pid())?;
    let own_nofile = nofile_limit("self")?;
    let hub_needs = FDS_PER_DEVICE * (n as u64 + 2) + 256;
    if hub_nofile < hub_needs {
        bail!("hearthd may open {hub_nofile} files; {n} devices need about {hub_needs} (raise `ulimit -n`)");
    }
    if own_nofile < n as u64 + 256 {
        bail!(
            "this generator may open {own_nofile} files; {n} devices need more (raise `ulimit -n`)"
        );
    }
    eprintln!("open-file limits: hearthd {hub_nofile}, generator {own_nofile}");

    let progress = Arc::new(Progress::default());
    let (stop_tx, stop) = watch::channel(false);

    // The parent first, so nothing is published before it listens.
    let mut sub = mqtt::connect(
        broker.addr,
        parent.tls.clone(),
        parent.id(),
        60,
        Duration::from_secs(10),
    )
    .await
    .context("the parent's connection")?;
    sub.subscribe(TELEMETRY_FILTER, 1).await?;
    let parent_task = spawn_parent(sub, n, progress.clone(), stop.clone());

    // Every device connected before the clock starts.
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = Vec::with_capacity(n);
    for d in devices.iter().take(n) {
        let (d, addr, gate) = (d.clone(), broker.addr, gate.clone());
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            connect(addr, &d).await
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for (i, c) in connecting.into_iter().enumerate() {
        clients.push(
            c.await?
                .with_context(|| format!("device {i}'s first connection"))?,
        );
    }
    eprintln!("{n} devices and the parent connected; publishing");

    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / p.rate);
    let churn_ticks = ((p.churn_every.as_secs_f64() * p.rate).round() as u64).max(1);
    let mut tasks: Vec<JoinHandle<Bits>> = Vec::with_capacity(n);
    for (i, client) in clients.into_iter().enumerate() {
        let job = DeviceJob {
            index: i as u32,
            device: devices[i].clone(),
            addr: broker.addr,
            topic: devices[i].tele(),
            payload: p.payload,
            // Spread over one period, so the hub sees a steady stream.
            first: start + period.mul_f64(i as f64 / n as f64),
            period,
            end: start + p.duration,
            // Churning devices' first reconnections spread over one cycle.
            churn: (i < p.churn).then_some((churn_ticks, i as u64 % churn_ticks)),
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(job.run(client)));
    }

    // Sample until the publishing ends or hearthd does.
    let mut samples = Vec::new();
    let mut crashed = None;
    let mut next = start + p.sample_every;
    loop {
        let deadline = next.min(start + p.duration);
        tokio::time::sleep_until(deadline).await;
        if let Some(status) = broker.child.try_wait()? {
            crashed = Some(status.to_string());
            break;
        }
        let rss_kib = proc_stat(&broker.pid())?.rss_kib;
        let s = Sample {
            at_s: start.elapsed().as_secs_f64(),
            rss_kib,
            acked: progress.acked.load(Ordering::Relaxed),
            delivered: progress.delivered.load(Ordering::Relaxed),
            reconnects: progress.reconnects.load(Ordering::Relaxed),
        };
        eprintln!(
            "t={:>5.0}s  hearthd RSS {:>7.1} MiB  acked {:>8}  delivered {:>8}  reconnects {:>6}",
            s.at_s,
            s.rss_kib as f64 / 1024.0,
            s.acked,
            s.delivered,
            s.reconnects
        );
        samples.push(s);
        if deadline >= start + p.duration {
            break;
        }
        next += p.sample_every;
    }

    // Devices stop by themselves at the end; after a crash there is
    // nothing left to account for.
    let mut acked_bits = Vec::with_capacity(n);
    for t in tasks {
        if crashed.is_some() {
            t.abort();
        } else {
            acked_bits.push(t.await?);
        }
    }
    let acked = progress.acked.load(Ordering::Relaxed);
    // The parent gets a moment to receive what is still on its way.
    let drain_end = Instant::now() + DRAIN_LIMIT;
    while crashed.is_none()
        && progress.delivered.load(Ordering::Relaxed) < acked
        && Instant::now() < drain_end
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if crashed.is_none() {
        if let Some(status) = broker.child.try_wait()? {
            crashed = Some(status.to_string());
        }
    }
    let _ = stop_tx.send(true);
    let (received, parent_error) = parent_task.await?;
    let lost: u64 = acked_bits
        .iter()
        .zip(&received)
        .map(|(a, r)| a.missing_from(r))
        .sum();

    let flat = flatness(&samples, p.warmup);
    let max_after = samples
        .iter()
        .filter(|s| s.at_s + 0.5 >= p.warmup.as_secs_f64())
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let expected = n as f64 * p.rate * p.duration.as_secs_f64();

    let mut failures = Vec::new();
    if let Some(status) = &crashed {
        failures.push(format!("hearthd exited during the soak: {status}"));
    }
    if let Some(e) = parent_error {
        failures.push(format!("the parent's connection failed: {e}"));
    }
    if lost > 0 {
        failures.push(format!(
            "{lost} acknowledged QoS 1 messages never reached the parent"
        ));
    }
    let (baseline, final_rss) = match flat {
        Some((baseline, final_rss)) => {
            if final_rss as f64 > baseline as f64 * (1.0 + p.rss_tolerance) {
                failures.push(format!(
                    "RSS grew from a peak of {:.1} MiB just after warm-up to {:.1} MiB at the end (more than {:.0} %)",
                    baseline as f64 / 1024.0,
                    final_rss as f64 / 1024.0,
                    p.rss_tolerance * 100.0
                ));
            }
            (baseline, final_rss)
        }
        None => {
            failures.push("too few RSS samples after warm-up to judge".into());
            (0, 0)
        }
    };
    if (acked as f64) < 0.9 * expected {
        failures.push(format!(
            "only {acked} of about {expected:.0} messages were acknowledged: the load did not run"
        ));
    }
    Ok(SoakReport {
        params: p.clone(),
        nofile: (hub_nofile, own_nofile),
        samples,
        published: progress.published.load(Ordering::Relaxed),
        acked,
        unacked: progress.unacked.load(Ordering::Relaxed),
        delivered: progress.delivered.load(Ordering::Relaxed),
        duplicates: progress.duplicates.load(Ordering::Relaxed),
        lost,
        reconnects: progress.reconnects.load(Ordering::Relaxed),
        connect_failures: progress.connect_failures.load(Ordering::Relaxed),
        baseline_rss_kib: baseline,
        final_rss_kib: final_rss,
        max_rss_after_warmup_kib: max_after,
        crashed,
        failures,
    })
}

/// The peak RSS in the first window after warm-up and in the last window
/// of the run, each as long as the warm-up (at least two samples). Peaks,
/// not single samples: the broker's log grows and drops a segment at a
/// time, a sawtooth of several MiB that is not growth; a leak raises the
/// later peaks. `None` when the run is too short for two such windows.
fn flatness(samples: &[Sample], warmup: Duration) -> Option<(u64, u64)> {
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s + 0.5 >= warmup.as_secs_f64())
        .collect();
    let first_at = after.first()?.at_s;
    let last_at = after.last()?.at_s;
    let window = warmup.as_secs_f64();
    let first: Vec<u64> = after
        .iter()
        .filter(|s| s.at_s < first_at + window)
        .map(|s| s.rss_kib)
        .collect();
    let last: Vec<u64> = after
        .iter()
        .filter(|s| s.at_s > last_at - window)
        .map(|s| s.rss_kib)
        .collect();
    if first.len() < 2 || last.len() < 2 || after.len() < 4 {
        return None;
    }
    Some((*first.iter().max()?, *last.iter().max()?))
}

async fn connect(addr: std::net::SocketAddr, d: &Device) -> Result<Client> {
    mqtt::connect(addr, d.tls.clone(), d.id(), 60, Duration::from_secs(10)).await
}

/// The parent: records which message of which device arrived, PUBACKs.
/// Returns the bits per device and the error that ended it early, if any.
fn spawn_parent(
    mut c: Client,
    devices: usize,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<(Vec<Bits>, Option<String>)> {
    tokio::spawn(async move {
        let mut seen = vec![Bits::default(); devices];
        let error = loop {
            let (mut fresh, mut dup) = (0, 0);
            let read = tokio::select! {
                _ = stop.changed() => break None,
                r = c.rx.read(|p| {
                    if let Packet::Publish { qos, pid, payload, .. } = p {
                        if qos > 0 {
                            encode_puback(&mut c.tx.buf, pid);
                        }
                        let (Some(dev), Some(seq)) = (word(payload, 0), word(payload, 4)) else {
                            return;
                        };
                        if let Some(bits) = seen.get_mut(dev as usize) {
                            if bits.insert(seq) {
                                fresh += 1;
                            } else {
                                dup += 1;
                            }
                        }
                    }
                }) => r,
            };
            progress.delivered.fetch_add(fresh, Ordering::Relaxed);
            progress.duplicates.fetch_add(dup, Ordering::Relaxed);
            if let Err(e) = read {
                break Some(format!("{e:#}"));
            }
            if let Err(e) = c.tx.flush().await {
                break Some(format!("{e:#}"));
            }
        };
        (seen, error)
    })
}

fn word(payload: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        payload.get(at..at + 4)?.try_into().ok()?,
    ))
}

/// One publishing device.
struct DeviceJob {
    index: u32,
    device: Device,
    addr: std::net::SocketAddr,
    topic: String,
    payload: usize,
    first: tokio::time::Instant,
    period: Duration,
    end: tokio::time::Instant,
    /// (ticks per connection, ticks to skip off the first one).
    churn: Option<(u64, u64)>,
    progress: Arc<Progress>,
}

impl DeviceJob {
    /// Publishes until the end; returns the message numbers acknowledged.
    async fn run(self, first: Client) -> Bits {
        let mut acked = Bits::default();
        let mut ticker = tokio::time::interval_at(self.first, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut payload = vec![0u8; self.payload];
        payload[..4].copy_from_slice(&self.index.to_be_bytes());
        let mut seq: u32 = 0;
        let mut client = Some(first);
        let mut cycle = 0u64;
        let mut on_this_connection = self.churn.map_or(0, |(_, skip)| skip);
        loop {
            let tick = ticker.tick().await;
            if tick >= self.end {
                break;
            }
            let mut c = match client.take() {
                Some(c) => c,
                None => match connect(self.addr, &self.device).await {
                    Ok(c) => {
                        self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
                        c
                    }
                    Err(_) => {
                        self.progress
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            payload[4..8].copy_from_slice(&seq.to_be_bytes());
            let pid = (seq % u16::MAX as u32) as u16 + 1;
            encode_publish(&mut c.tx.buf, &self.topic, 1, pid, &payload);
            self.progress.published.fetch_add(1, Ordering::Relaxed);
            let acknowledged = tokio::time::timeout(ACK_TIMEOUT, async {
                c.tx.flush().await?;
                let mut got = false;
                while !got {
                    c.rx.read(|p| got |= matches!(p, Packet::Puback { pid: id } if id == pid))
                        .await?;
                }
                anyhow::Ok(())
            })
            .await;
            if let Ok(Ok(())) = acknowledged {
                acked.insert(seq);
                self.progress.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                // Nothing was promised; reconnect as a client would.
                self.progress.unacked.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                on_this_connection = 0;
                continue;
            }
            seq += 1;
            on_this_connection += 1;
            match self.churn {
                Some((ticks, _)) if on_this_connection >= ticks => {
                    // Alternate a clean DISCONNECT and a dropped connection
                    // (a toy losing power, as far as TCP tells).
                    if cycle.is_multiple_of(2) {
                        c.tx.disconnect().await;
                    } else {
                        drop(c);
                    }
                    cycle += 1;
                    on_this_connection = 0;
                }
                _ => client = Some(c),
            }
        }
        if let Some(c) = client {
            c.tx.disconnect().await;
        }
        acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_count_what_the_other_side_misses() {
        let (mut a, mut b) = (Bits::default(), Bits::default());
        for n in [0, 5, 64, 200] {
            assert!(a.insert(n));
        }
        assert!(!a.insert(5), "a repeat is not fresh");
        b.insert(5);
        b.insert(200);
        assert_eq!(a.missing_from(&b), 2);
        assert_eq!(b.missing_from(&a), 0);
    }

    #[test]
    fn flatness_compares_peaks_not_single_samples() {
        let run = |rss: &[u64]| -> Vec<Sample> {
            rss.iter()
                .enumerate()
                .map(|(i, &rss_kib)| Sample {
                    at_s: 10.0 * (i + 1) as f64,
                    rss_kib,
                    acked: 0,
                    delivered: 0,
                    reconnects: 0,
                })
                .collect()
        };
        let warmup = Duration::from_secs(30);
        // A sawtooth (the log dropping a segment) is flat.
        let saw = run(&[50, 60, 70, 80, 90, 70, 80, 90, 70, 80, 90, 70]);
        assert_eq!(flatness(&saw, warmup), Some((90, 90)));
        // Steady growth is not.
        let leak = run(&[50, 60, 70, 72, 74, 76, 78, 80, 82, 84, 86, 88]);
        assert_eq!(flatness(&leak, warmup), Some((74, 88)));
        assert_eq!(flatness(&run(&[50, 60, 70]), warmup), None);
    }

    #[test]
    fn the_open_file_limit_is_read() {
        assert!(nofile_limit("self").unwrap() > 0);
    }
}
