//! The inbox's pure rules: which deliveries are new (the hub redelivers a
//! message until it is acknowledged, so the same id can arrive twice), how
//! an attachment is named on disk, and what the device sends. No I/O, so
//! each rule is unit-tested.

use std::collections::{HashSet, VecDeque};
use std::path::Path;

use hearth_protocol::mailbox::{self, Kind, Outbox};

/// How many delivery ids the device remembers. A redelivery comes soon
/// after the first copy (the hub resends what was not acknowledged when
/// the device reconnects), so a few thousand ids are plenty, and a device
/// that follows its inbox for months keeps a bounded memory.
pub const SEEN_CAPACITY: usize = 4096;

/// The delivery ids already shown, oldest forgotten first.
#[derive(Debug, Clone)]
pub struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
    capacity: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Seen::with_capacity(SEEN_CAPACITY)
    }
}

impl Seen {
    /// Remembers at most `capacity` ids (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Seen {
            order: VecDeque::new(),
            ids: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// True the first time `id` is offered (within the last `capacity`
    /// distinct ids); the caller shows or stores the message only then, and
    /// acknowledges it every time.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The file name an attachment is saved under: its delivery id (only the
/// hub's hex ids, so another device cannot name a path) and an extension
/// from its content type. `None` for a malformed id.
pub fn attachment_name(id: &str, content_type: Option<&str>) -> Option<String> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{id}.{}",
        extension_of(content_type.unwrap_or_default())
    ))
}

/// The MIME type of a file to send, from its extension.
pub fn content_type_of(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ogg" | "opus" => "audio/ogg",
        "m4a" | "mp4" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        // What browsers record voice notes as (MediaRecorder).
        "webm" => "audio/webm",
        _ => return None,
    })
}

