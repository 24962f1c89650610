//! A device's description, retained by the device on
//! `hearth/v1/dev/<id>/meta`: maker, model, firmware, the telemetry it
//! publishes (name, type, unit) and the commands it obeys (name,
//! arguments). The hub checks one on arrival with [`parse`], the same
//! rules as `docs/schema/meta-v1.json`; a refusal carries a fixed reason,
//! never the device's text.

use serde::{Deserialize, Serialize};

/// Largest description, in bytes.
pub const MAX_BYTES: usize = 4096;
/// Most telemetry fields, and most commands.
pub const MAX_ITEMS: usize = 32;
/// Most arguments of one command.
pub const MAX_ARGS: usize = 8;
/// Longest maker, model or firmware text, in characters.
pub const MAX_TEXT: usize = 64;
/// Longest unit, in characters.
pub const MAX_UNIT: usize = 16;
/// Longest field or command name (`[a-z0-9_]`).
pub const MAX_NAME: usize = 32;

/// A device's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMeta {
    /// Protocol version; absent means 1.
    #[serde(default = "version_one")]
    pub v: u32,
    /// Who made it.
    pub maker: String,
    /// Which model it is.
    pub model: String,
    /// Its firmware version.
    pub firmware: String,
    /// What it publishes under `tele/<name>`.
    #[serde(default)]
    pub telemetry: Vec<Field>,
    /// What it obeys under `cmd/<name>`.
    #[serde(default)]
    pub commands: Vec<Command>,
}

fn version_one() -> u32 {
    1
}

/// One telemetry value, or one command argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Its name: the topic level under `tele/`, or the argument's key.
    pub name: String,
    /// Its JSON type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Its unit ("°C", "%"), shown beside the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// The JSON type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Any JSON number.
    Number,
    /// A whole number.
    Integer,
    /// true or false.
    Boolean,
    /// Text.
    String,
}

/// A command the device obeys on `cmd/<name>`, its arguments one JSON
/// object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Its name: the topic level under `cmd/`.
    pub name: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<Field>,
}

/// Why a description is refused: fixed words, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// More than [`MAX_BYTES`].
    #[error("description larger than 4096 bytes")]
    TooLarge,
    /// Not JSON of the described shape (a missing or unknown field, a
    /// wrong type).
    #[error("description is not a meta-v1 document")]
    Shape,
    /// A version other than 1.
    #[error("description of an unknown version")]
    Version,
    /// Maker, model or firmware empty or too long.
    #[error("maker, model or firmware empty or longer than 64 characters")]
    Text,
    /// A field or command name that is not `[a-z0-9_]{1,32}`.
    #[error("a field or command name is not [a-z0-9_]{{1,32}}")]
    Name,
    /// A unit empty or too long.
    #[error("a unit empty or longer than 16 characters")]
    Unit,
    /// Too many fields, commands or arguments.
    #[error("more than 32 fields or commands, or 8 arguments")]
    TooMany,
    /// The same name twice in one list.
    #[error("the same name twice")]
    Duplicate,
}

/// Reads and checks a description.
pub fn parse(payload: &[u8]) -> Result<DeviceMeta, MetaError> {
    if payload.len() > MAX_BYTES {
        return Err(MetaError::TooLarge);
    }
    let meta: DeviceMeta = serde_json::from_slice(payload).map_err(|_| MetaError::Shape)?;
    if meta.v != 1 {
        return Err(MetaError::Version);
    }
    for text in [&meta.maker, &meta.model, &meta.firmware] {
        if !within(text, MAX_TEXT) {
            return Err(MetaError::Text);
        }
    }
    if meta.telemetry.len() > MAX_ITEMS || meta.commands.len() > MAX_ITEMS {
        return Err(MetaError::TooMany);
    }
    check_fields(&meta.telemetry)?;
    unique(meta.commands.iter().map(|c| c.name.as_str()))?;
    for command in &meta.commands {
        if !is_name(&command.name) {
            return Err(MetaError::Name);
        }
        if command.args.len() > MAX_ARGS {
            return Err(MetaError::TooMany);
        }
        check_fields(&command.args)?;
    }
    Ok(meta)
}

fn check_fields(fields: &[Field]) -> Result<(), MetaError> {
    unique(fields.iter().map(|f| f.name.as_str()))?;
    for field in fields {
        if !is_name(&field.name) {
            return Err(MetaError::Name);
        }
        if field.unit.as_ref().is_some_and(|u| !within(u, MAX_UNIT)) {
            return Err(MetaError::Unit);
        }
    }
    Ok(())
}

fn unique<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), MetaError> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(MetaError::Duplicate);
        }
    }
    Ok(())
}

/// 1 to `max` characters.
fn within(text: &str, max: usize) -> bool {
    !text.is_empty() && text.chars().count() <= max
}

/// `[a-z0-9_]{1,32}`: safe as a topic level and as an HTML id.
fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROBOT: &str = r#"{"v":1,"maker":"Acme Toys","model":"Robo 2","firmware":"1.4.0",
        "telemetry":[{"name":"temp","type":"number","unit":"°C"},{"name":"battery","type":"integer","unit":"%"}],
        "commands":[{"name":"led","args":[{"name":"on","type":"boolean"}]},{"name":"beep"}]}"#;

    #[test]
    fn a_complete_description_reads_back_with_its_units_and_commands() {
        let meta = parse(ROBOT.as_bytes()).unwrap();
        assert_eq!(meta.telemetry[0].unit.as_deref(), Some("°C"));
        assert_eq!(meta.commands[0].args[0].kind, FieldType::Boolean);
        assert!(meta.commands[1].args.is_empty());
        let minimal = parse(br#"{"maker":"A","model":"B","firmware":"1"}"#).unwrap();
        assert_eq!(minimal.v, 1);
    }

    #[test]
    fn each_kind_of_bad_description_is_refused_with_its_own_reason() {
        let with = |from: &str, to: &str| parse(ROBOT.replacen(from, to, 1).as_bytes());
        assert_eq!(with(r#""v":1"#, r#""v":2"#), Err(MetaError::Version));
        assert_eq!(with(r#""Acme Toys""#, r#""""#), Err(MetaError::Text));
        assert_eq!(
            with(r#""Acme Toys""#, &format!("{:?}", "x".repeat(65))),
            Err(MetaError::Text)
        );
        assert_eq!(with(r#""temp""#, r#""Temp""#), Err(MetaError::Name));
        assert_eq!(with(r#""temp""#, r#""a/b""#), Err(MetaError::Name));
        assert_eq!(with(r#""led""#, r##""#""##), Err(MetaError::Name));
        assert_eq!(with(r#""°C""#, r#""""#), Err(MetaError::Unit));
        assert_eq!(with(r#""battery""#, r#""temp""#), Err(MetaError::Duplicate));
        assert_eq!(with(r#""number""#, r#""float""#), Err(MetaError::Shape));
        assert_eq!(with(r#""maker""#, r#""make""#), Err(MetaError::Shape));
        assert_eq!(parse(b"not json"), Err(MetaError::Shape));
        assert_eq!(parse(&[b' '; 4097]), Err(MetaError::TooLarge));
        let many: Vec<String> = (0..33)
            .map(|i| format!(r#"{{"name":"f{i}","type":"number"}}"#))
            .collect();
        let doc = format!(
            r#"{{"maker":"A","model":"B","firmware":"1","telemetry":[{}]}}"#,
            many.join(",")
        );
        assert_eq!(parse(doc.as_bytes()), Err(MetaError::TooMany));
    }
}
