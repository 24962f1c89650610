//! Discovery over mDNS/DNS-SD, and the proof that nothing else leaves the
//! hub, inside two network namespaces joined by a veth pair that the test
//! makes and removes: nothing is sent on the machine's real interfaces.
//! Needs root and iproute2 (and python3 with zeroconf for the foreign
//! browser, tcpdump for the egress capture), so it runs in `.ci/run`'s
//! second suite.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

/// Two namespaces, `hub` and `lan`, joined by a veth pair; removed on drop.
struct TwoNamespaces {
    hub: String,
    lan: String,
    hub_if: String,
}

impl TwoNamespaces {
    fn new(tag: &str) -> TwoNamespaces {
        let n = std::process::id() % 100_000;
        let ns = TwoNamespaces {
            hub: format!("hearth-{tag}-{n}-hub"),
            lan: format!("hearth-{tag}-{n}-lan"),
            hub_if: format!("h{tag}{n}a"),
        };
        let lan_if = format!("h{tag}{n}b");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns.hub]);
        ip(&["netns", "add", &ns.lan]);
        ip(&[
            "link", "add", &ns.hub_if, "netns", &ns.hub, "type", "veth", "peer", "name", &lan_if,
            "netns", &ns.lan,
        ]);
        for (name, dev, addr) in [
            (&ns.hub, &ns.hub_if, "10.231.7.1/24"),
            (&ns.lan, &lan_if, "10.231.7.2/24"),
        ] {
            ip(&["-n", name, "addr", "add", addr, "dev", dev]);
            ip(&["-n", name, "link", "set", dev, "multicast", "on", "up"]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            ip(&["-n", name, "route", "add", "224.0.0.0/4", "dev", dev]);
        }
        ns
    }

    fn exec(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd
    }
}

impl Drop for TwoNamespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        for ns in [&self.hub, &self.lan] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn require_netns() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    assert!(
        root && have("ip"),
        "discovery tests need root and iproute2 (they make network namespaces)"
    );
}

fn hub_in(ns: &TwoNamespaces) -> TestHub {
    let config = format!(
        "[mqtt]\nlisten = \"10.231.7.1:0\"\n[enroll]\nlisten = \"10.231.7.1:0\"\n\
         [web]\nlisten = \"10.231.7.1:0\"\n[discovery]\nenabled = true\ninterfaces = [\"{}\"]\n",
        ns.hub_if
    );
    TestHub::start_wrapped(&config, &[], &["ip", "netns", "exec", &ns.hub])
}

