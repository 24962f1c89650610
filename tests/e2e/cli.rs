//! `hearthd check-config` and `print-default-config`: what the package's
//! scripts and an administrator rely on (output lines and exit codes).

use std::path::Path;
use std::process::{Command, Output};

use crate::support::HEARTHD;

/// sysexits EX_CONFIG, as hearthd uses for a bad config.
const EX_CONFIG: i32 = 78;

fn hearthd(args: &[&str]) -> Output {
    Command::new(HEARTHD)
        .args(args)
        .output()
        .expect("run hearthd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_accepts_the_packaged_file() {
    let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/hearth.toml");
    let out = hearthd(&["check-config", packaged]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{packaged}: ok\n"));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn check_config_refuses_an_unknown_key_in_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "[mqtt]\nlisten_port = 1\n");
    let out = hearthd(&["check-config", &bad]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("mqtt.listen_port"), "{err}");
    assert!(err.contains(&bad), "{err}");
}

#[test]
fn check_config_refuses_a_bad_value_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "[dev]\nlisten = \"0.0.0.0:1883\"\n");
    let out = hearthd(&["check-config", &bad]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("dev.listen"), "{err}");

    let bad = write(dir.path(), "bad2.toml", "[limits]\nmax_payload = 10\n");
    let out = hearthd(&["check-config", &bad]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert!(text(&out.stderr).contains("limits.max_payload"));
}

#[test]
fn check_config_refuses_a_missing_file() {
    let out = hearthd(&["check-config", "/nonexistent/hearth.toml"]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert!(text(&out.stderr).contains("/nonexistent/hearth.toml"));
}

#[test]
fn check_config_without_a_file_checks_the_config_option_or_the_defaults() {
    let out = hearthd(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "built-in defaults: ok\n");

    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "nonsense = 1\n");
    let out = hearthd(&["--config", &bad, "check-config"]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
}

#[test]
fn print_default_config_prints_a_file_check_config_accepts() {
    let out = hearthd(&["print-default-config"]);
    assert!(out.status.success());
    let printed = text(&out.stdout);
    assert!(printed.contains("#[discovery]"), "{printed}");
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "hearth.toml", &printed);
    let out = hearthd(&["check-config", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
