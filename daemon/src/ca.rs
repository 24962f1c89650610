//! The hub's local certificate authority: made once at first start, it signs
//! the hub's server certificate and one certificate per device from a CSR,
//! so a device's private key never leaves the device.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hearth_protocol::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::datadir::{write_private, write_public};

/// Whether a PKCS#10 request's SubjectPublicKeyInfo is a key the hub
/// issues for: EC on P-256 (OIDs 1.2.840.10045.2.1 and
/// 1.2.840.10045.3.1.7) or Ed25519 (1.3.101.112, no parameters).
fn allowed_key(csr_pem: &str) -> bool {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()) else {
        return false;
    };
    let Ok((_, csr)) = X509CertificationRequest::from_der(&pem.contents) else {
        return false;
    };
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm;
    if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        // An uncompressed P-256 point: 0x04 and two 32-byte coordinates.
        curve.as_ref() == Some(&OID_EC_P256)
            && spki.subject_public_key.data.len() == 65
            && spki.subject_public_key.data.first() == Some(&4)
    } else {
        algorithm.algorithm == OID_SIG_ED25519
            && algorithm.parameters.is_none()
            && spki.subject_public_key.data.len() == 32
    }
}

// One copy of the certificate rules, shared with the device crate.
pub use hearth_protocol::pki::{device_id_of, fingerprint, DEVICE_URI_PREFIX};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// How long the hub CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server certificate is valid; it is re-issued well before.
const SERVER_VALIDITY: Duration = Duration::days(730);
/// A server certificate this close to expiry is re-issued at start.
const SERVER_RENEW_BEFORE: Duration = Duration::days(60);
/// How long a device certificate is valid. Long, because a toy in a
/// cupboard must still work next year; revocation is by fingerprint.
const DEVICE_VALIDITY: Duration = Duration::days(5 * 365);
/// Certificates start an hour in the past to tolerate small clock skew.
const BACKDATE: Duration = Duration::hours(1);

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing a CA file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA certificate exists but its key does not (or the reverse):
    /// regenerating would silently orphan every paired device.
    #[error(
        "{0} exists but its pair is missing; restore it from backup or move the data dir aside"
    )]
    HalfPresent(PathBuf),
    /// A stored certificate or key does not parse.
    #[error("{path} is damaged: {message}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The certificate signing request is not acceptable.
    #[error("certificate request refused: {0}")]
    BadRequest(String),
    /// rcgen failed to build a certificate.
    #[error("cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A certificate the CA issued to a device.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, hex.
    pub serial_hex: String,
    /// SHA-256 of its DER, the registry's key.
    pub sha256: [u8; 32],
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// The hub's server certificate and key, for the TLS listeners.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf then CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
}

/// The hub CA.
pub struct HubCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for HubCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCa")
            .field("sha256", &hex::encode(self.fingerprint()))
            .finish_non_exhaustive()
    }
}

