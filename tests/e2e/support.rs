//! Test helpers: start the real `hearthd` on a temporary data dir, drive it
//! with the real `hearth` CLI, and build TLS clients from issued
//! certificates.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hearth_protocol::admin::{AdminRequest, AdminResponse};
use hearth_protocol::mqtt::{self, write_varint};
use rumqttd::protocol::{Connect, Login, Packet, Protocol};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const HEARTHD: &str = env!("CARGO_BIN_EXE_hearthd");
pub const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

/// A running hearthd on its own data dir, killed when dropped.
pub struct TestHub {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub mqtt: SocketAddr,
    pub dev: Option<SocketAddr>,
    pub enroll: SocketAddr,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// A command hearthd runs under (`ip netns exec NS`), if any.
    pub wrapper: Vec<String>,
}

impl TestHub {
    /// A hub on loopback with the embedded defaults otherwise.
    pub fn start() -> TestHub {
        TestHub::start_with("", &[])
    }

    /// A hub with extra config text (appended) and environment.
    pub fn start_with(extra_config: &str, env: &[(&str, &str)]) -> TestHub {
        TestHub::start_wrapped(extra_config, env, &[])
    }

    /// A hub started under a wrapper command (a network namespace).
    pub fn start_wrapped(extra_config: &str, env: &[(&str, &str)], wrapper: &[&str]) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("hearth.toml");
        let mut text = String::new();
        if !extra_config.contains("[mqtt]") {
            text.push_str("[mqtt]\nlisten = \"127.0.0.1:0\"\n");
        }
        if !extra_config.contains("[enroll]") {
            text.push_str("[enroll]\nlisten = \"127.0.0.1:0\"\n");
        }
        if !extra_config.contains("[web]") {
            text.push_str("[web]\nlisten = \"127.0.0.1:0\"\n");
        }
        // Tests never speak mDNS on the machine's interfaces; discovery is
        // tested inside network namespaces only.
        if !extra_config.contains("[discovery]") {
            text.push_str("[discovery]\nenabled = false\n");
        }
        text.push_str(extra_config);
        std::fs::write(&config, text).unwrap();
        let socket = data.join("admin.sock");
        let mut hub = TestHub {
            dir,
            data,
            config,
            socket,
            mqtt: "0.0.0.0:0".parse().unwrap(),
            dev: None,
            enroll: "0.0.0.0:0".parse().unwrap(),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        hub.launch();
        hub
    }

