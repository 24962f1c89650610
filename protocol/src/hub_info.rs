//! What the hub tells every device about itself, retained on
//! `hearth/v1/hub/info`: the protocol version and the limits a device must
//! respect, so a toy can refuse an oversize send itself with a clear
//! message instead of having its connection closed.

use serde::{Deserialize, Serialize};

/// The retained `hearth/v1/hub/info` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    /// Protocol version (`hearth/v1`): 1.
    pub v: u32,
    /// The hub's software version, for support.
    pub hub_version: String,
    /// Largest MQTT packet the hub accepts, in bytes (`limits.max_payload`).
    pub max_packet_bytes: usize,
    /// The mailbox's limits on one message.
    pub mailbox: MailboxLimits,
}

/// The mailbox's limits on one message, as the hub applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxLimits {
    /// Largest text, in bytes of UTF-8.
    pub max_text_bytes: usize,
    /// Largest picture, in bytes before base64.
    pub max_image_bytes: usize,
    /// Largest voice note, in bytes before base64.
    pub max_audio_bytes: usize,
}

/// Why a message does not fit the hub's limits, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {size} bytes; this hub takes at most {limit} bytes")]
pub struct TooLarge {
    /// "the text", "the picture", "the voice note".
    pub what: &'static str,
    /// Its size.
    pub size: usize,
    /// The hub's limit.
    pub limit: usize,
}

/// What a device wants to send, by kind and size, before it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// Text of this many bytes.
    Text(usize),
    /// A picture of this many bytes.
    Image(usize),
    /// A voice note of this many bytes.
    Audio(usize),
}

impl MailboxLimits {
    /// Whether a message of this kind and size fits.
    pub fn check(&self, outgoing: Outgoing) -> Result<(), TooLarge> {
        let (what, size, limit) = match outgoing {
            Outgoing::Text(n) => ("the text", n, self.max_text_bytes),
            Outgoing::Image(n) => ("the picture", n, self.max_image_bytes),
            Outgoing::Audio(n) => ("the voice note", n, self.max_audio_bytes),
        };
        if size > limit {
            Err(TooLarge { what, size, limit })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MailboxLimits = MailboxLimits {
        max_text_bytes: 4096,
        max_image_bytes: 1_000_000,
        max_audio_bytes: 2_000_000,
    };

    #[test]
    fn a_message_up_to_the_limit_fits_and_one_byte_more_is_refused_with_both_sizes() {
        assert_eq!(LIMITS.check(Outgoing::Text(4096)), Ok(()));
        let err = LIMITS.check(Outgoing::Image(1_000_001)).unwrap_err();
        assert_eq!(err.limit, 1_000_000);
        assert_eq!(
            err.to_string(),
            "the picture is 1000001 bytes; this hub takes at most 1000000 bytes"
        );
        assert!(LIMITS.check(Outgoing::Audio(2_000_000)).is_ok());
        assert!(LIMITS.check(Outgoing::Audio(2_000_001)).is_err());
    }

    #[test]
    fn the_document_keeps_its_field_names() {
        let info = HubInfo {
            v: 1,
            hub_version: "0.1.0".into(),
            max_packet_bytes: 8 << 20,
            mailbox: LIMITS,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["mailbox"]["max_image_bytes"], 1_000_000);
        assert_eq!(json["max_packet_bytes"], 8 << 20);
        assert_eq!(serde_json::from_value::<HubInfo>(json).unwrap(), info);
    }
}
