//! Reloading the configuration with SIGHUP (what `systemctl reload` sends):
//! new limits reach new connections while connections and pairing windows
//! stay; a bad file is refused with the message a start prints and the old
//! settings stay; `hearth status` says when the settings were read; the
//! privacy report follows a reloaded retention.

use std::time::Duration;

use hearth_protocol::admin::{AdminRequest, AdminResponse};

use crate::support::*;

/// Sends SIGHUP to the hub and waits until the reload has been handled
/// (`what` is "configuration reloaded" or "reload refused").
pub fn sighup(hub: &TestHub, what: &str) {
    let before = hub.log().matches(what).count();
    let out = std::process::Command::new("kill")
        .args(["-HUP", &hub.pid().to_string()])
        .output()
        .expect("run kill");
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hub.log().matches(what).count() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} after SIGHUP:\n{}",
            hub.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The config file with `extra` appended (sections the start did not set).
fn rewrite(hub: &TestHub, base: &str, extra: &str) {
    std::fs::write(&hub.config, format!("{base}{extra}")).unwrap();
}

/// A QoS 0 PUBLISH of `len` payload bytes to the device's telemetry.
fn telemetry(device: &Device, len: usize) -> Vec<u8> {
    let topic = format!("hearth/v1/dev/{}/tele/big", device.id);
    publish_packet(false, topic.as_bytes(), 0, false, 0, None, &vec![b'a'; len])
}

/// Whether the connection still answers a PINGREQ.
async fn answers_ping(raw: &mut Raw) -> bool {
    raw.send(&[0xc0, 0]).await;
    raw.next().await == Next::Data(vec![0xd0, 0])
}

#[tokio::test]
async fn a_reload_gives_new_connections_the_new_limit_and_keeps_connections_and_windows() {
    let hub = TestHub::start_with("[limits]\nmax_payload = 65536\n", &[]);
    let base = std::fs::read_to_string(&hub.config).unwrap();
    let early = hub.device("Ada", "child");
    let late = hub.device("Ada", "child");
    let mut connected = Raw::connect(&hub, &early, false).await;
    let (window, _, _) = open_pairing(&hub, "Ada", "robot", "10m");

    let smaller = base.replace("max_payload = 65536", "max_payload = 4096");
    assert_ne!(smaller, base);
    rewrite(&hub, &smaller, "");
    sighup(&hub, "configuration reloaded");
    assert!(
        hub.log().contains("applied=limits.max_payload"),
        "{}",
        hub.log()
    );

    // The connection made before the reload is still up, with the limit
    // it was accepted under: a 10 000-byte packet passes.
    assert!(answers_ping(&mut connected).await, "{}", hub.log());
    connected.send(&telemetry(&early, 10_000)).await;
    assert!(answers_ping(&mut connected).await, "{}", hub.log());
    // A connection made after it has the new limit.
    let mut fresh = Raw::connect(&hub, &late, false).await;
    fresh.send(&telemetry(&late, 10_000)).await;
    assert_eq!(fresh.next().await, Next::Closed);
    // The pairing window opened before the reload is still open.
    let windows = hub.hearth_ok(&["pair", "--list"]);
    assert!(
        windows.contains("robot") && windows.contains(&window.to_string()),
        "{windows}"
    );
    // Devices read the limits they must keep from hub/info: now the new one.
    assert_eq!(connected.subscribe(1, &["hearth/v1/hub/info"]).await, [0]);
    match connected.next().await {
        Next::Data(publish) => {
            let text = String::from_utf8_lossy(&publish);
            assert!(text.contains("\"max_packet_bytes\":4096"), "{text}");
        }
        other => panic!("hub/info expected, got {other:?}"),
    }
    let AdminResponse::Status(status) = admin_request(&hub.socket, &AdminRequest::Status).unwrap()
    else {
        panic!("status expected");
    };
    assert_eq!(status.connected.len(), 1, "{status:?}");
    assert_eq!(status.config.unwrap().reloads, 1);
}