/// `hearth-device discover` run inside the LAN namespace.
fn discover(ns: &TwoNamespaces) -> String {
    let out = ns
        .exec(&ns.lan)
        .args([hearth_device_bin(), "discover", "--secs", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn discover_until(ns: &TwoNamespaces, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = discover(ns);
        if wanted(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not seen in time; last: {seen:?}"
        );
    }
}

/// The first `bytes` of the hub CA's fingerprint, in hex: 8 in the
/// advertisement, 16 (128 bits) for `hearth-device pair --ca`.
fn ca_prefix_of(hub: &TestHub, bytes: usize) -> String {
    use rustls::pki_types::pem::PemObject;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(hub.data.join("ca.pem")).unwrap();
    hex::encode(&hearth_daemon::ca::fingerprint(&ca)[..bytes])
}

fn ca_prefix(hub: &TestHub) -> String {
    ca_prefix_of(hub, 8)
}

#[test]
#[ignore = "needs root and iproute2; run with -- --ignored"]
fn the_reference_device_discovers_the_hub_and_pair_follows_the_window() {
    require_netns();
    let ns = TwoNamespaces::new("d");
    let hub = hub_in(&ns);
    let expected = format!(
        "address=10.231.7.1 enroll={} mqtt={} ca={}",
        hub.enroll.port(),
        hub.mqtt.port(),
        ca_prefix(&hub)
    );
    let seen = discover_until(&ns, |s| s.contains(&expected));
    assert!(seen.contains("pair=0"), "{seen}");
    assert!(seen.starts_with("hearth-"), "{seen}");
    // Nobody's name is on the network.
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_, token, _) = open_pairing(&hub, "Ada", "Ada's robot", "10m");
    let seen = discover_until(&ns, |s| s.contains("pair=1"));
    assert!(!seen.contains("Ada") && !seen.contains("robot"), "{seen}");
    // A device on the LAN pairs by discovery, the token and the CA prefix
    // `hearth pair` printed; a CA it was not told is never trusted.
    let dir = hub.dir.path().join("found");
    let pair = |ca: &str| {
        ns.exec(&ns.lan)
            .arg(hearth_device_bin())
            .arg("--dir")
            .arg(&dir)
            .args([
                "pair",
                "--discover-secs",
                "3",
                "--token",
                &token,
                "--ca",
                ca,
            ])
            .output()
            .unwrap()
    };
    let stranger = pair(&"0".repeat(32));
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("no hub with that CA"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    // The advertisement's own 64-bit prefix is too short to pin a hub by.
    let short = pair(&ca_prefix(&hub));
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least the first 32 hex digits"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let out = pair(&ca_prefix_of(&hub, 16));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hub.hearth_ok(&["device", "list"]).contains("Ada's robot"));
    // The window closed with its use: pair=0 again.
    discover_until(&ns, |s| s.contains("pair=0"));
}

#[test]
#[ignore = "needs root, iproute2 and python3 zeroconf; run with -- --ignored"]
fn a_foreign_browser_sees_the_records_and_their_withdrawal_on_shutdown() {
    require_netns();
    let has_zeroconf = Command::new("python3")
        .args(["-c", "import zeroconf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_zeroconf,
        "python3 zeroconf is not installed (pip install zeroconf)"
    );
    let ns = TwoNamespaces::new("z");
    let mut hub = hub_in(&ns);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/zeroconf_browse.py"
    );
    let browser_err = hub.dir.path().join("browser.err");
    let mut browser: Child = ns
        .exec(&ns.lan)
        .args(["python3", script, "watch", "40"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&browser_err).unwrap())
        .spawn()
        .unwrap();
    let (lines, events) = mpsc::channel::<String>();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(line) if what(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "the foreign browser did not report it in time; it said {seen:?} {}",
                    std::fs::read_to_string(&browser_err).unwrap_or_default()
                ),
            }
        }
    };
    let added = wait_for(&|l: &str| l.starts_with("added") || l.starts_with("updated"));
    assert!(
        added.contains(&format!("port={}", hub.enroll.port())),
        "{added}"
    );
    assert!(
        added.contains(&format!("mqtt={}", hub.mqtt.port())),
        "{added}"
    );
    assert!(
        added.contains(&format!("ca={}", ca_prefix(&hub))),
        "{added}"
    );
    assert!(added.contains("v=1") && added.contains("pair=0"), "{added}");
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (window, _, _) = open_pairing(&hub, "Ada", "robot", "10m");
    wait_for(&|l: &str| l.starts_with("updated") && l.contains("pair=1"));
    hub.hearth_ok(&["pair", "--cancel", &window.to_string()]);
    // python-zeroconf keeps a superseded TXT record for up to 10 s after a
    // cache flush and does not report a return to it, so a fresh browser
    // checks that pair=1 disappeared.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns
            .exec(&ns.lan)
            .args(["python3", script, "snapshot", "2"])
            .output()
            .unwrap();
        let seen = String::from_utf8_lossy(&out.stdout).to_string();
        if seen.contains("pair=0") {
            break;
        }
        assert!(Instant::now() < deadline, "pair=1 stayed: {seen:?}");
    }
    // On shutdown the records are withdrawn (goodbye packets).
    assert!(hub.terminate().success());
    wait_for(&|l: &str| l.starts_with("removed"));
    let _ = browser.kill();
    let _ = browser.wait();
}

