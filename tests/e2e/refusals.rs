//! What the edge refuses, each case on its own: handshakes without a valid,
//! registered certificate; CONNECTs with a client id other than the
//! device's; packets only a server may send; clients that never CONNECT.

use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use time::OffsetDateTime;

use crate::support::*;

/// A client certificate signed by the hub's own CA key (read from the data
/// dir, as only an attacker holding the hub could), for `device_id`, valid
/// from `from` to `until`.
fn forge_with_hub_ca(
    hub: &TestHub,
    device_id: &str,
    from: OffsetDateTime,
    until: OffsetDateTime,
) -> Device {
    let ca_pem = std::fs::read_to_string(hub.data.join("ca.pem")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(hub.data.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    forge(&issuer, ca_pem.as_bytes(), device_id, from, until, hub)
}

fn forge(
    issuer: &Issuer<'_, KeyPair>,
    trust_pem: &[u8],
    device_id: &str,
    from: OffsetDateTime,
    until: OffsetDateTime,
    hub: &TestHub,
) -> Device {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, device_id);
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:hearth:device:{device_id}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = from;
    params.not_after = until;
    let cert = params.signed_by(&key, issuer).unwrap();
    let hub_ca = std::fs::read(hub.data.join("ca.pem")).unwrap();
    let _ = trust_pem;
    Device {
        id: device_id.to_owned(),
        dir: hub.dir.path().to_owned(),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        ca_pem: hub_ca,
    }
}

/// Handshakes, sends CONNECT and expects no CONNACK, only a closed
/// connection; then checks the hub logged the reason.
async fn assert_handshake_refused(hub: &TestHub, device: &Device, reason: &str) {
    match raw_tls(hub.mqtt, device.tls()).await {
        Err(_) => {}
        Ok(mut tls) => {
            send(&mut tls, &connect_packet(false, &device.id, None)).await;
            assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
        }
    }
    assert!(
        hub.wait_log(&format!("reason={reason}")),
        "hub did not log {reason:?}:\n{}",
        hub.log()
    );
}

fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let hub = TestHub::start();
    let ca = std::fs::read(hub.data.join("ca.pem")).unwrap();
    let config = client_config(&ca, None);
    if let Ok(mut tls) = raw_tls(hub.mqtt, config).await {
        send(&mut tls, &connect_packet(false, "x", None)).await;
        assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
    }
    assert!(
        hub.wait_log("reason=no client certificate"),
        "{}",
        hub.log()
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let hub = TestHub::start();
    let other_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut other = CertificateParams::default();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    other
        .distinguished_name
        .push(DnType::CommonName, "Hearth hub CA");
    let other_cert = other.self_signed(&other_key).unwrap();
    let issuer = Issuer::new(other, other_key);
    // Same device id as a registered device: the name alone must not help.
    let real = hub.device("Ada", "child");
    let now = OffsetDateTime::now_utc();
    let fake = forge(
        &issuer,
        other_cert.pem().as_bytes(),
        &real.id,
        now - days(1),
        now + days(30),
        &hub,
    );
    assert_handshake_refused(&hub, &fake, "certificate from an unknown CA").await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let hub = TestHub::start();
    let real = hub.device("Ada", "child");
    let now = OffsetDateTime::now_utc();
    let expired = forge_with_hub_ca(&hub, &real.id, now - days(30), now - days(1));
    assert_handshake_refused(&hub, &expired, "certificate expired").await;
}

#[tokio::test]
async fn a_not_yet_valid_certificate_is_refused() {
    let hub = TestHub::start();
    let real = hub.device("Ada", "child");
    let now = OffsetDateTime::now_utc();
    let early = forge_with_hub_ca(&hub, &real.id, now + days(1), now + days(30));
    assert_handshake_refused(&hub, &early, "certificate not yet valid").await;
}

#[tokio::test]
async fn a_certificate_of_an_unregistered_device_is_refused() {
    let hub = TestHub::start();
    let now = OffsetDateTime::now_utc();
    // Signed by the hub CA, valid, but never issued: not in the registry.
    let stray = forge_with_hub_ca(
        &hub,
        "0000000000000000000000000a",
        now - days(1),
        now + days(30),
    );
    assert_handshake_refused(&hub, &stray, "unknown device").await;
    // Even for a registered device's id: the fingerprint decides.
    let real = hub.device("Ada", "child");
    let twin = forge_with_hub_ca(&hub, &real.id, now - days(1), now + days(30));
    assert_handshake_refused(&hub, &twin, "unknown device").await;
}

#[tokio::test]
async fn a_client_id_other_than_the_device_id_is_not_authorized() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let other = hub.device("Mum", "parent");
    let long = "a".repeat(200);
    let ids = [
        "+",
        "#",
        "/",
        "hearth/v1/dev/+",
        &format!("{}/", toy.id),
        &other.id,
        &toy.id.to_uppercase(),
        long.as_str(),
    ];
    for id in ids {
        for v5 in [false, true] {
            let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
            send(&mut tls, &connect_packet(v5, id, None)).await;
            let expected = if v5 {
                vec![0x20, 3, 0, 0x87, 0]
            } else {
                vec![0x20, 2, 0, 5]
            };
            assert_eq!(
                next(&mut tls, Duration::from_secs(5)).await,
                Next::Data(expected),
                "client id {id:?} v5={v5}"
            );
            assert_eq!(
                next(&mut tls, Duration::from_secs(5)).await,
                Next::Closed,
                "client id {id:?} v5={v5}"
            );
        }
    }
    // rumqttc sees the refusal as "not authorized" too.
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, "+"), 10);
    match v4_connected(&mut eventloop).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized,
        )) => {}
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
    assert!(hub.log().contains("is not the certificate's device id"));
}

