//! The bridge against a real Mosquitto started by the test, as Home
//! Assistant's broker: discovery configs, telemetry, a command from the
//! Home Assistant side, disabling, a device never enabled, the generic
//! mode's mapping, and a broker restart survived without losing a QoS 1
//! message. Ignored by a plain `cargo test`; `.ci/run` installs mosquitto
//! and runs these with `-- --ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::support::*;

const META: &str = r#"{"v":1,"maker":"Acme Toys","model":"Robo 2","firmware":"1.4.0",
  "telemetry":[{"name":"temp","type":"number","unit":"°C"}],
  "commands":[{"name":"beep"},{"name":"led","args":[{"name":"on","type":"boolean"}]}]}"#;

/// A Mosquitto on loopback: a TLS listener for the hub (with a CA made
/// here) and a plain one for the test, which plays Home Assistant.
struct Mosquitto {
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls_port: u16,
    plain_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mosquitto {
    fn start() -> Mosquitto {
        assert!(
            have("mosquitto") || Path::new("/usr/sbin/mosquitto").exists(),
            "mosquitto is not installed (apt-get install mosquitto)"
        );
        let dir = tempfile::tempdir().unwrap();
        // A CA and a server certificate for 127.0.0.1, as a home broker
        // with its own CA would have.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test broker CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        let mut broker = Mosquitto {
            dir,
            child: None,
            tls_port: free_port(),
            plain_port: free_port(),
        };
        broker.launch();
        broker
    }

    fn ca(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// Starts (or starts again) on the same ports, with the sessions it
    /// saved on its way down.
    fn launch(&mut self) {
        let d = self.dir.path();
        let config = format!(
            "per_listener_settings false\nallow_anonymous true\nuser root\n\
             persistence true\npersistence_location {data}/\nautosave_interval 1\n\
             log_dest stderr\n\
             listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             listener {plain} 127.0.0.1\n",
            data = d.display(),
            tls = self.tls_port,
            plain = self.plain_port,
            ca = d.join("ca.pem").display(),
            cert = d.join("server.pem").display(),
            key = d.join("server.key").display(),
        );
        std::fs::write(d.join("mosquitto.conf"), config).unwrap();
        let bin = if have("mosquitto") {
            "mosquitto".to_owned()
        } else {
            "/usr/sbin/mosquitto".to_owned()
        };
        let log = std::fs::File::create(d.join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.plain_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.tls_port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mosquitto did not start: {}",
            std::fs::read_to_string(d.join("mosquitto.log")).unwrap_or_default()
        );
    }

    /// Stops it the way a service manager would (SIGTERM; it saves its
    /// sessions) and waits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered,
    /// as a broker that hangs.
    fn freeze(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status();
        }
    }

    /// Kills it outright (SIGKILL): no goodbye to anyone, nothing saved
    /// since its last autosave.
    fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The test's own client, as Home Assistant.
    fn client(&self, id: &str, clean: bool) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(id, "127.0.0.1", self.plain_port);
        options.set_keep_alive(Duration::from_secs(10));
        options.set_clean_session(clean);
        AsyncClient::new(options, 64)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything that arrives within `limit`, by topic (last payload wins,
/// each arrival counted), until `done` says enough.
async fn collect(
    eventloop: &mut EventLoop,
    limit: Duration,
    mut done: impl FnMut(&BTreeMap<String, Vec<Vec<u8>>>) -> bool,
) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut seen: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done(&seen) {
            return seen;
        }
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return seen,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                seen.entry(p.topic.clone())
                    .or_default()
                    .push(p.payload.to_vec());
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A device connected to the hub, its description retained, listening
/// for commands.
async fn toy_online(hub: &TestHub, toy: &Device) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(mqtt_v4(hub, toy, &toy.id), 64);
    v4_connected(&mut eventloop).await.unwrap();
    client
        .subscribe(format!("hearth/v1/dev/{}/cmd/#", toy.id), QoS::AtLeastOnce)
        .await
        .unwrap();
    v4_wait_suback(&mut eventloop).await;
    client
        .publish(
            format!("hearth/v1/dev/{}/meta", toy.id),
            QoS::AtLeastOnce,
            true,
            META.as_bytes().to_vec(),
        )
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("the hub did not take the description: {other:?}"),
        }
    }
    (client, eventloop)
}

