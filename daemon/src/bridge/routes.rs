//! Where a hub topic goes on the other broker and where a command from it
//! comes in: the configured mappings (generic mode) or Home Assistant's
//! fixed ones, over a rule no config changes: only bridged devices, only
//! `tele/...` and `meta` out, only `cmd/...` in.

use std::str::FromStr;

use hearth_protocol::filter::{levels, matches};
use hearth_protocol::topic::DEVICE_ROOT;
use hearth_protocol::DeviceId;

use crate::config::{BridgeMode, BridgeSection};

/// The routes of one set of bridge settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// (local filter below the device prefix, remote prefix, QoS).
    outs: Vec<(String, String, u8)>,
    /// (remote prefix, QoS).
    ins: Vec<(String, u8)>,
    /// Home Assistant mode: its discovery prefix and the state prefix.
    pub home_assistant: Option<HomeAssistant>,
}

/// Home Assistant's prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistant {
    /// Where discovery configs go (`homeassistant`).
    pub discovery_prefix: String,
    /// Where state, availability and commands live (`hearth`).
    pub topic_prefix: String,
    /// QoS of what goes out.
    pub qos: u8,
}

impl HomeAssistant {
    /// Where a device's availability is published.
    pub fn availability(&self, device: &DeviceId) -> String {
        format!("{}/{device}/availability", self.topic_prefix)
    }
}

/// A hub topic split into its device and the levels below it.
pub fn split_local(topic: &str) -> Option<(DeviceId, &str)> {
    let rest = topic.strip_prefix(DEVICE_ROOT)?.strip_prefix('/')?;
    let (id, below) = rest.split_once('/')?;
    Some((DeviceId::from_str(id).ok()?, below))
}

impl Routes {
    /// The routes the settings give.
    pub fn new(settings: &BridgeSection) -> Routes {
        match settings.mode {
            BridgeMode::Homeassistant => Routes {
                outs: vec![("tele/#".into(), settings.topic_prefix.clone(), settings.qos)],
                ins: vec![(settings.topic_prefix.clone(), settings.qos)],
                home_assistant: Some(HomeAssistant {
                    discovery_prefix: settings.discovery_prefix.clone(),
                    topic_prefix: settings.topic_prefix.clone(),
                    qos: settings.qos,
                }),
            },
            BridgeMode::Generic => Routes {
                outs: settings
                    .out
                    .iter()
                    .filter(|o| crate::config::check_local_filter(&o.local).is_ok())
                    .map(|o| (o.local.clone(), o.remote.clone(), o.qos))
                    .collect(),
                ins: settings
                    .inbound
                    .iter()
                    .map(|i| (i.remote.clone(), i.qos))
                    .collect(),
                home_assistant: None,
            },
        }
    }

    /// Where `below` (the levels under a bridged device's prefix) goes:
    /// every matching mapping's remote topic with its QoS. Nothing but
    /// `tele/...` and `meta` ever matches, whatever was configured.
    pub fn outward(&self, device: &DeviceId, below: &str) -> Vec<(String, u8)> {
        let carried = below.starts_with("tele/") || below == "meta";
        if !carried {
            return Vec::new();
        }
        self.outs
            .iter()
            .filter(|(local, _, _)| matches(levels(local), below))
            .map(|(_, remote, qos)| (format!("{remote}/{device}/{below}"), *qos))
            .collect()
    }

    /// The filters to subscribe to on the other broker.
    pub fn remote_filters(&self) -> Vec<(String, u8)> {
        self.ins
            .iter()
            .map(|(remote, qos)| (format!("{remote}/+/cmd/#"), *qos))
            .collect()
    }

    /// A topic from the other broker as a command: the device and the hub
    /// topic (`hearth/v1/dev/<id>/cmd/...`). `None` for anything else.
    pub fn inward(&self, topic: &str) -> Option<(DeviceId, String)> {
        self.ins.iter().find_map(|(remote, _)| {
            let rest = topic.strip_prefix(remote.as_str())?.strip_prefix('/')?;
            let (id, below) = rest.split_once('/')?;
            let command = below.strip_prefix("cmd/")?;
            if command.is_empty() || command.starts_with('/') {
                return None;
            }
            let device = DeviceId::from_str(id).ok()?;
            Some((device, hearth_protocol::topic::cmd(&device, command)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BridgeIn, BridgeOut};

    fn id(n: u8) -> DeviceId {
        DeviceId::from_entropy([n; 16])
    }

    #[test]
    fn home_assistant_carries_telemetry_out_and_commands_in() {
        let routes = Routes::new(&BridgeSection::default());
        let d = id(1);
        assert_eq!(
            routes.outward(&d, "tele/temp"),
            vec![(format!("hearth/{d}/tele/temp"), 1)]
        );
        for private in ["inbox", "outbox", "cmd/led", "meta", "state"] {
            assert!(routes.outward(&d, private).is_empty(), "{private}");
        }
        assert_eq!(
            routes.inward(&format!("hearth/{d}/cmd/led")),
            Some((d, format!("hearth/v1/dev/{d}/cmd/led")))
        );
        for not_a_command in [
            format!("hearth/{d}/tele/temp"),
            format!("hearth/{d}/inbox"),
            format!("hearth/{d}/cmd/"),
            "hearth/not-an-id/cmd/led".to_owned(),
            format!("other/{d}/cmd/led"),
        ] {
            assert_eq!(routes.inward(&not_a_command), None, "{not_a_command}");
        }
        assert_eq!(routes.remote_filters(), vec![("hearth/+/cmd/#".into(), 1)]);
    }

    #[test]
    fn generic_mappings_map_levels_and_never_reach_private_topics() {
        let settings = BridgeSection {
            mode: BridgeMode::Generic,
            out: vec![
                BridgeOut {
                    local: "tele/battery".into(),
                    remote: "school/toys".into(),
                    qos: 0,
                },
                // Refused by the config check; ignored here all the same.
                BridgeOut {
                    local: "#".into(),
                    remote: "leak".into(),
                    qos: 1,
                },
            ],
            inbound: vec![BridgeIn {
                remote: "school/cmd".into(),
                qos: 1,
            }],
            ..BridgeSection::default()
        };
        let routes = Routes::new(&settings);
        let d = id(2);
        assert_eq!(
            routes.outward(&d, "tele/battery"),
            vec![(format!("school/toys/{d}/tele/battery"), 0)]
        );
        assert!(routes.outward(&d, "tele/temp").is_empty());
        assert!(routes.outward(&d, "outbox").is_empty());
        assert!(routes.home_assistant.is_none());
        assert!(routes.inward(&format!("school/cmd/{d}/cmd/beep")).is_some());
    }

    #[test]
    fn local_topics_split_into_device_and_levels() {
        let d = id(3);
        assert_eq!(
            split_local(&format!("hearth/v1/dev/{d}/tele/a/b")),
            Some((d, "tele/a/b"))
        );
        assert_eq!(split_local("hearth/v1/hub/info"), None);
        assert_eq!(split_local("$hearth/liveness"), None);
    }
}
