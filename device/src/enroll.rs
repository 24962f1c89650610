//! Pairing and renewal: the device makes its key, sends only a signing
//! request over EST to the hub it pinned, and stores what comes back with
//! the right modes (see `state`).

use base64::Engine;
use hearth_protocol::pairing::PairingUri;
use hearth_protocol::{pki, DeviceId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::est::{self, Operation, Pin};
use crate::state::{Credentials, DeviceDir, Pairing};
use crate::{discovery, tls, Error, Result};

/// Pairs with the hub a pairing URI names (from `hearth pair` or its QR
/// code), pinning the CA fingerprint it carries. Refuses to replace an
/// existing pairing unless `force`.
pub async fn pair(dir: &DeviceDir, uri: PairingUri, force: bool) -> Result<DeviceId> {
    let pin = Pin::Full(uri.ca_sha256.clone());
    pair_pinned(dir, uri, pin, force).await
}

/// Pairs with the hub found on the LAN by mDNS whose CA fingerprint starts
/// with `ca` (at least 128 bits, from the administrator), with `token`.
pub async fn pair_by_discovery(
    dir: &DeviceDir,
    token: String,
    ca: &str,
    discover_secs: u64,
    force: bool,
) -> Result<DeviceId> {
    refuse_overwrite(dir, force)?;
    let ca = est::ca_prefix(ca)?;
    // mDNS only says where hubs are; which one to trust comes from the
    // administrator (--ca), never from the advertisement.
    let hubs = discovery::discover(discover_secs).await?;
    let hub = discovery::choose(&hubs, &ca)?;
    let uri = PairingUri {
        host: hub.address.clone(),
        port: hub.enroll_port,
        mqtt_port: hub.mqtt_port,
        ca_sha256: ca.clone(),
        token,
    };
    pair_pinned(dir, uri, Pin::Prefix(ca), force).await
}

fn refuse_overwrite(dir: &DeviceDir, force: bool) -> Result<()> {
    if dir.is_paired() && !force {
        return Err(Error::AlreadyPaired(dir.path().to_owned()));
    }
    Ok(())
}

async fn pair_pinned(
    dir: &DeviceDir,
    target: PairingUri,
    pin: Pin,
    force: bool,
) -> Result<DeviceId> {
    refuse_overwrite(dir, force)?;
    // 1. The hub CA, pinned: the URI (or the administrator) carries its
    //    fingerprint, so a stranger on the LAN cannot pose as the hub.
    let ca = est::fetch_ca(&target.host, target.port, &pin).await?;
    // 2. The key, made here; only a signing request leaves the device.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    // 3. Enroll with the token over TLS verified against that CA.
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("device:{}", target.token));
    let cert = est::enroll(
        &target.host,
        target.port,
        tls::client_config(&ca, None)?,
        Operation::SimpleEnroll,
        Some(format!("Basic {basic}")),
        csr.der(),
    )
    .await?;
    let device_id = pki::device_id_of(&cert).ok_or(Error::NoDeviceId)?;
    // 4. Store key (0600), certificate chain, CA and settings.
    let pairing = Pairing {
        device_id,
        host: target.host,
        mqtt_port: target.mqtt_port,
        enroll_port: target.port,
        ca_sha256: hex::encode(pki::fingerprint(&ca)),
    };
    dir.store(
        &pairing,
        &Credentials {
            key_pem: &key.serialize_pem(),
            chain_pem: &chain(&cert, &ca),
            ca_pem: &pki::pem("CERTIFICATE", &ca),
        },
    )?;
    Ok(device_id)
}

/// Renews the certificate with a new key made here; the current
/// certificate authenticates the request. Returns the device's id.
pub async fn renew(dir: &DeviceDir) -> Result<DeviceId> {
    let paired = dir.load()?;
    let pairing = &paired.pairing;
    let ca = CertificateDer::from_pem_slice(&paired.ca_pem)?;
    let tls = tls::client_config(&ca, Some((&paired.chain_pem, &paired.key_pem)))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    let cert = est::enroll(
        &pairing.host,
        pairing.enroll_port,
        tls,
        Operation::SimpleReenroll,
        None,
        csr.der(),
    )
    .await?;
    if pki::device_id_of(&cert) != Some(pairing.device_id) {
        return Err(Error::WrongDevice);
    }
    dir.replace_credentials(&key.serialize_pem(), &chain(&cert, &ca))?;
    Ok(pairing.device_id)
}

/// The PEM chain the device presents: its certificate, then the CA.
fn chain(cert: &[u8], ca: &[u8]) -> String {
    format!(
        "{}{}",
        pki::pem("CERTIFICATE", cert),
        pki::pem("CERTIFICATE", ca)
    )
}
