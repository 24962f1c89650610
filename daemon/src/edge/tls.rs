//! TLS for the edge: the server configuration (built once), a client
//! certificate verifier that accepts only registered, active devices, and a
//! certificate resolver whose server certificate can be swapped while the
//! hub runs (when its addresses change).

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::ca::{device_id_of, fingerprint, ServerIdentity};
use crate::metrics::RefusalClass;
use crate::registry::Registry;

/// The TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsSetupError(String);

/// The server certificate the listeners present; replaceable at run time.
#[derive(Debug)]
pub struct ServerCertificate {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    /// Wraps the hub's server identity.
    pub fn new(
        provider: Arc<CryptoProvider>,
        identity: ServerIdentity,
    ) -> Result<ServerCertificate, TlsSetupError> {
        let key = certified_key(&provider, identity)?;
        Ok(ServerCertificate {
            provider,
            current: RwLock::new(key),
        })
    }

    /// Presents a new certificate to every handshake from now on.
    pub fn replace(&self, identity: ServerIdentity) -> Result<(), TlsSetupError> {
        let key = certified_key(&self.provider, identity)?;
        *crate::sync::write(&self.current) = key;
        Ok(())
    }
}

fn certified_key(
    provider: &CryptoProvider,
    identity: ServerIdentity,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let signing_key = provider
        .key_provider
        .load_private_key(identity.key)
        .map_err(|e| TlsSetupError(format!("server key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(identity.chain, signing_key)))
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&crate::sync::read(&self.current)))
    }
}

/// Whether a listener demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// MQTT: no certificate, no connection.
    Required,
    /// Enrollment: a first enrollment has no certificate yet, a renewal
    /// presents one; one that is presented is checked just as strictly.
    Optional,
    /// The web app: browsers are not asked for a certificate at all (a
    /// phone with certificates installed would prompt its owner to pick
    /// one); they sign in with a session secret instead.
    None,
}

/// The TLS configuration of a listener: TLS 1.3 and 1.2 with rustls's
/// suites (all of them AEAD), client certificates checked against the
/// hub CA and the registry.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    ca: &CertificateDer<'static>,
    registry: Arc<Registry>,
    certificate: Arc<ServerCertificate>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| TlsSetupError(format!("hub CA: {e}")))?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let chain = builder
        .build()
        .map_err(|e| TlsSetupError(format!("client verifier: {e}")))?;
    let verifier = Arc::new(RegisteredDeviceVerifier { chain, registry });
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError(e.to_string()))?;
    let config = match client_auth {
        ClientAuth::None => builder
            .with_no_client_auth()
            .with_cert_resolver(certificate),
        _ => builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certificate),
    };
    Ok(Arc::new(config))
}

/// Accepts a client certificate only if it chains to the hub CA, is in its
/// validity period, names a device, and its fingerprint is an active
/// certificate of an active device in the registry.
#[derive(Debug)]
struct RegisteredDeviceVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    registry: Arc<Registry>,
}

impl ClientCertVerifier for RegisteredDeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        // The chain is the hub's own from here on, so the device id the
        // certificate names can be trusted for the audit.
        let sha = fingerprint(end_entity);
        let named = device_id_of(end_entity);
        let refuse = |reason: &'static str, class: RefusalClass| {
            Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(Refusal {
                    reason,
                    device: named,
                    class,
                })),
            )))
        };
        let Some(known) = self.registry.lookup(&sha) else {
            // The registry holds only the certificates it accepts.
            return if self.registry.is_revoked(&sha) {
                refuse("certificate revoked", RefusalClass::Revoked)
            } else {
                refuse("unknown device", RefusalClass::UnknownDevice)
            };
        };
        if named != Some(known.device) {
            return refuse(
                "certificate does not name its registered device",
                RefusalClass::WrongDevice,
            );
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A refusal by the registry, carrying the device the certificate names.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// Why, in words.
    pub reason: &'static str,
    /// The device the (hub-signed) certificate names.
    pub device: Option<hearth_protocol::DeviceId>,
    /// Its class, for the metrics.
    pub class: RefusalClass,
}

/// Why a handshake was refused: in words for the log and the audit, the
/// device when the certificate was the hub's own, and its class for the
/// metrics.
pub fn refusal_reason(
    error: &std::io::Error,
) -> (String, Option<hearth_protocol::DeviceId>, RefusalClass) {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return (
            format!("connection error: {error}"),
            None,
            RefusalClass::Other,
        );
    };
    if let Error::InvalidCertificate(CertificateError::Other(other)) = tls {
        if let Some(refusal) = other.0.downcast_ref::<Refusal>() {
            return (refusal.reason.to_owned(), refusal.device, refusal.class);
        }
    }
    let (reason, class) = match tls {
        Error::NoCertificatesPresented => {
            ("no client certificate".into(), RefusalClass::NoCertificate)
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => (
            "certificate from an unknown CA".into(),
            RefusalClass::UnknownCa,
        ),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => ("certificate expired".into(), RefusalClass::Expired),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => (
            "certificate not yet valid".into(),
            RefusalClass::NotYetValid,
        ),
        other => (format!("TLS: {other}"), RefusalClass::Other),
    };
    (reason, None, class)
}
