//! The household policy: a pure function deciding whether a device may
//! publish to a topic, subscribe to a filter, leave a will, or retain.
//! It fails closed: whatever no rule allows is denied, with a reason.
//!
//! Version-1 namespace (`{d}` is a device id):
//!
//! | topic | publish | subscribe |
//! |---|---|---|
//! | `hearth/v1/dev/{d}/state` | the hub | `d`; parents |
//! | `hearth/v1/dev/{d}/tele/...` | `d` (may retain) | parents |
//! | `hearth/v1/dev/{d}/cmd/...` | parents | `d` |
//! | `hearth/v1/dev/{d}/inbox` | the hub | `d` |
//! | `hearth/v1/dev/{d}/outbox` | `d` | the hub |
//! | `hearth/v1/dev/{d}/meta` | `d` (may retain; not a will) | `d`; parents |
//! | `hearth/v1/hub/info` | the hub (retained) | every member's device |
//!
//! Service devices get nothing but the filters an administrator granted,
//! taken literally: no pattern substitution, so no identity can smuggle a
//! wildcard into a rule.

use serde::{Deserialize, Serialize};

use crate::filter::{self, covers, intersects, levels, matches, Level, TopicError};
use crate::id::DeviceId;

/// What a device is to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRole {
    /// A parent's device: reaches every device of the household.
    Parent,
    /// A child's device: reaches only itself.
    Child,
    /// A local integration: only its grants.
    Service,
}

/// Which way a grant allows traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// May publish to topics the filter matches (and retain there).
    Publish,
    /// May subscribe to filters the grant's filter covers.
    Subscribe,
}

/// A filter an administrator granted a service device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The filter, literal.
    pub filter: String,
    /// Publish or subscribe.
    pub direction: Direction,
}

/// Why a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Not a valid filter.
    #[error("not a valid filter: {0}")]
    Invalid(TopicError),
    /// Outside `hearth/v1/{literal}/...`.
    #[error("grants must lie under hearth/v1/<literal level>/")]
    OutsideNamespace,
    /// Would reach the family's private messages.
    #[error("grants may not reach a device's inbox or outbox (family messages)")]
    PrivateMessages,
}

impl Grant {
    /// Validates a grant: a valid filter under `hearth/v1/<literal>/`, never
    /// reaching a device's inbox or outbox.
    pub fn new(filter: &str, direction: Direction) -> Result<Grant, GrantError> {
        filter::check_filter(filter).map_err(GrantError::Invalid)?;
        let mut lv = levels(filter);
        let in_namespace = lv.next() == Some(Level::Literal("hearth"))
            && lv.next() == Some(Level::Literal("v1"))
            && matches!(lv.next(), Some(Level::Literal(_)));
        if !in_namespace {
            return Err(GrantError::OutsideNamespace);
        }
        for private in ["hearth/v1/dev/+/inbox", "hearth/v1/dev/+/outbox"] {
            if intersects(levels(filter), levels(private)) {
                return Err(GrantError::PrivateMessages);
            }
        }
        Ok(Grant {
            filter: filter.to_owned(),
            direction,
        })
    }
}

/// The device asking, with what the household says about it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The device, from its certificate.
    pub device: &'a DeviceId,
    /// Its role.
    pub role: DeviceRole,
    /// Its grants (service devices only; ignored for others).
    pub grants: &'a [Grant],
}

/// What the device wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name.
    Publish {
        /// With the retain flag.
        retain: bool,
    },
    /// Subscribe to a filter (possibly `$share/{group}/{filter}`).
    Subscribe,
    /// Leave a will on a topic name.
    Will {
        /// With the retain flag.
        retain: bool,
    },
}

impl Action {
    /// A short name for logs and the audit.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Publish { retain: false } => "publish",
            Action::Publish { retain: true } => "publish-retained",
            Action::Subscribe => "subscribe",
            Action::Will { retain: false } => "will",
            Action::Will { retain: true } => "will-retained",
        }
    }
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused, and why.
    Deny(DenyReason),
}

