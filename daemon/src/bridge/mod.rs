//! The bridge to another MQTT broker (Home Assistant's Mosquitto, a
//! school's EMQX): an adapter like the edge or the mailbox. Its pure part
//! ([`routes`], [`discovery`], [`queue`]) decides what goes out, where, and
//! what comes back in; [`link`] does the I/O: a rumqttd link inside the
//! process on one side, an MQTT client (rumqttc) to the other broker on the
//! other.
//!
//! What may leave is fixed here, whatever the config says: only devices a
//! parent enabled (`hearth bridge enable`), and of those only `tele/...`,
//! `meta` (as Home Assistant discovery) and their availability. Inbox,
//! outbox (family messages), commands to other devices and `$hearth/...`
//! never match a route. What comes back is a command to a bridged device,
//! judged by the household policy as the bridge's service identity.

pub mod discovery;
pub mod link;
pub mod queue;
pub mod routes;

pub use link::run;
