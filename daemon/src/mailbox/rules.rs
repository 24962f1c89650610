//! The mailbox's rules, pure (no I/O, no store): what a send may carry
//! (kinds, sizes, base64, content types), who it may go to (the recipient's
//! form and the household's contact rule, `hearth_protocol::household`),
//! and the words and audit class of each refusal. The service (service.rs)
//! reads the facts from the store and asks these.

use base64::Engine;
use hearth_protocol::household::{self, Role};
use hearth_protocol::mailbox::{self, Delivery, Kind, Message, Sender};
use hearth_protocol::{topic, DeviceId, MemberName};
use serde::{Deserialize, Serialize};

use crate::config::MailboxSection;

/// What is sealed: the content of a message.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Content {
    pub(super) kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) content_type: Option<String>,
}

impl Content {
    /// The inbox envelope that carries this content.
    pub(super) fn into_delivery(
        self,
        id: String,
        from: Sender,
        sent_at: i64,
        expires_at: i64,
    ) -> Delivery {
        Delivery {
            v: mailbox::VERSION,
            id,
            from,
            kind: self.kind,
            body: self.body,
            data: self.data,
            content_type: self.content_type,
            sent_at,
            expires_at,
        }
    }
}

/// Why a send was not taken, for the audit: a fixed list, because the
/// words the sender is told may echo what it typed (a recipient's name,
/// an address) and the audit keeps none of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Revoked,
    SenderQuota,
    PendingBytesQuota,
    TotalQuota,
    FreeSpace,
    ContactNotAllowed,
    UnknownRecipient,
    NoRecipientDevice,
    RecipientFull,
    StoreFailed,
    NotBase64,
    BadContentType,
    TooLarge,
    NotJson,
    UnsupportedVersion,
    Invalid,
}

impl Class {
    /// The audit's words for it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Class::Revoked => "the sending device is revoked",
            Class::SenderQuota => "quota mailbox.max_sender_bytes_per_day",
            Class::PendingBytesQuota => "quota mailbox.max_pending_bytes_per_device",
            Class::TotalQuota => "quota mailbox.max_total_bytes",
            Class::FreeSpace => "quota mailbox.min_free_bytes",
            Class::ContactNotAllowed => "contact not allowed",
            Class::UnknownRecipient => "unknown recipient",
            Class::NoRecipientDevice => "recipient has no device",
            Class::RecipientFull => "recipient mailbox full",
            Class::StoreFailed => "store failed",
            Class::NotBase64 => "data not base64",
            Class::BadContentType => "bad content_type",
            Class::TooLarge => "too large",
            Class::NotJson => "not JSON",
            Class::UnsupportedVersion => "unsupported version",
            Class::Invalid => "invalid message",
        }
    }
}

/// A send not taken: the words the sender is told, and the audit's class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) class: Class,
    pub(super) reason: String,
}

impl Refusal {
    pub(super) fn new(class: Class, reason: impl Into<String>) -> Refusal {
        Refusal {
            class,
            reason: reason.into(),
        }
    }

    /// An outbox payload that is not an envelope
    /// (`hearth_protocol::mailbox::parse_outbox`'s reason). Classed by how
    /// the reason begins, never by what follows: a parser's words may
    /// quote the payload (an unknown `kind` is echoed back).
    pub(super) fn bad_envelope(reason: String) -> Refusal {
        let class = if reason.starts_with("not JSON") {
            Class::NotJson
        } else if reason.starts_with("envelope version")
            || reason.starts_with("the envelope has no version")
        {
            Class::UnsupportedVersion
        } else {
            Class::Invalid
        };
        Refusal::new(class, reason)
    }

    /// The checked content would not encode for sealing (it always does:
    /// it was decoded from JSON).
    pub(super) fn unencodable(e: &serde_json::Error) -> Refusal {
        Refusal::new(Class::Invalid, e.to_string())
    }