    /// A hub whose data dir is a tmpfs of `size` (`8m`) in a mount
    /// namespace of its own, so a full disk can be tested without touching
    /// the machine's; the admin socket sits outside it. Root only.
    pub fn start_on_small_fs(extra_config: &str, size: &str) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let config = format!(
            "{extra_config}\n[admin]\nsocket = \"{}\"\n",
            socket.display()
        );
        let mount = format!(
            "mkdir -p \"$0\" && mount -t tmpfs -o size={size},mode=0700 tmpfs \"$0\" && exec \"$@\""
        );
        // The data dir's path is the script's $0; hearthd and its
        // arguments follow.
        let data = dir.path().join("data");
        let wrapper = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount,
            data.to_str().unwrap(),
        ]
        .map(str::to_owned);
        let mut hub = TestHub {
            config: dir.path().join("hearth.toml"),
            data,
            socket,
            dir,
            mqtt: "0.0.0.0:0".parse().unwrap(),
            dev: None,
            enroll: "0.0.0.0:0".parse().unwrap(),
            child: None,
            env: Vec::new(),
            wrapper: wrapper.to_vec(),
        };
        let text = format!(
            "[mqtt]\nlisten = \"127.0.0.1:0\"\n[enroll]\nlisten = \"127.0.0.1:0\"\n\
             [web]\nlisten = \"127.0.0.1:0\"\n[discovery]\nenabled = false\n{config}"
        );
        std::fs::write(&hub.config, text).unwrap();
        hub.launch();
        hub
    }

    /// The daemon's process id (inside a wrapper that execs, the same).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts the process (again) and waits until it answers `status`.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(HEARTHD);
                cmd
            }
            None => Command::new(HEARTHD),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .env("HEARTH_LOG", "info")
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn hearthd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(AdminResponse::Status(status)) =
                admin_request(&self.socket, &AdminRequest::Status)
            {
                for l in status.listeners {
                    match l.name.as_str() {
                        "mqtt" => self.mqtt = l.address.parse().unwrap(),
                        "dev" => self.dev = Some(l.address.parse().unwrap()),
                        "enroll" => self.enroll = l.address.parse().unwrap(),
                        _ => {}
                    }
                }
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hearthd exited during start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hearthd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hearthd.log")
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs the real `hearth` CLI against this hub.
    pub fn hearth(&self, args: &[&str]) -> Output {
        Command::new(HEARTH)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run hearth")
    }

    /// Runs `hearth` and insists it succeeds; returns stdout.
    pub fn hearth_ok(&self, args: &[&str]) -> String {
        let out = self.hearth(args);
        assert!(
            out.status.success(),
            "hearth {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Adds a member and issues a device to it with `hearth device issue --out`.
    pub fn device(&self, member: &str, role: &str) -> Device {
        let members = self.hearth_ok(&["--json", "member", "list"]);
        let AdminResponse::Members { members } = serde_json::from_str(&members).unwrap() else {
            panic!("unexpected answer {members}");
        };
        if !members.iter().any(|m| m.name.as_str() == member) {
            self.hearth_ok(&["member", "add", member, "--role", role]);
        }
        let out = self.dir.path().join(format!("dev-{}", rand_suffix()));
        let id = self.hearth_ok(&[
            "device",
            "issue",
            "--member",
            member,
            "--label",
            "test device",
            "--out",
            out.to_str().unwrap(),
        ]);
        Device::load(id.trim(), &out)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        signal(child.id(), "TERM");
        self.wait_exit(Duration::from_secs(10))
            .expect("hearthd did not stop after SIGTERM")
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    #[allow(dead_code)] // used by the conformance suite, which shares this file
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The process's resident set size in KiB (`VmRSS` from /proc).
    #[allow(dead_code)] // used by the conformance suite, which shares this file
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One request over the admin socket, without the CLI.
pub fn admin_request(socket: &Path, request: &AdminRequest) -> std::io::Result<AdminResponse> {
    let mut stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// A device's credentials as `hearth device issue --out` wrote them.
#[derive(Clone)]
pub struct Device {
    pub id: String,
    pub dir: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
}

impl Device {
    pub fn load(id: &str, dir: &Path) -> Device {
        Device {
            id: id.to_owned(),
            dir: dir.to_owned(),
            cert_pem: std::fs::read(dir.join("device.pem")).unwrap(),
            key_pem: std::fs::read(dir.join("device.key")).unwrap(),
            ca_pem: std::fs::read(dir.join("ca.pem")).unwrap(),
        }
    }

    pub fn tls(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }
}

/// A rustls client config trusting `ca_pem`, optionally with a client cert.
pub fn client_config(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert)
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A raw TLS connection to the hub (handshake done, or its error).
pub async fn raw_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// An encoded CONNECT (3.1.1 when `v5` is false).
pub fn connect_packet(v5: bool, client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    connect_packet_with(v5, client_id, login, true)
}

/// An encoded CONNECT choosing clean session (3.1.1) / clean start (5).
pub fn connect_packet_with(
    v5: bool,
    client_id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
) -> Vec<u8> {
    let packet = Packet::Connect(
        Connect {
            keep_alive: 30,
            client_id: client_id.to_owned(),
            clean_session: clean,
        },
        None,
        None,
        None,
        login.map(|(u, p)| Login {
            username: u.to_owned(),
            password: p.to_owned(),
        }),
    );
    let mut out = BytesMut::new();
    if v5 {
        rumqttd::protocol::v5::V5.write(packet, &mut out).unwrap();
    } else {
        rumqttd::protocol::v4::V4.write(packet, &mut out).unwrap();
    }
    out.to_vec()
}

/// What the hub did next on a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Bytes arrived.
    Data(Vec<u8>),
    /// The hub closed the connection (EOF or a TLS alert / reset).
    Closed,
    /// Nothing within the time limit.
    Silent,
}

/// Reads whatever comes next within `limit`.
pub async fn next<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Next {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => Next::Silent,
        Ok(Ok(0)) | Ok(Err(_)) => Next::Closed,
        Ok(Ok(n)) => Next::Data(buf[..n].to_vec()),
    }
}

/// Writes bytes, ignoring an error (the hub may already have closed).
pub async fn send<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
}

/// rumqttc options for a device over mutual TLS, MQTT 3.1.1.
pub fn mqtt_v4(hub: &TestHub, device: &Device, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", hub.mqtt.port());
    options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        device.tls(),
    )));
    options.set_keep_alive(Duration::from_secs(10));
    options
}

