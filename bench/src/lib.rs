//! hearth-bench: runs hearthd and Mosquitto side by side on loopback under
//! the same mutual-TLS MQTT load and reports medians and ratios (issue 7).

pub mod broker;
pub mod budget;
pub mod mqtt;
pub mod report;
pub mod scenarios;
pub mod soak;