#[test]
#[ignore = "needs root, iproute2 and tcpdump; run with -- --ignored"]
fn nothing_leaves_the_hub_but_mdns_and_replies_to_its_clients() {
    require_netns();
    assert!(
        have("tcpdump"),
        "the egress test needs tcpdump (.ci/run installs it)"
    );
    let ns = TwoNamespaces::new("e");
    // IPv4 only, so every packet the hub's namespace sends has its address.
    for name in [&ns.hub, &ns.lan] {
        let out = ns
            .exec(name)
            .args(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The sniffer sits in the LAN namespace: the veth is the hub's only
    // way out.
    let capture = tempfile::NamedTempFile::new().unwrap();
    let mut sniffer = ns
        .exec(&ns.lan)
        .args([
            "tcpdump",
            "-i",
            "any",
            "-n",
            "-l",
            "-q",
            "ip and src host 10.231.7.1",
        ])
        .stdout(capture.reopen().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        // Capturing starts once tcpdump says it is listening.
        let mut err = BufReader::new(sniffer.stderr.take().unwrap());
        let mut said = String::new();
        for _ in 0..5 {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 || line.contains("listening") {
                said.push_str(&line);
                break;
            }
            said.push_str(&line);
        }
        assert!(said.contains("listening"), "{said}");
    }
    let hub = hub_in(&ns);
    hub.hearth_ok(&["member", "add", "Mum", "--role", "parent"]);
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    // Discovery and pairing from the LAN, then a message between the two.
    let pair = |member: &str, dir: &std::path::Path| {
        let (_, token, _) = open_pairing(&hub, member, "device", "10m");
        discover_until(&ns, |s| s.contains("pair=1"));
        let out = ns
            .exec(&ns.lan)
            .arg(hearth_device_bin())
            .arg("--dir")
            .arg(dir)
            .args([
                "pair",
                "--discover-secs",
                "3",
                "--token",
                &token,
                "--ca",
                &ca_prefix_of(&hub, 16),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mum = hub.dir.path().join("mum");
    let ada = hub.dir.path().join("ada");
    pair("Mum", &mum);
    pair("Ada", &ada);
    let run = |dir: &std::path::Path, args: &[&str]| {
        let out = ns
            .exec(&ns.lan)
            .arg(hearth_device_bin())
            .arg("--dir")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(
        &mum,
        &[
            "send",
            "--to",
            "Ada",
            "--text",
            "hello from the egress test",
        ],
    );
    let inbox = run(&ada, &["inbox", "--wait", "2"]);
    assert!(inbox.contains("hello from the egress test"), "{inbox}");
    let listeners = [hub.mqtt.port(), hub.enroll.port()];
    drop(hub);
    std::thread::sleep(Duration::from_millis(500));
    let _ = sniffer.kill();
    let _ = sniffer.wait();

    let ports = [5353u16];
    let text = std::fs::read_to_string(capture.path()).unwrap();
    let mut seen_mdns = false;
    let mut seen_replies = false;
    let mut stray = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split("IP 10.231.7.1.").nth(1) else {
            continue;
        };
        let port: u16 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let to_client = rest.contains("> 10.231.7.2.");
        if ports.contains(&port) {
            seen_mdns = true;
        } else if to_client && line.contains("tcp") && listeners.contains(&port) {
            // A reply on a connection a client opened: the hub's
            // listeners are the only ports it accepts on.
            seen_replies = true;
        } else {
            stray.push(line.to_owned());
        }
    }
    assert!(
        seen_mdns && seen_replies,
        "the capture saw too little:\n{text}"
    );
    assert!(
        stray.is_empty(),
        "the hub sent traffic of its own: {stray:#?}"
    );
}

/// A hub listening on every address of its namespace, as a home hub does,
/// so that it still serves after DHCP gives it another one; `extra` is
/// more configuration.
fn hub_on_any_address(ns: &TwoNamespaces, mqtt_port: u16, extra: &str) -> TestHub {
    let config = format!(
        "[mqtt]\nlisten = \"0.0.0.0:{mqtt_port}\"\n[enroll]\nlisten = \"0.0.0.0:0\"\n\
         [web]\nlisten = \"0.0.0.0:0\"\n[discovery]\nenabled = true\ninterfaces = [\"{}\"]\n{extra}",
        ns.hub_if
    );
    TestHub::start_wrapped(&config, &[], &["ip", "netns", "exec", &ns.hub])
}

/// The lines a running `hearth-device` prints, stdout and stderr alike.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    rx
}

/// Waits up to `limit` for a line matching `wanted`; every line read is
/// kept in `seen`.
fn wait_line(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if wanted(&line) {
                    return Some(line);
                }
            }
            Err(_) => return None,
        }
    }
}

#[test]
#[ignore = "needs root and iproute2; run with -- --ignored"]
fn the_device_follows_its_hub_to_a_new_address_and_refuses_a_rogue_hub() {
    require_netns();
    let ns = TwoNamespaces::new("m");
    let mut hub = hub_on_any_address(&ns, 0, "");
    let mqtt = hub.mqtt.port();
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    // Paired by the hub's IP address, as a pairing URI names it.
    let out = hub.hearth_ok(&[
        "--json",
        "pair",
        "--member",
        "Ada",
        "--label",
        "robot",
        "--ttl",
        "10m",
        "--host",
        "10.231.7.1",
    ]);
    let answer: hearth_protocol::admin::AdminResponse =
        serde_json::from_str(&out).expect("pair answer");
    let hearth_protocol::admin::AdminResponse::PairOpened(ticket) = answer else {
        panic!("unexpected answer {out}");
    };
    let uri = ticket.uri;
    assert!(uri.contains("host=10.231.7.1&"), "{uri}");
    let ca = ca_prefix_of(&hub, 32);
    let dir = hub.dir.path().join("robot");
    let out = ns
        .exec(&ns.lan)
        .arg(hearth_device_bin())
        .arg("--dir")
        .arg(&dir)
        .args(["pair", &uri])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = || std::fs::read_to_string(dir.join("device.toml")).unwrap();
    assert!(stored().contains("host = \"10.231.7.1\""), "{}", stored());
    let mut device = ns
        .exec(&ns.lan)
        .arg(hearth_device_bin())
        .arg("--dir")
        .arg(&dir)
        .args(["run", "--interval", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut device);
    let mut seen = Vec::new();
    let first = format!("connected to 10.231.7.1:{mqtt}");
    assert!(
        wait_line(&lines, &mut seen, Duration::from_secs(20), |l| l
            .contains(&first))
        .is_some(),
        "{seen:#?}"
    );

    // The hub is advertised where it is.
    discover_until(&ns, |s| s.contains("address=10.231.7.1 "));

    // DHCP gives the hub another address; the old one is gone.
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}");
    };
    // The new address is added first and becomes the primary one when the
    // old goes (by default Linux would drop it with the old primary).
    let promote = format!("net.ipv4.conf.{}.promote_secondaries=1", ns.hub_if);
    let out = ns
        .exec(&ns.hub)
        .args(["sysctl", "-qw", &promote])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip(&[
        "-n",
        &ns.hub,
        "addr",
        "add",
        "10.231.7.3/24",
        "dev",
        &ns.hub_if,
    ]);
    ip(&[
        "-n",
        &ns.hub,
        "addr",
        "del",
        "10.231.7.1/24",
        "dev",
        &ns.hub_if,
    ]);
    let moved = Instant::now();
    let again = format!("connected to 10.231.7.3:{mqtt}");
    let reconnected = wait_line(&lines, &mut seen, Duration::from_secs(30), |l| {
        l.contains(&again)
    });
    assert!(
        reconnected.is_some(),
        "not reconnected within 30 s: {seen:#?}\nthe LAN sees: {}\n{}",
        discover(&ns),
        hub.log()
    );
    eprintln!(
        "reconnected {:?} after the address changed",
        moved.elapsed()
    );
    assert!(
        seen.iter().any(|l| l.contains("hub moved to 10.231.7.3")),
        "{seen:#?}"
    );
    assert!(stored().contains("host = \"10.231.7.3\""), "{}", stored());

    // A rogue hub (another CA, whose certificate carries this hub's name)
    // takes the hub's place and port while the hub is away.
    assert!(hub.terminate().success());
    let name = format!("hearth-{}", &ca[..8]);
    let rogue = hub_on_any_address(&ns, mqtt, &format!("[hub]\nname = \"{name}\"\n"));
    assert_ne!(ca_prefix_of(&rogue, 32), ca, "the rogue has its own CA");
    let refused = wait_line(&lines, &mut seen, Duration::from_secs(40), |l| {
        l.contains("connection lost") && l.contains("certificate")
    });
    assert!(refused.is_some(), "{seen:#?}\n{}", rogue.log());
    // It is never taken for the hub: no session, nothing stored, and the
    // device keeps looking for its own hub rather than stopping.
    let _ = wait_line(&lines, &mut seen, Duration::from_secs(5), |_| false);
    let after = seen
        .iter()
        .skip_while(|l| !l.contains(&again))
        .skip(1)
        .filter(|l| l.contains("connected to") || l.contains("moved to"))
        .count();
    assert_eq!(after, 0, "{seen:#?}");
    assert!(stored().contains("host = \"10.231.7.3\""), "{}", stored());
    assert!(device.try_wait().unwrap().is_none(), "{seen:#?}");
    let _ = device.kill();
    let _ = device.wait();
}

