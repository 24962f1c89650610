//! `hearth-device`: the reference device. It pairs with a hub over EST
//! (its key made here, never sent), runs as an MQTT client over mutual TLS,
//! and renews its certificate. Toy makers can read it as a template.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use hearth_daemon::datadir::{create_private_dir, write_with_mode};
use hearth_protocol::mailbox::{self, Inbox, Kind, Outbox, ReceiptStatus};
use hearth_protocol::pairing::PairingUri;
use hearth_protocol::{terminal, topic, DeviceId};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use hearth_daemon::cli::device::{Cli, Command};
use hearth_protocol::pki;

const EST: &str = "/.well-known/est/";
/// Largest EST response read: a certificate or two in base64.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the device remembers about its hub, in `device.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pairing {
    device_id: DeviceId,
    host: String,
    mqtt_port: u16,
    enroll_port: u16,
    ca_sha256: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Pair {
            uri,
            token,
            ca,
            discover_secs,
            force,
        } => pair(&cli.dir, uri, token.zip(ca), discover_secs, force).await,
        Command::Run { interval, count } => run(&cli.dir, interval, count).await,
        Command::Renew => renew(&cli.dir).await,
        Command::Send {
            to,
            text,
            image,
            audio,
            content_type,
            reference,
        } => {
            send(
                &cli.dir,
                to,
                text,
                image
                    .map(|p| (Kind::Image, p))
                    .or(audio.map(|p| (Kind::Audio, p))),
                content_type,
                reference,
            )
            .await
        }
        Command::Inbox { wait, follow } => inbox(&cli.dir, wait, follow).await,
        Command::Discover { secs } => discover(secs).await.map(|hubs| {
            for hub in &hubs {
                // Anyone on the LAN can advertise: their names are shown,
                // not obeyed.
                println!("{}", terminal::field(&hub.to_string()));
            }
            if hubs.is_empty() {
                eprintln!("no hub found");
            }
        }),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // An error can quote what the hub or the network sent.
            eprintln!("hearth-device: {}", terminal::text(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------- pairing

async fn pair(
    dir: &Path,
    uri: Option<PairingUri>,
    token_and_ca: Option<(String, String)>,
    discover_secs: u64,
    force: bool,
) -> Result<()> {
    if dir.join("device.toml").exists() && !force {
        bail!(
            "{} already holds a pairing; use --force to replace it",
            dir.display()
        );
    }
    let (target, pin) = match uri {
        Some(uri) => {
            let pin = Pin::Full(uri.ca_sha256.clone());
            (uri, pin)
        }
        None => {
            let (token, ca) = token_and_ca.context("--token and --ca are needed without a URI")?;
            let ca = ca_prefix(&ca)?;
            // mDNS only says where hubs are; which one to trust comes from
            // the administrator (--ca), never from the advertisement.
            let hubs = discover(discover_secs).await?;
            let open: Vec<&FoundHub> = hubs
                .iter()
                .filter(|h| h.pairing_open && ca.starts_with(&h.ca_prefix))
                .collect();
            let hub = match open.as_slice() {
                [one] => *one,
                [] => bail!("no hub with that CA and an open pairing window was found on the LAN"),
                _ => bail!("several hubs claim that CA; use the pairing URI"),
            };
            let uri = PairingUri {
                host: hub.address.clone(),
                port: hub.enroll_port,
                mqtt_port: hub.mqtt_port,
                ca_sha256: ca.clone(),
                token,
            };
            (uri, Pin::Prefix(ca))
        }
    };
    // 1. The hub CA, pinned: the URI (or the advertisement) carries its
    //    fingerprint, so a stranger on the LAN cannot pose as the hub.
    let ca = fetch_ca(&target.host, target.port, &pin).await?;
    let ca_sha256 = hex::encode(sha256(&ca));
    // 2. The key, made here; only a signing request leaves the device.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    // 3. Enroll with the token over TLS verified against that CA.
    let tls = client_tls(&ca, None)?;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("device:{}", target.token));
    let cert = est_enroll(
        &target.host,
        target.port,
        tls,
        "simpleenroll",
        Some(format!("Basic {basic}")),
        csr.der(),
    )
    .await?;
    let device_id =
        hearth_daemon::ca::device_id_of(&cert).context("the hub's certificate names no device")?;
    // 4. Store key (0600), certificate chain, CA and settings.
    create_private_dir(dir)?;
    write_with_mode(
        &dir.join("device.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_with_mode(
        &dir.join("device.pem"),
        pem_chain(&cert, &ca).as_bytes(),
        0o644,
    )?;
    write_with_mode(
        &dir.join("ca.pem"),
        pem("CERTIFICATE", &ca).as_bytes(),
        0o644,
    )?;
    let pairing = Pairing {
        device_id,
        host: target.host,
        mqtt_port: target.mqtt_port,
        enroll_port: target.port,
        ca_sha256,
    };
    write_with_mode(
        &dir.join("device.toml"),
        toml::to_string(&pairing)?.as_bytes(),
        0o644,
    )?;
    println!("{device_id}");
    eprintln!("paired; key and certificate in {}", dir.display());
    Ok(())
}

/// What the device knows of the hub CA before it has it.
enum Pin {
    /// The whole SHA-256 fingerprint, from a pairing URI.
    Full(String),
    /// A prefix of it, from an mDNS advertisement.
    Prefix(String),
}

/// Fetches `cacerts` and returns the certificate matching the pin. The
/// connection is not authenticated yet — nothing secret is sent on it, and
/// what comes back is believed only if it matches the pin.
async fn fetch_ca(host: &str, port: u16, pin: &Pin) -> Result<CertificateDer<'static>> {
    let tls = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinLater(provider())))
        .with_no_client_auth();
    let request = est_request(Method::GET, host, port, "cacerts", None, Bytes::new())?;
    let (status, body) = https(host, port, Arc::new(tls), request).await?;
    if status != StatusCode::OK {
        bail!(
            "cacerts: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let certs = decode_pkcs7(&body)?;
    let wanted = match pin {
        Pin::Full(hex) | Pin::Prefix(hex) => hex.to_ascii_lowercase(),
    };
    certs
        .into_iter()
        .find(|der| {
            let got = hex::encode(sha256(der));
            match pin {
                Pin::Full(_) => got == wanted,
                Pin::Prefix(_) => wanted.len() >= 16 && got.starts_with(&wanted),
            }
        })
        .map(CertificateDer::from)
        .ok_or_else(|| {
            anyhow!("the hub's CA does not match the fingerprint in the pairing URI; not pairing")
        })
}

/// Accepts any server certificate for the one `cacerts` request whose
/// answer is checked against the pin; handshake signatures are still
/// verified, so the peer holds the key of the certificate it showed.
#[derive(Debug)]
struct PinLater(Arc<CryptoProvider>);

impl ServerCertVerifier for PinLater {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Posts a PKCS#10 request and returns the issued certificate.
async fn est_enroll(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    operation: &str,
    authorization: Option<String>,
    csr_der: &[u8],
) -> Result<CertificateDer<'static>> {
    let body = base64::engine::general_purpose::STANDARD.encode(csr_der);
    let request = est_request(
        Method::POST,
        host,
        port,
        operation,
        authorization,
        Bytes::from(body),
    )?;
    let (status, body) = https(host, port, tls, request).await?;
    if status != StatusCode::OK {
        bail!(
            "{operation}: the hub answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    decode_pkcs7(&body)?
        .into_iter()
        .next()
        .map(CertificateDer::from)
        .context("the hub's answer holds no certificate")
}

fn est_request(
    method: Method,
    host: &str,
    port: u16,
    operation: &str,
    authorization: Option<String>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{EST}{operation}"))
        .header(HOST, authority);
    if !body.is_empty() {
        builder = builder
            .header(CONTENT_TYPE, "application/pkcs10")
            .header("content-transfer-encoding", "base64");
    }
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    Ok(builder.body(Full::new(body))?)
}

/// One HTTP/1.1 request over TLS; returns the status and the body.
async fn https(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    let tcp = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot reach the hub at {host}:{port}"))?;
    let name = ServerName::try_from(host.to_owned()).context("bad hub host name")?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with the hub at {host}:{port}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the hub's answer: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

fn decode_pkcs7(body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("the hub's answer is not base64")?;
    pki::certificates(&der).context("the hub's answer is not a PKCS#7 certs-only message")
}

// ---------------------------------------------------------------- running

/// A paired device's files.
struct Paired {
    pairing: Pairing,
    ca_pem: Vec<u8>,
    chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn load(dir: &Path) -> Result<Paired> {
    finish_renewal(dir)?;
    let read = |name: &str| {
        std::fs::read(dir.join(name)).with_context(|| {
            format!(
                "reading {} (pair first: hearth-device pair URI)",
                dir.join(name).display()
            )
        })
    };
    let pairing: Pairing =
        toml::from_str(&String::from_utf8(read("device.toml")?)?).context("device.toml")?;
    Ok(Paired {
        pairing,
        ca_pem: read("ca.pem")?,
        chain_pem: read("device.pem")?,
        key_pem: read("device.key")?,
    })
}

fn client_tls(
    ca: &CertificateDer<'static>,
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// MQTT over mutual TLS as this device: client id = device id, the hub CA
/// as the only root, the device's key and certificate.
fn mqtt_options(dir: &Path) -> Result<(Pairing, MqttOptions)> {
    let Paired {
        pairing,
        ca_pem,
        chain_pem,
        key_pem,
    } = load(dir)?;
    let ca = CertificateDer::from_pem_slice(&ca_pem)?;
    let tls = client_tls(&ca, Some((&chain_pem, &key_pem)))?;
    let mut options = MqttOptions::new(
        pairing.device_id.as_str(),
        pairing.host.as_str(),
        pairing.mqtt_port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok((pairing, options))
}

async fn run(dir: &Path, interval: f64, count: Option<u64>) -> Result<()> {
    let (pairing, options) = mqtt_options(dir)?;
    let id = pairing.device_id;
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let tele = topic::tele(&id, "status");
    let commands = topic::cmd(&id, "#");
    let interval = Duration::from_secs_f64(interval.max(0.01));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    let mut connected = false;
    let mut backoff = Duration::from_secs(1);
    let (mut sent, mut acked) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick(), if connected && count.is_none_or(|n| sent < n) => {
                sent += 1;
                let reading = serde_json::json!({
                    "seq": sent,
                    "uptime_s": started.elapsed().as_secs(),
                });
                client.try_publish(&tele, QoS::AtLeastOnce, false, reading.to_string())?;
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = Duration::from_secs(1);
                    println!("connected to {}:{} as {id}", pairing.host, pairing.mqtt_port);
                    client.try_subscribe(&commands, QoS::AtLeastOnce)?;
                }
                Ok(Event::Incoming(Packet::Publish(command))) => {
                    // What came over the network is shown, never obeyed.
                    println!(
                        "cmd {} {}",
                        terminal::field(&command.topic),
                        terminal::text(&String::from_utf8_lossy(&command.payload))
                    );
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if count.is_some_and(|n| acked >= n) {
                        println!("sent {acked} telemetry messages");
                        // Send DISCONNECT and let it go out before leaving.
                        client.try_disconnect()?;
                        let flushed = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Ok(event) = events.poll().await {
                                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                                    break;
                                }
                            }
                        });
                        let _ = flushed.await;
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    eprintln!("connection lost: {e}; retrying in {}s", backoff.as_secs());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

// -------------------------------------------------------------- messaging

/// Connects, subscribes to the device's inbox, and returns once the
/// subscription is in place.
async fn connect_inbox(dir: &Path) -> Result<(DeviceId, rumqttc::AsyncClient, rumqttc::EventLoop)> {
    let (pairing, mut options) = mqtt_options(dir)?;
    let id = pairing.device_id;
    // Attachments are large: accept packets up to the hub's own limit.
    options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let subscribed = async {
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client
                        .subscribe(topic::inbox(&id), QoS::AtLeastOnce)
                        .await?;
                }
                Event::Incoming(Packet::SubAck(_)) => return Ok::<_, anyhow::Error>(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), subscribed)
        .await
        .context("the hub did not answer within 15 s")?
        .context("connecting to the hub")?;
    Ok((id, client, events))
}

fn content_type_of(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ogg" | "opus" => "audio/ogg",
        "m4a" | "mp4" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => return None,
    })
}

fn extension_of(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "audio/ogg" => "ogg",
        "audio/mp4" => "m4a",
        "audio/mpeg" => "mp3",
        "audio/wav" => "wav",
        _ => "bin",
    }
}

async fn send(
    dir: &Path,
    to: String,
    text: Option<String>,
    file: Option<(Kind, PathBuf)>,
    content_type: Option<String>,
    reference: Option<String>,
) -> Result<()> {
    let reference = reference.unwrap_or_else(|| hex::encode(hearth_daemon::random_bytes::<8>()));
    let (kind, body, data, content_type) = match (text, file) {
        (Some(text), _) => (Kind::Text, Some(text), None, None),
        (None, Some((kind, path))) => {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let content_type = match content_type {
                Some(t) => t,
                None => content_type_of(&path)
                    .context("unknown file type; give --content-type")?
                    .to_owned(),
            };
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            (kind, None, Some(data), Some(content_type))
        }
        (None, None) => bail!("give --text, --image or --audio"),
    };
    let envelope = Outbox::Send(mailbox::Send {
        v: mailbox::VERSION,
        reference: reference.clone(),
        to,
        kind,
        body,
        data,
        content_type,
    });
    let (id, client, mut events) = connect_inbox(dir).await?;
    client
        .publish(
            topic::outbox(&id),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&envelope)?,
        )
        .await?;
    let answer = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await? {
                if let Ok(Inbox::Receipt(r)) = serde_json::from_slice::<Inbox>(&p.payload) {
                    if r.reference == reference {
                        return Ok::<_, anyhow::Error>(r);
                    }
                }
            }
        }
    };
    let receipt = tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .context("no receipt from the hub within 15 s; send again with the same --ref")??;
    let _ = client.disconnect().await;
    match receipt.status {
        ReceiptStatus::Stored => {
            println!(
                "stored {} (ref {reference})",
                receipt.id.unwrap_or_default()
            );
            Ok(())
        }
        _ => bail!(
            "the hub refused the message: {}",
            receipt.reason.unwrap_or_else(|| "no reason given".into())
        ),
    }
}