/// rumqttc options for a device over mutual TLS, MQTT 5.
pub fn mqtt_v5(hub: &TestHub, device: &Device, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", hub.mqtt.port());
    options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        device.tls(),
    )));
    options.set_keep_alive(Duration::from_secs(10));
    options
}

/// Polls a 3.1.1 event loop until CONNACK; returns the error if refused.
pub async fn v4_connected(
    eventloop: &mut rumqttc::EventLoop,
) -> Result<(), rumqttc::ConnectionError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Err(_) => panic!("no CONNACK within 10 s"),
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Polls a 3.1.1 event loop until a PUBLISH arrives.
pub async fn v4_next_publish(
    eventloop: &mut rumqttc::EventLoop,
    limit: Duration,
) -> Option<rumqttc::Publish> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return None,
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => return Some(p),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("connection failed: {e}"),
        }
    }
}

/// Drives a 3.1.1 event loop in the background (for publishers).
pub fn v4_drive(
    mut eventloop: rumqttc::EventLoop,
) -> tokio::task::JoinHandle<Option<rumqttc::ConnectionError>> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                return Some(e);
            }
        }
    })
}

/// Polls until SUBACK so the subscription is in place.
pub async fn v4_wait_suback(eventloop: &mut rumqttc::EventLoop) -> rumqttc::SubAck {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Err(_) => panic!("no SUBACK within 10 s"),
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)))) => return ack,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("connection failed: {e}"),
        }
    }
}

