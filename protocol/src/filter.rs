//! MQTT topic names and topic filters, parsed strictly: valid UTF-8, not
//! empty, no NUL or other control characters, wildcards only where MQTT
//! allows them. Also the level-wise matching the policy is built on.

/// Why a topic or filter is refused before any rule is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Zero-length topic or filter.
    #[error("empty topic")]
    Empty,
    /// Longer than an MQTT string can be.
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("topic is not valid UTF-8")]
    InvalidUtf8,
    /// U+0000 anywhere.
    #[error("topic contains NUL")]
    Nul,
    /// Another control character (U+0001–U+001F, U+007F–U+009F).
    #[error("topic contains a control character")]
    ControlCharacter,
    /// `+` or `#` in a topic name (they belong to filters only).
    #[error("wildcard in a topic name")]
    WildcardInTopic,
    /// `#` not alone as the last level, or `+` sharing a level.
    #[error("misplaced wildcard in a filter")]
    MisplacedWildcard,
    /// `$share/` without a valid group and filter.
    #[error("malformed shared subscription")]
    MalformedShare,
}

/// One level of a filter or pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level<'a> {
    /// A literal level.
    Literal(&'a str),
    /// `+`: exactly one level.
    One,
    /// `#`: this level and everything below (and the parent itself).
    Rest,
}

/// Checks raw bytes as a topic name (for PUBLISH and wills).
pub fn topic_from_bytes(bytes: &[u8]) -> Result<&str, TopicError> {
    let topic = std::str::from_utf8(bytes).map_err(|_| TopicError::InvalidUtf8)?;
    check_topic(topic)?;
    Ok(topic)
}

/// Checks raw bytes as a topic filter (for SUBSCRIBE).
pub fn filter_from_bytes(bytes: &[u8]) -> Result<&str, TopicError> {
    let filter = std::str::from_utf8(bytes).map_err(|_| TopicError::InvalidUtf8)?;
    check_filter(filter)?;
    Ok(filter)
}

fn check_text(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > 65535 {
        return Err(TopicError::TooLong);
    }
    // Every publish passes here: ASCII (nearly every topic) is checked a
    // byte at a time, anything else a character at a time.
    if s.is_ascii() {
        for &b in s.as_bytes() {
            if b == 0 {
                return Err(TopicError::Nul);
            }
            if b < 0x20 || b == 0x7f {
                return Err(TopicError::ControlCharacter);
            }
        }
        return Ok(());
    }
    for c in s.chars() {
        if c == '\0' {
            return Err(TopicError::Nul);
        }
        if c.is_control() {
            return Err(TopicError::ControlCharacter);
        }
    }
    Ok(())
}

/// Checks a topic name.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    check_text(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInTopic);
    }
    Ok(())
}

/// Checks a topic filter.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    check_text(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err(TopicError::MisplacedWildcard),
            "#" | "+" => {}
            other if other.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into the group and the inner filter;
/// `None` if it is not a shared subscription.
pub fn split_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::MalformedShare));
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Some(Err(TopicError::MalformedShare));
    }
    Some(check_filter(inner).map(|_| (group, inner)))
}

/// The levels of a filter (or a topic: it has only literals).
pub fn levels(filter: &str) -> impl Iterator<Item = Level<'_>> + Clone {
    filter.split('/').map(|level| match level {
        "+" => Level::One,
        "#" => Level::Rest,
        other => Level::Literal(other),
    })
}

