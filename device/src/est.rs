//! The EST client (RFC 7030): `cacerts` checked against a pin, and
//! `simpleenroll` / `simplereenroll` with a PKCS#10 request made on the
//! device. One HTTP/1.1 request per TLS connection, answers size-capped.

use std::sync::Arc;

use bytes::Bytes;
use hearth_protocol::pki;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{Error, Result};

/// The EST path prefix.
pub const EST: &str = "/.well-known/est/";
/// Largest EST answer read: a certificate or two in base64.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// What the device knows of the hub CA before it has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The whole SHA-256 fingerprint, from a pairing URI.
    Full(String),
    /// A prefix of it (at least 128 bits), from the administrator, with
    /// the hub found by mDNS.
    Prefix(String),
}

/// The enrollment operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// First enrollment, authorised by the one-time pairing token.
    SimpleEnroll,
    /// Renewal, authorised by the device's current certificate.
    SimpleReenroll,
}

impl Operation {
    /// Its name in the EST path.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::SimpleEnroll => "simpleenroll",
            Operation::SimpleReenroll => "simplereenroll",
        }
    }
}

/// The `--ca` fingerprint prefix, lower case. At least 128 bits (32 hex
/// digits), as many as the pairing URI carries: a 64-bit prefix is within
/// reach of someone making CA keys until one matches.
pub fn ca_prefix(arg: &str) -> Result<String> {
    let ca = arg.to_ascii_lowercase();
    if ca.len() < 32 || ca.len() > 64 || !ca.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(
            "--ca takes at least the first 32 hex digits of the hub's CA fingerprint".into(),
        ));
    }
    Ok(ca)
}

/// The certificate among `certs` that matches `pin`, if any.
pub fn pick_ca(certs: Vec<Vec<u8>>, pin: &Pin) -> Option<Vec<u8>> {
    let wanted = match pin {
        Pin::Full(hex) | Pin::Prefix(hex) => hex.to_ascii_lowercase(),
    };
    certs.into_iter().find(|der| {
        let got = hex::encode(pki::fingerprint(der));
        match pin {
            Pin::Full(_) => got == wanted,
            // A short prefix would pin nothing: refused even if it matches.
            Pin::Prefix(_) => wanted.len() >= 32 && got.starts_with(&wanted),
        }
    })
}

/// Fetches `cacerts` and returns the certificate matching the pin. The
/// connection is not authenticated yet — nothing secret is sent on it, and
/// what comes back is believed only if it matches the pin.
pub async fn fetch_ca(host: &str, port: u16, pin: &Pin) -> Result<CertificateDer<'static>> {
    let request = request(Method::GET, host, port, "cacerts", None, Bytes::new())?;
    let (status, body) = https(host, port, crate::tls::pin_later_config()?, request).await?;
    let certs = answer("cacerts", status, &body)?;
    pick_ca(certs, pin)
        .map(CertificateDer::from)
        .ok_or(Error::CaMismatch)
}

/// Posts a PKCS#10 request (DER) and returns the issued certificate.
pub async fn enroll(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    operation: Operation,
    authorization: Option<String>,
    csr_der: &[u8],
) -> Result<CertificateDer<'static>> {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(csr_der);
    let request = request(
        Method::POST,
        host,
        port,
        operation.as_str(),
        authorization,
        Bytes::from(body),
    )?;
    let (status, body) = https(host, port, tls, request).await?;
    answer(operation.as_str(), status, &body)?
        .into_iter()
        .next()
        .map(CertificateDer::from)
        .ok_or(Error::BadAnswer)
}

/// Reads an EST answer: the certificates of a 200, or the hub's refusal.
pub fn answer(operation: &'static str, status: StatusCode, body: &[u8]) -> Result<Vec<Vec<u8>>> {
    if status != StatusCode::OK {
        return Err(Error::Est {
            operation,
            status,
            message: String::from_utf8_lossy(body).trim().to_owned(),
        });
    }
    pki::est_certificates(body).ok_or(Error::BadAnswer)
}

