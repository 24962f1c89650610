//! `hearth-device`: what a Rust toy needs to live in a Hearth home, as a
//! library — pairing over EST with the hub's CA pinned (`enroll`, `est`),
//! its files on disk with the right modes (`state`), the mutual-TLS MQTT
//! session with telemetry, commands and the family mailbox (`session`,
//! `inbox`), and finding hubs on the LAN (`discovery`). The
//! `hearth-device` binary (src/main.rs) is a thin command line over it.
//!
//! It depends on `hearth-protocol` (ids, topics, envelopes, certificate
//! formats) and never on the daemon, so a toy links no hub code.
//!
//! A toy's life, in calls:
//!
//! ```no_run
//! # async fn toy() -> Result<(), hearth_device::Error> {
//! use hearth_device::{enroll, session, state::DeviceDir};
//! let dir = DeviceDir::new("robot");
//! let uri = "hearth://pair?v=1&host=192.0.2.1&port=8443&mqtt=8883&ca=00&token=t"
//!     .parse()
//!     .expect("a pairing URI");
//! let id = enroll::pair(&dir, uri, false).await?; // once, with the parent's URI
//! let mut inbox = session::Session::connect_inbox(&dir).await?;
//! # let _ = (id, &mut inbox);
//! enroll::renew(&dir).await?; // before the certificate expires
//! # Ok(()) }
//! ```

pub mod cli;
pub mod discovery;
pub mod enroll;
pub mod est;
pub mod inbox;
pub mod session;
pub mod state;
pub mod tls;

use std::path::PathBuf;

/// Why a device operation failed. Each variant says what the user can do
/// about it in its message; none carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory of the device could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The directory holds no pairing yet.
    #[error("reading {path} (pair first: hearth-device pair URI): {source}")]
    NotPaired {
        /// The missing file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file of the device is there but damaged.
    #[error("{path}: {message}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Pairing would replace an existing pairing without `force`.
    #[error("{0} already holds a pairing; use --force to replace it")]
    AlreadyPaired(PathBuf),
    /// The hub could not be reached over TCP.
    #[error("cannot reach the hub at {address}: {source}")]
    Unreachable {
        /// host:port dialled.
        address: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The TLS handshake with the hub failed (wrong CA, revoked device…).
    #[error("TLS with the hub at {address}: {source}")]
    Handshake {
        /// host:port dialled.
        address: String,
        /// What the handshake said.
        source: std::io::Error,
    },
    /// A TLS configuration could not be built from the device's files.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate or key file is not valid PEM.
    #[error("PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// The HTTP exchange with the hub failed.
    #[error("HTTP with the hub: {0}")]
    Http(String),
    /// The hub answered an EST request with an error status.
    #[error("{operation}: the hub answered {status}: {message}")]
    Est {
        /// `cacerts`, `simpleenroll` or `simplereenroll`.
        operation: &'static str,
        /// The HTTP status.
        status: hyper::StatusCode,
        /// The hub's explanation (shown, never obeyed).
        message: String,
    },
    /// The hub's EST answer is not a certs-only PKCS#7 message.
    #[error("the hub's answer is not a base64 PKCS#7 certs-only message")]
    BadAnswer,
    /// No certificate from the hub matches the pinned fingerprint.
    #[error("the hub's CA does not match the fingerprint in the pairing URI; not pairing")]
    CaMismatch,
    /// The issued certificate names no device.
    #[error("the hub's certificate names no device")]
    NoDeviceId,
    /// A renewal returned a certificate for another device.
    #[error("the renewed certificate names another device; keeping the current one")]
    WrongDevice,
    /// Making the key or the signing request failed.
    #[error("key or signing request: {0}")]
    Key(#[from] rcgen::Error),
    /// The MQTT session failed.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// The hub refused this device's certificate: it was revoked or
    /// removed, or this is not the hub that issued it. Trying again cannot
    /// mend that, so the device stops.
    #[error(
        "the hub no longer accepts this device ({0}): it was revoked or removed by a parent, \
         or the hub was reset. It will not be accepted again; pair it again with \
         `hearth-device pair URI --force`"
    )]
    NotAccepted(String),
    /// The hub did not answer in time.
    #[error("{0}")]
    Timeout(&'static str),
    /// mDNS could not be used.
    #[error("mDNS: {0}")]
    Discovery(String),
    /// A message does not fit the limits the hub published; nothing was
    /// sent.
    #[error("not sent: {0} (the hub's limits, from hearth/v1/hub/info)")]
    TooLarge(String),
    /// The hub refused a message sent through the mailbox.
    #[error("the hub refused the message: {0}")]
    Refused(String),
    /// The caller asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
}

impl From<rumqttc::ConnectionError> for Error {
    fn from(e: rumqttc::ConnectionError) -> Self {
        use rumqttc::ConnectReturnCode as Code;
        match &e {
            // The hub's answer to a certificate it no longer accepts on a
            // resumed TLS session.
            rumqttc::ConnectionError::ConnectionRefused(
                code @ (Code::NotAuthorized | Code::BadUserNamePassword),
            ) => Error::NotAccepted(format!("CONNACK {code:?}")),
            _ => match refusal_alert(&e) {
                Some(alert) => Error::NotAccepted(format!("TLS alert {alert:?}")),
                None => Error::Mqtt(e.to_string()),
            },
        }
    }
}

impl From<rumqttc::ClientError> for Error {
    fn from(e: rumqttc::ClientError) -> Self {
        Error::Mqtt(e.to_string())
    }
}

/// The TLS alert by which the hub refused this device's certificate, if
/// that is why the connection failed. The hub answers a certificate it
/// does not accept (revoked, removed, unknown) with one of these; a
/// network failure, a timeout or a reset is none of them and is worth
/// retrying.
pub fn refusal_alert(
    error: &(dyn std::error::Error + 'static),
) -> Option<rustls::AlertDescription> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::AlertReceived(alert)) = e.downcast_ref::<rustls::Error>() {
            return refuses_certificate(*alert).then_some(*alert);
        }
        // io::Error's source() skips the error it wraps: look inside.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    // rumqttc keeps some TLS errors only as text.
    let text = error.to_string();
    REFUSALS
        .iter()
        .copied()
        .find(|alert| text.contains(&format!("AlertReceived({alert:?})")))
}