impl HubCa {
    /// Loads the CA from the data dir, or creates it on first start.
    pub fn load_or_create(dir: &Path) -> Result<HubCa, CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = read(&cert_path)?;
                let key_pem = read(&key_path)?;
                let key = KeyPair::from_pem(&key_pem).map_err(|e| damaged(&key_path, e))?;
                let issuer =
                    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| damaged(&cert_path, e))?;
                let cert_der = pem_to_der(&cert_pem).ok_or_else(|| CaError::Damaged {
                    path: cert_path.clone(),
                    message: "not a PEM certificate".into(),
                })?;
                Ok(HubCa {
                    cert_pem,
                    cert_der,
                    issuer,
                })
            }
            (true, false) => Err(CaError::HalfPresent(cert_path)),
            (false, true) => Err(CaError::HalfPresent(key_path)),
            (false, false) => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                let now = OffsetDateTime::now_utc();
                let mut params = CertificateParams::default();
                let mut name = DistinguishedName::new();
                let tag = hex::encode(crate::random_bytes::<4>());
                name.push(DnType::CommonName, format!("Hearth hub CA {tag}"));
                params.distinguished_name = name;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                params.not_before = now - BACKDATE;
                params.not_after = now + CA_VALIDITY;
                params.serial_number = Some(random_serial());
                let cert = params.self_signed(&key)?;
                // Key first: a crash between the two writes leaves a key
                // without a certificate, which the next start reports.
                write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|source| {
                    CaError::Io {
                        path: key_path.clone(),
                        source,
                    }
                })?;
                write_public(&cert_path, cert.pem().as_bytes()).map_err(|source| CaError::Io {
                    path: cert_path.clone(),
                    source,
                })?;
                tracing::info!(path = %cert_path.display(), "created the hub CA");
                let cert_pem = cert.pem();
                let cert_der = cert.der().clone();
                Ok(HubCa {
                    cert_pem,
                    cert_der,
                    issuer: Issuer::new(params, key),
                })
            }
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: what a device pins when pairing.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// Checks a PKCS#10 request without signing it: it parses, its
    /// signature verifies, its key is of a kind the hub accepts.
    pub fn check_request(&self, csr_pem: &str) -> Result<(), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        let alg = csr.public_key.algorithm();
        // rcgen names the algorithm after the request's signature, which
        // says nothing of the key: a P-384 key signs ecdsa-with-SHA256 too.
        // The key itself (its SubjectPublicKeyInfo) is what must be allowed.
        if (alg != &PKCS_ECDSA_P256_SHA256 && alg != &PKCS_ED25519) || !allowed_key(csr_pem) {
            return Err(CaError::BadRequest(
                "the key must be ECDSA P-256 or Ed25519".into(),
            ));
        }
        Ok(())
    }

    /// Signs a device certificate for `device` from a PKCS#10 request. The
    /// request's signature is verified (proof of possession); its subject
    /// and extensions are ignored: the hub decides what the certificate says.
    pub fn issue_device(
        &self,
        csr_pem: &str,
        device: &DeviceId,
    ) -> Result<IssuedCertificate, CaError> {
        self.check_request(csr_pem)?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadRequest(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, device.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(
            format!("{DEVICE_URI_PREFIX}{device}").try_into()?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - BACKDATE;
        params.not_after = now + DEVICE_VALIDITY;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial_hex: hex::encode(serial.to_bytes()),
            sha256: fingerprint(cert.der()),
            not_after: (now + DEVICE_VALIDITY).unix_timestamp(),
        })
    }

    /// Returns the server certificate, re-issuing it when the names the hub
    /// is reached by changed, when it nears expiry, or when it is missing.
    pub fn server_identity(
        &self,
        dir: &Path,
        names: &ServerNames,
    ) -> Result<ServerIdentity, CaError> {
        let cert_path = dir.join(SERVER_CERT);
        let key_path = dir.join(SERVER_KEY);
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            if let (Some(der), Ok(key)) = (
                pem_to_der(&cert_pem),
                PrivateKeyDer::try_from(
                    KeyPair::from_pem(&key_pem)
                        .map_err(|e| damaged(&key_path, e))?
                        .serialize_der(),
                ),
            ) {
                if self.server_cert_is_current(&der, names) {
                    return Ok(ServerIdentity {
                        chain: vec![der, self.cert_der.clone()],
                        key,
                    });
                }
            }
            tracing::info!("re-issuing the server certificate: names changed or expiry near");
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.host.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = names.san_types()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - BACKDATE;
        params.not_after = now + SERVER_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|source| CaError::Io {
            path: key_path.clone(),
            source,
        })?;
        write_public(&cert_path, cert.pem().as_bytes()).map_err(|source| CaError::Io {
            path: cert_path.clone(),
            source,
        })?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| CaError::Damaged {
            path: key_path,
            message: e.to_string(),
        })?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key,
        })
    }

    fn server_cert_is_current(&self, der: &CertificateDer<'_>, names: &ServerNames) -> bool {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return false;
        };
        let Ok((_, ca)) = X509Certificate::from_der(&self.cert_der) else {
            return false;
        };
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            return false;
        }
        let renew_at = OffsetDateTime::now_utc() + SERVER_RENEW_BEFORE;
        if cert.validity().not_after.timestamp() < renew_at.unix_timestamp() {
            return false;
        }
        san_strings(&cert) == names.all()
    }
}

/// The names and addresses a client may use to reach the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNames {
    /// The hub's name, `hearth-<8 hex of the CA fingerprint>`: the
    /// certificate's CN. Never the OS host name, which often names a
    /// person and which any unauthenticated client would read.
    pub host: String,
    /// DNS names: the hub's name, `<name>.local`, localhost.
    pub dns: BTreeSet<String>,
    /// Loopback and interface addresses.
    pub ips: BTreeSet<IpAddr>,
}