/// The HTTP request for an EST `operation` on the hub at `host:port`.
pub fn request(
    method: Method,
    host: &str,
    port: u16,
    operation: &str,
    authorization: Option<String>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("{EST}{operation}"))
        .header(HOST, authority(host, port));
    if !body.is_empty() {
        builder = builder
            .header(CONTENT_TYPE, "application/pkcs10")
            .header("content-transfer-encoding", "base64");
    }
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| Error::Http(e.to_string()))
}

/// `host:port`, with an IPv6 address in brackets (RFC 3986).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One HTTP/1.1 request over TLS; returns the status and the body.
async fn https(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    let address = authority(host, port);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| Error::Unreachable {
            address: address.clone(),
            source,
        })?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Error::Usage(format!("bad hub host name {host:?}")))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| Error::Handshake { address, source })?;
    let http = |e: hyper::Error| Error::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| Error::Http(format!("reading the hub's answer: {e}")))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn the_ca_prefix_needs_128_bits() {
        assert!(ca_prefix(&"a".repeat(16)).is_err());
        assert!(ca_prefix(&"a".repeat(31)).is_err());
        assert!(ca_prefix(&"g".repeat(32)).is_err());
        assert!(ca_prefix(&"a".repeat(65)).is_err());
        assert_eq!(ca_prefix(&"AB".repeat(16)).unwrap(), "ab".repeat(16));
        assert!(ca_prefix(&"0".repeat(64)).is_ok());
    }

    #[test]
    fn only_the_pinned_ca_is_picked() {
        let (ours, theirs) = (b"our CA".to_vec(), b"a stranger".to_vec());
        let fp = hex::encode(pki::fingerprint(&ours));
        let certs = || vec![theirs.clone(), ours.clone()];
        assert_eq!(pick_ca(certs(), &Pin::Full(fp.clone())), Some(ours.clone()));
        assert_eq!(
            pick_ca(certs(), &Pin::Full(fp.to_ascii_uppercase())),
            Some(ours.clone())
        );
        assert_eq!(
            pick_ca(certs(), &Pin::Prefix(fp[..32].into())),
            Some(ours.clone())
        );
        // A full pin is the whole fingerprint, a prefix at least 128 bits.
        assert_eq!(pick_ca(certs(), &Pin::Full(fp[..32].into())), None);
        assert_eq!(pick_ca(certs(), &Pin::Prefix(fp[..16].into())), None);
        assert_eq!(pick_ca(vec![theirs], &Pin::Full(fp)), None);
    }

    #[test]
    fn est_answers_give_certificates_or_the_hubs_reason() {
        let cert = vec![0x30, 0x03, 1, 2, 3];
        let p7 = pki::certs_only(&[&cert]);
        let body = base64::engine::general_purpose::STANDARD.encode(p7) + "\n";
        assert_eq!(
            answer("cacerts", StatusCode::OK, body.as_bytes()).unwrap(),
            vec![cert]
        );
        let refused = answer(
            "simpleenroll",
            StatusCode::FORBIDDEN,
            b" no pairing window \n",
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "simpleenroll: the hub answered 403 Forbidden: no pairing window"
        );
        assert!(matches!(
            answer("cacerts", StatusCode::OK, b"<html>"),
            Err(Error::BadAnswer)
        ));
    }

    #[test]
    fn requests_carry_the_host_and_the_pkcs10_headers() {
        let get = request(Method::GET, "::1", 8443, "cacerts", None, Bytes::new()).unwrap();
        assert_eq!(get.uri(), "/.well-known/est/cacerts");
        assert_eq!(get.headers()[HOST], "[::1]:8443");
        assert!(get.headers().get(CONTENT_TYPE).is_none());
        let post = request(
            Method::POST,
            "192.0.2.1",
            8443,
            Operation::SimpleEnroll.as_str(),
            Some("Basic x".into()),
            Bytes::from_static(b"MII"),
        )
        .unwrap();
        assert_eq!(post.headers()[HOST], "192.0.2.1:8443");
        assert_eq!(post.headers()[CONTENT_TYPE], "application/pkcs10");
        assert_eq!(post.headers()[AUTHORIZATION], "Basic x");
        assert_eq!(post.uri(), "/.well-known/est/simpleenroll");
    }
}
