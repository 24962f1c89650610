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
