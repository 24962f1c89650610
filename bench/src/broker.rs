//! Starting and stopping the brokers under test (hearthd, mosquitto) on
//! loopback, preparing the hub's data dir and device pool, and reading a
//! process's CPU time and memory from /proc.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hearth_protocol::admin::{AdminRequest, AdminResponse};
use hearth_protocol::household::{Owner, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::mqtt::{self, Identity};

/// HEARTH_BENCH_KEEP=1 keeps the work directory (data dirs, configs, logs).
fn keep() -> bool {
    std::env::var_os("HEARTH_BENCH_KEEP").is_some()
}

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// hearthd.
    Hearth,
    /// Mosquitto.
    Mosquitto,
}

impl Kind {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hearth => "hearth",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

/// A free loopback TCP port (the kernel's pick; released at once).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `taskset -c CPU` prefix when pinning is possible (util-linux present and
/// the CPU exists), else nothing.
pub fn pin_prefix(cpu: usize) -> Vec<String> {
    // Online CPUs of the machine, not of our (possibly pinned) affinity mask.
    let cpus: usize = Command::new("getconf")
        .arg("_NPROCESSORS_ONLN")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    if cpu < cpus
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        vec!["taskset".into(), "-c".into(), cpu.to_string()]
    } else {
        Vec::new()
    }
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// CPU time used, microseconds (the process's CPU-time clock; utime +
    /// stime in ticks where it cannot be read).
    pub cpu_us: u64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second for /proc/<pid>/stat (`getconf CLK_TCK`).
pub fn clk_tck() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status (`pid` "self" allowed).
pub fn proc_stat(pid: &str) -> Result<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(") ")
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let pid_number = if pid == "self" {
        Some(0)
    } else {
        pid.parse().ok()
    };
    Ok(ProcStat {
        cpu_us: pid_number
            .and_then(cpu_clock_us)
            .unwrap_or(ticks * 1_000_000 / clk_tck()),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// CPU time process `pid` (0: this one) has used, in microseconds, read
/// from its CPU-time clock, which the kernel keeps to the nanosecond;
/// `None` where that clock cannot be read.
#[allow(unsafe_code)]
fn cpu_clock_us(pid: libc::pid_t) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: each call only writes one plain value into an out-parameter
    // that lives on this stack frame for the whole call.
    let read = unsafe {
        libc::clock_getcpuclockid(pid, &mut clock) == 0 && libc::clock_gettime(clock, &mut now) == 0
    };
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u64::try_from(now.tv_nsec).ok()?;
    read.then(|| secs * 1_000_000 + nanos / 1_000)
}

/// Whether a process is still running (not gone, not a zombie).
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The devices of the benchmark household, issued once per session.
#[derive(Debug)]
pub struct Pool {
    /// The hub CA certificate.
    pub ca: CertificateDer<'static>,
    /// Devices of the parent "Mum" (subscribers, mailbox sender).
    pub parents: Vec<Device>,
    /// Devices of the child "Ada" (publishers, idle connections). A third
    /// member, the child "Bo", has one device that stays offline: the
    /// mailbox scenario's recipient (a send to a member is stored for each
    /// of the member's devices, so Bo has exactly one).
    pub children: Vec<Device>,
}

/// One device with its ready-made TLS configuration.
#[derive(Debug, Clone)]
pub struct Device {
    /// Id and keys.
    pub identity: Identity,
    /// Client TLS configuration (own session cache: full handshakes).
    pub tls: Arc<rustls::ClientConfig>,
}

impl Device {
    /// Its device id (= MQTT client id).
    pub fn id(&self) -> &str {
        &self.identity.id
    }
    /// Its telemetry topic.
    pub fn tele(&self) -> String {
        format!("hearth/v1/dev/{}/tele/bench", self.id())
    }
}

/// Everything a session needs to start brokers.
#[derive(Debug)]
pub struct Env {
    /// The hearthd binary.
    pub hearthd: PathBuf,
    /// The mosquitto binary (None: not installed).
    pub mosquitto: Option<PathBuf>,
    /// Work directory (temporary).
    pub work: PathBuf,
    /// The prepared hub data dir, copied for every hearthd run.
    pub template: PathBuf,
    /// Runs so far (names the per-run directories).
    runs: std::sync::atomic::AtomicU32,
    /// `taskset` prefix for brokers.
    pub pin: Vec<String>,
}

const HEARTH_CONF: &str = r#"# hearthd configuration for the benchmark (written by hearth-bench).
[mqtt]
listen = "127.0.0.1:PORT"
[enroll]
listen = "127.0.0.1:0"
[web]
listen = "127.0.0.1:0"
[discovery]
enabled = false
[limits]
max_connections = 20000
# Every benchmark client comes from 127.0.0.1; the per-source budget of
# connections still in their handshake guards a home LAN against one host,
# and would close the idle scenario's handshakes as a flood.
max_unauthenticated = 1024
max_unauthenticated_per_source = 1024
[mailbox]
# The mailbox scenario sends to a member whose device stays offline; the
# default 500 waiting messages per device would refuse sends after 500.
max_pending_per_device = 100000000
"#;

/// The configuration of the budget run: listeners on loopback, discovery
/// off, and nothing else, so `[limits]` and `[mailbox]` are hearthd's own
/// defaults (daemon/src/config.rs, packaging/hearth.toml) — the figures the
/// memory budget of docs/ARCHITECTURE.md is stated for.
const HEARTH_CONF_DEFAULTS: &str = r#"# hearthd configuration for the memory-budget run (written by hearth-bench):
# default limits.
[mqtt]
listen = "127.0.0.1:PORT"
[enroll]
listen = "127.0.0.1:ESTPORT"
[web]
listen = "127.0.0.1:0"
[discovery]
enabled = false
"#;

/// Which limits hearthd runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// Raised for the side-by-side scenarios (thousands of connections
    /// from one address, an unbounded mailbox backlog).
    Bench,
    /// hearthd's defaults, as a household installs it (the budget run).
    Defaults,
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// Which.
    pub kind: Kind,
    /// Its process.
    pub child: Child,
    /// Its MQTT listener.
    pub addr: SocketAddr,
    /// hearthd's EST (enrolment, HTTPS) listener; the MQTT one for Mosquitto.
    pub est: SocketAddr,
    /// When it was spawned.
    pub spawned: Instant,
    /// Its working directory (data dir for hearthd).
    pub dir: PathBuf,
}

impl Broker {
    /// Its pid as a /proc path component.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
    /// CPU and memory now.
    pub fn stat(&self) -> Result<ProcStat> {
        proc_stat(&self.pid())
    }
    /// SIGTERM, then SIGKILL after 5 s; removes its directory.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !keep() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if keep() {
            eprintln!("HEARTH_BENCH_KEEP: kept {}", self.work.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn admin(socket: &Path, request: &AdminRequest) -> Result<AdminResponse> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    let response: AdminResponse = serde_json::from_str(&answer)?;
    if let AdminResponse::Error { message } = &response {
        bail!("admin socket: {message}");
    }
    Ok(response)
}

fn wait_admin(socket: &Path, child: &mut Child, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if admin(socket, &AdminRequest::Status).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("hearthd exited during start: {status}");
        }
        if Instant::now() > deadline {
            bail!("hearthd's admin socket did not answer within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn serde_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    Ok(serde_json::from_value(serde_json::Value::String(s.into()))?)
}

impl Env {
    /// Creates the work dir, starts hearthd once on a fresh data dir to make
    /// its CA and issue `parents` + `children` devices, then stops it; the
    /// data dir becomes the template every later run copies.
    pub fn prepare(
        hearthd: PathBuf,
        mosquitto: Option<PathBuf>,
        parents: usize,
        children: usize,
    ) -> Result<(Env, Pool)> {
        let work = tempfile::Builder::new()
            .prefix("hearth-bench-")
            .tempdir()?
            .keep();
        let template = work.join("template");
        let env = Env {
            hearthd,
            mosquitto,
            template: template.clone(),
            work,
            runs: Default::default(),
            pin: pin_prefix(0),
        };
        let mut child = env.spawn_hearthd(&template, free_port()?, false, Limits::Bench, 0)?;
        let result: Result<Pool> = (|| {
            let socket = template.join("admin.sock");
            wait_admin(&socket, &mut child, Duration::from_secs(30))?;
            for (name, role) in [
                ("Mum", Role::Parent),
                ("Ada", Role::Child),
                ("Bo", Role::Child),
            ] {
                admin(
                    &socket,
                    &AdminRequest::MemberAdd {
                        name: serde_name(name)?,
                        role,
                    },
                )?;
            }
            let ca_pem = std::fs::read(template.join("ca.pem"))?;
            let ca = CertificateDer::from_pem_slice(&ca_pem).context("ca.pem")?;
            let issue = |member: &str, n: usize| -> Result<Vec<Device>> {
                (0..n)
                    .map(|i| {
                        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                        let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                            .serialize_request(&key)?
                            .pem()?;
                        let answer = admin(
                            &socket,
                            &AdminRequest::DeviceIssue {
                                owner: Owner::Member(serde_name(member)?),
                                label: serde_name(&format!("bench-{i}"))?,
                                csr_pem: csr,
                                host: None,
                            },
                        )?;
                        let AdminResponse::DeviceIssued(issued) = answer else {
                            bail!("unexpected answer to device issue: {answer:?}");
                        };
                        let cert =
                            CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes())
                                .context("device certificate")?;
                        let identity = Identity {
                            id: issued.device_id.as_str().to_owned(),
                            chain: vec![cert],
                            key: key.serialize_der(),
                        };
                        let tls = mqtt::client_config(&identity, &ca)?;
                        Ok(Device { identity, tls })
                    })
                    .collect()
            };
            let parents = issue("Mum", parents)?;
            let children = issue("Ada", children)?;
            issue("Bo", 1)?;
            Ok(Pool {
                ca: ca.clone(),
                parents,
                children,
            })
        })();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(template.join("admin.sock"));
        let pool = result?;
        Ok((env, pool))
    }

    fn spawn_hearthd(
        &self,
        dir: &Path,
        port: u16,
        pin: bool,
        limits: Limits,
        est_port: u16,
    ) -> Result<Child> {
        let conf = dir.with_extension("toml");
        let text = match limits {
            Limits::Bench => HEARTH_CONF.to_owned(),
            Limits::Defaults => HEARTH_CONF_DEFAULTS.replace("ESTPORT", &est_port.to_string()),
        };
        std::fs::write(&conf, text.replace("PORT", &port.to_string()))?;
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let mut argv: Vec<String> = if pin { self.pin.clone() } else { Vec::new() };
        argv.push(self.hearthd.display().to_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("--config")
            .arg(&conf)
            .arg("--data-dir")
            .arg(dir)
            .env(
                "HEARTH_LOG",
                std::env::var("HEARTH_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.spawn()
            .with_context(|| format!("cannot start {}", self.hearthd.display()))
    }

    fn next_dir(&self, kind: Kind) -> PathBuf {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.work.join(format!("run-{n}-{}", kind.name()))
    }

    /// Starts a fresh broker process pinned to CPU 0. hearthd gets a copy of
    /// the template data dir. Returns as soon as the process is spawned: use
    /// [`wait_ready`] next.
    pub fn start(&self, kind: Kind) -> Result<Broker> {
        self.start_with(kind, Limits::Bench)
    }

    /// [`Env::start`] with the limits chosen (Mosquitto has one setting).
    pub fn start_with(&self, kind: Kind, limits: Limits) -> Result<Broker> {
        let dir = self.next_dir(kind);
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut est = addr;
        let (child, spawned) = match kind {
            Kind::Hearth => {
                let status = Command::new("cp")
                    .arg("-a")
                    .arg(&self.template)
                    .arg(&dir)
                    .status()?;
                if !status.success() {
                    bail!("cannot copy the template data dir");
                }
                let est_port = free_port()?;
                est = ([127, 0, 0, 1], est_port).into();
                let spawned = Instant::now();
                (
                    self.spawn_hearthd(&dir, port, true, limits, est_port)?,
                    spawned,
                )
            }
            Kind::Mosquitto => {
                let bin = self
                    .mosquitto
                    .as_ref()
                    .ok_or_else(|| anyhow!("mosquitto is not installed"))?;
                std::fs::create_dir_all(&dir)?;
                let conf = dir.join("mosquitto.conf");
                let t = &self.template;
                std::fs::write(
                    &conf,
                    format!(
                        "# mosquitto configuration for the benchmark (written by hearth-bench).\n\
                         per_listener_settings false\n\
                         persistence false\n\
                         log_dest stderr\n\
                         log_type error\n\
                         log_type warning\n\
                         user root\n\
                         set_tcp_nodelay true\n\
                         listener {port} 127.0.0.1\n\
                         cafile {}\n\
                         certfile {}\n\
                         keyfile {}\n\
                         require_certificate true\n\
                         use_identity_as_username true\n",
                        t.join("ca.pem").display(),
                        t.join("server.pem").display(),
                        t.join("server.key").display(),
                    ),
                )?;
                let log = std::fs::File::create(dir.join("mosquitto.log"))?;
                let mut argv = self.pin.clone();
                argv.push(bin.display().to_string());
                let spawned = Instant::now();
                let child = Command::new(&argv[0])
                    .args(&argv[1..])
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("cannot start {}", bin.display()))?;
                (child, spawned)
            }
        };
        Ok(Broker {
            kind,
            child,
            addr,
            est,
            spawned,
            dir,
        })
    }
}

/// Polls until a TLS handshake + CONNACK succeeds as `probe` (every 2 ms, at
/// most `limit`); returns the time from spawn to that CONNACK.
pub async fn wait_ready(broker: &mut Broker, probe: &Device, limit: Duration) -> Result<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(c) = mqtt::connect(
            broker.addr,
            probe.tls.clone(),
            probe.id(),
            60,
            Duration::from_secs(2),
        )
        .await
        {
            let ready = broker.spawned.elapsed();
            c.tx.disconnect().await;
            return Ok(ready);
        }
        if let Some(status) = broker.child.try_wait()? {
            let log = std::fs::read_to_string(broker.dir.with_extension("log"))
                .or_else(|_| std::fs::read_to_string(broker.dir.join("mosquitto.log")))
                .unwrap_or_default();
            bail!(
                "{} exited during start ({status}): {log}",
                broker.kind.name()
            );
        }
        if Instant::now() > deadline {
            bail!("{} not ready within {limit:?}", broker.kind.name());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
