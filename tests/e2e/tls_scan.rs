//! A TLS scan of both listeners with sslscan (Debian's package, OpenSSL
//! underneath): protocols, cipher suites, renegotiation, compression and
//! the client-certificate request, as a stranger on the LAN sees them.
//! Ignored by a plain `cargo test`; `.ci/run` installs sslscan and runs it.

use std::net::SocketAddr;
use std::process::Command;

use crate::support::*;

/// sslscan's XML report of `target`.
fn scan(target: SocketAddr) -> String {
    let out = Command::new("sslscan")
        .args(["--xml=-", "--no-colour", "--show-certificate"])
        .arg(target.to_string())
        .output()
        .expect("run sslscan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every value of `attribute` on the `<tag ...>` elements of `xml`.
fn attributes<'a>(xml: &'a str, tag: &str, attribute: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    let key = format!(" {attribute}=\"");
    xml.match_indices(&open)
        .filter_map(|(at, _)| {
            let element = &xml[at..at + xml[at..].find('>')?];
            let start = element.find(&key)? + key.len();
            let len = element[start..].find('"')?;
            Some(&element[start..start + len])
        })
        .collect()
}

/// The assertions both listeners share.
fn assert_modern_tls_only(xml: &str, port: &str) {
    // Protocols: TLS 1.2 and 1.3 enabled, nothing older (nor SSL).
    let protocols: Vec<(&str, &str)> = attributes(xml, "protocol", "type")
        .into_iter()
        .zip(attributes(xml, "protocol", "version"))
        .zip(attributes(xml, "protocol", "enabled"))
        .filter(|(_, enabled)| *enabled == "1")
        .map(|(p, _)| p)
        .collect();
    let mut versions: Vec<String> = protocols.iter().map(|(t, v)| format!("{t}{v}")).collect();
    versions.sort();
    assert_eq!(versions, ["tls1.2", "tls1.3"], "{port}: {xml}");
    // Cipher suites: only AEAD ones (GCM, ChaCha20-Poly1305), none with
    // CBC, RC4, 3DES, NULL or export strength.
    let ciphers = attributes(xml, "cipher", "cipher");
    assert!(!ciphers.is_empty(), "{port}: no cipher accepted: {xml}");
    for cipher in &ciphers {
        let aead =
            cipher.contains("GCM") || (cipher.contains("CHACHA20") && cipher.contains("POLY1305"));
        let weak = ["CBC", "RC4", "DES", "NULL", "EXP", "MD5"]
            .iter()
            .any(|w| cipher.contains(w));
        assert!(aead && !weak, "{port}: non-AEAD suite {cipher}");
    }
    for version in attributes(xml, "cipher", "sslversion") {
        assert!(
            matches!(version, "TLSv1.2" | "TLSv1.3"),
            "{port}: {version}"
        );
    }
    // No renegotiation, no compression.
    for supported in attributes(xml, "renegotiation", "supported") {
        assert_eq!(supported, "0", "{port}: renegotiation supported: {xml}");
    }
    for supported in attributes(xml, "compression", "supported") {
        assert_eq!(supported, "0", "{port}: compression supported: {xml}");
    }
}

#[test]
#[ignore = "needs sslscan; run with -- --ignored"]
fn both_listeners_offer_only_tls_1_2_and_1_3_with_aead_suites() {
    assert!(
        have("sslscan"),
        "sslscan is not installed (apt-get install sslscan)"
    );
    let hub = TestHub::start();
    let mqtt = scan(hub.mqtt);
    assert_modern_tls_only(&mqtt, "mqtt");
    let enroll = scan(hub.enroll);
    assert_modern_tls_only(&enroll, "enroll");
}

#[test]
#[ignore = "needs openssl; run with -- --ignored"]
fn the_mqtt_listener_requests_a_client_certificate() {
    // sslscan does not report the CertificateRequest; openssl s_client
    // prints the CA names the server asks for, and whether it asked at all.
    assert!(have("openssl"), "openssl is not installed");
    let hub = TestHub::start();
    let ask = |version: &str| {
        // -ign_eof: keep reading after stdin's end until the hub closes, so
        // a TLS 1.3 refusal (sent after the client's Finished) is always seen;
        // timeout bounds it if the hub never closed.
        let out = Command::new("timeout")
            .args(["20", "openssl", "s_client", "-ign_eof", "-connect"])
            .arg(hub.mqtt.to_string())
            .arg(version)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    };
    // TLS 1.2: the CertificateRequest names the hub's CA.
    let tls12 = ask("-tls1_2");
    assert!(
        tls12.contains("Acceptable client certificate CA names"),
        "TLS 1.2: no client certificate requested:\n{tls12}"
    );
    // TLS 1.3: without one, the hub ends the handshake with
    // certificate_required (alert 116).
    let tls13 = ask("-tls1_3");
    assert!(
        tls13.contains("alert number 116") || tls13.contains("certificate required"),
        "TLS 1.3: a client without a certificate was not refused:\n{tls13}"
    );
}