fn extension_of(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "audio/ogg" => "ogg",
        "audio/mp4" => "m4a",
        "audio/mpeg" => "mp3",
        "audio/wav" => "wav",
        "audio/webm" => "webm",
        _ => "bin",
    }
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Text.
    Text(String),
    /// A picture or a voice note.
    File {
        /// `Image` or `Audio`.
        kind: Kind,
        /// Its MIME type.
        content_type: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

impl Content {
    /// The content of `hearth-device send`: `text`, or the file at `path`
    /// of `kind` with `content_type` (default: from its extension).
    pub fn from_args(
        text: Option<String>,
        file: Option<(Kind, std::path::PathBuf)>,
        content_type: Option<String>,
    ) -> crate::Result<Content> {
        use crate::Error;
        match (text, file) {
            (Some(text), _) => Ok(Content::Text(text)),
            (None, Some((kind, path))) => {
                let content_type = content_type
                    .or_else(|| content_type_of(&path).map(str::to_owned))
                    .ok_or_else(|| Error::Usage("unknown file type; give --content-type".into()))?;
                let bytes = std::fs::read(&path).map_err(|source| Error::Io { path, source })?;
                Ok(Content::File {
                    kind,
                    content_type,
                    bytes,
                })
            }
            (None, None) => Err(Error::Usage("give --text, --image or --audio".into())),
        }
    }
}

impl Content {
    /// Its kind and size, as the hub's limits count them.
    pub fn outgoing(&self) -> hearth_protocol::hub_info::Outgoing {
        use hearth_protocol::hub_info::Outgoing;
        match self {
            Content::Text(text) => Outgoing::Text(text.len()),
            Content::File {
                kind: Kind::Audio,
                bytes,
                ..
            } => Outgoing::Audio(bytes.len()),
            Content::File { bytes, .. } => Outgoing::Image(bytes.len()),
        }
    }
}

/// The outbox envelope that sends `content` to `to` (a member nickname or a
/// device id) under the client `reference`: sending again with the same
/// reference is stored once by the hub.
pub fn send_envelope(reference: &str, to: &str, content: Content) -> Outbox {
    use base64::Engine;
    let (kind, body, data, content_type) = match content {
        Content::Text(text) => (Kind::Text, Some(text), None, None),
        Content::File {
            kind,
            content_type,
            bytes,
        } => (
            kind,
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            Some(content_type),
        ),
    };
    Outbox::Send(mailbox::Message {
        v: mailbox::VERSION,
        reference: reference.to_owned(),
        to: to.to_owned(),
        kind,
        body,
        data,
        content_type,
    })
}

/// The outbox envelope that acknowledges delivery `id`.
pub fn ack_envelope(id: &str) -> Outbox {
    Outbox::Ack(mailbox::Ack {
        v: mailbox::VERSION,
        id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivery_is_seen_once_and_memory_stays_bounded() {
        let mut seen = Seen::with_capacity(3);
        assert!(seen.first_time("a"));
        assert!(
            !seen.first_time("a"),
            "the hub's redelivery is not shown again"
        );
        assert!(seen.first_time("b"));
        assert!(seen.first_time("c"));
        assert!(!seen.first_time("b"));
        assert!(seen.first_time("d"));
        assert_eq!(seen.len(), 3, "the oldest id was forgotten");
        assert!(seen.first_time("a"), "forgotten, so new again");
        for i in 0..10_000 {
            seen.first_time(&i.to_string());
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(Seen::default().capacity, SEEN_CAPACITY);
        assert!(Seen::with_capacity(0).first_time("x"));
    }

    #[test]
    fn attachments_are_named_by_hex_id_only() {
        assert_eq!(
            attachment_name("ab12", Some("image/png")).as_deref(),
            Some("ab12.png")
        );
        assert_eq!(attachment_name("ab12", None).as_deref(), Some("ab12.bin"));
        assert_eq!(
            attachment_name("ab12", Some("text/x-shell")).as_deref(),
            Some("ab12.bin")
        );
        for bad in ["", "../etc/passwd", "a/b", "ab.png", "é", &"a".repeat(65)] {
            assert_eq!(attachment_name(bad, Some("image/png")), None, "{bad:?}");
        }
    }

    #[test]
    fn content_types_come_from_known_extensions_only() {
        assert_eq!(content_type_of(Path::new("a.JPG")), Some("image/jpeg"));
        assert_eq!(content_type_of(Path::new("note.opus")), Some("audio/ogg"));
        assert_eq!(content_type_of(Path::new("x.exe")), None);
        assert_eq!(content_type_of(Path::new("noext")), None);
        for ext in [
            "jpg", "png", "gif", "webp", "ogg", "m4a", "mp3", "wav", "webm",
        ] {
            let ct = content_type_of(Path::new(&format!("f.{ext}"))).unwrap();
            assert_eq!(extension_of(ct), ext, "a saved file keeps its type");
        }
    }

    #[test]
    fn envelopes_are_what_the_hub_parses() {
        let text = send_envelope("r1", "Ada", Content::Text("hi".into()));
        // The hub reads an outbox payload with this very parser.
        let parse = |e: &Outbox| mailbox::parse_outbox(&serde_json::to_vec(e).unwrap()).unwrap();
        assert_eq!(parse(&text), text);
        let json = serde_json::to_value(&text).unwrap();
        assert_eq!(json["ref"], "r1");
        assert_eq!(json["to"], "Ada");
        assert_eq!(json["body"], "hi");
        let file = send_envelope(
            "r2",
            "Ada",
            Content::File {
                kind: Kind::Image,
                content_type: "image/png".into(),
                bytes: vec![0, 1, 2],
            },
        );
        assert_eq!(parse(&file), file);
        let json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["data"], "AAEC");
        assert_eq!(json["content_type"], "image/png");
        assert!(matches!(parse(&ack_envelope("ab")), Outbox::Ack(a) if a.id == "ab"));
    }

    #[test]
    fn send_arguments_become_content_or_a_clear_refusal() {
        let tmp = tempfile::tempdir().unwrap();
        let png = tmp.path().join("drawing.png");
        std::fs::write(&png, b"png").unwrap();
        assert_eq!(
            Content::from_args(Some("hi".into()), None, None).unwrap(),
            Content::Text("hi".into())
        );
        assert_eq!(
            Content::from_args(None, Some((Kind::Image, png.clone())), None).unwrap(),
            Content::File {
                kind: Kind::Image,
                content_type: "image/png".into(),
                bytes: b"png".to_vec()
            }
        );
        let odd = tmp.path().join("drawing.xyz");
        std::fs::write(&odd, b"?").unwrap();
        let err = Content::from_args(None, Some((Kind::Image, odd.clone())), None).unwrap_err();
        assert!(err.to_string().contains("--content-type"), "{err}");
        assert!(
            Content::from_args(None, Some((Kind::Image, odd)), Some("image/png".into())).is_ok()
        );
        let missing = tmp.path().join("gone.png");
        assert!(matches!(
            Content::from_args(None, Some((Kind::Image, missing)), None),
            Err(crate::Error::Io { .. })
        ));
        assert!(Content::from_args(None, None, None).is_err());
    }
}
