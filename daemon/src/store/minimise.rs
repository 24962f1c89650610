//! What the audit may keep: ids, event kinds, reasons, times — never the
//! free text a device typed. Applied to every entry as it is written, so
//! no caller can store more than this allows.

use hearth_protocol::DeviceId;

/// Topic classes under a device's prefix that the audit names.
const CLASSES: &[&str] = &["state", "tele", "cmd", "inbox", "outbox", "meta"];

/// Events that may keep the peer address: refusals of a client that has
/// no identity yet (the address is all there is to act on).
const PEER_EVENTS: &[&str] = &[
    "handshake-refused",
    "connect-refused",
    "enroll-refused",
    "suppressed",
];

/// A topic or filter reduced to its device prefix and topic class:
/// `hearth/v1/dev/<id>/<class>`, where `<class>` is one of the protocol's
/// classes or `other`; a topic outside device prefixes becomes `$SYS`,
/// `$share`, `$hearth`, `hearth/v1/hub`, `#`/`+` (wildcards at the root)
/// or `other`. Nothing after the class is kept: it may be text a child
/// typed.
pub fn audit_topic(topic: &str) -> String {
    let topic = topic.strip_prefix("$share/").map_or(topic, |rest| {
        // The inner filter of a shared subscription decides.
        rest.split_once('/').map_or("", |(_, inner)| inner)
    });
    let mut levels = topic.split('/');
    let first = levels.next().unwrap_or("");
    match first {
        "" if topic.is_empty() => return String::new(),
        "#" | "+" => return first.to_owned(),
        "$SYS" | "$hearth" => return first.to_owned(),
        "hearth" => {}
        _ => return "other".into(),
    }
    if levels.next() != Some("v1") {
        return "other".into();
    }
    match levels.next() {
        Some("hub") => return "hearth/v1/hub".into(),
        Some("dev") => {}
        Some("+") | Some("#") => return "hearth/v1/+".into(),
        _ => return "other".into(),
    }
    let device = match levels.next() {
        Some(w @ ("+" | "#")) => w.to_owned(),
        Some(id) => match id.parse::<DeviceId>() {
            Ok(id) => id.to_string(),
            Err(_) => return "hearth/v1/dev/other".into(),
        },
        None => return "hearth/v1/dev".into(),
    };
    let class = match levels.next() {
        None => return format!("hearth/v1/dev/{device}"),
        Some(c) if CLASSES.contains(&c) || c == "+" || c == "#" => c,
        Some(_) => "other",
    };
    format!("hearth/v1/dev/{device}/{class}")
}

/// The peer address, only for the events that may keep one.
pub(super) fn audit_peer(event: &str, peer: Option<&str>) -> Option<String> {
    peer.filter(|_| PEER_EVENTS.contains(&event))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_keep_the_prefix_and_class_only() {
        let id = "0jqs8adyj6jyjnsqmar523qbbd";
        for (topic, want) in [
            (
                format!("hearth/v1/dev/{id}/tele/secret diary: Bob is sad today"),
                format!("hearth/v1/dev/{id}/tele"),
            ),
            (
                format!("hearth/v1/dev/{id}/secret diary"),
                format!("hearth/v1/dev/{id}/other"),
            ),
            (
                format!("hearth/v1/dev/{id}/inbox"),
                format!("hearth/v1/dev/{id}/inbox"),
            ),
            (
                "hearth/v1/dev/Ada Lovelace/cmd".into(),
                "hearth/v1/dev/other".into(),
            ),
            (
                "hearth/v1/dev/+/tele/#".into(),
                "hearth/v1/dev/+/tele".into(),
            ),
            ("$SYS/broker/clients".into(), "$SYS".into()),
            (
                format!("$share/g/hearth/v1/dev/{id}/inbox"),
                format!("hearth/v1/dev/{id}/inbox"),
            ),
            ("#".into(), "#".into()),
            ("12 Elm St".into(), "other".into()),
            (String::new(), String::new()),
        ] {
            assert_eq!(audit_topic(&topic), want, "{topic}");
        }
    }

    #[test]
    fn peers_are_kept_only_for_refusals() {
        assert_eq!(
            audit_peer("handshake-refused", Some("10.0.0.2:5")).as_deref(),
            Some("10.0.0.2:5")
        );
        assert_eq!(audit_peer("connect", Some("10.0.0.2:5")), None);
        assert_eq!(audit_peer("denied", Some("10.0.0.2:5")), None);
    }
}
