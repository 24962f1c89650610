//! Family messaging envelopes, JSON on the wire (docs/PROTOCOL.md): what a
//! device puts in its `outbox` (send, ack) and what the hub puts in an
//! `inbox` (delivery, receipt). Every envelope carries `"v": 1`; unknown
//! fields are ignored so later versions can add some.

use serde::{Deserialize, Serialize};

use crate::id::{DeviceId, MemberName};

/// The envelope version this code speaks.
pub const VERSION: u32 = 1;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `body` is UTF-8 text.
    Text,
    /// `data` is a base64 picture, `content_type` `image/...`.
    Image,
    /// `data` is a base64 recording, `content_type` `audio/...`.
    Audio,
}

impl Kind {
    /// The lower-case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Image => "image",
            Kind::Audio => "audio",
        }
    }
}

/// A device's envelope on its outbox topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outbox {
    /// A message to send.
    Send(Message),
    /// The device has stored a delivered message.
    Ack(Ack),
}

/// A message to send. The sender is the device whose outbox it came from;
/// a `from` field, if any, is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Envelope version.
    pub v: u32,
    /// The client's reference, unique per sender: a retried send with the
    /// same reference is stored once.
    #[serde(rename = "ref")]
    pub reference: String,
    /// A member nickname, or a device id.
    pub to: String,
    /// What it carries.
    pub kind: Kind,
    /// Text, for `kind: text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Base64 content, for `image` and `audio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The MIME type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// A device acknowledges a delivery it has stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Envelope version.
    pub v: u32,
    /// The delivered message's id.
    pub id: String,
}

/// The hub's envelope on an inbox topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Inbox {
    /// A message for this device.
    Delivery(Delivery),
    /// News about a message this device sent.
    Receipt(Receipt),
}

/// Who sent a message, as the hub authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The sender's member nickname.
    pub member: MemberName,
    /// The sending device.
    pub device: DeviceId,
}

/// A message delivered to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Envelope version.
    pub v: u32,
    /// The message id, to acknowledge.
    pub id: String,
    /// The sender.
    pub from: Sender,
    /// What it carries.
    pub kind: Kind,
    /// Text, for `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Base64 content, for `image` and `audio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The MIME type of `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// When the hub stored it, Unix seconds.
    pub sent_at: i64,
    /// When it will be deleted if undelivered, Unix seconds.
    pub expires_at: i64,
}

/// What happened to a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// Stored on the hub (durably) for every recipient device.
    Stored,
    /// Acknowledged by one recipient device (`device`).
    Delivered,
    /// Not delivered to every device before it expired; deleted.
    Expired,
    /// Not accepted (`reason`); nothing was stored.
    Refused,
}

/// News about a message, for the device that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Envelope version.
    pub v: u32,
    /// The sender's reference.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The message id, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What happened.
    pub status: ReceiptStatus,
    /// For `delivered`: which recipient device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// For `refused`: why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why an outbox envelope cannot be read. The reference is recovered when
/// the JSON at least has one, so the refusal can be sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEnvelope {
    /// The `ref` field, if one could be read.
    pub reference: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// Reads an outbox payload.
pub fn parse_outbox(payload: &[u8]) -> Result<Outbox, BadEnvelope> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| BadEnvelope {
        reference: None,
        reason: format!("not JSON: {e}"),
    })?;
    let reference = value.get("ref").and_then(|r| r.as_str()).map(str::to_owned);
    let fail = |reason: String| BadEnvelope {
        reference: reference.clone(),
        reason,
    };
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(fail(format!("envelope version {v} is not supported"))),
        None => return Err(fail("the envelope has no version field \"v\"".into())),
    }
    let envelope: Outbox = serde_json::from_value(value).map_err(|e| fail(e.to_string()))?;
    if let Outbox::Send(send) = &envelope {
        if send.reference.is_empty() || send.reference.len() > 128 {
            return Err(fail("ref must be 1 to 128 characters".into()));
        }
    }
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_parses_and_unknown_fields_and_from_are_ignored() {
        let json = br#"{"v":1,"type":"send","ref":"r1","to":"Ada","kind":"text",
            "body":"hi","from":"someone else","future":true}"#;
        let Outbox::Send(send) = parse_outbox(json).unwrap() else {
            panic!("not a send")
        };
        assert_eq!(send.to, "Ada");
        assert_eq!(send.kind, Kind::Text);
        assert_eq!(send.body.as_deref(), Some("hi"));
    }

    #[test]
    fn refusals_keep_the_reference_when_there_is_one() {
        let err = parse_outbox(br#"{"v":1,"type":"send","ref":"r9","to":"Ada","kind":"video"}"#)
            .unwrap_err();
        assert_eq!(err.reference.as_deref(), Some("r9"));
        assert!(err.reason.contains("video"), "{}", err.reason);
        let err = parse_outbox(b"{not json").unwrap_err();
        assert_eq!(err.reference, None);
        let err = parse_outbox(br#"{"v":2,"type":"ack","id":"x","ref":"q"}"#).unwrap_err();
        assert!(err.reason.contains("version 2"));
        assert!(parse_outbox(br#"{"type":"ack","id":"x"}"#).is_err());
    }

    #[test]
    fn inbox_envelopes_round_trip() {
        let receipt = Inbox::Receipt(Receipt {
            v: VERSION,
            reference: "r1".into(),
            id: Some("m1".into()),
            status: ReceiptStatus::Stored,
            device: None,
            reason: None,
        });
        let text = serde_json::to_string(&receipt).unwrap();
        assert!(text.contains(r#""type":"receipt""#), "{text}");
        assert!(text.contains(r#""status":"stored""#), "{text}");
        assert_eq!(serde_json::from_str::<Inbox>(&text).unwrap(), receipt);
    }
}
