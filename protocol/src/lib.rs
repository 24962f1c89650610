//! Pure types shared by every part of Hearth: identifiers, household roles,
//! topic names, the admin protocol, the certificate formats (`pki`) and the
//! MQTT codec (`mqtt`). No I/O lives here, so every rule can be tested
//! exhaustively.

pub mod admin;
pub mod filter;
pub mod household;
pub mod hub_info;
pub mod id;
pub mod mailbox;
pub mod meta;
pub mod mqtt;
pub mod pairing;
pub mod pki;
pub mod policy;
pub mod reference;
pub mod terminal;
pub mod topic;

pub use household::{Owner, Role};
pub use id::{DeviceId, IdError, Label, MemberName};
