//! The pairing URI a hub prints (and shows as a QR code) when a pairing
//! window opens: `hearth://pair?v=1&host=…&port=…&mqtt=…&ca=…&token=…`.
//! It carries where to enroll, the hub CA's SHA-256 fingerprint to pin, and
//! the one-time token.

use std::fmt;
use std::str::FromStr;

/// DNS-SD type under which a hub advertises its enrollment service; its TXT
/// record says `mqtt` (port), `ca` (CA fingerprint prefix) and `pair`
/// (`1` while a pairing window is open). The hub advertises it and devices
/// browse for it, so both read this one constant.
pub const HEARTH_SERVICE: &str = "_hearth._tcp.local.";

/// The hub's instance name, `hearth-<first 8 hex of its CA fingerprint>`:
/// what it advertises over mDNS.
pub fn hub_instance_name(ca_fingerprint: &[u8; 32]) -> String {
    let mut name = String::from("hearth-");
    for byte in &ca_fingerprint[..4] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// The hub's stable host name, `hearth-<first 8 hex of its CA
/// fingerprint>.local`. The hub's server certificate always carries it,
/// whatever its addresses, so a device verifies the hub by its CA and this
/// name rather than by the address it dialled (which DHCP may change).
pub fn hub_host_name(ca_fingerprint: &[u8; 32]) -> String {
    format!("{}.local", hub_instance_name(ca_fingerprint))
}

/// What a paired device remembers about its hub: the reference device's
/// `device.toml`. The device writes it when it pairs; `hearth device issue
/// --out` writes it for a device set up by hand, so both read one format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// The id the hub's certificate gives this device (also its MQTT client id).
    pub device_id: crate::DeviceId,
    /// Where the hub was when the device paired.
    pub host: String,
    /// The hub's mutual-TLS MQTT port.
    pub mqtt_port: u16,
    /// The hub's EST (enrollment) port, for renewals.
    pub enroll_port: u16,
    /// SHA-256 of the hub CA certificate, lower-case hex.
    pub ca_sha256: String,
}

/// The parts of a pairing URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingUri {
    /// Host name or IP address of the hub.
    pub host: String,
    /// The enrollment (EST over HTTPS) port.
    pub port: u16,
    /// The mutual-TLS MQTT port.
    pub mqtt_port: u16,
    /// SHA-256 of the hub CA certificate (DER), lower-case hex.
    pub ca_sha256: String,
    /// The one-time token.
    pub token: String,
}

/// Why a pairing URI does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingUriError {
    /// Not `hearth://pair?...`.
    #[error("a pairing URI starts with hearth://pair?")]
    Scheme,
    /// A required parameter is absent.
    #[error("the pairing URI lacks {0}")]
    Missing(&'static str),
    /// A parameter has a bad value.
    #[error("the pairing URI has a bad {0}")]
    Bad(&'static str),
    /// A version this code does not speak.
    #[error("pairing URI version {0} is not supported")]
    Version(String),
}

impl fmt::Display for PairingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Host is an IP address or a DNS name; IPv6 goes in brackets.
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "hearth://pair?v=1&host={host}&port={}&mqtt={}&ca={}&token={}",
            self.port, self.mqtt_port, self.ca_sha256, self.token
        )
    }
}

impl FromStr for PairingUri {
    type Err = PairingUriError;

    fn from_str(s: &str) -> Result<PairingUri, PairingUriError> {
        let query = s
            .trim()
            .strip_prefix("hearth://pair?")
            .ok_or(PairingUriError::Scheme)?;
        let mut v = None;
        let (mut host, mut port, mut mqtt, mut ca, mut token) = (None, None, None, None, None);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "v" => v = Some(value),
                "host" => host = Some(value.trim_start_matches('[').trim_end_matches(']')),
                "port" => port = Some(value.parse().map_err(|_| PairingUriError::Bad("port"))?),
                "mqtt" => mqtt = Some(value.parse().map_err(|_| PairingUriError::Bad("mqtt"))?),
                "ca" => ca = Some(value),
                "token" => token = Some(value),
                _ => {} // later versions may add fields
            }
        }
        match v {
            Some("1") => {}
            Some(other) => return Err(PairingUriError::Version(other.to_owned())),
            None => return Err(PairingUriError::Missing("v")),
        }
        let host = host.ok_or(PairingUriError::Missing("host"))?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        {
            return Err(PairingUriError::Bad("host"));
        }
        let ca = ca.ok_or(PairingUriError::Missing("ca"))?;
        if ca.len() != 64 || !ca.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(PairingUriError::Bad("ca"));
        }
        let token = token.ok_or(PairingUriError::Missing("token"))?;
        if token.len() < 32 || !token.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PairingUriError::Bad("token"));
        }
        Ok(PairingUri {
            host: host.to_owned(),
            port: port.ok_or(PairingUriError::Missing("port"))?,
            mqtt_port: mqtt.ok_or(PairingUriError::Missing("mqtt"))?,
            ca_sha256: ca.to_ascii_lowercase(),
            token: token.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PairingUri {
        PairingUri {
            host: "192.168.1.10".into(),
            port: 8443,
            mqtt_port: 8883,
            ca_sha256: "ab".repeat(32),
            token: "0123456789abcdef0123456789abcdef01234567".into(),
        }
    }

    #[test]
    fn the_hub_name_comes_from_the_first_four_bytes_of_the_ca_fingerprint() {
        let mut fp = [0u8; 32];
        fp[..5].copy_from_slice(&[0xab, 0x01, 0xcd, 0xef, 0x99]);
        assert_eq!(hub_instance_name(&fp), "hearth-ab01cdef");
        assert_eq!(hub_host_name(&fp), "hearth-ab01cdef.local");
    }

    #[test]
    fn round_trips() {
        let uri = sample();
        assert_eq!(uri.to_string().parse::<PairingUri>(), Ok(uri));
        let v6 = PairingUri {
            host: "fd00::1".into(),
            ..sample()
        };
        assert!(v6.to_string().contains("host=[fd00::1]"));
        assert_eq!(v6.to_string().parse::<PairingUri>(), Ok(v6));
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let good = sample().to_string();
        assert_eq!(
            "https://x".parse::<PairingUri>(),
            Err(PairingUriError::Scheme)
        );
        assert!(good
            .replace(&"ab".repeat(32), "abc")
            .parse::<PairingUri>()
            .is_err());
        assert!(good.replace("v=1", "v=2").parse::<PairingUri>().is_err());
        assert!(good
            .replace("192.168.1.10", "a/b")
            .parse::<PairingUri>()
            .is_err());
        assert!(good
            .replace("token=0123456789abcdef", "token=")
            .parse::<PairingUri>()
            .is_err());
    }
}