async fn inbox(dir: &Path, wait: u64, follow: bool) -> Result<()> {
    let (id, client, mut events) = connect_inbox(dir).await?;
    let saved = dir.join("inbox");
    let mut seen = std::collections::HashSet::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(wait), events.poll()).await;
        let event = match next {
            Err(_) if !follow => break,
            Err(_) => continue,
            Ok(event) => event?,
        };
        let Event::Incoming(Packet::Publish(p)) = event else {
            continue;
        };
        match serde_json::from_slice::<Inbox>(&p.payload) {
            Ok(Inbox::Delivery(d)) => {
                if seen.insert(d.id.clone()) {
                    // Names, bodies and ids came from other devices: a
                    // message must not retitle the terminal or fake output.
                    let from = format!(
                        "{} ({})",
                        terminal::field(d.from.member.as_str()),
                        terminal::field(&d.from.device.to_string())
                    );
                    let shown_id = terminal::field(&d.id).into_owned();
                    match (&d.body, &d.data) {
                        (Some(body), _) => {
                            println!("message {shown_id} from {from}: {}", terminal::text(body))
                        }
                        (None, Some(data)) => {
                            // The id names the file: only the hub's hex ids.
                            if d.id.is_empty()
                                || d.id.len() > 64
                                || !d.id.bytes().all(|b| b.is_ascii_hexdigit())
                            {
                                eprintln!("ignoring a delivery with a malformed id");
                                continue;
                            }
                            let bytes = base64::engine::general_purpose::STANDARD.decode(data)?;
                            create_private_dir(&saved)?;
                            let kind = d.content_type.as_deref().unwrap_or_default();
                            let path = saved.join(format!("{}.{}", d.id, extension_of(kind)));
                            write_with_mode(&path, &bytes, 0o600)?;
                            println!(
                                "{} {} from {from}: saved {} ({} bytes)",
                                d.kind.as_str(),
                                d.id,
                                path.display(),
                                bytes.len()
                            );
                        }
                        (None, None) => println!("message {shown_id} from {from} (empty)"),
                    }
                }
                // Acknowledge once stored here (again if the hub resent it).
                let ack = Outbox::Ack(mailbox::Ack {
                    v: mailbox::VERSION,
                    id: d.id,
                });
                client
                    .publish(
                        topic::outbox(&id),
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&ack)?,
                    )
                    .await?;
            }
            Ok(Inbox::Receipt(r)) => {
                let status = match r.status {
                    ReceiptStatus::Stored => "stored",
                    ReceiptStatus::Delivered => "delivered",
                    ReceiptStatus::Expired => "expired",
                    ReceiptStatus::Refused => "refused",
                };
                println!(
                    "receipt {} {status}{}{}",
                    terminal::field(&r.reference),
                    r.device.map(|d| format!(" to {d}")).unwrap_or_default(),
                    r.reason
                        .map(|why| format!(": {}", terminal::field(&why)))
                        .unwrap_or_default()
                );
            }
            Err(_) => {}
        }
    }
    // Let the acknowledgements go out before leaving.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