/// Whether a foreign command-line tool is installed.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Waits until the audit log holds an entry matching `pred`; returns it.
pub fn wait_audit(
    hub: &TestHub,
    pred: impl Fn(&hearth_protocol::admin::AuditEntry) -> bool,
) -> Option<hearth_protocol::admin::AuditEntry> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let request = AdminRequest::Audit {
            device: None,
            since: None,
            after_id: None,
            limit: 10_000,
        };
        if let Ok(AdminResponse::Audit { entries }) = admin_request(&hub.socket, &request) {
            if let Some(e) = entries.into_iter().find(|e| pred(e)) {
                return Some(e);
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every audit entry so far.
pub fn audit_entries(hub: &TestHub) -> Vec<hearth_protocol::admin::AuditEntry> {
    let request = AdminRequest::Audit {
        device: None,
        since: None,
        after_id: None,
        limit: 10_000,
    };
    match admin_request(&hub.socket, &request) {
        Ok(AdminResponse::Audit { entries }) => entries,
        other => panic!("audit query failed: {other:?}"),
    }
}

/// Asserts the audit has a denial for `device` of `action` on `topic` (as
/// the audit keeps it: device prefix and topic class only).
pub fn assert_denied_audited(hub: &TestHub, device: &Device, action: &str, topic: &str) -> String {
    let kept = hearth_daemon::store::audit_topic(topic);
    let found = wait_audit(hub, |e| {
        e.event == "denied"
            && e.device.map(|d| d.to_string()).as_deref() == Some(device.id.as_str())
            && e.action.as_deref() == Some(action)
            && e.topic.as_deref() == Some(kept.as_str())
    });
    let entry = found.unwrap_or_else(|| {
        panic!(
            "no audit entry: denied {action} {topic:?} by {}\n{:#?}",
            device.id,
            audit_entries(hub)
        )
    });
    entry.reason.unwrap_or_default()
}

/// A PUBLISH, built by hand so tests can send what no library would.
pub fn publish_packet(
    v5: bool,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    alias: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        match alias {
            Some(a) => {
                body.extend_from_slice(&[3, 0x23]);
                body.extend_from_slice(&a.to_be_bytes());
            }
            None => body.push(0),
        }
    }
    body.extend_from_slice(payload);
    let mut out = vec![0x30 | (qos << 1) | u8::from(retain)];
    write_varint(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A SUBSCRIBE for some filters at QoS 0.
pub fn subscribe_packet(v5: bool, pkid: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f);
        body.push(0);
    }
    let mut out = vec![0x82];
    write_varint(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A raw, connected MQTT client over mutual TLS.
pub struct Raw {
    pub tls: TlsStream<TcpStream>,
    pub v5: bool,
    buf: Vec<u8>,
}

/// The length of the first complete MQTT packet in `buf`, if any. Bytes
/// that are not MQTT fail the test where they arrive.
pub fn packet_len(buf: &[u8]) -> Option<usize> {
    match mqtt::next_frame(buf, usize::MAX) {
        Ok(frame) => frame.map(|f| f.len),
        Err(e) => panic!("the server sent bytes that are not MQTT ({e}): {buf:02x?}"),
    }
}

impl Raw {
    /// Connects as `device` with its own id; panics unless CONNACK accepts.
    pub async fn connect(hub: &TestHub, device: &Device, v5: bool) -> Raw {
        Raw::connect_with(hub, device, v5, true).await
    }

    /// Connects with a persistent session when `clean` is false.
    pub async fn connect_with(hub: &TestHub, device: &Device, v5: bool, clean: bool) -> Raw {
        let mut tls = raw_tls(hub.mqtt, device.tls()).await.expect("handshake");
        send(&mut tls, &connect_packet_with(v5, &device.id, None, clean)).await;
        match next(&mut tls, Duration::from_secs(5)).await {
            Next::Data(d) if d[0] == 0x20 && d[3] == 0 => {}
            other => panic!("CONNACK expected, got {other:?}"),
        }
        Raw {
            tls,
            v5,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        send(&mut self.tls, bytes).await;
    }

    /// The next whole packet (or a close) within 5 s.
    pub async fn next(&mut self) -> Next {
        self.next_within(Duration::from_secs(5)).await
    }

    /// What comes within a short wait (to prove nothing comes).
    pub async fn quiet(&mut self, limit: Duration) -> Next {
        self.next_within(limit).await
    }

    async fn next_within(&mut self, limit: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(len) = packet_len(&self.buf) {
                return Next::Data(self.buf.drain(..len).collect());
            }
            let mut chunk = vec![0u8; 4096];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Err(_) => return Next::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Subscribes and returns the SUBACK's reason codes.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let filters: Vec<&[u8]> = filters.iter().map(|f| f.as_bytes()).collect();
        let packet = subscribe_packet(self.v5, pkid, &filters);
        self.send(&packet).await;
        match self.next().await {
            Next::Data(d) => {
                assert_eq!(d[0], 0x90, "SUBACK expected: {d:?}");
                let skip = if self.v5 { 5 } else { 4 };
                assert_eq!(u16::from_be_bytes([d[2], d[3]]), pkid);
                d[skip..].to_vec()
            }
            other => panic!("SUBACK expected, got {other:?}"),
        }
    }
}

/// The `hearth-device` binary. It belongs to another package (device/), so
/// cargo gives this test no `CARGO_BIN_EXE_hearth-device`: it is built
/// here, once per test process, with the cargo that runs the tests, and
/// found from cargo's own report of what it built — whatever the target
/// dir, profile or working directory. Under `cargo test --workspace` it is
/// already built and this costs a second.
pub fn hearth_device_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--package",
                "hearth-device",
                "--bin",
                "hearth-device",
            ])
            .args(["--message-format", "json-render-diagnostics"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        // Cargo set these for this test process, not the user: build
        // scripts that watch them (ring's watches CARGO_MANIFEST_DIR) would
        // otherwise see a change, and the outer and inner builds would
        // rebuild each other's dependencies at every run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key == "OUT_DIR" || (key.starts_with("CARGO_") && !user_cargo_setting(&key)) {
                build.env_remove(&*key);
            }
        }
        let out = build.output().expect("run cargo build -p hearth-device");
        assert!(out.status.success(), "cargo build -p hearth-device failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|msg| msg["target"]["name"] == "hearth-device")
            .find_map(|msg| msg["executable"].as_str().map(str::to_owned))
            .expect("cargo reported the hearth-device executable")
    })
}