/// Publishes QoS 1 and waits for each PUBACK from the hub.
async fn publish_acked(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    messages: &[(String, String)],
) {
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < messages.len() {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("the hub did not acknowledge: {other:?}"),
        }
    }
}

/// Drives a client until the broker acknowledged its PUBLISH.
async fn until_acked(eventloop: &mut EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

/// A hub bridged over TLS to `broker` in Home Assistant mode.
fn home_assistant_hub(broker: &Mosquitto, enabled: bool) -> TestHub {
    TestHub::start_with(
        &format!(
            "[bridge]\nenabled = {enabled}\nhost = \"127.0.0.1\"\nport = {}\nca_file = \"{}\"\n",
            broker.tls_port,
            broker.ca()
        ),
        &[],
    )
}

fn bridge_list(hub: &TestHub) -> String {
    hub.hearth_ok(&["bridge", "list"])
}

fn wait_connected(hub: &TestHub) {
    for _ in 0..100 {
        if bridge_list(hub).contains("on, connected") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the bridge did not connect: {}\n{}",
        bridge_list(hub),
        hub.log()
    );
}

#[test]
#[ignore = "needs mosquitto; run with -- --ignored"]
fn home_assistant_sees_only_enabled_devices_and_drives_them() {
    let broker = Mosquitto::start();
    let hub = home_assistant_hub(&broker, true);
    let toy = hub.device("Ada", "child");
    let other = hub.device("Ada", "child");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_connected(&hub);
        let (ha, mut ha_events) = broker.client("home-assistant", true);
        ha.subscribe("homeassistant/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        ha.subscribe("hearth/#", QoS::AtLeastOnce).await.unwrap();
        v4_wait_suback(&mut ha_events).await;
        v4_wait_suback(&mut ha_events).await;

        let (toy_client, mut toy_events) = toy_online(&hub, &toy).await;
        let (other_client, mut other_events) = toy_online(&hub, &other).await;
        let (tx, id) = (&toy_client, &toy.id);
        // Described and online, but not enabled: nothing goes.
        publish_acked(
            &other_client,
            &mut other_events,
            &[(format!("hearth/v1/dev/{}/tele/temp", other.id), "19".into())],
        )
        .await;
        hub.hearth_ok(&["bridge", "enable", id]);

        let config = format!("homeassistant/sensor/{id}/tele_temp/config");
        let button = format!("homeassistant/button/{id}/cmd_beep/config");
        let availability = format!("hearth/{id}/availability");
        let seen = collect(&mut ha_events, Duration::from_secs(15), |seen| {
            seen.contains_key(&config)
                && seen.contains_key(&button)
                && seen
                    .get(&availability)
                    .is_some_and(|p| p.last().map(Vec::as_slice) == Some(b"online".as_slice()))
        })
        .await;
        let doc: serde_json::Value =
            serde_json::from_slice(seen.get(&config).and_then(|p| p.last()).unwrap_or_else(|| {
                panic!(
                    "no discovery config; saw {:?}",
                    seen.keys().collect::<Vec<_>>()
                )
            }))
            .unwrap();
        assert_eq!(doc["unit_of_measurement"], "°C");
        assert_eq!(doc["state_topic"], format!("hearth/{id}/tele/temp"));
        assert_eq!(doc["availability_topic"], availability);
        assert_eq!(doc["unique_id"], format!("hearth_{id}_tele_temp"));
        assert_eq!(doc["device"]["model"], "Robo 2");
        // Ids, never the member's name or the device's label.
        let text = doc.to_string();
        assert!(
            !text.contains("Ada") && !text.contains("test device"),
            "{text}"
        );
        let beep: serde_json::Value =
            serde_json::from_slice(seen[&button].last().unwrap()).unwrap();
        assert_eq!(beep["command_topic"], format!("hearth/{id}/cmd/beep"));

        // Telemetry flows.
        let state = format!("hearth/{id}/tele/temp");
        publish_acked(
            tx,
            &mut toy_events,
            &[(format!("hearth/v1/dev/{id}/tele/temp"), "21.5".into())],
        )
        .await;
        let seen2 = collect(&mut ha_events, Duration::from_secs(10), |s| {
            s.contains_key(&state)
        })
        .await;
        assert_eq!(
            seen2.get(&state).map(|p| p[0].as_slice()),
            Some(b"21.5".as_slice())
        );

        // A button pressed in Home Assistant reaches the device.
        ha.publish(
            format!("hearth/{id}/cmd/beep"),
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
        until_acked(&mut ha_events).await;
        let command = v4_next_publish(&mut toy_events, Duration::from_secs(10))
            .await
            .expect("the command did not reach the device");
        assert_eq!(command.topic, format!("hearth/v1/dev/{id}/cmd/beep"));
        assert_eq!(command.payload.as_ref(), b"{}");
        // A command for a device that is not bridged stops at the bridge.
        ha.publish(
            format!("hearth/{}/cmd/beep", other.id),
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
        until_acked(&mut ha_events).await;
        let rest = collect(&mut ha_events, Duration::from_secs(2), |_| false).await;
        assert!(
            v4_next_publish(&mut other_events, Duration::from_secs(2))
                .await
                .is_none(),
            "a device not enabled received a command from the other broker"
        );
        for topic in seen.keys().chain(seen2.keys()).chain(rest.keys()) {
            assert!(
                !topic.contains(&other.id),
                "{topic} left the hub for a device not enabled"
            );
            assert!(
                !topic.contains("inbox") && !topic.contains("outbox"),
                "{topic}"
            );
        }

        // Disabling takes the configs back: empty retained messages, and a
        // newcomer finds none.
        hub.hearth_ok(&["bridge", "disable", id]);
        let cleared = collect(&mut ha_events, Duration::from_secs(10), |s| {
            s.get(&config)
                .is_some_and(|p| p.last().is_some_and(Vec::is_empty))
                && s.get(&button)
                    .is_some_and(|p| p.last().is_some_and(Vec::is_empty))
        })
        .await;
        assert!(
            cleared
                .get(&config)
                .is_some_and(|p| p.last().is_some_and(Vec::is_empty)),
            "the discovery config was not removed: {cleared:?}"
        );
        let (late, mut late_events) = broker.client("late-comer", true);
        late.subscribe("homeassistant/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let retained = collect(&mut late_events, Duration::from_secs(2), |_| false).await;
        let left: BTreeSet<&String> = retained
            .iter()
            .filter(|(t, p)| t.contains(id.as_str()) && p.iter().any(|p| !p.is_empty()))
            .map(|(t, _)| t)
            .collect();
        assert!(
            left.is_empty(),
            "retained configs left after disabling: {left:?}"
        );
        drop(toy_client);
        drop(other_client);
    });
}

#[test]
#[ignore = "needs mosquitto; run with -- --ignored"]
fn generic_mode_maps_telemetry_and_survives_a_broker_restart() {
    let mut broker = Mosquitto::start();
    // Plain TCP, allowed because the other broker is on loopback.
    let hub = TestHub::start_with(
        &format!(
            "[bridge]\nenabled = true\nmode = \"generic\"\ntls = false\nhost = \"127.0.0.1\"\n\
             port = {}\nqueue_max = 50\nout = [{{ local = \"tele/#\", remote = \"school/toys\", qos = 1 }}]\n\
             [metrics]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
            broker.plain_port
        ),
        &[],
    );
    let toy = hub.device("Ada", "child");
    let id = toy.id.clone();
    hub.hearth_ok(&["bridge", "enable", &id]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_connected(&hub);
        // The school's side keeps a persistent session, so it gets what
        // arrives while it reconnects too.
        let (school, mut school_events) = broker.client("school", false);
        school
            .subscribe("school/toys/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        v4_wait_suback(&mut school_events).await;
        let (toy_client, mut toy_events) = toy_online(&hub, &toy).await;
        let seq = |n: u32| (format!("hearth/v1/dev/{id}/tele/seq"), n.to_string());
        publish_acked(&toy_client, &mut toy_events, &[seq(0)]).await;
        let remote = format!("school/toys/{id}/tele/seq");
        let seen = collect(&mut school_events, Duration::from_secs(10), |s| {
            s.contains_key(&remote)
        })
        .await;
        assert_eq!(
            seen.get(&remote).map(|p| p[0].as_slice()),
            Some(b"0".as_slice())
        );
        // The description is not mapped here, so it does not go.
        assert!(!seen.keys().any(|t| t.ends_with("/meta")), "{seen:?}");

        // The school's side goes offline; its session is saved (autosave
        // every second).
        drop(school);
        drop(school_events);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The broker hangs while the bridge sends: these are written to
        // it but never acknowledged...
        broker.freeze();
        let in_flight: Vec<(String, String)> = (1..=10).map(seq).collect();
        publish_acked(&toy_client, &mut toy_events, &in_flight).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // ...then dies, and the device goes on sending while it is down.
        broker.crash();
        let while_down: Vec<(String, String)> = (11..=20).map(seq).collect();
        publish_acked(&toy_client, &mut toy_events, &while_down).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.launch();
        let (_school, mut school_events) = broker.client("school", false);
        let got = collect(&mut school_events, Duration::from_secs(30), |s| {
            s.get(&remote).is_some_and(|p| {
                let values: BTreeSet<&[u8]> = p.iter().map(Vec::as_slice).collect();
                (1..=20u32).all(|n| values.contains(n.to_string().as_bytes()))
            })
        })
        .await;
        let values: BTreeSet<String> = got
            .get(&remote)
            .map(|p| {
                p.iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<u32> = (1..=20)
            .filter(|n| !values.contains(&n.to_string()))
            .collect();
        assert!(
            missing.is_empty(),
            "QoS 1 telemetry lost across the broker restart: {missing:?}\n{}",
            hub.log()
        );
        let scrape = || {
            let address = crate::metrics::metrics_address(&hub).expect("metrics listener");
            crate::metrics::samples(&crate::metrics::get(&address, "/metrics").1)
        };
        let now = scrape();
        assert_eq!(now["hearth_bridge_connected"], 1.0);
        assert!(
            now["hearth_bridge_messages_total{direction=\"out\"}"] >= 21.0,
            "{now:?}"
        );

        // Away longer than the queue holds: the oldest go, counted and
        // audited by the device's id, and the newest still arrive.
        drop(_school);
        drop(school_events);
        broker.stop();
        let batch: Vec<(String, String)> = (100..160).map(seq).collect();
        publish_acked(&toy_client, &mut toy_events, &batch).await;
        let mut held = scrape();
        for _ in 0..50 {
            if held["hearth_bridge_drops_total"] >= 10.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            held = scrape();
        }
        assert_eq!(held["hearth_bridge_connected"], 0.0, "{held:?}");
        assert_eq!(held["hearth_bridge_queue_messages"], 50.0, "{held:?}");
        assert_eq!(held["hearth_bridge_drops_total"], 10.0, "{held:?}");
        let audited = wait_audit(&hub, |e| {
            e.event == "bridge"
                && e.action.as_deref() == Some("drop")
                && e.device.map(|d| d.to_string()) == Some(id.clone())
        })
        .unwrap_or_else(|| panic!("no audited drop: {:#?}", audit_entries(&hub)));
        let text = format!("{audited:?}");
        assert!(
            !text.contains("Ada") && !text.contains("test device"),
            "{text}"
        );
        broker.launch();
        let (_school, mut school_events) = broker.client("school", false);
        let got = collect(&mut school_events, Duration::from_secs(30), |s| {
            s.get(&remote).is_some_and(|p| {
                let values: BTreeSet<&[u8]> = p.iter().map(Vec::as_slice).collect();
                (110..160u32).all(|n| values.contains(n.to_string().as_bytes()))
            })
        })
        .await;
        let values: BTreeSet<String> = got
            .get(&remote)
            .map(|p| {
                p.iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<u32> = (110..160)
            .filter(|n| !values.contains(&n.to_string()))
            .collect();
        assert!(missing.is_empty(), "within the bound, lost: {missing:?}");
        drop(toy_client);
    });
}

/// Without any broker: the opt-in itself, through the real `hearth`
/// binary and admin socket. Revoking a device drops its bridging, and a
/// revoked device cannot be bridged again.
#[test]
fn bridging_is_opt_in_per_device_and_revocation_drops_it() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let other = hub.device("Ada", "child");
    let list = hub.hearth_ok(&["bridge", "list"]);
    assert!(list.contains("bridge: off"), "{list}");
    assert!(list.contains("no device is bridged"), "{list}");
    let enabled = hub.hearth_ok(&["bridge", "enable", &toy.id]);
    assert!(enabled.contains("is bridged"), "{enabled}");
    assert!(
        enabled.contains("the bridge itself is off"),
        "a parent is told the bridge is off in the config: {enabled}"
    );
    let again = hub.hearth_ok(&["bridge", "enable", &toy.id]);
    assert!(again.contains("nothing changed"), "{again}");
    let list = hub.hearth_ok(&["bridge", "list"]);
    assert!(
        list.contains(&toy.id) && !list.contains(&other.id),
        "{list}"
    );
    // Enabling is audited by id, never by name or label.
    let entry = wait_audit(&hub, |e| e.action.as_deref() == Some("bridge-enable"))
        .expect("bridge-enable audited");
    assert_eq!(entry.device.map(|d| d.to_string()), Some(toy.id.clone()));
    hub.hearth_ok(&["device", "revoke", &toy.id]);
    let list = hub.hearth_ok(&["bridge", "list"]);
    assert!(
        !list.contains(&toy.id),
        "a revoked device stays bridged: {list}"
    );
    let refused = hub.hearth(&["bridge", "enable", &toy.id]);
    assert!(!refused.status.success(), "a revoked device was bridged");
    let disabled = hub.hearth_ok(&["bridge", "disable", &other.id]);
    assert!(disabled.contains("was not bridged"), "{disabled}");
}

#[test]
#[ignore = "needs mosquitto; run with -- --ignored"]
fn a_reload_turns_the_bridge_on_without_a_restart() {
    let broker = Mosquitto::start();
    let hub = home_assistant_hub(&broker, false);
    let pid = hub.pid();
    assert!(bridge_list(&hub).contains("off"), "{}", bridge_list(&hub));
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replace("[bridge]\nenabled = false", "[bridge]\nenabled = true"),
    )
    .unwrap();
    crate::reload::sighup(&hub, "configuration reloaded");
    wait_connected(&hub);
    assert_eq!(hub.pid(), pid, "the same process: no restart");
}

#[test]
#[ignore = "needs mosquitto; run with -- --ignored"]
fn what_waited_for_a_device_no_longer_shared_is_never_sent() {
    let mut broker = Mosquitto::start();
    let hub = TestHub::start_with(
        &format!(
            "[bridge]\nenabled = true\nmode = \"generic\"\ntls = false\nhost = \"127.0.0.1\"\n\
             port = {}\nout = [{{ local = \"tele/#\", remote = \"school/toys\", qos = 1 }}]\n",
            broker.plain_port
        ),
        &[],
    );
    let toy = hub.device("Ada", "child");
    let kept = hub.device("Ada", "child");
    for id in [&toy.id, &kept.id] {
        hub.hearth_ok(&["bridge", "enable", id]);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_connected(&hub);
        let (toy_client, mut toy_events) = toy_online(&hub, &toy).await;
        let (kept_client, mut kept_events) = toy_online(&hub, &kept).await;
        // The other broker is away while both send...
        broker.stop();
        let secret = (
            format!("hearth/v1/dev/{}/tele/diary", toy.id),
            "queued before the parent said no".to_owned(),
        );
        publish_acked(&toy_client, &mut toy_events, &[secret]).await;
        let fine = (
            format!("hearth/v1/dev/{}/tele/temp", kept.id),
            "21".to_owned(),
        );
        publish_acked(&kept_client, &mut kept_events, &[fine]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // ...and a parent stops sharing one of them before it is back.
        hub.hearth_ok(&["bridge", "disable", &toy.id]);
        broker.launch();
        let (school, mut school_events) = broker.client("school-check", true);
        school
            .subscribe("school/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        v4_wait_suback(&mut school_events).await;
        wait_connected(&hub);
        let kept_topic = format!("school/toys/{}/tele/temp", kept.id);
        let seen = collect(&mut school_events, Duration::from_secs(10), |s| {
            s.contains_key(&kept_topic)
        })
        .await;
        assert!(
            seen.contains_key(&kept_topic),
            "the shared device's telemetry arrives: {seen:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let late = collect(&mut school_events, Duration::from_millis(500), |_| false).await;
        assert!(
            !seen
                .keys()
                .chain(late.keys())
                .any(|t| t.contains(toy.id.as_str())),
            "telemetry of a device no longer shared went out: {seen:?} {late:?}"
        );
        drop((toy_client, kept_client));
    });
}

#[test]
#[ignore = "needs mosquitto; run with -- --ignored"]
fn turning_the_bridge_off_by_reload_takes_back_every_entry() {
    let broker = Mosquitto::start();
    let hub = home_assistant_hub(&broker, true);
    let toy = hub.device("Ada", "child");
    let id = toy.id.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_connected(&hub);
        let (toy_client, _toy_events) = toy_online(&hub, &toy).await;
        hub.hearth_ok(&["bridge", "enable", &id]);
        // Everything the bridge published about the device, as retained
        // on the broker: a newcomer sees it.
        let retained_about = |seen: &BTreeMap<String, Vec<Vec<u8>>>| -> BTreeSet<String> {
            seen.iter()
                .filter(|(t, p)| t.contains(id.as_str()) && p.last().is_some_and(|p| !p.is_empty()))
                .map(|(t, _)| t.clone())
                .collect()
        };
        let mut published = BTreeSet::new();
        for _ in 0..50 {
            let (look, mut look_events) = broker.client("look", true);
            look.subscribe("homeassistant/#", QoS::AtLeastOnce)
                .await
                .unwrap();
            look.subscribe("hearth/#", QoS::AtLeastOnce).await.unwrap();
            let seen = collect(&mut look_events, Duration::from_millis(300), |_| false).await;
            published = retained_about(&seen);
            if published.len() >= 3 {
                break;
            }
        }
        assert!(
            published.len() >= 3,
            "discovery entries and availability: {published:?}"
        );

        let text = std::fs::read_to_string(&hub.config).unwrap();
        std::fs::write(
            &hub.config,
            text.replace("[bridge]\nenabled = true", "[bridge]\nenabled = false"),
        )
        .unwrap();
        crate::reload::sighup(&hub, "configuration reloaded");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (look, mut look_events) = broker.client("look-after", true);
        look.subscribe("homeassistant/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        look.subscribe("hearth/#", QoS::AtLeastOnce).await.unwrap();
        let seen = collect(&mut look_events, Duration::from_secs(1), |_| false).await;
        let left = retained_about(&seen);
        assert!(
            left.is_empty(),
            "left on the broker after the bridge was turned off: {left:?} (had {published:?})\n{}",
            hub.log()
        );
        drop(toy_client);
    });
}