impl ServerNames {
    /// The hub's name ([`instance_name`]) and the addresses of
    /// every interface.
    pub fn discover(hub_name: &str) -> ServerNames {
        let host = hub_name.to_ascii_lowercase();
        let mut dns = BTreeSet::new();
        dns.insert("localhost".to_owned());
        dns.insert(format!("{host}.local"));
        dns.insert(host.clone());
        let mut ips: BTreeSet<IpAddr> = ["127.0.0.1", "::1"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if let Ok(interfaces) = if_addrs::get_if_addrs() {
            for iface in interfaces {
                let ip = iface.ip();
                // IPv6 link-local addresses need a zone id no TLS client
                // can put in a server name; they are useless in a SAN.
                if let IpAddr::V6(v6) = ip {
                    if v6.segments()[0] & 0xffc0 == 0xfe80 {
                        continue;
                    }
                }
                ips.insert(ip);
            }
        }
        ServerNames { host, dns, ips }
    }

    /// Adds a DNS name the hub also answers to (its mDNS host name).
    pub fn with_alias(mut self, name: String) -> ServerNames {
        self.dns.insert(name);
        self
    }

    fn all(&self) -> BTreeSet<String> {
        self.dns
            .iter()
            .cloned()
            .chain(self.ips.iter().map(|ip| ip.to_string()))
            .collect()
    }

    fn san_types(&self) -> Result<Vec<SanType>, rcgen::Error> {
        let mut sans = Vec::new();
        for name in &self.dns {
            sans.push(SanType::DnsName(name.clone().try_into()?));
        }
        sans.extend(self.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        Ok(sans)
    }
}

fn san_strings(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(d.to_string());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The hub's name on the LAN: `hearth-` and the first 8 hex digits of the
/// CA fingerprint — stable, unique per hub, and naming nobody.
pub fn instance_name(ca_fingerprint: &[u8; 32]) -> String {
    hearth_protocol::pairing::hub_instance_name(ca_fingerprint)
}

/// The mDNS host name the hub answers to (also in its server certificate).
pub fn host_name(ca_fingerprint: &[u8; 32]) -> String {
    hearth_protocol::pairing::hub_host_name(ca_fingerprint)
}

/// The first certificate in a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

fn random_serial() -> SerialNumber {
    let mut bytes = crate::random_bytes::<16>();
    // Positive and non-zero, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::Damaged {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn csr_for(key: &KeyPair) -> String {
        CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn the_ca_is_created_once_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = HubCa::load_or_create(tmp.path()).unwrap();
        let again = HubCa::load_or_create(tmp.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
    }

    #[test]
    fn a_missing_ca_key_is_an_error_not_a_new_ca() {
        let tmp = tempfile::tempdir().unwrap();
        HubCa::load_or_create(tmp.path()).unwrap();
        std::fs::remove_file(tmp.path().join(CA_KEY)).unwrap();
        assert!(matches!(
            HubCa::load_or_create(tmp.path()),
            Err(CaError::HalfPresent(_))
        ));
    }

    #[test]
    fn device_certificates_name_the_device_not_the_request() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = HubCa::load_or_create(tmp.path()).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let device = DeviceId::from_entropy([3; 16]);
        let issued = ca.issue_device(&csr_for(&key), &device).unwrap();
        let der = pem_to_der(&issued.pem).unwrap();
        assert_eq!(device_id_of(&der), Some(device));
        assert_eq!(issued.sha256, fingerprint(&der));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!san_strings(&cert).contains("ignored.example"));
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = HubCa::load_or_create(tmp.path()).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let mut der = csr.der().to_vec();
        let last = der.len() - 3;
        der[last] ^= 0x55; // inside the signature
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let device = DeviceId::from_entropy([4; 16]);
        assert!(matches!(
            ca.issue_device(&pem, &device),
            Err(CaError::BadRequest(_))
        ));
    }

    #[test]
    fn the_server_certificate_follows_the_names() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = HubCa::load_or_create(tmp.path()).unwrap();
        let hub_name = instance_name(&ca.fingerprint());
        let mut names = ServerNames::discover(&hub_name);
        let first = ca.server_identity(tmp.path(), &names).unwrap();
        // Named by the hub's id, never by the OS host name.
        let (_, cert) = X509Certificate::from_der(&first.chain[0]).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), hub_name);
        let sans = san_strings(&cert);
        assert!(sans.contains(&format!("{hub_name}.local")), "{sans:?}");
        let os_host = gethostname::gethostname()
            .to_string_lossy()
            .to_ascii_lowercase();
        assert!(
            !sans.contains(&os_host) && !sans.contains(&format!("{os_host}.local")),
            "{sans:?}"
        );
        let same = ca.server_identity(tmp.path(), &names).unwrap();
        assert_eq!(first.chain[0], same.chain[0]);
        names.ips.insert("192.0.2.7".parse().unwrap());
        let changed = ca.server_identity(tmp.path(), &names).unwrap();
        assert_ne!(first.chain[0], changed.chain[0]);
        let (_, cert) = X509Certificate::from_der(&changed.chain[0]).unwrap();
        let sans = san_strings(&cert);
        assert!(
            sans.contains("192.0.2.7") && sans.contains("localhost") && sans.contains("127.0.0.1")
        );
    }

    #[test]
    fn a_p384_key_is_refused_whatever_the_signature_says() {
        // A secp384r1 key, signed ecdsa-with-SHA256 (made with openssl).
        const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBDDCBkgIBADATMREwDwYDVQQDDAhjYW1wYWlnbjB2MBAGByqGSM49AgEGBSuB
BAAiA2IABN0H1jOxxkoXdNa0gONdz8fh7uypVm4lgssnppxIk2EPyQ5NSSZQpOpl
CiYw55lww1+Slg2ALOrHVI3009fYDzEodEmBT9/sGY+DhWUk7A/INH+WEctnjj+j
PL3OQ6x3iKAAMAoGCCqGSM49BAMCA2kAMGYCMQC6UUX8appUPHTKKUdEG5MWPjmy
OFqhqcAF6Wy5YRlELvbzE5A+EHwK8x+EXpTgogoCMQDEHjsTO2Pxc8YRfvrHkX15
BU7PN7de9HKhqmhD0C+sqTbxc1tAVKQpq26zR70+x4c=
-----END CERTIFICATE REQUEST-----
";
        let dir = tempfile::tempdir().unwrap();
        let ca = HubCa::load_or_create(dir.path()).unwrap();
        assert!(ca.check_request(CSR).is_err());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let good = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        assert!(ca.check_request(&good.pem().unwrap()).is_ok());
    }
}