/// Why something was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    /// The topic or filter itself is malformed.
    #[error("{0}")]
    Malformed(TopicError),
    /// `$SYS` and every other `$` topic.
    #[error("reserved $ topic")]
    Reserved,
    /// Not under `hearth/v1/dev/`.
    #[error("outside the hearth/v1/dev namespace")]
    OutsideNamespace,
    /// Another device's topic that no rule opens to this device.
    #[error("another device's topic")]
    OtherDevice,
    /// A wildcard over devices this role may not use.
    #[error("wildcard over other devices")]
    WildcardDevice,
    /// The device's own topic, but not for this action (e.g. publishing
    /// to its own inbox, which only the hub fills).
    #[error("not permitted on this topic")]
    NotPermitted,
    /// Retain is not allowed on this topic.
    #[error("retain not allowed here")]
    RetainNotAllowed,
    /// A service device without a matching grant.
    #[error("no grant covers this")]
    NotGranted,
}

const ROOT: [Level<'static>; 3] = [
    Level::Literal("hearth"),
    Level::Literal("v1"),
    Level::Literal("dev"),
];

/// A pattern under the device root: `hearth/v1/dev/{device}/{tail...}`.
fn pattern<'a>(
    device: Level<'a>,
    tail: &'a [Level<'a>],
) -> impl Iterator<Item = Level<'a>> + Clone {
    ROOT.into_iter()
        .chain(std::iter::once(device))
        .chain(tail.iter().copied())
}

