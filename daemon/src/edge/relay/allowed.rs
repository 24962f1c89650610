//! The few topics a connection was last allowed to publish to, so that a device repeating its telemetry topic is not judged again for every message.
//!
//! The policy (`hearth_protocol::policy::decide`) is a pure function of
//! the peer, which is fixed for the connection, the action and the topic.
//! So a topic it allowed once stays allowed for the connection, and the
//! decision, with the topic's UTF-8 and character checks, need not run
//! again: at home loads it was an eighth of the hub's instructions per
//! message (issue 20). Only plain publishes are remembered; a retained one
//! is judged every time, as it also takes the retained quota.

/// At most this many topics: a device publishes to a handful.
const TOPICS: usize = 4;
/// Longer topics are judged every time (kept bytes per connection bounded).
const LONGEST: usize = 256;

/// The topics, the most recently remembered first (a topic found again
/// keeps its place). Nothing is allocated until a publish is allowed, so
/// an idle connection holds nothing here.
#[derive(Debug, Default)]
pub(super) struct AllowedTopics {
    topics: Vec<Box<[u8]>>,
}

impl AllowedTopics {
    /// Whether `topic` was allowed before.
    pub(super) fn contains(&self, topic: &[u8]) -> bool {
        self.topics.iter().any(|t| **t == *topic)
    }

    /// Remembers that `topic` was allowed, in place of the least recent
    /// one when full.
    pub(super) fn remember(&mut self, topic: &[u8]) {
        if topic.len() > LONGEST || self.contains(topic) {
            return;
        }
        if self.topics.len() == TOPICS {
            self.topics.pop();
        }
        self.topics.insert(0, topic.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_topic_is_found_and_no_other() {
        let mut allowed = AllowedTopics::default();
        assert!(!allowed.contains(b"hearth/v1/dev/a/tele/t"));
        allowed.remember(b"hearth/v1/dev/a/tele/t");
        assert!(allowed.contains(b"hearth/v1/dev/a/tele/t"));
        assert!(
            !allowed.contains(b"hearth/v1/dev/a/tele/"),
            "a prefix is another topic"
        );
        assert!(!allowed.contains(b"hearth/v1/dev/a/tele/t/x"));
    }

    #[test]
    fn it_holds_the_most_recent_few_and_no_long_topics() {
        let mut allowed = AllowedTopics::default();
        for i in 0..10 {
            allowed.remember(format!("t/{i}").as_bytes());
        }
        assert_eq!(allowed.topics.len(), TOPICS);
        assert!(allowed.contains(b"t/9") && allowed.contains(b"t/6"));
        assert!(!allowed.contains(b"t/5"));
        let long = vec![b'x'; LONGEST + 1];
        allowed.remember(&long);
        assert!(!allowed.contains(&long));
        allowed.remember(b"t/9");
        assert_eq!(allowed.topics.len(), TOPICS, "remembered once");
    }
}
