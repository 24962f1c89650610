//! Identifiers: device ids, member nicknames and device labels, each parsed
//! once and carried as a newtype after.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Crockford's base32 alphabet, lower case (no i, l, o, u).
const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A device id must be exactly 26 characters.
    #[error("a device id has 26 characters, this one has {0}")]
    DeviceIdLength(usize),
    /// A device id uses lower-case Crockford base32 only.
    #[error("a device id uses only 0-9 and a-z without i, l, o, u; found {0:?}")]
    DeviceIdCharacter(char),
    /// The first character encodes the top 3 bits of 128 and must be 0-7.
    #[error("a device id starts with a digit 0-7")]
    DeviceIdOverflow,
    /// Nicknames and labels may not be empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// Nicknames and labels have a maximum length in characters.
    #[error("{what} may have at most {max} characters")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// The limit in characters.
        max: usize,
    },
    /// A character that would be ambiguous in topics, logs or terminals.
    #[error("{what} may not contain {found:?}")]
    Forbidden {
        /// Which kind of name.
        what: &'static str,
        /// The offending character.
        found: char,
    },
}

/// A device's identity: 128 random bits as 26 characters of lower-case
/// Crockford base32. It can never contain `/`, `+`, `#`, `$` or non-ASCII,
/// so it is safe to place inside a topic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 26]);

impl DeviceId {
    /// Encodes 16 bytes of entropy (the caller supplies them from the OS).
    pub fn from_entropy(entropy: [u8; 16]) -> DeviceId {
        let mut value = u128::from_be_bytes(entropy);
        let mut out = [0u8; 26];
        for slot in out.iter_mut().rev() {
            *slot = CROCKFORD[(value & 0x1f) as usize];
            value >>= 5;
        }
        DeviceId(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // The bytes are drawn from the ASCII alphabet above, always UTF-8.
        std::str::from_utf8(&self.0).expect("device id is ASCII")
    }
}

impl FromStr for DeviceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<DeviceId, IdError> {
        let count = s.chars().count();
        if count != 26 {
            return Err(IdError::DeviceIdLength(count));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !c.is_ascii() || !CROCKFORD.contains(&(*c as u8)))
        {
            return Err(IdError::DeviceIdCharacter(bad));
        }
        if s.as_bytes()[0] > b'7' {
            return Err(IdError::DeviceIdOverflow);
        }
        let mut out = [0u8; 26];
        out.copy_from_slice(s.as_bytes());
        Ok(DeviceId(out))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.as_str())
    }
}

impl Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DeviceId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a human-chosen name: not empty, bounded, no control characters and
/// none of MQTT's special characters (`/`, `+`, `#`) or `$`, so a name can
/// never be mistaken for a topic level or a wildcard.
fn check_name(what: &'static str, max: usize, s: &str) -> Result<(), IdError> {
    if s.trim().is_empty() {
        return Err(IdError::Empty(what));
    }
    if s.chars().count() > max {
        return Err(IdError::TooLong { what, max });
    }
    if let Some(found) = s
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '+' | '#' | '$' | '\u{feff}'))
    {
        return Err(IdError::Forbidden { what, found });
    }
    if s.trim() != s {
        return Err(IdError::Forbidden {
            what,
            found: if s.starts_with(char::is_whitespace) {
                s.chars().next().unwrap_or(' ')
            } else {
                s.chars().last().unwrap_or(' ')
            },
        });
    }
    Ok(())
}

/// A household member's nickname, chosen by a parent ("Ada", "Mum").
/// It is the only thing the hub knows about a person.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MemberName(String);

impl MemberName {
    /// The longest nickname, in characters.
    pub const MAX_CHARS: usize = 32;

    /// The nickname as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MemberName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<MemberName, IdError> {
        check_name("a nickname", Self::MAX_CHARS, s)?;
        Ok(MemberName(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for MemberName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MemberName, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberName({:?})", self.0)
    }
}

/// A device's label, for people ("Ada's tablet"). Never sent on the network
/// except to the admin CLI.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    /// The longest label, in characters.
    pub const MAX_CHARS: usize = 64;

    /// The label as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Label {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Label, IdError> {
        check_name("a label", Self::MAX_CHARS, s)?;
        Ok(Label(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Label, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn device_id_round_trips_through_text() {
        let id = DeviceId::from_entropy([0xab; 16]);
        assert_eq!(id.as_str().len(), 26);
        assert_eq!(id.as_str().parse::<DeviceId>(), Ok(id));
    }

    #[test]
    fn device_id_rejects_topic_characters_and_wrong_lengths() {
        let good = DeviceId::from_entropy([7; 16]).to_string();
        for bad in ['/', '+', '#', '$', 'i', 'l', 'o', 'u', 'A', 'é', '\0'] {
            let mut s: Vec<char> = good.chars().collect();
            s[5] = bad;
            let s: String = s.into_iter().collect();
            assert!(s.parse::<DeviceId>().is_err(), "{s:?} accepted");
        }
        assert_eq!("".parse::<DeviceId>(), Err(IdError::DeviceIdLength(0)));
        assert!(good[..25].parse::<DeviceId>().is_err());
        assert!(format!("{good}0").parse::<DeviceId>().is_err());
        assert_eq!(
            format!("8{}", &good[1..]).parse::<DeviceId>(),
            Err(IdError::DeviceIdOverflow)
        );
    }

    #[test]
    fn names_refuse_wildcards_controls_and_padding() {
        assert!("Ada".parse::<MemberName>().is_ok());
        assert!("Grand-mère".parse::<MemberName>().is_ok());
        for bad in [
            "", " ", "a/b", "a+b", "a#", "$SYS", "a\nb", " Ada", "Ada ", "a\0",
        ] {
            assert!(bad.parse::<MemberName>().is_err(), "{bad:?} accepted");
        }
        assert!("x".repeat(33).parse::<MemberName>().is_err());
        assert!("Ada's tablet".parse::<Label>().is_ok());
        assert!("x".repeat(65).parse::<Label>().is_err());
    }

    proptest! {
        #[test]
        fn any_entropy_gives_a_parseable_topic_safe_id(bytes in any::<[u8; 16]>()) {
            let id = DeviceId::from_entropy(bytes);
            prop_assert!(id.as_str().bytes().all(|b| CROCKFORD.contains(&b)));
            prop_assert_eq!(id.as_str().parse::<DeviceId>(), Ok(id));
        }

        #[test]
        fn distinct_entropy_gives_distinct_ids(a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
            prop_assume!(a != b);
            prop_assert_ne!(DeviceId::from_entropy(a), DeviceId::from_entropy(b));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = s.parse::<DeviceId>();
            let _ = s.parse::<MemberName>();
        }
    }
}