// ---------------------------------------------------------------- renewal

async fn renew(dir: &Path) -> Result<()> {
    let Paired {
        pairing,
        ca_pem,
        chain_pem,
        key_pem,
    } = load(dir)?;
    let ca = CertificateDer::from_pem_slice(&ca_pem)?;
    // The current certificate authenticates the request; a new key is made.
    let tls = client_tls(&ca, Some((&chain_pem, &key_pem)))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let cert = est_enroll(
        &pairing.host,
        pairing.enroll_port,
        tls,
        "simplereenroll",
        None,
        csr.der(),
    )
    .await?;
    if hearth_daemon::ca::device_id_of(&cert) != Some(pairing.device_id) {
        bail!("the renewed certificate names another device; keeping the current one");
    }
    // Write both beside the old ones, then move them into place.
    let new_key = dir.join("device.key.new");
    let new_cert = dir.join("device.pem.new");
    write_with_mode(&new_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_with_mode(&new_cert, pem_chain(&cert, &ca).as_bytes(), 0o644)?;
    std::fs::rename(&new_key, dir.join("device.key"))?;
    std::fs::rename(&new_cert, dir.join("device.pem"))?;
    println!("renewed the certificate of {}", pairing.device_id);
    Ok(())
}

/// Completes a renewal that stopped between writing and moving its files
/// (see [`renew`]): both new files written means the hub issued them.
fn finish_renewal(dir: &Path) -> Result<()> {
    let (key_new, pem_new) = (dir.join("device.key.new"), dir.join("device.pem.new"));
    if pem_new.exists() {
        if key_new.exists() {
            std::fs::rename(&key_new, dir.join("device.key"))?;
        }
        std::fs::rename(&pem_new, dir.join("device.pem"))?;
    } else if key_new.exists() {
        // The certificate never arrived: the old pair is still the one.
        std::fs::remove_file(&key_new)?;
    }
    Ok(())
}

// -------------------------------------------------------------- discovery

/// A hub seen on the LAN.
struct FoundHub {
    instance: String,
    address: String,
    enroll_port: u16,
    mqtt_port: u16,
    ca_prefix: String,
    pairing_open: bool,
}

impl std::fmt::Display for FoundHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} address={} enroll={} mqtt={} ca={} pair={}",
            self.instance,
            self.address,
            self.enroll_port,
            self.mqtt_port,
            self.ca_prefix,
            u8::from(self.pairing_open)
        )
    }
}