    /// The store failed: nothing was kept, and the sender may try again.
    pub(super) fn try_again() -> Refusal {
        Refusal::new(
            Class::StoreFailed,
            "the hub could not store the message; try again",
        )
    }

    /// The sending device belongs to no member: revoked (or removed) while
    /// its message was in flight, else a service's.
    pub(super) fn not_a_members_device(revoked: bool) -> Refusal {
        if revoked {
            Refusal::new(Class::Revoked, "the sending device is revoked")
        } else {
            Refusal::new(Class::Invalid, "service devices do not send messages")
        }
    }

    /// `to` names no member and no member's device.
    pub(super) fn unknown_recipient(to: &str) -> Refusal {
        Refusal::new(
            Class::UnknownRecipient,
            format!("no member or device named {to:?}"),
        )
    }

    /// Every device of the recipient is the sender's own.
    pub(super) fn no_device(to: &str) -> Refusal {
        Refusal::new(
            Class::NoRecipientDevice,
            format!("{to} has no device to deliver to"),
        )
    }
}

/// Whether a send's content passes the mailbox's checks (kind, body or
/// data, content type, base64, size), and why not. Pure: the messaging
/// fuzz target (fuzz/fuzz_targets/envelope.rs) drives the same checks an
/// outbox payload meets before anything is stored.
pub fn check_send(limits: &MailboxSection, send: &Message) -> Result<(), String> {
    check_content(limits, send)
        .map(|_| ())
        .map_err(|refusal| refusal.reason)
}

/// The checks of [`check_send`], keeping the content to seal.
pub(super) fn check_content(limits: &MailboxSection, send: &Message) -> Result<Content, Refusal> {
    match send.kind {
        Kind::Text => check_text(limits, send),
        Kind::Image | Kind::Audio => check_attachment(limits, send),
    }
}

fn check_text(limits: &MailboxSection, send: &Message) -> Result<Content, Refusal> {
    let Some(body) = send.body.as_ref().filter(|b| !b.is_empty()) else {
        return Err(Refusal::new(Class::Invalid, "a text message needs a body"));
    };
    if send.data.is_some() {
        return Err(Refusal::new(
            Class::Invalid,
            "a text message has a body, not data",
        ));
    }
    if body.len() > limits.max_text_bytes {
        return Err(Refusal::new(
            Class::TooLarge,
            format!(
                "text is {} bytes; at most {} are allowed",
                body.len(),
                limits.max_text_bytes
            ),
        ));
    }
    Ok(Content {
        kind: Kind::Text,
        body: Some(body.clone()),
        data: None,
        content_type: None,
    })
}

/// The pictures a message may carry: the formats phones and toys make,
/// exactly, without parameters. Not SVG (it can carry script), nothing a
/// recipient would have to guess at.
pub const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];
/// The voice notes a message may carry (`audio/webm` is what browsers
/// record).
pub const AUDIO_TYPES: [&str; 6] = [
    "audio/ogg",
    "audio/webm",
    "audio/mp4",
    "audio/mpeg",
    "audio/wav",
    "audio/aac",
];

/// A picture or a voice note: base64 `data` of one of its kind's content
/// types.
fn check_attachment(limits: &MailboxSection, send: &Message) -> Result<Content, Refusal> {
    let (limit, allowed, prefix) = if send.kind == Kind::Image {
        (limits.max_image_bytes, &IMAGE_TYPES[..], "image/")
    } else {
        (limits.max_audio_bytes, &AUDIO_TYPES[..], "audio/")
    };
    let Some(data) = &send.data else {
        return Err(Refusal::new(
            Class::Invalid,
            format!("an {} message needs data", send.kind.as_str()),
        ));
    };
    let content_type = match &send.content_type {
        Some(t) if allowed.contains(&t.as_str()) => t.clone(),
        _ => {
            return Err(Refusal::new(
                Class::BadContentType,
                format!(
                    "content_type must be one of {} ({prefix}...)",
                    allowed.join(", ")
                ),
            ))
        }
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| Refusal::new(Class::NotBase64, "data is not valid base64"))?;
    if decoded.is_empty() || decoded.len() > limit {
        return Err(Refusal::new(
            Class::TooLarge,
            format!(
                "{} is {} bytes; 1 to {limit} are allowed",
                send.kind.as_str(),
                decoded.len()
            ),
        ));
    }
    Ok(Content {
        kind: send.kind,
        body: None,
        data: Some(data.clone()),
        content_type: Some(content_type),
    })
}