/// The alerts that say "this certificate is not accepted here".
const REFUSALS: [rustls::AlertDescription; 7] = [
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::AccessDenied,
];

fn refuses_certificate(alert: rustls::AlertDescription) -> bool {
    REFUSALS.contains(&alert)
}

/// A device operation's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fills a buffer from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // Without an OS random source no reference is safe to make: failing
    // closed here is the only sound answer.
    getrandom::getrandom(&mut buf).expect("the OS random source is unavailable");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::AlertDescription as A;

    fn over_io(e: rustls::Error) -> rumqttc::ConnectionError {
        rumqttc::ConnectionError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn a_refused_certificate_stops_the_device_and_a_network_failure_does_not() {
        for alert in [A::CertificateUnknown, A::CertificateRevoked, A::UnknownCA] {
            let e = Error::from(over_io(rustls::Error::AlertReceived(alert)));
            assert!(
                matches!(&e, Error::NotAccepted(why) if why.contains(&format!("{alert:?}"))),
                "{e}"
            );
            assert!(e.to_string().contains("pair it again"), "{e}");
        }
        // A hub restarting, a Wi-Fi drop, an alert about the connection.
        let reset = rumqttc::ConnectionError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(matches!(Error::from(reset), Error::Mqtt(_)));
        let closed = over_io(rustls::Error::AlertReceived(A::CloseNotify));
        assert!(matches!(Error::from(closed), Error::Mqtt(_)));
        let internal = over_io(rustls::Error::AlertReceived(A::InternalError));
        assert!(matches!(Error::from(internal), Error::Mqtt(_)));
        // On a resumed TLS session the hub says it in MQTT.
        let refused =
            rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert!(matches!(Error::from(refused), Error::NotAccepted(_)));
        let busy = rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::ServiceUnavailable,
        );
        assert!(matches!(Error::from(busy), Error::Mqtt(_)));
    }
}