#[test]
#[ignore = "needs root and iproute2; run with -- --ignored"]
fn a_reload_withdraws_and_restores_the_advertisement_and_the_window_stays_open() {
    require_netns();
    let ns = TwoNamespaces::new("r");
    let hub = hub_in(&ns);
    let advertised = format!("mqtt={}", hub.mqtt.port());
    discover_until(&ns, |s| s.contains(&advertised));
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    open_pairing(&hub, "Ada", "robot", "10m");
    discover_until(&ns, |s| s.contains(&advertised) && s.contains("pair=1"));

    let on = std::fs::read_to_string(&hub.config).unwrap();
    let off = on.replace(
        "[discovery]\nenabled = true",
        "[discovery]\nenabled = false",
    );
    assert_ne!(on, off);
    std::fs::write(&hub.config, &off).unwrap();
    crate::reload::sighup(&hub, "configuration reloaded");
    assert!(
        hub.wait_log("discovery turned off by a reload"),
        "{}",
        hub.log()
    );
    // Withdrawn with goodbye packets: a fresh browser finds nothing.
    discover_until(&ns, |s| !s.contains(&advertised));

    std::fs::write(&hub.config, &on).unwrap();
    crate::reload::sighup(&hub, "configuration reloaded");
    // Back, announcing the window opened before both reloads.
    discover_until(&ns, |s| s.contains(&advertised) && s.contains("pair=1"));
}
