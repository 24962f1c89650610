//! The one CMS structure EST needs: a "certs-only" SignedData (RFC 7030
//! §4.1.3, RFC 5652) carrying certificates and no signature. Hand-written
//! DER: the structure is fixed and small, and a CMS crate would be a large
//! dependency for one constant shape.

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
}
