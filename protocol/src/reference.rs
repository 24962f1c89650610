//! How an administrator names things on the command line: a device by its
//! id, a unique prefix of its id, or its label where only one device has
//! it; a member by nickname whatever its case. Ambiguity is an error that
//! lists the candidates, never a guess.

use std::fmt;

use crate::id::{DeviceId, MemberName};

/// The shortest id prefix taken as a reference, so a stray short word is
/// not read as an id.
pub const MIN_PREFIX: usize = 4;

/// A device reference matched no device, or more than one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Nothing matched.
    #[error(
        "no device has the id, id prefix (at least {MIN_PREFIX} characters) or label {0:?}; \
         `hearth device list` shows them"
    )]
    NoMatch(String),
    /// Several devices matched.
    #[error("{reference:?} could be any of {} devices; give its id (or a longer id prefix):\n{}",
        matches.len(), Candidates(matches))]
    Ambiguous {
        /// What was given.
        reference: String,
        /// Every device it could mean: id and label.
        matches: Vec<(DeviceId, String)>,
    },
}

struct Candidates<'a>(&'a [(DeviceId, String)]);

impl fmt::Display for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (id, label)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {id}  {}", crate::terminal::field(label))?;
        }
        Ok(())
    }
}

/// Finds the one device `reference` names among `devices` (id, label).
///
/// A full id names its device. Otherwise every device whose label equals
/// the reference (exactly; failing that, ignoring case) and every device
/// whose id starts with it (at least [`MIN_PREFIX`] characters, any case)
/// is a candidate, and there must be exactly one.
pub fn resolve_device<'a>(
    reference: &str,
    devices: impl IntoIterator<Item = (DeviceId, &'a str)> + Clone,
) -> Result<DeviceId, ReferenceError> {
    let lower = reference.to_lowercase();
    if let Ok(id) = lower.parse::<DeviceId>() {
        if devices.clone().into_iter().any(|(d, _)| d == id) {
            return Ok(id);
        }
    }
    let exact: Vec<(DeviceId, &str)> = devices
        .clone()
        .into_iter()
        .filter(|(_, label)| *label == reference)
        .collect();
    let mut matches = if exact.is_empty() {
        devices
            .clone()
            .into_iter()
            .filter(|(_, label)| label.to_lowercase() == lower)
            .collect()
    } else {
        exact
    };
    if lower.chars().count() >= MIN_PREFIX {
        for (id, label) in devices {
            if id.as_str().starts_with(&lower) && !matches.iter().any(|(m, _)| *m == id) {
                matches.push((id, label));
            }
        }
    }
    match matches.as_slice() {
        [] => Err(ReferenceError::NoMatch(reference.to_owned())),
        [(id, _)] => Ok(*id),
        _ => Err(ReferenceError::Ambiguous {
            reference: reference.to_owned(),
            matches: matches
                .into_iter()
                .map(|(id, label)| (id, label.to_owned()))
                .collect(),
        }),
    }
}

/// Whether two nicknames name the same member: nicknames are unique
/// whatever their case ("ada" is "Ada"), though each keeps the case it was
/// given for display.
pub fn same_member(a: &MemberName, b: &MemberName) -> bool {
    a.as_str() == b.as_str() || a.as_str().to_lowercase() == b.as_str().to_lowercase()
}

/// The member among `members` that `name` names, in its stored case.
pub fn find_member<'a>(
    name: &MemberName,
    members: impl IntoIterator<Item = &'a MemberName>,
) -> Option<&'a MemberName> {
    let mut fallback = None;
    for m in members {
        if m == name {
            return Some(m);
        }
        if fallback.is_none() && same_member(m, name) {
            fallback = Some(m);
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DeviceId {
        DeviceId::from_entropy([n; 16])
    }

    #[test]
    fn a_device_is_found_by_id_prefix_or_label() {
        let devices = [(id(1), "Ada's robot"), (id(2), "Mum's phone")];
        let all = devices.iter().map(|(i, l)| (*i, *l));
        assert_eq!(resolve_device(id(1).as_str(), all.clone()), Ok(id(1)));
        assert_eq!(
            resolve_device(&id(2).as_str().to_uppercase(), all.clone()),
            Ok(id(2))
        );
        assert_eq!(resolve_device(&id(2).as_str()[..6], all.clone()), Ok(id(2)));
        assert_eq!(resolve_device("Ada's robot", all.clone()), Ok(id(1)));
        assert_eq!(resolve_device("ada's ROBOT", all.clone()), Ok(id(1)));
        assert!(matches!(
            resolve_device("Bob's kite", all.clone()),
            Err(ReferenceError::NoMatch(_))
        ));
        // Too short to be a prefix.
        assert!(matches!(
            resolve_device(&id(2).as_str()[..3], all),
            Err(ReferenceError::NoMatch(_))
        ));
    }

    #[test]
    fn ambiguity_lists_every_candidate() {
        let devices = [(id(1), "robot"), (id(2), "robot"), (id(3), "kite")];
        let err = resolve_device("robot", devices.iter().map(|(i, l)| (*i, *l))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(id(1).as_str()) && text.contains(id(2).as_str()),
            "{text}"
        );
        assert!(!text.contains(id(3).as_str()), "{text}");
    }

    #[test]
    fn an_exact_label_beats_a_case_insensitive_one() {
        let devices = [(id(1), "Robot"), (id(2), "robot")];
        let all = devices.iter().map(|(i, l)| (*i, *l));
        assert_eq!(resolve_device("robot", all.clone()), Ok(id(2)));
        assert!(resolve_device("ROBOT", all).is_err());
    }

    #[test]
    fn members_match_whatever_the_case() {
        let members: Vec<MemberName> = ["Ada", "Mum"].iter().map(|s| s.parse().unwrap()).collect();
        let ada: MemberName = "ada".parse().unwrap();
        assert_eq!(find_member(&ada, &members).map(|m| m.as_str()), Some("Ada"));
        let grand: MemberName = "GRAND-MÈRE".parse().unwrap();
        assert!(same_member(&grand, &"grand-mère".parse().unwrap()));
        assert_eq!(find_member(&"Bob".parse().unwrap(), &members), None);
    }
}
