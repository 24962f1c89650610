//! TLS client configurations for the device: the hub CA as the only root
//! and the hub's stable name (with the device's certificate for MQTT and
//! renewal), and the one pin-later configuration used to fetch the CA
//! while pairing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hearth_protocol::{pairing, pki};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::Result;

/// ring, the hub's provider too: one crypto library in the tree.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting only the hub CA `ca`, and only for the
/// hub's stable name derived from it (see [`HubVerifier`]), presenting
/// `client` (chain PEM, key PEM) if given.
pub fn client_config(
    ca: &CertificateDer<'static>,
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>> {
    client_config_proving(ca, client, Arc::default())
}

/// [`client_config`], setting `proven` once a server proved to be the hub
/// (its certificate passed [`HubVerifier`]): a refusal heard after that is
/// the hub's, one heard before it may be anyone's on the network.
pub fn client_config_proving(
    ca: &CertificateDer<'static>,
    client: Option<(&[u8], &[u8])>,
    proven: Arc<AtomicBool>,
) -> Result<Arc<ClientConfig>> {
    let mut verifier = HubVerifier::new(ca)?;
    verifier.proven = proven;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
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

/// Verifies the hub by its CA and its stable name
/// `hearth-<8 hex of the CA fingerprint>.local`, whatever address was
/// dialled: the hub's address changes with DHCP, its CA and name do not.
/// Chain, validity and handshake signatures are checked by rustls's WebPKI
/// verifier with the hub CA as the only root; only the name it checks
/// against is ours rather than the dialled one. A certificate from another
/// CA fails whatever names it carries, and a certificate of this CA fails
/// unless it names this hub.
#[derive(Debug)]
pub struct HubVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
    /// Set when a server's certificate passed.
    proven: Arc<AtomicBool>,
}

impl HubVerifier {
    /// A verifier trusting only `ca`, for the name derived from its
    /// fingerprint.
    pub fn new(ca: &CertificateDer<'static>) -> Result<HubVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| crate::Error::Usage(format!("the hub CA cannot verify: {e}")))?;
        let host = pairing::hub_host_name(&pki::fingerprint(ca));
        let name = ServerName::try_from(host)
            .map_err(|e| crate::Error::Usage(format!("the hub's name: {e}")))?;
        Ok(HubVerifier {
            inner,
            name,
            proven: Arc::default(),
        })
    }

    /// The name the hub's certificate must carry.
    pub fn name(&self) -> &ServerName<'static> {
        &self.name
    }
}

impl ServerCertVerifier for HubVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)?;
        self.proven.store(true, Ordering::Relaxed);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The configuration for the one `cacerts` request made before the device
/// has the CA: any server certificate is accepted, and the answer is
/// believed only if it matches the pin (see [`crate::est::fetch_ca`]).
pub fn pin_later_config() -> Result<Arc<ClientConfig>> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinLater(provider())))
            .with_no_client_auth(),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA and its issuer, as a hub makes them.
    fn ca(cn: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), Issuer::new(params, key))
    }

    /// A server certificate issued by `issuer` for `names` (DNS or IP).
    fn server(issuer: &Issuer<'static, KeyPair>, names: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    fn verify(
        verifier: &HubVerifier,
        cert: &CertificateDer<'_>,
        dialled: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let dialled = ServerName::try_from(dialled.to_owned()).unwrap();
        verifier.verify_server_cert(cert, &[], &dialled, &[], UnixTime::now())
    }

    #[test]
    fn the_hub_is_verified_by_its_ca_and_name_whatever_address_was_dialled() {
        let (ca_der, issuer) = ca("Hearth hub CA");
        let verifier = HubVerifier::new(&ca_der).unwrap();
        let name = pairing::hub_host_name(&pki::fingerprint(&ca_der));
        assert_eq!(verifier.name().to_str(), name);
        // Issued while the hub was at 192.0.2.1, dialled at its new address.
        let hub = server(&issuer, &[&name, "192.0.2.1"]);
        verify(&verifier, &hub, "192.0.2.77").expect("the hub at another address");
        verify(&verifier, &hub, "192.0.2.1").expect("the hub where it was");
        verify(&verifier, &hub, "hearth-other.local").expect("whatever name was dialled");
    }

    #[test]
    fn another_ca_fails_even_with_the_hubs_name_and_address() {
        let (ca_der, _) = ca("Hearth hub CA");
        // Even under the same CA name: only the key it was signed with counts.
        for rogue_name in ["Rogue hub CA", "Hearth hub CA"] {
            let (_, rogue) = ca(rogue_name);
            let verifier = HubVerifier::new(&ca_der).unwrap();
            let name = pairing::hub_host_name(&pki::fingerprint(&ca_der));
            let impostor = server(&rogue, &[&name, "192.0.2.1"]);
            let err = verify(&verifier, &impostor, "192.0.2.1").unwrap_err();
            assert!(
                matches!(err, rustls::Error::InvalidCertificate(_)),
                "{err:?}"
            );
        }
    }

    #[test]
    fn the_right_ca_without_the_hubs_name_fails() {
        let (ca_der, issuer) = ca("Hearth hub CA");
        let verifier = HubVerifier::new(&ca_der).unwrap();
        // Matching the dialled address is not enough.
        let unnamed = server(&issuer, &["192.0.2.1", "hearth-00000000.local"]);
        let err = verify(&verifier, &unnamed, "192.0.2.1").unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }
}