/// Who a send's `to` names: a device id, else a member nickname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Recipient {
    Device(DeviceId),
    Member(MemberName),
}

impl Recipient {
    /// Reads `to`; text that is neither is refused as unknown.
    pub(super) fn parse(to: &str) -> Result<Recipient, Refusal> {
        if let Ok(device) = to.parse::<DeviceId>() {
            return Ok(Recipient::Device(device));
        }
        to.parse::<MemberName>()
            .map(Recipient::Member)
            .map_err(|_| Refusal::unknown_recipient(to))
    }
}

/// The household's contact rule, as a refusal: `rule` is a parent's
/// explicit one between the two, if any (see
/// `hearth_protocol::household::may_message`).
pub(super) fn contact(
    rule: Option<bool>,
    from: &MemberName,
    from_role: Option<Role>,
    to: &MemberName,
    to_role: Option<Role>,
) -> Result<(), Refusal> {
    if household::may_message(rule, from, from_role, to, to_role) {
        Ok(())
    } else {
        Err(Refusal::new(
            Class::ContactNotAllowed,
            format!("{from} may not message {to} (hearth contacts allow)"),
        ))
    }
}

/// Whether one more message may wait for a recipient device that has
/// `pending` waiting already.
pub(super) fn room_for_one(limits: &MailboxSection, to: &str, pending: u64) -> Result<(), Refusal> {
    if pending >= limits.max_pending_per_device {
        return Err(Refusal::new(
            Class::RecipientFull,
            format!(
                "the mailbox of {to} is full ({} messages waiting)",
                limits.max_pending_per_device
            ),
        ));
    }
    Ok(())
}

