//! The family web app in a real browser: Debian's chromium, headless at
//! phone size, driven through chromium-driver by Python selenium
//! (tests/e2e/web_browser.py), against the real hub and the real reference
//! device. Ignored by a plain `cargo test` (it needs chromium,
//! chromium-driver and python3-selenium, which `.ci/run` installs); run
//! with `-- --ignored`. Screenshots land in target/web-screenshots/.

use std::process::{Command, Stdio};

use crate::support::*;
use crate::web::web_link;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/web_browser.py");
const SHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/web-screenshots");

/// Whether chromium, its driver and selenium are here. CI installs them,
/// so there a missing one fails the test instead of skipping it.
fn browser_ready() -> bool {
    let ready = have("chromium")
        && have("chromedriver")
        && Command::new("python3")
            .args(["-c", "import selenium, cryptography"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ready || std::env::var_os("CI").is_none(),
        "chromium, chromium-driver and python3-selenium are missing \
         (apt-get install chromium chromium-driver python3-selenium)"
    );
    if !ready {
        eprintln!("skipped: chromium, chromium-driver or python3-selenium is not installed");
    }
    ready
}

#[test]
#[ignore = "needs chromium, chromium-driver and python3-selenium (run with --ignored)"]
fn a_family_uses_the_web_app_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let hub = TestHub::start();
    hub.hearth_ok(&["member", "add", "mum", "--role", "parent"]);
    let (_, url) = web_link(&hub, "mum");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(&url)
        .env("HEARTH", HEARTH)
        .env("HEARTH_DEVICE", hearth_device_bin())
        .env("HEARTH_SOCKET", &hub.socket)
        .env("WORK", work.path())
        .env("SHOTS", SHOTS)
        .env("SERVER_PEM", hub.data.join("server.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("web_browser: all steps passed"),
        "web_browser.py failed:\n{stdout}\n{}\nhub log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        hub.log()
    );
    print!("{stdout}");
}