/// Browses `_hearth._tcp` for `secs` seconds.
async fn discover(secs: u64) -> Result<Vec<FoundHub>> {
    use mdns_sd::{ServiceDaemon, ServiceEvent};
    let mdns = ServiceDaemon::new().map_err(|e| anyhow!("mDNS: {e}"))?;
    let events = mdns
        .browse(hearth_daemon::discovery::HEARTH_SERVICE)
        .map_err(|e| anyhow!("mDNS: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut hubs: Vec<FoundHub> = Vec::new();
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await {
        let ServiceEvent::ServiceResolved(info) = event else {
            continue;
        };
        let txt = |key: &str| {
            info.txt_properties
                .get_property_val_str(key)
                .map(str::to_owned)
        };
        let mut addresses: Vec<std::net::IpAddr> =
            info.addresses.iter().map(|a| a.to_ip_addr()).collect();
        // IPv6 link-local needs a zone no TLS server name can carry.
        addresses.retain(|a| match a {
            std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
            std::net::IpAddr::V4(_) => true,
        });
        addresses.sort_by_key(|a| (a.is_ipv6(), *a));
        let (Some(address), Some(mqtt), Some(ca)) = (addresses.first(), txt("mqtt"), txt("ca"))
        else {
            continue;
        };
        let instance = info
            .fullname
            .strip_suffix(&format!(".{}", hearth_daemon::discovery::HEARTH_SERVICE))
            .unwrap_or(&info.fullname)
            .to_owned();
        let hub = FoundHub {
            instance,
            address: address.to_string(),
            enroll_port: info.port,
            mqtt_port: mqtt.parse().unwrap_or(8883),
            ca_prefix: ca,
            pairing_open: txt("pair").as_deref() == Some("1"),
        };
        // Every distinct advertisement is kept: a second one under the same
        // name (an impostor) must show up, not replace the first.
        if !hubs.iter().any(|h| {
            h.instance == hub.instance && h.address == hub.address && h.ca_prefix == hub.ca_prefix
        }) {
            hubs.retain(|h| !(h.instance == hub.instance && h.address == hub.address));
            hubs.push(hub);
        }
    }
    if let Ok(done) = mdns.shutdown() {
        let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
    }
    Ok(hubs)
}

// ------------------------------------------------------------------ files

fn sha256(der: &[u8]) -> [u8; 32] {
    hearth_daemon::ca::fingerprint(der)
}

use pki::pem;

fn pem_chain(cert: &[u8], ca: &[u8]) -> String {
    format!("{}{}", pem("CERTIFICATE", cert), pem("CERTIFICATE", ca))
}

/// The `--ca` fingerprint prefix, lower case. At least 128 bits (32 hex
/// digits), as many as the pairing URI carries: a 64-bit prefix is within
/// reach of someone making CA keys until one matches.
fn ca_prefix(arg: &str) -> Result<String> {
    let ca = arg.to_ascii_lowercase();
    if ca.len() < 32 || ca.len() > 64 || !ca.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca takes at least the first 32 hex digits of the hub's CA fingerprint");
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_prefix_needs_128_bits() {
        assert!(ca_prefix(&"a".repeat(16)).is_err());
        assert!(ca_prefix(&"a".repeat(31)).is_err());
        assert!(ca_prefix(&"g".repeat(32)).is_err());
        assert!(ca_prefix(&"a".repeat(65)).is_err());
        assert_eq!(ca_prefix(&"AB".repeat(16)).unwrap(), "ab".repeat(16));
        assert!(ca_prefix(&"0".repeat(64)).is_ok());
    }
}
