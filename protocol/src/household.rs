//! Who is who in a household: members' roles and who owns a device.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::id::MemberName;

/// A member's role. The hub keeps nothing else about a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A parent: reaches every device of the household.
    Parent,
    /// A child: reaches only its own devices.
    Child,
}

impl Role {
    /// The role as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Child => "child",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a role is `parent` or `child`, not {0:?}")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "parent" => Ok(Role::Parent),
            "child" => Ok(Role::Child),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// Who a device belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "member")]
pub enum Owner {
    /// A person's device: a toy belongs to a child, an app to a parent.
    Member(MemberName),
    /// A local integration with only the grants an administrator gave it.
    Service,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Member(name) => write!(f, "{name}"),
            Owner::Service => f.write_str("(service)"),
        }
    }
}

/// Whether `from` may send a family message to `to`: a parent's explicit
/// rule (`hearth contacts allow|deny`, `rule`) wins; without one, parents
/// may message anyone, anyone may message a parent, and a member may
/// message their own other devices — so by default two children need a
/// parent's say-so. A role is `None` for a member the hub does not know.
/// Pure, so the mailbox and a page showing who may message whom agree.
pub fn may_message(
    rule: Option<bool>,
    from: &MemberName,
    from_role: Option<Role>,
    to: &MemberName,
    to_role: Option<Role>,
) -> bool {
    match rule {
        Some(allowed) => allowed,
        None => from == to || from_role == Some(Role::Parent) || to_role == Some(Role::Parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> MemberName {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_children_reach_parents_and_parents_reach_everyone() {
        let (mum, ada, bob) = (name("Mum"), name("Ada"), name("Bob"));
        let (parent, child) = (Some(Role::Parent), Some(Role::Child));
        assert!(may_message(None, &ada, child, &mum, parent));
        assert!(may_message(None, &mum, parent, &ada, child));
        assert!(may_message(None, &ada, child, &ada, child), "own devices");
        assert!(!may_message(None, &ada, child, &bob, child));
        // Someone the hub does not know is nobody's parent.
        assert!(!may_message(None, &ada, child, &bob, None));
    }

    #[test]
    fn a_parents_explicit_rule_wins_both_ways() {
        let (mum, ada, bob) = (name("Mum"), name("Ada"), name("Bob"));
        let (parent, child) = (Some(Role::Parent), Some(Role::Child));
        assert!(may_message(Some(true), &ada, child, &bob, child));
        assert!(!may_message(Some(false), &ada, child, &mum, parent));
        assert!(!may_message(Some(false), &mum, parent, &ada, child));
    }
}
