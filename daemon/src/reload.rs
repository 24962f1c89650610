//! Reloading the configuration without a restart (SIGHUP, `systemctl
//! reload`): which keys take effect at once and which only at restart, the
//! merge of a newly read file over the running settings, and the watch
//! channel the hub's parts read their current settings from.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, ConfigError};

/// The running settings, as the parts of the hub read them: each reads the
/// current value where it uses it (`borrow()`), or waits for a change
/// (`changed()`). Cheap to clone; the daemon holds the only sender.
pub type ConfigWatch = watch::Receiver<Arc<Config>>;

/// Where the running settings came from and when, for `hearth status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The file hearthd was started with; `None` on the embedded defaults.
    pub file: Option<PathBuf>,
    /// When the settings in force were read (Unix seconds).
    pub at: i64,
    /// Reloads applied since start.
    pub reloads: u64,
    /// The last refused reload: when, and the same message a start with
    /// that file would print. Cleared by a reload that is applied.
    pub refused: Option<(i64, String)>,
}

/// Where the daemon's settings come from: what a reload reads again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config`, as given (so a refusal names it as a start does);
    /// `None` on the embedded defaults.
    pub file: Option<PathBuf>,
    /// `--data-dir`, which overrides the file's `data_dir`.
    pub data_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// Reads and checks the settings as a start does: the same errors,
    /// word for word.
    pub fn read(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = Some(dir.clone());
        }
        Ok(config)
    }
}

/// What a reload changed, by dotted key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys whose new value is in force now.
    pub applied: Vec<&'static str>,
    /// Keys changed in the file that keep their running value until the
    /// next start.
    pub at_restart: Vec<&'static str>,
}

/// Lists each key once as live or restart-only, and writes the merge from
/// those lists, so a key cannot be classified in one place and merged in
/// another. A test below checks every key of [`Config`] is listed.
macro_rules! classify {
    (
        live: [$($lkey:literal => $($lf:ident).+),* $(,)?],
        at_restart: [$($rkey:literal => $($rf:ident).+),* $(,)?] $(,)?
    ) => {
        /// Keys a reload applies (to what starts after it: see
        /// README.md, "Reloading the configuration").
        pub const LIVE_KEYS: &[&str] = &[$($lkey),*];
        /// Keys that change only at restart: listeners and sockets bound
        /// once, the data dir, the server certificate's name, and budgets
        /// sized once at start (semaphores, the router's tables).
        pub const RESTART_KEYS: &[&str] = &[$($rkey),*];

        fn diff_into(running: &Config, next: &mut Config, changes: &mut Changes) {
            $(
                if next.$($lf).+ != running.$($lf).+ {
                    changes.applied.push($lkey);
                }
            )*
            $(
                if next.$($rf).+ != running.$($rf).+ {
                    changes.at_restart.push($rkey);
                    next.$($rf).+ = running.$($rf).+.clone();
                }
            )*
        }
    };
}

classify! {
    live: [
        "limits.max_payload" => limits.max_payload,
        "limits.handshake_timeout_secs" => limits.handshake_timeout_secs,
        "limits.max_subscriptions_per_client" => limits.max_subscriptions_per_client,
        "limits.max_session_expiry_secs" => limits.max_session_expiry_secs,
        "limits.max_inflight" => limits.max_inflight,
        "audit.retention_days" => audit.retention_days,
        "audit.max_unidentified_entries_per_minute" => audit.max_unidentified_entries_per_minute,
        "discovery.enabled" => discovery.enabled,
        "discovery.interfaces" => discovery.interfaces,
        "mailbox.expiry_secs" => mailbox.expiry_secs,
        "mailbox.max_text_bytes" => mailbox.max_text_bytes,
        "mailbox.max_image_bytes" => mailbox.max_image_bytes,
        "mailbox.max_audio_bytes" => mailbox.max_audio_bytes,
        "mailbox.max_pending_per_device" => mailbox.max_pending_per_device,
        "mailbox.max_sender_bytes_per_day" => mailbox.max_sender_bytes_per_day,
        "mailbox.max_pending_bytes_per_device" => mailbox.max_pending_bytes_per_device,
        "mailbox.max_total_bytes" => mailbox.max_total_bytes,
        "mailbox.min_free_bytes" => mailbox.min_free_bytes,
        "web.idle_days" => web.idle_days,
        // The bridge follows its settings as they change: it reconnects
        // with the new ones (bridge/link.rs).
        "bridge.enabled" => bridge.enabled,
        "bridge.mode" => bridge.mode,
        "bridge.host" => bridge.host,
        "bridge.port" => bridge.port,
        "bridge.tls" => bridge.tls,
        "bridge.ca_file" => bridge.ca_file,
        "bridge.cert_file" => bridge.cert_file,
        "bridge.key_file" => bridge.key_file,
        "bridge.username" => bridge.username,
        "bridge.password_file" => bridge.password_file,
        "bridge.allow_plain" => bridge.allow_plain,
        "bridge.client_id" => bridge.client_id,
        "bridge.topic_prefix" => bridge.topic_prefix,
        "bridge.discovery_prefix" => bridge.discovery_prefix,
        "bridge.queue_max" => bridge.queue_max,
        "bridge.queue_max_bytes" => bridge.queue_max_bytes,
        "bridge.qos" => bridge.qos,
        "bridge.out" => bridge.out,
        "bridge.in" => bridge.inbound,
    ],
    at_restart: [
        "data_dir" => data_dir,
        "mqtt.listen" => mqtt.listen,
        "admin.socket" => admin.socket,
        "enroll.listen" => enroll.listen,
        "dev.listen" => dev.listen,
        "hub.name" => hub.name,
        "metrics.enabled" => metrics.enabled,
        "metrics.listen" => metrics.listen,
        "web.enabled" => web.enabled,
        "web.listen" => web.listen,
        "limits.max_connections" => limits.max_connections,
        "limits.max_retained_per_device" => limits.max_retained_per_device,
        "limits.max_retained_bytes_per_device" => limits.max_retained_bytes_per_device,
        "limits.max_retained" => limits.max_retained,
        "limits.max_retained_bytes" => limits.max_retained_bytes,
        "limits.max_router_topics" => limits.max_router_topics,
        "limits.max_queued_bytes_per_filter" => limits.max_queued_bytes_per_filter,
        "limits.max_queued_bytes" => limits.max_queued_bytes,
        "limits.max_large_packet_bytes" => limits.max_large_packet_bytes,
        "limits.max_unauthenticated" => limits.max_unauthenticated,
        "limits.max_unauthenticated_per_source" => limits.max_unauthenticated_per_source,
    ],
}