/// Whether `pattern` matches the topic name `topic` (MQTT matching rules,
/// without the `$` special case: callers refuse `$` topics first).
pub fn matches<'a>(pattern: impl IntoIterator<Item = Level<'a>>, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for p in pattern {
        match p {
            Level::Rest => return true,
            Level::One => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            Level::Literal(lit) => {
                if topic_levels.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Whether every topic `filter` can match is matched by `pattern`: the
/// test a subscription must pass to be allowed.
pub fn covers<'a, 'b>(
    pattern: impl IntoIterator<Item = Level<'a>>,
    filter: impl IntoIterator<Item = Level<'b>>,
) -> bool {
    let mut filter = filter.into_iter();
    for p in pattern {
        let f = filter.next();
        match (p, f) {
            (Level::Rest, _) => return true,
            // The filter ended: `a/#` also matches `a`, but a shorter
            // filter is only covered by a pattern that stops here too.
            (_, None) => return false,
            (Level::One, Some(Level::One | Level::Literal(_))) => {}
            (Level::One, Some(Level::Rest)) => return false,
            (Level::Literal(a), Some(Level::Literal(b))) if a == b => {}
            (Level::Literal(_), Some(_)) => return false,
        }
    }
    filter.next().is_none()
}

/// Whether some topic could match both filters.
pub fn intersects<'a, 'b>(
    a: impl IntoIterator<Item = Level<'a>>,
    b: impl IntoIterator<Item = Level<'b>>,
) -> bool {
    let mut b = b.into_iter();
    for x in a {
        let y = b.next();
        match (x, y) {
            (Level::Rest, _) | (_, Some(Level::Rest)) => return true,
            (_, None) => return false,
            (Level::One, _) | (_, Some(Level::One)) => {}
            (Level::Literal(p), Some(Level::Literal(q))) => {
                if p != q {
                    return false;
                }
            }
        }
    }
    matches!(b.next(), None | Some(Level::Rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_strict() {
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(check_topic("a\0b"), Err(TopicError::Nul));
        assert_eq!(check_topic("a\u{7}b"), Err(TopicError::ControlCharacter));
        assert_eq!(check_topic("a/+/b"), Err(TopicError::WildcardInTopic));
        assert_eq!(check_topic("a/#"), Err(TopicError::WildcardInTopic));
        assert_eq!(topic_from_bytes(b"a\xffb"), Err(TopicError::InvalidUtf8));
        assert_eq!(check_topic(&"a".repeat(65536)), Err(TopicError::TooLong));
        assert!(check_topic("hearth/v1/dev/x/tele").is_ok());
        assert!(check_topic("/").is_ok());
        // The same rules for topics that are not ASCII.
        assert_eq!(check_topic("a\u{7f}b"), Err(TopicError::ControlCharacter));
        assert_eq!(check_topic("é\u{85}b"), Err(TopicError::ControlCharacter));
        assert_eq!(check_topic("é\0"), Err(TopicError::Nul));
        assert_eq!(check_topic("é/+"), Err(TopicError::WildcardInTopic));
        assert!(check_topic("maison/cuisine/température").is_ok());
    }

    #[test]
    fn filters_place_wildcards_correctly() {
        for ok in ["#", "+", "a/+/b", "a/#", "+/+/+", "a//b"] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "a#", "a/b+", "+a", "##", "a/++"] {
            assert_eq!(
                check_filter(bad),
                Err(TopicError::MisplacedWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn shared_subscriptions_are_split() {
        assert_eq!(split_shared("a/b"), None);
        assert_eq!(split_shared("$share/g/a/#"), Some(Ok(("g", "a/#"))));
        assert!(matches!(split_shared("$share/g"), Some(Err(_))));
        assert!(matches!(split_shared("$share//a"), Some(Err(_))));
        assert!(matches!(split_shared("$share/+/a"), Some(Err(_))));
        assert!(matches!(split_shared("$share/g/a/#/b"), Some(Err(_))));
    }

    #[test]
    fn matching_follows_mqtt() {
        assert!(matches(levels("a/#"), "a"));
        assert!(matches(levels("a/#"), "a/b/c"));
        assert!(matches(levels("a/+"), "a/b"));
        assert!(!matches(levels("a/+"), "a"));
        assert!(!matches(levels("a/+"), "a/b/c"));
        assert!(matches(levels("+/+"), "/x"));
        assert!(!matches(levels("a/b"), "a/b/c"));
    }

    #[test]
    fn coverage_is_subset() {
        assert!(covers(levels("a/#"), levels("a/b/+")));
        assert!(covers(levels("a/#"), levels("a/#")));
        assert!(covers(levels("a/#"), levels("a")));
        assert!(covers(levels("a/+/c"), levels("a/b/c")));
        assert!(covers(levels("a/+/c"), levels("a/+/c")));
        assert!(!covers(levels("a/b/c"), levels("a/+/c")));
        assert!(!covers(levels("a/+"), levels("a/#")));
        assert!(!covers(levels("a/b"), levels("a/b/c")));
        assert!(!covers(levels("a/b/c"), levels("a/b")));
        assert!(!covers(levels("a/b/#"), levels("a/#")));
        assert!(!covers(levels("a/b"), levels("#")));
    }

    #[test]
    fn intersection() {
        assert!(intersects(levels("a/+/c"), levels("a/b/#")));
        assert!(intersects(levels("#"), levels("x")));
        assert!(intersects(levels("a/b"), levels("a/b/#")));
        assert!(!intersects(levels("a/b"), levels("a/c")));
        assert!(!intersects(levels("a/b"), levels("a/b/c")));
        assert!(!intersects(levels("a/+"), levels("a")));
    }
}
