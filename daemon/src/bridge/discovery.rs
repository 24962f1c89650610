//! Home Assistant MQTT discovery documents, built from a device's own
//! description (`hearth/v1/dev/<id>/meta`): a sensor per telemetry field
//! (a binary sensor for booleans), a button per command without
//! arguments, a switch per command with one boolean argument. Node and
//! object ids are the device id and field or command names, never a
//! member's name or a device's label; the display name is the device's
//! model and the start of its id.

use hearth_protocol::meta::{DeviceMeta, FieldType};
use hearth_protocol::DeviceId;
use serde_json::{json, Value};

use super::routes::HomeAssistant;

/// One discovery config: its topic and document.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `<discovery prefix>/<component>/<device id>/<object>/config`.
    pub topic: String,
    /// The JSON document.
    pub config: Value,
}

/// The configs for one device.
pub fn entries(ha: &HomeAssistant, device: &DeviceId, meta: &DeviceMeta) -> Vec<Entry> {
    let base = format!("{}/{device}", ha.topic_prefix);
    let short: String = device.as_str().chars().take(6).collect();
    let shared = json!({
        "availability_topic": ha.availability(device),
        "device": {
            "identifiers": [format!("hearth_{device}")],
            "manufacturer": meta.maker,
            "model": meta.model,
            "sw_version": meta.firmware,
            "name": format!("{} {short}", meta.model),
        },
        "origin": { "name": "Hearth" },
        "qos": ha.qos,
    });
    let topic = |component: &str, object: &str| {
        format!(
            "{}/{component}/{device}/{object}/config",
            ha.discovery_prefix
        )
    };
    let with = |extra: Value| {
        let mut doc = shared.clone();
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        doc
    };
    let mut out = Vec::new();
    for field in &meta.telemetry {
        let object = format!("tele_{}", field.name);
        let unique = format!("hearth_{device}_{object}");
        let state = format!("{base}/tele/{}", field.name);
        let (component, extra) = match field.kind {
            FieldType::Boolean => (
                "binary_sensor",
                json!({ "payload_on": "true", "payload_off": "false" }),
            ),
            FieldType::String => ("sensor", json!({ "value_template": "{{ value_json }}" })),
            FieldType::Number | FieldType::Integer => match &field.unit {
                Some(unit) => ("sensor", json!({ "unit_of_measurement": unit })),
                None => ("sensor", json!({})),
            },
        };
        let mut doc = with(json!({
            "name": field.name,
            "unique_id": unique,
            "object_id": unique,
            "state_topic": state,
        }));
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        out.push(Entry {
            topic: topic(component, &object),
            config: doc,
        });
    }
    for command in &meta.commands {
        let object = format!("cmd_{}", command.name);
        let unique = format!("hearth_{device}_{object}");
        let command_topic = format!("{base}/cmd/{}", command.name);
        let (component, extra) = match command.args.as_slice() {
            [] => ("button", json!({ "payload_press": "{}" })),
            [arg] if arg.kind == FieldType::Boolean => (
                "switch",
                json!({
                    "payload_on": json!({ arg.name.as_str(): true }).to_string(),
                    "payload_off": json!({ arg.name.as_str(): false }).to_string(),
                    "optimistic": true,
                }),
            ),
            // Other arguments have no Home Assistant control that fits
            // without guessing; they stay reachable from Hearth's own apps.
            _ => continue,
        };
        let mut doc = with(json!({
            "name": command.name,
            "unique_id": unique,
            "object_id": unique,
            "command_topic": command_topic,
        }));
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        out.push(Entry {
            topic: topic(component, &object),
            config: doc,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROBOT: &str = r#"{"v":1,"maker":"Acme Toys","model":"Robo 2","firmware":"1.4.0",
        "telemetry":[{"name":"temp","type":"number","unit":"°C"},{"name":"docked","type":"boolean"}],
        "commands":[{"name":"led","args":[{"name":"on","type":"boolean"}]},{"name":"beep"},
                    {"name":"say","args":[{"name":"text","type":"string"}]}]}"#;

    fn ha() -> HomeAssistant {
        HomeAssistant {
            discovery_prefix: "homeassistant".into(),
            topic_prefix: "hearth".into(),
            qos: 1,
        }
    }

    #[test]
    fn sensors_buttons_and_switches_come_from_the_description() {
        let d = DeviceId::from_entropy([7; 16]);
        let meta = hearth_protocol::meta::parse(ROBOT.as_bytes()).unwrap();
        let entries = entries(&ha(), &d, &meta);
        let topics: Vec<&str> = entries.iter().map(|e| e.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                format!("homeassistant/sensor/{d}/tele_temp/config"),
                format!("homeassistant/binary_sensor/{d}/tele_docked/config"),
                format!("homeassistant/switch/{d}/cmd_led/config"),
                format!("homeassistant/button/{d}/cmd_beep/config"),
            ]
        );
        let temp = &entries[0].config;
        assert_eq!(temp["unit_of_measurement"], "°C");
        assert_eq!(temp["state_topic"], format!("hearth/{d}/tele/temp"));
        assert_eq!(
            temp["availability_topic"],
            format!("hearth/{d}/availability")
        );
        assert_eq!(temp["unique_id"], format!("hearth_{d}_tele_temp"));
        assert_eq!(temp["device"]["manufacturer"], "Acme Toys");
        let led = &entries[2].config;
        assert_eq!(led["command_topic"], format!("hearth/{d}/cmd/led"));
        assert_eq!(led["payload_on"], r#"{"on":true}"#);
        assert_eq!(entries[3].config["payload_press"], "{}");
    }
}
