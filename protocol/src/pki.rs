//! The certificate formats the hub and its devices both handle, with no
//! I/O: the one CMS structure EST needs (a "certs-only" SignedData, RFC 7030
//! §4.1.3, RFC 5652), the PEM armour, certificate fingerprints and the
//! device id a certificate names. The hub (daemon) and the reference device
//! (`hearth-device`) use this one copy, so they cannot drift apart.
//!
//! The CMS DER is hand-written: the structure is fixed and small, and a CMS
//! crate would be a large dependency for one constant shape.

use base64::Engine;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::DeviceId;

/// The SAN URI prefix by which a device certificate names its device.
pub const DEVICE_URI_PREFIX: &str = "urn:hearth:device:";

/// id-signedData, 1.2.840.113549.1.7.2
const SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// id-data, 1.2.840.113549.1.7.1
const DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// DER of a degenerate SignedData holding `certs` (each DER).
pub fn certs_only(certs: &[&[u8]]) -> Vec<u8> {
    let certificates = tlv(0xa0, &certs.concat()); // [0] IMPLICIT SET OF Certificate
    let signed_data = tlv(
        0x30,
        &[
            &[0x02, 0x01, 0x01][..], // version 1
            &tlv(0x31, &[]),         // digestAlgorithms: empty SET
            &tlv(0x30, DATA),        // encapContentInfo: id-data, no content
            &certificates,
            &tlv(0x31, &[]), // signerInfos: empty SET
        ]
        .concat(),
    );
    tlv(0x30, &[SIGNED_DATA, &tlv(0xa0, &signed_data)].concat())
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// The certificates in a certs-only SignedData (what `certs_only` makes,
/// and what RFC 7030 servers send); `None` if it is not one.
pub fn certificates(der: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (content_info, _) = read(der, 0x30)?;
    let (oid, rest) = read_raw(content_info)?;
    if oid != SIGNED_DATA {
        return None;
    }
    let (explicit, _) = read(rest, 0xa0)?;
    let (signed_data, _) = read(explicit, 0x30)?;
    let (_version, rest) = read(signed_data, 0x02)?;
    let (_digests, rest) = read(rest, 0x31)?;
    let (_encap, rest) = read(rest, 0x30)?;
    let (mut certs, _) = read(rest, 0xa0)?;
    let mut out = Vec::new();
    while !certs.is_empty() {
        let (whole, rest) = read_raw(certs)?;
        out.push(whole.to_vec());
        certs = rest;
    }
    Some(out)
}

/// Reads one TLV with `tag`; returns (value, rest).
fn read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (header, len) = length(input)?;
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, &input[end..]))
}

/// Reads one whole TLV (header included); returns (tlv, rest).
fn read_raw(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, len) = length(input)?;
    let end = header.checked_add(len)?;
    Some((input.get(..end)?, &input[end..]))
}

fn length(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for b in input.get(2..2 + n)? {
        len = (len << 8) | *b as usize;
    }
    Some((2 + n, len))
}

/// PEM armour for one DER object (`label` e.g. `CERTIFICATE`): base64 in
/// 64-column lines, as RFC 7468 asks.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The certificates of an EST answer (`cacerts`, `simpleenroll`,
/// `simplereenroll`): base64 of a certs-only PKCS#7, line breaks allowed
/// (RFC 7030 §4.1.3, §4.2.3). `None` if the body is anything else.
pub fn est_certificates(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    certificates(&der)
}

/// SHA-256 of a certificate's DER encoding: what a pairing URI pins and
/// what the hub's registry keys devices by.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The device id a certificate names: its `urn:hearth:device:` SAN URI, or
/// failing that its common name. `None` if neither is a valid device id.
pub fn device_id_of(der: &[u8]) -> Option<DeviceId> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(DEVICE_URI_PREFIX) {
                    return id.parse().ok();
                }
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    cn.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip() {
        let a = tlv(0x30, &[1u8; 300]);
        let b = tlv(0x30, &[2u8; 5]);
        let p7 = certs_only(&[&a, &b]);
        assert_eq!(certificates(&p7), Some(vec![a, b]));
        assert_eq!(certificates(&[0x30, 0x00]), None);
        assert_eq!(certificates(b"garbage"), None);
    }

    #[test]
    fn pem_lines_are_64_columns_and_round_trip() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = pem("CERTIFICATE", &der);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(text.ends_with("-----END CERTIFICATE-----\n"));
        let body: Vec<&str> = text.lines().skip(1).collect();
        let body = &body[..body.len() - 1];
        assert!(body.iter().all(|l| l.len() <= 64));
        assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body.concat())
            .unwrap();
        assert_eq!(decoded, der);
        assert_eq!(pem("X", &[]), "-----BEGIN X-----\n-----END X-----\n");
    }

    #[test]
    fn est_answers_are_read_with_line_breaks_and_refused_otherwise() {
        let a = tlv(0x30, &[7u8; 100]);
        let p7 = certs_only(&[&a]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&p7);
        // Folded at 64 columns with CRLF, as some EST servers send.
        let folded: Vec<u8> = b64
            .as_bytes()
            .chunks(64)
            .flat_map(|l| l.iter().copied().chain(*b"\r\n"))
            .collect();
        assert_eq!(est_certificates(&folded), Some(vec![a.clone()]));
        assert_eq!(est_certificates(b64.as_bytes()), Some(vec![a]));
        // An error page, plain DER, or base64 of something else.
        assert_eq!(est_certificates(b"<html>500</html>"), None);
        assert_eq!(est_certificates(&p7), None);
        assert_eq!(est_certificates(b"AAAA"), None);
        assert_eq!(est_certificates(b""), None);
    }

    #[test]
    fn a_truncated_answer_is_refused_at_every_length() {
        let a = tlv(0x30, &[1u8; 300]);
        let p7 = certs_only(&[&a]);
        for cut in 0..p7.len() {
            // Never a panic; never the certificate from half an answer.
            assert_ne!(certificates(&p7[..cut]), Some(vec![a.clone()]));
        }
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(device_id_of(b"not a certificate"), None);
        assert_eq!(device_id_of(&[]), None);
        assert_eq!(fingerprint(b"").len(), 32);
    }
}
