//! JSON value -> typed config, with errors naming the YAML path.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::path::YamlPath;
use crate::error::{Error, Result};

/// Deserializes `value` (found at `base`) into `T`; an error names the full path of the
/// offending value and what was expected.
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value, base: &YamlPath) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut path = base.clone();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => path = path.index(*index),
                serde_path_to_error::Segment::Map { key } => path = path.key(key),
                serde_path_to_error::Segment::Enum { variant } => path = path.key(variant),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = e.into_inner().to_string();
        // A missing key is reported at the mapping that lacks it: name the key itself.
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            path = path.key(field);
        }
        let msg = explain(&inner);
        Error::config(path.to_string(), msg)
    })
}

/// Turns serde's wording into something that says what was expected.
fn explain(serde_msg: &str) -> String {
    let msg = serde_msg
        .replace("invalid type: ", "wrong type: found ")
        .replace("u32", "a whole number (0 or more)")
        .replace("u16", "a whole number from 0 to 65535")
        .replace("i32", "a whole number")
        .replace("f64", "a number")
        .replace("a sequence", "a list")
        .replace("a map", "a mapping");
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing required key {rest}");
    }
    msg
}
