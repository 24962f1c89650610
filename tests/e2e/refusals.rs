//! What the edge refuses, each case on its own: handshakes without a valid,
//! registered certificate; CONNECTs with a client id other than the
//! device's; packets only a server may send; clients that never CONNECT.

use std::time::Duration;

use crate::support::*;

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