/// The settings a reload puts in force: `new` (a file that parsed and
/// passed [`Config::check`]) over `running`, with every restart-only key
/// kept at its running value. `limits.max_payload` may be lowered at once
/// but raised only at a restart: a connection keeps the limit it was
/// accepted with, while `hub/info` would tell it the new one, so a device
/// that trusted it would be cut off; and above `broker_max_payload`, the
/// limit the embedded broker was started with, a packet would break the
/// broker's connection.
///
/// The result passes [`Config::check`] too: the only checks across keys
/// (`max_large_packet_bytes` at least twice `max_payload`,
/// `max_unauthenticated_per_source` within `max_unauthenticated`) hold
/// for restart-only keys at their running values and a `max_payload` no
/// larger than the broker's.
pub fn merge(running: &Config, new: Config, broker_max_payload: usize) -> (Config, Changes) {
    let mut next = new;
    let mut changes = Changes::default();
    if next.limits.max_payload > running.limits.max_payload.min(broker_max_payload) {
        next.limits.max_payload = running.limits.max_payload;
        changes.at_restart.push("limits.max_payload");
    }
    diff_into(running, &mut next, &mut changes);
    (next, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_take_the_new_value_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.limits.max_payload = 4096;
        new.audit.retention_days = 3;
        new.mailbox.expiry_secs = 60;
        new.discovery.enabled = false;
        let (next, changes) = merge(&running, new.clone(), running.limits.max_payload);
        assert_eq!(next, new);
        assert_eq!(
            changes.applied,
            [
                "limits.max_payload",
                "audit.retention_days",
                "discovery.enabled",
                "mailbox.expiry_secs"
            ]
        );
        assert!(changes.at_restart.is_empty());
        next.check().unwrap();
    }

    #[test]
    fn restart_only_keys_keep_the_running_value_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.mqtt.listen = "127.0.0.1:9".parse().unwrap();
        new.dev.listen = Some("127.0.0.1:1883".parse().unwrap());
        new.data_dir = Some("/elsewhere".into());
        new.limits.max_connections = 3;
        new.audit.retention_days = 5;
        let (next, changes) = merge(&running, new, running.limits.max_payload);
        let mut want = Config::default();
        want.audit.retention_days = 5;
        assert_eq!(next, want);
        assert_eq!(changes.applied, ["audit.retention_days"]);
        assert_eq!(
            changes.at_restart,
            [
                "data_dir",
                "mqtt.listen",
                "dev.listen",
                "limits.max_connections"
            ]
        );
    }

    #[test]
    fn the_payload_limit_goes_down_at_once_and_up_only_at_a_restart() {
        let mut running = Config::default();
        running.limits.max_payload = 4096;
        let started_with = 8192;
        let mut new = running.clone();
        new.limits.max_payload = 2048;
        let (next, changes) = merge(&running, new.clone(), started_with);
        assert_eq!(next.limits.max_payload, 2048);
        assert_eq!(changes.applied, ["limits.max_payload"]);
        // Back up, even to the value at start: connections accepted at the
        // lower limit keep it, and hub/info would tell them otherwise.
        new.limits.max_payload = 8192;
        let (next, changes) = merge(&running, new, started_with);
        assert_eq!(next.limits.max_payload, 4096);
        assert!(changes.applied.is_empty());
        assert_eq!(changes.at_restart, ["limits.max_payload"]);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = Config::default();
        let (next, changes) = merge(&running, running.clone(), running.limits.max_payload);
        assert_eq!(next, running);
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn every_key_is_either_live_or_restart_only() {
        let mut want = crate::config::every_key();
        let mut have: Vec<String> = LIVE_KEYS
            .iter()
            .chain(RESTART_KEYS)
            .map(|k| k.to_string())
            .collect();
        want.sort();
        have.sort();
        assert_eq!(
            have, want,
            "a new setting must be listed as live or restart-only in reload.rs"
        );
    }
}