const TELE: &[Level<'static>] = &[Level::Literal("tele"), Level::Rest];
const CMD: &[Level<'static>] = &[Level::Literal("cmd"), Level::Rest];
const STATE: &[Level<'static>] = &[Level::Literal("state")];
const INBOX: &[Level<'static>] = &[Level::Literal("inbox")];
const OUTBOX: &[Level<'static>] = &[Level::Literal("outbox")];
const META: &[Level<'static>] = &[Level::Literal("meta")];
/// The hub's own description and limits (`topic::HUB_INFO`).
const HUB_INFO: [Level<'static>; 4] = [
    Level::Literal("hearth"),
    Level::Literal("v1"),
    Level::Literal("hub"),
    Level::Literal("info"),
];

/// Decides one action of a development-listener client: everything is
/// allowed except the hub's own topics (`$…`, MQTT's convention for a
/// server's topics, §4.7.2), which no client may publish, subscribe to or
/// receive.
pub fn decide_development(action: Action, topic: &str) -> Decision {
    match checked_topic(action, topic) {
        Ok(_) => Decision::Allow,
        Err(reason) => Decision::Deny(reason),
    }
}

/// The topic an action is about, well-formed and not reserved: a shared
/// subscription's inner filter for `$share/group/filter`.
fn checked_topic(action: Action, topic: &str) -> Result<&str, DenyReason> {
    let checked = match action {
        Action::Subscribe => filter::check_filter(topic),
        Action::Publish { .. } | Action::Will { .. } => filter::check_topic(topic),
    };
    if let Err(e) = checked {
        return Err(DenyReason::Malformed(e));
    }
    let topic = match (action, filter::split_shared(topic)) {
        (Action::Subscribe, Some(Ok((_group, inner)))) => inner,
        (Action::Subscribe, Some(Err(e))) => return Err(DenyReason::Malformed(e)),
        _ => topic,
    };
    if topic.starts_with('$') {
        return Err(DenyReason::Reserved);
    }
    Ok(topic)
}

/// Decides one action. Pure: the same inputs always give the same answer.
pub fn decide(who: &Subject<'_>, action: Action, topic: &str) -> Decision {
    let topic = match checked_topic(action, topic) {
        Ok(topic) => topic,
        Err(reason) => return Decision::Deny(reason),
    };
    if who.role == DeviceRole::Service {
        return decide_service(who, action, topic);
    }
    let own = Level::Literal(who.device.as_str());
    let parent = who.role == DeviceRole::Parent;
    let allowed = match action {
        Action::Publish { retain } | Action::Will { retain } => {
            // A description is the device's own statement, retained for
            // whoever looks; as a will it would be a claim made on its
            // behalf once it is gone.
            let meta =
                matches!(action, Action::Publish { .. }) && matches(pattern(own, META), topic);
            let publish = meta
                || matches(pattern(own, TELE), topic)
                || matches(pattern(own, OUTBOX), topic)
                || (parent && matches(pattern(Level::One, CMD), topic));
            if publish && retain && !meta && !matches(pattern(own, TELE), topic) {
                return Decision::Deny(DenyReason::RetainNotAllowed);
            }
            publish
        }
        Action::Subscribe => {
            let f = levels(topic);
            covers(HUB_INFO, f.clone())
                || covers(pattern(own, STATE), f.clone())
                || covers(pattern(own, CMD), f.clone())
                || covers(pattern(own, INBOX), f.clone())
                || covers(pattern(own, META), f.clone())
                || (parent
                    && (covers(pattern(Level::One, STATE), f.clone())
                        || covers(pattern(Level::One, META), f.clone())
                        || covers(pattern(Level::One, TELE), f)))
        }
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(why_not(who.device, topic))
    }
}

fn decide_service(who: &Subject<'_>, action: Action, topic: &str) -> Decision {
    // Under a device's prefix, retained messages only where the namespace
    // allows them for anyone (telemetry): a grant on `cmd` must not leave a
    // command waiting for every future subscriber.
    if let Action::Publish { retain: true } | Action::Will { retain: true } = action {
        let on_a_device = matches(pattern(Level::One, &[Level::Rest]), topic);
        if on_a_device && !matches(pattern(Level::One, TELE), topic) {
            return Decision::Deny(DenyReason::NotPermitted);
        }
    }
    let granted = who
        .grants
        .iter()
        .any(|grant| match (action, grant.direction) {
            (Action::Publish { .. } | Action::Will { .. }, Direction::Publish) => {
                matches(levels(&grant.filter), topic)
            }
            (Action::Subscribe, Direction::Subscribe) => {
                covers(levels(&grant.filter), levels(topic))
            }
            _ => false,
        });
    if granted {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NotGranted)
    }
}

/// The most telling reason a topic under the namespace was not allowed.
fn why_not(device: &DeviceId, topic: &str) -> DenyReason {
    let mut lv = levels(topic);
    for root in ROOT {
        if lv.next() != Some(root) {
            return DenyReason::OutsideNamespace;
        }
    }
    match lv.next() {
        Some(Level::Literal(id)) if id == device.as_str() => DenyReason::NotPermitted,
        Some(Level::Literal(_)) => DenyReason::OtherDevice,
        Some(Level::One | Level::Rest) => DenyReason::WildcardDevice,
        None => DenyReason::OutsideNamespace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> DeviceId {
        DeviceId::from_entropy([n; 16])
    }

    fn subject(device: &DeviceId, role: DeviceRole) -> Subject<'_> {
        Subject {
            device,
            role,
            grants: &[],
        }
    }

    const PUB: Action = Action::Publish { retain: false };
    const RETAIN: Action = Action::Publish { retain: true };

    #[test]
    fn a_service_may_retain_only_telemetry() {
        let me = id(1);
        let grants = [Grant {
            filter: "hearth/v1/dev/+/#".into(),
            direction: Direction::Publish,
        }];
        let service = Subject {
            device: &me,
            role: DeviceRole::Service,
            grants: &grants,
        };
        let cmd = format!("hearth/v1/dev/{}/cmd/led", id(2));
        let tele = format!("hearth/v1/dev/{}/tele/x", id(2));
        assert_eq!(
            decide(&service, Action::Publish { retain: false }, &cmd),
            Decision::Allow
        );
        assert!(matches!(
            decide(&service, Action::Publish { retain: true }, &cmd),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide(&service, Action::Will { retain: true }, &cmd),
            Decision::Deny(_)
        ));
        assert_eq!(
            decide(&service, Action::Publish { retain: true }, &tele),
            Decision::Allow
        );
    }

    #[test]
    fn a_device_describes_itself_and_parents_read_descriptions_and_the_hubs_info() {
        let (me, kid) = (id(1), id(2));
        let child = subject(&kid, DeviceRole::Child);
        let parent = subject(&me, DeviceRole::Parent);
        let meta = |d: &DeviceId| format!("hearth/v1/dev/{d}/meta");
        assert_eq!(decide(&child, RETAIN, &meta(&kid)), Decision::Allow);
        assert_eq!(decide(&child, PUB, &meta(&kid)), Decision::Allow);
        assert!(matches!(
            decide(&child, Action::Will { retain: true }, &meta(&kid)),
            Decision::Deny(_)
        ));
        // Nobody describes another device, a parent included.
        assert_eq!(
            decide(&parent, RETAIN, &meta(&kid)),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, "hearth/v1/dev/+/meta"),
            Decision::Allow
        );
        assert_eq!(
            decide(&child, Action::Subscribe, &meta(&kid)),
            Decision::Allow
        );
        assert_eq!(
            decide(&child, Action::Subscribe, "hearth/v1/dev/+/meta"),
            Decision::Deny(DenyReason::WildcardDevice)
        );
        // Every member's device reads the hub's info; nobody writes it.
        for who in [&child, &parent] {
            assert_eq!(
                decide(who, Action::Subscribe, "hearth/v1/hub/info"),
                Decision::Allow
            );
            assert!(matches!(
                decide(who, RETAIN, "hearth/v1/hub/info"),
                Decision::Deny(_)
            ));
        }
        assert!(matches!(
            decide(&parent, Action::Subscribe, "hearth/v1/hub/#"),
            Decision::Deny(_)
        ));
        let service = subject(&me, DeviceRole::Service);
        assert_eq!(
            decide(&service, Action::Subscribe, "hearth/v1/hub/info"),
            Decision::Deny(DenyReason::NotGranted)
        );
    }

    #[test]
    fn a_child_reaches_only_its_own_topics() {
        let me = id(1);
        let other = id(2);
        let child = subject(&me, DeviceRole::Child);
        let t = |d: &DeviceId, rest: &str| format!("hearth/v1/dev/{d}/{rest}");
        assert_eq!(
            decide(&child, PUB, &t(&me, "tele/battery")),
            Decision::Allow
        );
        assert_eq!(
            decide(&child, RETAIN, &t(&me, "tele/battery")),
            Decision::Allow
        );
        assert_eq!(decide(&child, PUB, &t(&me, "outbox")), Decision::Allow);
        assert_eq!(
            decide(&child, Action::Subscribe, &t(&me, "cmd/#")),
            Decision::Allow
        );
        assert_eq!(
            decide(&child, Action::Subscribe, &t(&me, "inbox")),
            Decision::Allow
        );
        assert_eq!(
            decide(&child, Action::Subscribe, &t(&me, "state")),
            Decision::Allow
        );

        assert_eq!(
            decide(&child, PUB, &t(&me, "inbox")),
            Decision::Deny(DenyReason::NotPermitted)
        );
        assert_eq!(
            decide(&child, PUB, &t(&me, "cmd/x")),
            Decision::Deny(DenyReason::NotPermitted)
        );
        assert_eq!(
            decide(&child, PUB, &t(&me, "state")),
            Decision::Deny(DenyReason::NotPermitted)
        );
        assert_eq!(
            decide(&child, RETAIN, &t(&me, "outbox")),
            Decision::Deny(DenyReason::RetainNotAllowed)
        );
        assert_eq!(
            decide(&child, Action::Subscribe, &t(&me, "outbox")),
            Decision::Deny(DenyReason::NotPermitted)
        );
        assert_eq!(
            decide(&child, Action::Subscribe, &t(&me, "#")),
            Decision::Deny(DenyReason::NotPermitted)
        );
        assert_eq!(
            decide(&child, PUB, &t(&other, "tele/x")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&child, PUB, &t(&other, "cmd/x")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&child, Action::Subscribe, &t(&other, "inbox")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&child, Action::Subscribe, "hearth/v1/dev/+/tele/#"),
            Decision::Deny(DenyReason::WildcardDevice)
        );
    }

    #[test]
    fn a_parent_commands_and_watches_the_household_but_reads_no_inbox() {
        let me = id(1);
        let kid = id(2);
        let parent = subject(&me, DeviceRole::Parent);
        let t = |rest: &str| format!("hearth/v1/dev/{kid}/{rest}");
        assert_eq!(decide(&parent, PUB, &t("cmd/led")), Decision::Allow);
        assert_eq!(
            decide(&parent, Action::Subscribe, &t("tele/#")),
            Decision::Allow
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, &t("state")),
            Decision::Allow
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, "hearth/v1/dev/+/tele/#"),
            Decision::Allow
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, "hearth/v1/dev/+/state"),
            Decision::Allow
        );
        assert_eq!(
            decide(&parent, RETAIN, &t("cmd/led")),
            Decision::Deny(DenyReason::RetainNotAllowed)
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, &t("inbox")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, &t("cmd/#")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&parent, PUB, &t("tele/x")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&parent, PUB, &t("outbox")),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, "hearth/v1/dev/+/#"),
            Decision::Deny(DenyReason::WildcardDevice)
        );
        assert_eq!(
            decide(&parent, Action::Subscribe, "hearth/v1/dev/#"),
            Decision::Deny(DenyReason::WildcardDevice)
        );
    }

    #[test]
    fn development_clients_may_do_anything_but_touch_the_hubs_own_topics() {
        for (action, topic) in [
            (Action::Subscribe, "#"),
            (Action::Subscribe, "+/status"),
            (Action::Subscribe, "$share/g/a/#"),
            (Action::Publish { retain: true }, "a/b"),
            (Action::Will { retain: false }, "hearth/v1/dev/x/cmd/y"),
        ] {
            assert_eq!(
                decide_development(action, topic),
                Decision::Allow,
                "{topic}"
            );
        }
        for (action, topic) in [
            (Action::Subscribe, "$hearth/#"),
            (Action::Subscribe, "$hearth/liveness"),
            (Action::Subscribe, "$share/g/$hearth/#"),
            (Action::Subscribe, "$SYS/#"),
            (Action::Publish { retain: false }, "$hearth/liveness"),
            (Action::Will { retain: false }, "$hearth/liveness"),
        ] {
            assert_eq!(
                decide_development(action, topic),
                Decision::Deny(DenyReason::Reserved),
                "{topic}"
            );
        }
        assert!(matches!(
            decide_development(Action::Publish { retain: false }, "a/+"),
            Decision::Deny(DenyReason::Malformed(_))
        ));
    }

    #[test]
    fn reserved_and_malformed_topics_are_denied() {
        let me = id(1);
        let parent = subject(&me, DeviceRole::Parent);
        for f in [
            "#",
            "+/+/+/+/+",
            "$SYS/#",
            "$SYS/broker/load",
            "hearth/#",
            "+/v1/dev/+/tele/#",
        ] {
            assert!(
                matches!(decide(&parent, Action::Subscribe, f), Decision::Deny(_)),
                "{f}"
            );
        }
        assert_eq!(
            decide(&parent, Action::Subscribe, "$SYS/#"),
            Decision::Deny(DenyReason::Reserved)
        );
        assert_eq!(
            decide(&parent, PUB, ""),
            Decision::Deny(DenyReason::Malformed(TopicError::Empty))
        );
        assert_eq!(
            decide(&parent, PUB, &format!("hearth/v1/dev/{me}/tele/+")),
            Decision::Deny(DenyReason::Malformed(TopicError::WildcardInTopic))
        );
        assert_eq!(
            decide(&parent, PUB, &format!("hearth/v1/dev/{me}/tele/\0")),
            Decision::Deny(DenyReason::Malformed(TopicError::Nul))
        );
    }

    #[test]
    fn shared_subscriptions_are_judged_by_their_inner_filter() {
        let me = id(1);
        let other = id(2);
        let child = subject(&me, DeviceRole::Child);
        assert_eq!(
            decide(
                &child,
                Action::Subscribe,
                &format!("$share/g/hearth/v1/dev/{me}/inbox")
            ),
            Decision::Allow
        );
        assert_eq!(
            decide(
                &child,
                Action::Subscribe,
                &format!("$share/g/hearth/v1/dev/{other}/inbox")
            ),
            Decision::Deny(DenyReason::OtherDevice)
        );
        assert_eq!(
            decide(&child, Action::Subscribe, "$share/g/$SYS/#"),
            Decision::Deny(DenyReason::Reserved)
        );
        assert!(matches!(
            decide(&child, Action::Subscribe, "$share/g"),
            Decision::Deny(DenyReason::Malformed(_))
        ));
    }

    #[test]
    fn services_get_only_their_grants() {
        let me = id(9);
        let kid = id(2);
        let grants = [
            Grant::new("hearth/v1/dev/+/tele/#", Direction::Subscribe).unwrap(),
            Grant::new("hearth/v1/svc/lights/#", Direction::Publish).unwrap(),
        ];
        let service = Subject {
            device: &me,
            role: DeviceRole::Service,
            grants: &grants,
        };
        assert_eq!(
            decide(
                &service,
                Action::Subscribe,
                &format!("hearth/v1/dev/{kid}/tele/x")
            ),
            Decision::Allow
        );
        assert_eq!(
            decide(&service, RETAIN, "hearth/v1/svc/lights/kitchen"),
            Decision::Allow
        );
        assert_eq!(
            decide(&service, Action::Subscribe, "hearth/v1/svc/lights/#"),
            Decision::Deny(DenyReason::NotGranted)
        );
        assert_eq!(
            decide(&service, PUB, &format!("hearth/v1/dev/{me}/tele/x")),
            Decision::Deny(DenyReason::NotGranted)
        );
        let none = Subject {
            device: &me,
            role: DeviceRole::Service,
            grants: &[],
        };
        assert_eq!(
            decide(&none, PUB, &format!("hearth/v1/dev/{me}/outbox")),
            Decision::Deny(DenyReason::NotGranted)
        );
    }

    #[test]
    fn grants_stay_in_the_namespace_and_away_from_messages() {
        assert_eq!(
            Grant::new("#", Direction::Subscribe),
            Err(GrantError::OutsideNamespace)
        );
        assert_eq!(
            Grant::new("hearth/#", Direction::Subscribe),
            Err(GrantError::OutsideNamespace)
        );
        assert_eq!(
            Grant::new("hearth/v1/+/x", Direction::Subscribe),
            Err(GrantError::OutsideNamespace)
        );
        assert_eq!(
            Grant::new("$SYS/#", Direction::Subscribe),
            Err(GrantError::OutsideNamespace)
        );
        assert_eq!(
            Grant::new("hearth/v1/dev/#", Direction::Subscribe),
            Err(GrantError::PrivateMessages)
        );
        assert_eq!(
            Grant::new("hearth/v1/dev/+/+", Direction::Subscribe),
            Err(GrantError::PrivateMessages)
        );
        assert!(matches!(
            Grant::new("hearth/v1/dev/a#", Direction::Subscribe),
            Err(GrantError::Invalid(_))
        ));
        assert!(Grant::new("hearth/v1/dev/+/tele/#", Direction::Subscribe).is_ok());
    }

    fn role() -> impl Strategy<Value = DeviceRole> {
        prop_oneof![
            Just(DeviceRole::Parent),
            Just(DeviceRole::Child),
            Just(DeviceRole::Service)
        ]
    }

    /// Topic-ish strings: a prefix that often lands in the namespace (own
    /// device, another device, wildcards, shared, reserved), then levels
    /// drawn from wildcards, kinds, ids and junk.
    fn topicish(me: DeviceId, other: DeviceId) -> impl Strategy<Value = String> {
        let prefix = prop_oneof![
            Just(format!("hearth/v1/dev/{me}")),
            Just(format!("hearth/v1/dev/{other}")),
            Just(format!("$share/g/hearth/v1/dev/{other}")),
            Just(format!("$share/g/hearth/v1/dev/{me}")),
            Just("hearth/v1/dev/+".to_owned()),
            Just("hearth/v1/dev".to_owned()),
            Just("hearth/v1".to_owned()),
            Just("+/v1/dev/+".to_owned()),
            Just("$SYS".to_owned()),
            Just("#".to_owned()),
            Just("+".to_owned()),
            "[a-z+#/$]{0,6}",
        ];
        let level = prop_oneof![
            Just("+".to_owned()),
            Just("#".to_owned()),
            Just("tele".to_owned()),
            Just("cmd".to_owned()),
            Just("inbox".to_owned()),
            Just("outbox".to_owned()),
            Just("state".to_owned()),
            Just(me.to_string()),
            Just(other.to_string()),
            "[a-z+#/$]{0,6}",
            ".{0,4}",
        ];
        (prefix, prop::collection::vec(level, 0..4)).prop_map(|(prefix, levels)| {
            std::iter::once(prefix)
                .chain(levels)
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the ids, topic or filter: a device is never allowed a
        /// topic under another device's prefix unless a rule grants it
        /// (parents: that device's cmd, tele, state; services: a grant).
        #[test]
        fn no_device_reaches_another_devices_prefix_without_a_rule(
            (me, other, topics) in (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_flat_map(|(a, b)| {
                let (me, other) = (DeviceId::from_entropy(a), DeviceId::from_entropy(b));
                (Just(me), Just(other), prop::collection::vec(topicish(me, other), 20))
            }),
            role in role(),
        ) {
            prop_assume!(me != other);
            for topic in topics {
                let who = Subject { device: &me, role, grants: &[] };
                for action in [PUB, RETAIN, Action::Subscribe, Action::Will { retain: false }] {
                    if decide(&who, action, &topic) != Decision::Allow {
                        continue;
                    }
                    // Allowed: find which device prefix it reaches.
                    let inner = filter::split_shared(&topic).and_then(Result::ok).map(|(_, f)| f).unwrap_or(&topic);
                    let lv: Vec<&str> = inner.split('/').collect();
                    prop_assert!(role != DeviceRole::Service, "service allowed {topic} without grants");
                    if action == Action::Subscribe && inner == "hearth/v1/hub/info" {
                        continue;
                    }
                    prop_assert!(lv.len() >= 5 && lv[..3] == ["hearth", "v1", "dev"], "{topic} allowed outside namespace");
                    if lv[3] != me.as_str() {
                        prop_assert_eq!(role, DeviceRole::Parent, "{} reached {} as {:?}", me, topic, role);
                        let ok = match action {
                            Action::Subscribe => ["state", "tele", "meta"].contains(&lv[4]),
                            _ => lv[4] == "cmd",
                        };
                        prop_assert!(ok, "parent {:?} allowed on {}", action, topic);
                    }
                    prop_assert!(!(action == Action::Subscribe && lv[4] == "inbox" && lv[3] != me.as_str()));
                }
            }
        }

        /// Decisions never panic and reserved topics never pass.
        #[test]
        fn arbitrary_text_is_decided_and_dollar_topics_never_pass(text in "\\PC{0,40}", role in role()) {
            let me = DeviceId::from_entropy([5; 16]);
            let who = Subject { device: &me, role, grants: &[] };
            for action in [PUB, Action::Subscribe] {
                let d = decide(&who, action, &text);
                if text.starts_with('$') {
                    prop_assert!(matches!(d, Decision::Deny(_)));
                }
            }
        }
    }
}