/// Whether a `CARGO_*` variable is the user's configuration (kept for the
/// nested build) rather than one cargo sets for the test it runs.
fn user_cargo_setting(key: &str) -> bool {
    const USER: [&str; 12] = [
        "CARGO_HOME",
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_TERM_",
        "CARGO_INCREMENTAL",
        "CARGO_UNSTABLE_",
        "CARGO_CACHE_",
        "CARGO_SOURCE_",
    ];
    key == "CARGO_TARGET_DIR"
        || USER.iter().any(|p| key.starts_with(p))
        // Per-target linker and runner settings: CARGO_TARGET_<TRIPLE>_*.
        || (key.starts_with("CARGO_TARGET_") && key != "CARGO_TARGET_TMPDIR")
}

/// Runs `hearth-device --dir DIR ARGS`.
pub fn hearth_device(dir: &Path, args: &[&str]) -> Output {
    Command::new(hearth_device_bin())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("HEARTH_DEVICE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run hearth-device")
}

/// Opens a pairing window with `hearth pair`; returns (window id, token, URI).
/// A window shorter than the CLI allows (a minute) is opened over the
/// admin socket directly, for tests that watch one expire.
pub fn open_pairing(hub: &TestHub, member: &str, label: &str, ttl: &str) -> (u32, String, String) {
    if let Some(seconds) = ttl.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
        if seconds < 60 {
            let answer = admin_request(
                &hub.socket,
                &AdminRequest::PairOpen {
                    member: member.parse().unwrap(),
                    label: label.parse().unwrap(),
                    ttl_secs: seconds,
                    host: Some(hub.enroll.ip().to_string()),
                },
            )
            .unwrap();
            let AdminResponse::PairOpened(ticket) = answer else {
                panic!("unexpected answer {answer:?}");
            };
            return (ticket.id, ticket.token, ticket.uri);
        }
    }
    let out = hub.hearth_ok(&[
        "--json",
        "pair",
        "--member",
        member,
        "--label",
        label,
        "--ttl",
        ttl,
        "--host",
        &hub.enroll.ip().to_string(),
    ]);
    let answer: AdminResponse = serde_json::from_str(&out).expect("pair answer");
    let AdminResponse::PairOpened(ticket) = answer else {
        panic!("unexpected answer {out}");
    };
    (ticket.id, ticket.token, ticket.uri)
}

/// An answer from the enrollment server.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// One HTTP/1.1 request to the hub's EST server from `source` (a loopback
/// address), verifying the server against the hub CA, optionally with a
/// client certificate.
pub async fn est_request(
    hub: &TestHub,
    source: &str,
    client: Option<&Device>,
    method: &str,
    path: &str,
    basic_password: Option<&str>,
    body: &[u8],
) -> HttpAnswer {
    use base64::Engine;
    let ca_pem = std::fs::read(hub.data.join("ca.pem")).unwrap();
    let tls = match client {
        Some(device) => device.tls(),
        None => client_config(&ca_pem, None),
    };
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(hub.enroll).await.expect("connect to EST");
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS with EST");
    let mut head = format!(
        "{method} /.well-known/est/{path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n");
    }
    if let Some(password) = basic_password {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("toy:{password}"));
        head.push_str(&format!("Authorization: Basic {encoded}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading the whole body.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    HttpAnswer {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// A fresh P-256 key and its PKCS#10 request, base64 DER.
pub fn key_and_csr() -> (rcgen::KeyPair, Vec<u8>) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(csr.der());
    (key, b64.into_bytes())
}
