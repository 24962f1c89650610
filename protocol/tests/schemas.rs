//! The JSON Schemas in docs/schema/ against every JSON example in the docs,
//! and against the hub's own parsers: what a toy maker reads must be what
//! the hub accepts.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = repo().join("docs/schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    jsonschema::draft202012::new(&value).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every ```json block of a Markdown file, with the line it starts on.
fn json_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```json") => {
                current = Some((n + 1, String::new()));
            }
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(current.take());
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Which schema an example is of, by its shape.
fn kind_of(example: &Value) -> Option<&'static str> {
    if example.get("$schema").is_some() {
        return None;
    }
    if example.get("type").and_then(Value::as_str).is_some() {
        Some("messaging-v1.json")
    } else if example.get("hub_version").is_some() {
        Some("hub-info-v1.json")
    } else if example.get("maker").is_some() {
        Some("meta-v1.json")
    } else {
        None
    }
}

#[test]
fn every_json_example_in_the_docs_is_valid_against_its_schema() {
    let mut checked = 0;
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.push(repo().join("README.md"));
    for path in docs.iter().chain(examples_readmes().iter()) {
        let text = std::fs::read_to_string(path).unwrap();
        for (line, block) in json_blocks(&text) {
            let at = format!("{}:{line}", path.display());
            let example: Value =
                serde_json::from_str(&block).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
            let Some(kind) = kind_of(&example) else {
                continue;
            };
            let errors: Vec<String> = schema(kind)
                .iter_errors(&example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{at} against {kind}: {errors:?}");
            // A documented description is one the hub accepts.
            if kind == "meta-v1.json" {
                let parsed = hearth_protocol::meta::parse(block.as_bytes());
                assert!(parsed.is_ok(), "{at}: the hub refuses it: {parsed:?}");
            }
            checked += 1;
        }
    }
    // PROTOCOL.md alone has eight; a parser that found none proves nothing.
    assert!(checked >= 9, "only {checked} examples found");
}

fn examples_readmes() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(repo().join("examples")) else {
        return Vec::new();
    };
    dir.filter_map(|e| Some(e.ok()?.path().join("README.md")))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn the_schemas_and_the_hubs_parsers_agree_on_envelopes() {
    use hearth_protocol::mailbox::{parse_outbox, Inbox};
    let messaging = schema("messaging-v1.json");
    let text = std::fs::read_to_string(repo().join("docs/PROTOCOL.md")).unwrap();
    for (line, block) in json_blocks(&text) {
        let example: Value = serde_json::from_str(&block).unwrap();
        if kind_of(&example) != Some("messaging-v1.json") {
            continue;
        }
        assert!(messaging.is_valid(&example), "PROTOCOL.md:{line}");
        let parsed = match example["type"].as_str().unwrap() {
            "send" | "ack" => parse_outbox(example.to_string().as_bytes()).is_ok(),
            _ => serde_json::from_value::<Inbox>(example.clone()).is_ok(),
        };
        assert!(
            parsed,
            "PROTOCOL.md:{line}: the hub's types refuse a documented example"
        );
    }
    // And both refuse an envelope without its version.
    let unversioned = serde_json::json!({"type": "ack", "id": "x"});
    assert!(!messaging.is_valid(&unversioned));
}

#[test]
fn the_meta_schema_and_the_hubs_check_accept_and_refuse_the_same_descriptions() {
    let meta = schema("meta-v1.json");
    let good = [
        r#"{"maker":"Acme","model":"Robo","firmware":"1.0"}"#,
        r#"{"v":1,"maker":"Acme","model":"Robo","firmware":"1.0",
            "telemetry":[{"name":"temp","type":"number","unit":"°C"}],
            "commands":[{"name":"led","args":[{"name":"on","type":"boolean"}]}]}"#,
    ];
    let bad = [
        r#"{"maker":"Acme","model":"Robo"}"#,
        r#"{"v":2,"maker":"Acme","model":"Robo","firmware":"1.0"}"#,
        r#"{"maker":"","model":"Robo","firmware":"1.0"}"#,
        r#"{"maker":"Acme","model":"Robo","firmware":"1.0","extra":true}"#,
        r#"{"maker":"Acme","model":"Robo","firmware":"1.0","telemetry":[{"name":"Temp","type":"number"}]}"#,
        r#"{"maker":"Acme","model":"Robo","firmware":"1.0","telemetry":[{"name":"t","type":"float"}]}"#,
        r#"{"maker":"Acme","model":"Robo","firmware":"1.0","commands":[{"name":"a/b"}]}"#,
        r#"{"maker":"Acme","model":"Robo","firmware":"1.0","telemetry":[{"name":"t","type":"number","unit":""}]}"#,
    ];
    for doc in good {
        let value: Value = serde_json::from_str(doc).unwrap();
        assert!(meta.is_valid(&value), "schema refuses {doc}");
        assert!(
            hearth_protocol::meta::parse(doc.as_bytes()).is_ok(),
            "hub refuses {doc}"
        );
    }
    for doc in bad {
        let value: Value = serde_json::from_str(doc).unwrap();
        assert!(!meta.is_valid(&value), "schema accepts {doc}");
        assert!(
            hearth_protocol::meta::parse(doc.as_bytes()).is_err(),
            "hub accepts {doc}"
        );
    }
}

#[test]
fn the_hub_info_the_hub_publishes_is_valid_against_its_schema() {
    use hearth_protocol::hub_info::{HubInfo, MailboxLimits};
    let info = HubInfo {
        v: 1,
        hub_version: "0.1.0".into(),
        max_packet_bytes: 8 << 20,
        mailbox: MailboxLimits {
            max_text_bytes: 8192,
            max_image_bytes: 5 << 20,
            max_audio_bytes: 2 << 20,
        },
    };
    let value = serde_json::to_value(&info).unwrap();
    assert!(schema("hub-info-v1.json").is_valid(&value));
    assert!(!schema("hub-info-v1.json").is_valid(&serde_json::json!({"v": 1})));
}