#[tokio::test]
async fn username_and_password_give_no_identity() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let other = hub.device("Mum", "parent");
    // Claiming the parent's device id in the username changes nothing.
    let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    send(
        &mut tls,
        &connect_packet(false, &other.id, Some((&other.id, "hearth-edge"))),
    )
    .await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 5])
    );
    // And a client's own credentials are replaced: it still connects.
    let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    send(
        &mut tls,
        &connect_packet(false, &toy.id, Some(("someone", "wrong"))),
    )
    .await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 0])
    );
}

#[tokio::test]
async fn packets_only_a_server_sends_close_the_connection() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let cases: [(&str, Vec<u8>); 5] = [
        ("CONNACK", vec![0x20, 2, 0, 0]),
        ("second CONNECT", connect_packet(false, &toy.id, None)),
        ("SUBACK", vec![0x90, 3, 0, 1, 0]),
        ("UNSUBACK", vec![0xb0, 2, 0, 1]),
        ("PINGRESP", vec![0xd0, 0]),
    ];
    for (name, packet) in cases {
        let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
        send(&mut tls, &connect_packet(false, &toy.id, None)).await;
        assert_eq!(
            next(&mut tls, Duration::from_secs(5)).await,
            Next::Data(vec![0x20, 2, 0, 0]),
            "{name}"
        );
        send(&mut tls, &packet).await;
        assert_eq!(
            next(&mut tls, Duration::from_secs(5)).await,
            Next::Closed,
            "{name} did not close"
        );
    }
}

#[tokio::test]
async fn a_first_packet_other_than_connect_closes_the_connection() {
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    send(&mut tls, &[0xc0, 0]).await; // PINGREQ
    assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
}

#[tokio::test]
async fn an_oversized_packet_closes_the_connection() {
    let hub = TestHub::start_with("[limits]\nmax_payload = 4096\n", &[]);
    let toy = hub.device("Ada", "child");
    let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    send(&mut tls, &connect_packet(false, &toy.id, None)).await;
    assert_eq!(
        next(&mut tls, Duration::from_secs(5)).await,
        Next::Data(vec![0x20, 2, 0, 0])
    );
    // A PUBLISH announcing 100 000 bytes: refused from its header.
    send(&mut tls, &[0x30, 0xa0, 0x8d, 0x06]).await;
    assert_eq!(next(&mut tls, Duration::from_secs(5)).await, Next::Closed);
}

#[tokio::test]
async fn a_client_that_never_connects_is_closed_and_frees_its_slot() {
    let hub = TestHub::start_with(
        "[limits]\nmax_connections = 1\nhandshake_timeout_secs = 1\n",
        &[],
    );
    let toy = hub.device("Ada", "child");
    let started = std::time::Instant::now();
    let mut idle = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
    assert_eq!(next(&mut idle, Duration::from_secs(5)).await, Next::Closed);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    // The only slot is free again.
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
}

#[tokio::test]
async fn a_silent_tcp_client_is_dropped_at_the_handshake_deadline() {
    let hub = TestHub::start_with(
        "[limits]\nmax_connections = 1\nhandshake_timeout_secs = 1\n",
        &[],
    );
    let toy = hub.device("Ada", "child");
    let mut tcp = tokio::net::TcpStream::connect(hub.mqtt).await.unwrap();
    assert_eq!(next(&mut tcp, Duration::from_secs(5)).await, Next::Closed);
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 10);
    v4_connected(&mut eventloop).await.unwrap();
}

#[tokio::test]
async fn refused_clients_do_not_disturb_connected_ones() {
    use rumqttc::QoS;
    let hub = TestHub::start();
    let toy = hub.device("Ada", "child");
    let phone = hub.device("Mum", "parent");
    let topic = format!("hearth/v1/dev/{}/tele/t", toy.id);
    let (sub, mut sub_loop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &phone, &phone.id), 100);
    v4_connected(&mut sub_loop).await.unwrap();
    sub.subscribe(&topic, QoS::AtMostOnce).await.unwrap();
    v4_wait_suback(&mut sub_loop).await;
    let (publisher, pub_loop) = rumqttc::AsyncClient::new(mqtt_v4(&hub, &toy, &toy.id), 100);
    let driver = v4_drive(pub_loop);

    for round in 0..10u8 {
        // A burst of bad clients...
        let mut tls = raw_tls(hub.mqtt, toy.tls()).await.unwrap();
        send(&mut tls, &connect_packet(false, "#", None)).await;
        let _ = next(&mut tls, Duration::from_secs(2)).await;
        let mut garbage = tokio::net::TcpStream::connect(hub.mqtt).await.unwrap();
        send(&mut garbage, b"GET / HTTP/1.0\r\n\r\n").await;
        // ...and the good ones carry on.
        publisher
            .publish(&topic, QoS::AtMostOnce, false, vec![round])
            .await
            .unwrap();
        let got = v4_next_publish(&mut sub_loop, Duration::from_secs(5))
            .await
            .expect("delivery continues");
        assert_eq!(&got.payload[..], &[round]);
    }
    driver.abort();
}