/// The device an outbox topic belongs to.
pub fn outbox_sender(topic: &str) -> Option<DeviceId> {
    topic
        .strip_prefix(topic::DEVICE_ROOT)?
        .strip_prefix('/')?
        .strip_suffix("/outbox")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = "0jqs8adyj6jyjnsqmar523qbbd";

    fn limits() -> MailboxSection {
        MailboxSection {
            max_text_bytes: 10,
            max_image_bytes: 4,
            max_audio_bytes: 3,
            max_pending_per_device: 2,
            ..MailboxSection::default()
        }
    }

    fn send(kind: Kind, body: Option<&str>, data: Option<&str>, ty: Option<&str>) -> Message {
        Message {
            v: mailbox::VERSION,
            reference: "r1".into(),
            to: "Mum".into(),
            kind,
            body: body.map(Into::into),
            data: data.map(Into::into),
            content_type: ty.map(Into::into),
        }
    }

    fn refused(send: &Message) -> Refusal {
        check_content(&limits(), send).expect_err("refused")
    }

    fn name(s: &str) -> MemberName {
        s.parse().unwrap()
    }

    #[test]
    fn text_within_the_limit_is_kept_as_it_was_sent() {
        let content = check_content(&limits(), &send(Kind::Text, Some("0123456789"), None, None));
        assert_eq!(
            content.unwrap(),
            Content {
                kind: Kind::Text,
                body: Some("0123456789".into()),
                data: None,
                content_type: None,
            }
        );
    }

    #[test]
    fn oversize_or_empty_text_is_refused_with_its_reason() {
        let long = refused(&send(Kind::Text, Some("0123456789a"), None, None));
        assert_eq!(long.class, Class::TooLarge);
        assert_eq!(long.reason, "text is 11 bytes; at most 10 are allowed");
        for empty in [None, Some("")] {
            let r = refused(&send(Kind::Text, empty, None, None));
            assert_eq!(r.reason, "a text message needs a body");
        }
        let both = refused(&send(Kind::Text, Some("hi"), Some("aGk="), None));
        assert_eq!(both.reason, "a text message has a body, not data");
    }

    #[test]
    fn attachments_need_base64_data_of_their_own_content_type_and_size() {
        // Four bytes of picture: the limit exactly.
        let ok = check_content(
            &limits(),
            &send(Kind::Image, None, Some("AAECAw=="), Some("image/png")),
        )
        .unwrap();
        assert_eq!(ok.data.as_deref(), Some("AAECAw=="));
        assert_eq!(ok.content_type.as_deref(), Some("image/png"));

        let five = refused(&send(
            Kind::Image,
            None,
            Some("AAECAwQ="),
            Some("image/png"),
        ));
        assert_eq!(five.class, Class::TooLarge);
        assert_eq!(five.reason, "image is 5 bytes; 1 to 4 are allowed");
        let nothing = refused(&send(Kind::Audio, None, Some(""), Some("audio/ogg")));
        assert_eq!(nothing.reason, "audio is 0 bytes; 1 to 3 are allowed");

        let not_b64 = refused(&send(Kind::Image, None, Some("%%%"), Some("image/png")));
        assert_eq!(not_b64.class, Class::NotBase64);
        assert_eq!(not_b64.reason, "data is not valid base64");

        // A voice note dressed as a picture, and a content type too long.
        let wrong = refused(&send(Kind::Image, None, Some("AA=="), Some("audio/ogg")));
        assert_eq!(wrong.class, Class::BadContentType);
        assert_eq!(
            wrong.reason,
            "content_type must be one of image/jpeg, image/png, image/gif, image/webp (image/...)"
        );
        let long_type = format!("image/{}", "x".repeat(95));
        let long = refused(&send(Kind::Image, None, Some("AA=="), Some(&long_type)));
        assert_eq!(long.class, Class::BadContentType);
        let untyped = refused(&send(Kind::Audio, None, Some("AA=="), None));
        assert!(untyped
            .reason
            .starts_with("content_type must be one of audio/ogg"));
        // Only the listed types, exactly: no script-carrying SVG, no
        // parameters a page would paste into a data: URL.
        for odd in [
            "image/svg+xml",
            "image/png;x,<script>",
            "image/PNG",
            "image/",
        ] {
            let refusal = refused(&send(Kind::Image, None, Some("AA=="), Some(odd)));
            assert_eq!(refusal.class, Class::BadContentType, "{odd}");
        }
        for odd in ["audio/x\"><script>", "audio/ogg; codecs=opus"] {
            let refusal = refused(&send(Kind::Audio, None, Some("AA=="), Some(odd)));
            assert_eq!(refusal.class, Class::BadContentType, "{odd}");
        }

        let no_data = refused(&send(Kind::Audio, None, None, Some("audio/ogg")));
        assert_eq!(no_data.reason, "an audio message needs data");
    }

    #[test]
    fn check_send_tells_the_same_reason() {
        let big = send(Kind::Text, Some("0123456789a"), None, None);
        assert_eq!(
            check_send(&limits(), &big).unwrap_err(),
            refused(&big).reason
        );
        assert!(check_send(&limits(), &send(Kind::Text, Some("hi"), None, None)).is_ok());
    }

    #[test]
    fn a_message_to_a_contact_the_parents_did_not_allow_is_refused() {
        let (mum, ada, bob) = (name("Mum"), name("Ada"), name("Bob"));
        let (parent, child) = (Some(Role::Parent), Some(Role::Child));
        let r = contact(None, &ada, child, &bob, child).unwrap_err();
        assert_eq!(r.class, Class::ContactNotAllowed);
        assert_eq!(r.reason, "Ada may not message Bob (hearth contacts allow)");
        assert!(contact(Some(false), &ada, child, &mum, parent).is_err());
        assert!(contact(Some(true), &ada, child, &bob, child).is_ok());
        assert!(contact(None, &ada, child, &mum, parent).is_ok());
        assert!(contact(None, &mum, parent, &bob, child).is_ok());
    }

    #[test]
    fn a_recipient_named_like_another_reason_is_audited_for_what_happened() {
        // Member names may hold spaces: the audit's class must come from
        // the rule that refused, not from words the sender chose.
        let odd = name("is revoked max_total_bytes");
        let (ada, parent, child) = (name("Ada"), Some(Role::Parent), Some(Role::Child));
        let r = contact(None, &ada, child, &odd, child).unwrap_err();
        assert_eq!(r.class.as_str(), "contact not allowed");
        assert_eq!(
            Refusal::no_device(odd.as_str()).class,
            Class::NoRecipientDevice
        );
        assert_eq!(
            Refusal::unknown_recipient("base64 bytes JSON")
                .class
                .as_str(),
            "unknown recipient"
        );
        let full = room_for_one(&limits(), odd.as_str(), 2).unwrap_err();
        assert_eq!(full.class.as_str(), "recipient mailbox full");
        assert!(contact(None, &odd, parent, &ada, child).is_ok());
    }

    #[test]
    fn a_recipient_device_holds_at_most_the_pending_limit() {
        assert!(room_for_one(&limits(), "Mum", 1).is_ok());
        let r = room_for_one(&limits(), "Mum", 2).unwrap_err();
        assert_eq!(r.reason, "the mailbox of Mum is full (2 messages waiting)");
    }

    #[test]
    fn to_is_a_device_id_else_a_nickname() {
        assert_eq!(
            Recipient::parse(DEVICE).unwrap(),
            Recipient::Device(DEVICE.parse().unwrap())
        );
        assert_eq!(
            Recipient::parse("Mum").unwrap(),
            Recipient::Member(name("Mum"))
        );
        for bad in ["", "a/b", "#"] {
            let r = Recipient::parse(bad).unwrap_err();
            assert_eq!(r.class, Class::UnknownRecipient, "{bad:?}");
        }
    }

    #[test]
    fn an_envelope_that_does_not_parse_is_classed_by_what_failed_not_by_what_it_quotes() {
        let class = |payload: &[u8]| {
            let reason = mailbox::parse_outbox(payload).unwrap_err().reason;
            Refusal::bad_envelope(reason).class.as_str()
        };
        assert_eq!(class(b"{not json"), "not JSON");
        assert_eq!(
            class(br#"{"v":9,"type":"ack","id":"x"}"#),
            "unsupported version"
        );
        assert_eq!(class(br#"{"type":"ack","id":"x"}"#), "unsupported version");
        // The parser echoes an unknown kind; the audit must not follow it.
        for kind in ["max_total_bytes", "base64", "is revoked"] {
            let payload =
                format!(r#"{{"v":1,"type":"send","ref":"r","to":"Mum","kind":"{kind}"}}"#);
            assert_eq!(class(payload.as_bytes()), "invalid message", "{kind}");
        }
        assert_eq!(Refusal::try_again().class.as_str(), "store failed");
        assert_eq!(
            Refusal::not_a_members_device(true).class.as_str(),
            "the sending device is revoked"
        );
        assert_eq!(
            Refusal::not_a_members_device(false).class.as_str(),
            "invalid message"
        );
    }

    #[test]
    fn only_a_devices_own_outbox_topic_names_a_sender() {
        let topic = format!("hearth/v1/dev/{DEVICE}/outbox");
        assert_eq!(outbox_sender(&topic), Some(DEVICE.parse().unwrap()));
        for other in [
            format!("hearth/v1/dev/{DEVICE}/inbox"),
            format!("hearth/v1/dev/{DEVICE}/outbox/x"),
            format!("hearth/v1/dev{DEVICE}/outbox"),
            "hearth/v1/dev/not-a-device/outbox".to_owned(),
        ] {
            assert_eq!(outbox_sender(&other), None, "{other}");
        }
    }
}