#[tokio::test]
async fn a_bad_file_is_refused_with_the_start_message_and_the_old_settings_stay() {
    let hub = TestHub::start_with("[limits]\nmax_payload = 4096\n", &[]);
    let base = std::fs::read_to_string(&hub.config).unwrap();
    let toy = hub.device("Ada", "child");
    let mut connected = Raw::connect(&hub, &toy, false).await;

    for (bad, key) in [
        (
            base.replace("max_payload = 4096", "max_payload = 10"),
            "limits.max_payload",
        ),
        (format!("{base}[limits2]\nx = 1\n"), "limits2"),
        (
            base.replace("max_payload = 4096", "max_payload = "),
            "limits.max_payload",
        ),
    ] {
        rewrite(&hub, &bad, "");
        // What a start with this file says: `check-config` prints the
        // same error, and so does a start.
        let check = std::process::Command::new(HEARTHD)
            .arg("check-config")
            .arg(&hub.config)
            .output()
            .unwrap();
        assert_eq!(check.status.code(), Some(78));
        let stderr = String::from_utf8_lossy(&check.stderr);
        let message = stderr.trim().strip_prefix("hearthd: ").unwrap().to_owned();
        assert!(message.contains(key), "{message}");
        let other = tempfile::tempdir().unwrap();
        let start = std::process::Command::new(HEARTHD)
            .arg("--config")
            .arg(&hub.config)
            .arg("--data-dir")
            .arg(other.path())
            .output()
            .unwrap();
        assert_eq!(start.status.code(), Some(78));
        let start_log = String::from_utf8_lossy(&start.stderr).into_owned()
            + &String::from_utf8_lossy(&start.stdout);
        assert!(start_log.contains(&message), "{start_log}");

        sighup(&hub, "reload refused");
        let log = hub.log();
        let line = log
            .lines()
            .rfind(|l| l.contains(&message))
            .unwrap_or_else(|| panic!("{message:?} not logged:\n{log}"));
        assert!(line.contains("ERROR"), "{line}");

        let status = hub.hearth_ok(&["status"]);
        assert!(status.contains("refused"), "{status}");
        assert!(status.contains(key), "{status}");
    }
    // The hub still serves, with its old limit: a new connection is
    // closed for a 10 000-byte packet, as before the refused reloads.
    assert!(answers_ping(&mut connected).await, "{}", hub.log());
    let other = hub.device("Ada", "child");
    let mut fresh = Raw::connect(&hub, &other, false).await;
    fresh.send(&telemetry(&other, 10_000)).await;
    assert_eq!(fresh.next().await, Next::Closed);
    let reloads = audit_entries(&hub)
        .into_iter()
        .filter(|e| e.action.as_deref() == Some("config-reload"))
        .map(|e| e.reason.unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(reloads, ["refused", "refused", "refused"]);

    // A good file again is applied, and the refusal is no longer shown.
    rewrite(&hub, &base, "");
    sighup(&hub, "configuration reloaded");
    let status = hub.hearth_ok(&["status"]);
    assert!(!status.contains("refused"), "{status}");
    assert!(status.contains("reloaded once"), "{status}");
}

/// The `loaded ...` time of `hearth status`'s config line.
fn loaded_at(status: &str) -> String {
    let line = status
        .lines()
        .find(|l| l.starts_with("config: "))
        .unwrap_or_else(|| panic!("no config line: {status}"));
    let (_, after) = line.split_once(" loaded ").unwrap();
    after.split(" UTC").next().unwrap().to_owned()
}

#[tokio::test]
async fn status_says_which_file_was_loaded_and_when() {
    let hub = TestHub::start();
    let status = hub.hearth_ok(&["status"]);
    let file = hub.config.display().to_string();
    assert!(
        status.contains(&format!("config: {file} loaded ")),
        "{status}"
    );
    assert!(!status.contains("reloaded"), "{status}");
    let first = loaded_at(&status);
    std::thread::sleep(Duration::from_millis(1100));
    sighup(&hub, "configuration reloaded");
    let status = hub.hearth_ok(&["status"]);
    assert!(status.contains("(reloaded once)"), "{status}");
    assert_ne!(loaded_at(&status), first, "{status}");
    sighup(&hub, "configuration reloaded");
    assert!(hub.hearth_ok(&["status"]).contains("(reloaded 2 times)"));
}

#[tokio::test]
async fn the_privacy_report_follows_a_reloaded_retention_and_listeners_wait_for_a_restart() {
    let hub = TestHub::start();
    let base = std::fs::read_to_string(&hub.config).unwrap();
    let report = hub.hearth_ok(&["privacy", "report"]);
    assert!(report.contains("kept 30 days"), "{report}");
    assert!(report.contains("at most 7 days"), "{report}");

    let mqtt = hub.mqtt;
    let moved = base.replace(
        "[mqtt]\nlisten = \"127.0.0.1:0\"",
        "[mqtt]\nlisten = \"127.0.0.1:1\"",
    );
    assert_ne!(moved, base);
    rewrite(
        &hub,
        &moved,
        "[audit]\nretention_days = 3\n[mailbox]\nexpiry_secs = 3600\n",
    );
    sighup(&hub, "configuration reloaded");
    let report = hub.hearth_ok(&["privacy", "report"]);
    assert!(report.contains("kept 3 days"), "{report}");
    assert!(report.contains("at most 3600 seconds"), "{report}");
    // The audit's old period is gone (web.idle_days, also 30 days, stays).
    assert!(
        !report
            .lines()
            .any(|l| l.trim_start().starts_with("audit entries") && l.contains("30 days")),
        "{report}"
    );
    // The listener stays where it was bound, and the log says why.
    assert!(
        hub.log().contains("mqtt.listen changes at restart"),
        "{}",
        hub.log()
    );
    let status = hub.hearth_ok(&["status"]);
    assert!(status.contains(&mqtt.to_string()), "{status}");
    let toy = hub.device("Ada", "child");
    let mut raw = Raw::connect(&hub, &toy, false).await;
    assert!(answers_ping(&mut raw).await);
}
