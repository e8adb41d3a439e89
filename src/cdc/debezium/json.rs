//! Raw JSON text helpers shared by the Debezium decoder's parts: error constructors (with
//! serde_json's messages made lowercase), null and string tests on `RawValue`s, unquoting,
//! the kind of a JSON value from its first byte, and strings borrowed from the input.
//!
//! Owns no Debezium knowledge: only how the decoder reads JSON text it keeps raw.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use crate::format::DecodeError;

pub(super) fn err(reason: impl Into<String>) -> DecodeError {
    DecodeError::new(reason)
}

pub(super) fn json_error(e: serde_json::Error) -> DecodeError {
    err(format!("invalid json: {}", serde_message(&e)))
}

/// serde_json's message, lowercase ("EOF" is its one capitalized word).
pub(super) fn serde_message(e: &serde_json::Error) -> String {
    e.to_string().replace("EOF", "end of input")
}

pub(super) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The text of a JSON string value (unescaped), or an error naming what was found.
pub(super) fn string_of(raw: &RawValue) -> Result<Cow<'_, str>, String> {
    unquote(raw.get()).ok_or_else(|| format!("expected a string, found {}", json_kind(raw.get())))
}

pub(super) fn unquote(raw: &str) -> Option<Cow<'_, str>> {
    if raw.len() < 2 || !raw.starts_with('"') || !raw.ends_with('"') {
        return None;
    }
    if raw.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(&raw[1..raw.len() - 1]))
    }
}

pub(super) fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// A string borrowed from the input when it has no escapes.
pub(super) struct CowStr<'de>(pub(super) Cow<'de, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}
