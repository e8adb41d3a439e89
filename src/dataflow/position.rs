//! Source positions: where a source partition is, enough to resume reading there after a
//! restart. What a position holds is the connector's business (a byte offset and line, a
//! generator's next record, a Kafka offset, a replication LSN): the runtime keeps it as an
//! opaque value tagged with the connector's kind and a format version, so a restore refuses
//! a position it cannot read instead of misreading it.
//!
//! A connector declares its position type once (`ConnectorPosition`: kind, version,
//! serde), makes `Position`s with `Position::of` and reads them back with
//! `Position::decode`, which checks the kind and the version and never panics on bytes
//! from disk.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A connector's own position type.
pub trait ConnectorPosition: Serialize + DeserializeOwned {
    /// The connector kind that writes it (`file`, `generator`, `kafka`, ...).
    const KIND: &'static str;
    /// Bumped when the encoding changes; `decode` accepts versions up to this one.
    const VERSION: u32;
}

/// A position as the runtime and checkpoints see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Position {
    pub kind: String,
    pub version: u32,
    pub value: serde_json::Value,
}

/// A position that cannot be used by the connector asked to read it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("position {position} cannot be read as a `{kind}` position: {reason}")]
pub struct PositionError {
    pub position: String,
    pub kind: &'static str,
    pub reason: String,
}

impl Position {
    pub fn of<P: ConnectorPosition>(p: &P) -> Position {
        Position {
            kind: P::KIND.to_string(),
            version: P::VERSION,
            value: serde_json::to_value(p).expect("a connector position encodes as JSON"),
        }
    }

    pub fn decode<P: ConnectorPosition>(&self) -> Result<P, PositionError> {
        let fail = |reason: String| PositionError {
            position: self.to_string(),
            kind: P::KIND,
            reason,
        };
        if self.kind != P::KIND {
            return Err(fail(format!("it was written by a `{}` source", self.kind)));
        }
        if self.version > P::VERSION {
            return Err(fail(format!(
                "it has format version {}, this build reads up to {}",
                self.version,
                P::VERSION
            )));
        }
        serde_json::from_value(self.value.clone()).map_err(|e| fail(e.to_string()))
    }
}

/// For people: `file line 500, offset 19500` (the scalar fields: a file's identity or a
/// decoder's state, nested, are for the connector).
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        match &self.value {
            serde_json::Value::Object(fields) => {
                let scalar =
                    |v: &serde_json::Value| !(v.is_null() || v.is_object() || v.is_array());
                for (i, (k, v)) in fields.iter().filter(|(_, v)| scalar(v)).enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{k} {v}")?;
                }
                Ok(())
            }
            other => write!(f, " {other}"),
        }
    }
}

/// The encoding, and the one checkpoints of manifest format 1 and 2 used (a closed enum
/// tagged by `kind`: `file {offset, line}` or `sequence {next, start_ms}`), which still
/// restores.
impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Position, D::Error> {
        use serde::de::Error;
        let mut object = serde_json::Map::deserialize(d)?;
        let kind = match object.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            _ => return Err(D::Error::custom("a position needs a `kind` string")),
        };
        if let Some(version) = object.remove("version") {
            let version = version
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| D::Error::custom("a position's `version` is a small integer"))?;
            let value = object
                .remove("value")
                .ok_or_else(|| D::Error::custom("a position needs a `value`"))?;
            if let Some(extra) = object.keys().next() {
                return Err(D::Error::custom(format!(
                    "unknown position field `{extra}`"
                )));
            }
            return Ok(Position {
                kind,
                version,
                value,
            });
        }
        // Manifest formats 1 and 2.
        let kind = match kind.as_str() {
            "file" => "file",
            "sequence" => "generator",
            other => {
                return Err(D::Error::custom(format!("unknown position kind `{other}`")));
            }
        };
        Ok(Position {
            kind: kind.to_string(),
            version: 1,
            value: serde_json::Value::Object(object),
        })
    }
}

/// The position of one partition of one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub source: String,
    pub partition: String,
    pub position: Position,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Offset {
        offset: u64,
    }
    impl ConnectorPosition for Offset {
        const KIND: &'static str = "test";
        const VERSION: u32 = 2;
    }

    #[test]
    fn a_position_round_trips_through_json() {
        let p = Position::of(&Offset { offset: 7 });
        assert_eq!(p.to_string(), "test offset 7");
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"kind":"test","version":2,"value":{"offset":7}}"#);
        let back: Position = serde_json::from_str(&text).unwrap();
        assert_eq!(back.decode::<Offset>().unwrap(), Offset { offset: 7 });
    }

    #[test]
    fn another_connectors_or_a_newer_position_is_refused() {
        let mut p = Position::of(&Offset { offset: 7 });
        p.version = 3;
        let e = p.decode::<Offset>().unwrap_err();
        assert!(e.reason.contains("version 3"), "{e}");
        p.version = 1;
        p.kind = "kafka".into();
        assert!(p.decode::<Offset>().unwrap_err().reason.contains("kafka"));
        p.kind = "test".into();
        p.value = serde_json::json!({"offset": "seven"});
        assert!(p.decode::<Offset>().is_err());
    }

    #[test]
    fn positions_of_older_manifests_still_read() {
        let p: Position = serde_json::from_str(r#"{"kind":"file","offset":10,"line":2}"#).unwrap();
        assert_eq!(p.kind, "file");
        assert_eq!(p.value, serde_json::json!({"offset": 10, "line": 2}));
        let p: Position =
            serde_json::from_str(r#"{"kind":"sequence","next":5,"start_ms":null}"#).unwrap();
        assert_eq!(p.kind, "generator");
        for bad in [
            r#"{"offset":1}"#,
            r#"{"kind":"x"}"#,
            r#"{"kind":"t","version":-1}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<Position>(bad).is_err(), "{bad}");
        }
    }
}
