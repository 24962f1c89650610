//! The C toy of `examples/c/` against the real hub, built with `make` as a
//! toy maker would build it: paired by URI over EST, then meta, telemetry,
//! commands, the inbox (de-duplicated and acknowledged), a send and a
//! renewal, watched by a parent's device over real MQTT. Ignored by a plain
//! `cargo test` (it needs cc, make and Debian's libmosquitto-dev,
//! libssl-dev, libcurl4-openssl-dev and libcjson-dev, which `.ci/run`
//! installs); run with `-- --ignored`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::json;

use crate::sdk_support::{kill, mode, Parent, Running};
use crate::support::*;

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/c");

/// Whether cc, make and the libraries' headers are here (the
/// preprocessor finds them wherever the distribution puts them). CI
/// installs them, so there a missing one fails the test instead of
/// skipping it.
fn c_ready() -> bool {
    let headers = || {
        let mut cc = Command::new("cc")
            .args(["-E", "-x", "c", "-o", "/dev/null", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run cc");
        use std::io::Write;
        cc.stdin
            .take()
            .unwrap()
            .write_all(
                b"#include <mosquitto.h>\n#include <openssl/ssl.h>\n\
                  #include <curl/curl.h>\n#include <cjson/cJSON.h>\n",
            )
            .unwrap();
        cc.wait().is_ok_and(|s| s.success())
    };
    let ready = have("cc") && have("make") && headers();
    assert!(
        ready || std::env::var_os("CI").is_none(),
        "cc, make or a library is missing (apt-get install gcc make libmosquitto-dev \
         libssl-dev libcurl4-openssl-dev libcjson-dev)"
    );
    if !ready {
        eprintln!("skipped: cc, make or the toy's libraries are not installed");
    }
    ready
}

/// Builds the toy with its own Makefile (warnings are errors) into `out`.
fn build(out: &Path) -> PathBuf {
    let bin = out.join("hearth_toy");
    let made = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(SOURCE)
        .arg(format!("OUT={}", bin.display()))
        .output()
        .expect("run make");
    assert!(
        made.status.success(),
        "make failed: {}{}",
        String::from_utf8_lossy(&made.stdout),
        String::from_utf8_lossy(&made.stderr)
    );
    bin
}

/// Runs `hearth_toy ARGS` to the end.
fn toy(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hearth_toy")
}

fn toy_ok(bin: &Path, args: &[&str]) -> String {
    let out = toy(bin, args);
    assert!(
        out.status.success(),
        "hearth_toy {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `hearth_toy run DIR ARGS` in the background.
fn run_toy(bin: &Path, dir: &Path, args: &[&str]) -> Running {
    let mut toy = Command::new(bin);
    toy.args(["run", dir.to_str().unwrap()]).args(args);
    Running::start(toy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cc and the toy's C libraries; run with -- --ignored"]
async fn the_c_toy_pairs_reports_obeys_receives_once_sends_and_renews() {
    if !c_ready() {
        return;
    }
    let hub = TestHub::start();
    let bin = build(hub.dir.path());
    let bin = bin.as_path();
    let mum = hub.device("Mum", "parent");
    hub.hearth_ok(&["member", "add", "Ada", "--role", "child"]);
    let (_, _, uri) = open_pairing(&hub, "Ada", "c bear", "10m");
    let dir = hub.dir.path().join("c-bear");
    let dir_arg = dir.to_str().unwrap();

    // A URI whose CA pin is not this hub's: refused before the token is
    // sent, and nothing is written.
    let ca = uri.split("ca=").nth(1).unwrap().split('&').next().unwrap();
    let stranger = uri.replace(ca, &"0".repeat(64));
    let refused = toy(bin, &["pair", &stranger, dir_arg]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not match the pairing URI"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!dir.join("device.toml").exists());

    // Pairing: the id from the hub, private files, and no second pairing
    // over the first without --force.
    let id = toy_ok(bin, &["pair", &uri, dir_arg]).trim().to_owned();
    assert_eq!(id.len(), 26, "{id}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("device.key")), 0o600);
    assert!(std::fs::read_to_string(dir.join("device.toml"))
        .unwrap()
        .contains(&id));
    assert!(!toy(bin, &["pair", &uri, dir_arg]).status.success());
    assert!(hub.hearth_ok(&["device", "list"]).contains(&id));

    let mut parent = Parent::connect(&hub, &mum).await;
    assert!(
        parent
            .subscribe(&format!("hearth/v1/dev/{id}/tele/#"))
            .await
    );
    let mum_inbox = parent.inbox();
    assert!(parent.subscribe(&mum_inbox).await);

    // Running: telemetry arrives with the fields meta describes.
    let mut run = run_toy(bin, &dir, &["--interval", "0.3"]);
    let status = format!("hearth/v1/dev/{id}/tele/status");
    let (_, reading) = parent
        .publish_on(&status, Duration::from_secs(20), |v| v["seq"].is_u64())
        .await
        .unwrap_or_else(|| {
            panic!(
                "no telemetry: {}{}\n{}",
                run.said(),
                run.complained(),
                hub.log()
            )
        });
    assert!(reading["uptime_s"].is_u64() && reading["led"] == json!(false));

    // Meta, retained: a parent subscribing after the hub acknowledged it
    // gets it, with the retain flag, and with what a family page needs.
    assert!(
        run.wait_for("meta published", Duration::from_secs(10))
            .await,
        "the toy said nothing of meta: {}{}",
        run.said(),
        run.complained()
    );
    let meta_topic = format!("hearth/v1/dev/{id}/meta");
    assert!(parent.subscribe(&meta_topic).await, "meta: {}", hub.log());
    let (publish, meta) = parent
        .publish_on(&meta_topic, Duration::from_secs(10), |_| true)
        .await
        .expect("retained meta");
    assert!(publish.retain, "meta is retained");
    assert_eq!(meta["maker"], "Example Toys");
    assert_eq!(meta["model"], "C Bear");
    assert_eq!(meta["firmware"], "1.0.0");
    assert!(meta["telemetry"].as_array().is_some_and(|t| t
        .iter()
        .any(|f| f["name"] == "uptime_s" && f["type"] == "integer" && f["unit"] == "s")));
    // docs/schema/meta-v1.json: a unit, when given, is 1 to 16 characters.
    assert!(meta["telemetry"].as_array().unwrap().iter().all(|f| f
        .get("unit")
        .is_none_or(|u| u.as_str().is_some_and(|u| (1..=16).contains(&u.len())))));
    assert!(meta["commands"].as_array().is_some_and(|c| c
        .iter()
        .any(|c| c["name"] == "led" && c["args"][0]["name"] == "on")));

    // Garbage and unknown commands are ignored; the toy goes on and obeys
    // the next good one, visibly.
    parent
        .client
        .publish(
            format!("hearth/v1/dev/{id}/cmd/led"),
            QoS::AtLeastOnce,
            false,
            &b"\xff not json"[..],
        )
        .await
        .unwrap();
    parent
        .publish(format!("hearth/v1/dev/{id}/cmd/dance"), json!({}))
        .await;
    parent
        .publish(format!("hearth/v1/dev/{id}/cmd/led"), json!({"on": true}))
        .await;
    let led = format!("hearth/v1/dev/{id}/tele/led");
    parent
        .publish_on(&led, Duration::from_secs(10), |v| {
            v["led"] == json!(true) && v["cmd"] == "led"
        })
        .await
        .unwrap_or_else(|| panic!("command not obeyed: {}{}", run.said(), run.complained()));
    parent
        .publish_on(&status, Duration::from_secs(10), |v| {
            v["led"] == json!(true)
        })
        .await
        .expect("telemetry shows the LED on");

    // A message to Ada while the toy is frozen: the hub resends it every
    // few seconds, so on waking the toy reads it more than once. It is
    // shown once and acknowledged, and the mailbox empties.
    kill(&run.child, "STOP");
    let marker = format!("dinner-{}", std::process::id());
    parent
        .publish(
            format!("hearth/v1/dev/{}/outbox", mum.id),
            json!({"v": 1, "type": "send", "ref": "c-1", "to": "Ada", "kind": "text",
                   "body": format!("Dinner is ready! {marker}")}),
        )
        .await;
    let (_, stored) = parent
        .publish_on(&mum_inbox, Duration::from_secs(10), |v| {
            v["ref"] == "c-1" && v["status"] == "stored"
        })
        .await
        .expect("stored receipt");
    let message = stored["id"].as_str().unwrap().to_owned();
    assert!(hub.hearth_ok(&["mailbox"]).contains("1 waiting"));
    tokio::time::sleep(Duration::from_secs(8)).await;
    kill(&run.child, "CONT");
    parent
        .publish_on(&mum_inbox, Duration::from_secs(15), |v| {
            v["ref"] == "c-1" && v["status"] == "delivered" && v["device"] == json!(id)
        })
        .await
        .unwrap_or_else(|| panic!("not acknowledged: {}{}", run.said(), run.complained()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub.hearth_ok(&["mailbox"]).contains("empty") {
        assert!(Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        run.wait_for(&format!("message {message} again"), Duration::from_secs(5))
            .await,
        "the hub's resend was not read as a duplicate: {}",
        run.said()
    );
    let said = run.said();
    assert_eq!(
        said.matches(&format!("message {message} from Mum")).count(),
        1,
        "shown once: {said}"
    );
    assert!(said.contains(&marker), "{said}");
    assert!(said.contains("cmd dance ignored") && run.complained().contains("ignoring a message"));
    assert!(run.stop().await.success(), "{}", run.complained());
    eprintln!("the toy said:\n{}{}", run.said(), run.complained());

    // The toy sends: Mum's device gets it from the toy.
    let sent = toy_ok(bin, &["send", dir_arg, "Mum", "Hello from the bear"]);
    assert!(sent.starts_with("stored "), "{sent}");
    // Too long for the hub's limit (8 KiB of text by default, published on
    // hearth/v1/hub/info): refused by the toy itself, with the hub's figure.
    let long = "x".repeat(9000);
    let refused = toy(bin, &["send", dir_arg, "Mum", &long]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("the text is 9000 bytes; this hub takes at most 8192 bytes"),
        "{said}"
    );
    let (_, delivery) = parent
        .publish_on(&mum_inbox, Duration::from_secs(10), |v| {
            v["type"] == "delivery" && v["from"]["device"] == json!(id)
        })
        .await
        .expect("the toy's message reaches Mum");
    assert_eq!(delivery["body"], "Hello from the bear");
    assert_eq!(delivery["from"]["member"], "Ada");
    parent
        .publish(
            format!("hearth/v1/dev/{}/outbox", mum.id),
            json!({"v": 1, "type": "ack", "id": delivery["id"]}),
        )
        .await;

    // Renewal: a new key and certificate for the same id, which connect.
    let cert_before = std::fs::read(dir.join("device.pem")).unwrap();
    let key_before = std::fs::read(dir.join("device.key")).unwrap();
    assert_eq!(
        toy_ok(bin, &["renew", dir_arg]).trim(),
        format!("renewed {id}")
    );
    assert_ne!(std::fs::read(dir.join("device.pem")).unwrap(), cert_before);
    assert_ne!(std::fs::read(dir.join("device.key")).unwrap(), key_before);
    assert_eq!(mode(&dir.join("device.key")), 0o600);
    parent.drain();
    let once = toy(bin, &["run", dir_arg, "--interval", "0.2", "--count", "2"]);
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    parent
        .publish_on(&status, Duration::from_secs(10), |v| v["seq"] == 2)
        .await
        .expect("telemetry over the renewed certificate");

    // What the hub saw of the toy: no failing line (docs/TOYMAKERS.md).
    let check = hub.hearth(&["device", "check", &id]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && !report.contains("FAIL"),
        "{report}"
    );
    assert!(report.contains("pass  description"), "{report}");
    assert!(report.contains("pass  acknowledgements"), "{report}");

    // Revoked, the toy stops retrying and says why.
    hub.hearth_ok(&["device", "revoke", &id]);
    let mut revoked = run_toy(bin, &dir, &["--interval", "0.2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = revoked.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked toy still retries: {}",
            revoked.complained()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the revoked toy said:\n{}", revoked.complained());
    assert!(!status.success());
    assert!(
        revoked.complained().contains("revoked or removed"),
        "{}",
        revoked.complained()
    );
}
