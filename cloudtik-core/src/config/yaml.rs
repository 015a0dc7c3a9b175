//! Reads YAML into a JSON value tree and remembers where each value stood.
//!
//! We read YAML with `yaml-rust2`'s event parser instead of a serde deserializer so that
//! every value's line and column is known after merging templates: an error found late
//! (a wrong type after `from:` inheritance, a failed validation) still points at the
//! line of the user's file. Limits keep hostile input cheap: nesting depth, and the
//! number of values aliases may expand to ("billion laughs").

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::path::{PathSegment, YamlPath};
use crate::error::{ConfigLocation, Error, Result};

/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 64;
/// Most values a document may hold after aliases are expanded.
pub const MAX_VALUES: usize = 1_000_000;

/// A parsed YAML document: its values and the position of each path.
#[derive(Debug, Clone)]
pub struct Document {
    /// The name shown in errors (a file path or `<template aws/standard>`).
    pub source: String,
    /// The document as a JSON value tree.
    pub value: Value,
    positions: HashMap<String, (usize, usize)>,
}

impl Document {
    /// Parses YAML text. `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Document> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut builder = Builder::new();
        let mut parser = Parser::new_from_str(text);
        if let Err(e) = parser.load(&mut builder, true) {
            let m = e.marker();
            return Err(error_at(
                source,
                "",
                Some((m.line(), m.col() + 1)),
                format!("YAML syntax error: {}", e.info()),
            ));
        }
        if let Some((path, pos, msg)) = builder.error {
            return Err(error_at(source, &path, pos, msg));
        }
        if builder.documents > 1 {
            return Err(error_at(
                source,
                "",
                None,
                "expected one YAML document, found several (separated by `---`)".to_string(),
            ));
        }
        let value = match builder.root {
            Some(v) => v,
            None => Value::Null,
        };
        Ok(Document {
            source: source.to_string(),
            value,
            positions: builder.positions,
        })
    }

    /// Parses YAML bytes, with a clear error (and position) for text that is not UTF-8.
    pub fn parse_bytes(source: &str, bytes: &[u8]) -> Result<Document> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Document::parse(source, text),
            Err(e) => {
                let good = &bytes[..e.valid_up_to()];
                let line = good.iter().filter(|b| **b == b'\n').count() + 1;
                let last_nl = good.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
                let col = String::from_utf8_lossy(&good[last_nl..]).chars().count() + 1;
                Err(error_at(
                    source,
                    "",
                    Some((line, col)),
                    format!(
                        "the file is not valid UTF-8 text (invalid byte 0x{:02x}): save it as UTF-8",
                        bytes[e.valid_up_to()]
                    ),
                ))
            }
        }
    }

    /// The line and column of a path, if the document has it.
    pub fn position(&self, path: &str) -> Option<(usize, usize)> {
        self.positions.get(path).copied()
    }
}

pub(crate) fn error_at(source: &str, path: &str, pos: Option<(usize, usize)>, msg: String) -> Error {
    Error::config(path, msg).with_location(ConfigLocation {
        path: path.to_string(),
        file: Some(source.to_string()),
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
    })
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
        merges: Vec<Value>,
    },
}

/// The first error found while building: path, position, message.
type BuildError = (String, Option<(usize, usize)>, String);

struct Builder {
    stack: Vec<Frame>,
    path: YamlPath,
    root: Option<Value>,
    documents: usize,
    anchors: HashMap<usize, (Value, usize)>,
    positions: HashMap<String, (usize, usize)>,
    values: usize,
    error: Option<BuildError>,
}

fn pos(m: &Marker) -> (usize, usize) {
    (m.line(), m.col() + 1)
}

fn count_values(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_values).sum::<usize>(),
        Value::Object(o) => 1 + o.values().map(count_values).sum::<usize>(),
        _ => 1,
    }
}

fn resolve_plain(s: &str) -> std::result::Result<Value, String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan"
        | ".NaN" | ".NAN" => {
            return Err(format!(
                "`{s}` is not a supported number: use a finite number or quote it"
            ));
        }
        _ => {}
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let negative = s.starts_with('-');
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(n) = i64::from_str_radix(hex, 16)
    {
        return Ok(Value::Number(n.into()));
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(n) = i64::from_str_radix(oct, 8)
    {
        return Ok(Value::Number(n.into()));
    }
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = s.parse::<i64>() {
            return Ok(Value::Number(n.into()));
        }
        if !negative && let Ok(n) = unsigned.parse::<u64>() {
            return Ok(Value::Number(n.into()));
        }
        // Too large for an integer: keep it as text rather than lose precision.
        return Ok(Value::String(s.to_string()));
    }
    let looks_float = !unsigned.is_empty()
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && unsigned
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && unsigned.bytes().any(|b| b.is_ascii_digit());
    if looks_float && let Ok(f) = s.parse::<f64>() {
        if let Some(n) = Number::from_f64(f)
            && f.is_finite()
        {
            return Ok(Value::Number(n));
        }
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok(Value::String(s.to_string()))
}

impl Builder {
    fn new() -> Self {
        Builder {
            stack: Vec::new(),
            path: YamlPath::root(),
            root: None,
            documents: 0,
            anchors: HashMap::new(),
            positions: HashMap::new(),
            values: 0,
            error: None,
        }
    }

    fn fail(&mut self, at: Option<(usize, usize)>, msg: String) {
        if self.error.is_none() {
            self.error = Some((self.path.to_string(), at, msg));
        }
    }

    /// Called when a value starts: a key position turns into a key, a value position
    /// pushes its path segment. Returns false when the event was a key.
    fn enter_value(&mut self, mark: &Marker) -> bool {
        match self.stack.last() {
            Some(Frame::Map { key: None, .. }) => false,
            Some(Frame::Map { key: Some(k), .. }) => {
                let k = k.clone();
                self.path.push(PathSegment::Key(k));
                true
            }
            Some(Frame::Seq { items, .. }) => {
                let i = items.len();
                self.path.push(PathSegment::Index(i));
                self.positions.entry(self.path.to_string()).or_insert(pos(mark));
                true
            }
            None => true,
        }
    }

    /// Places a finished value where it belongs and pops its path segment.
    fn finish_value(&mut self, value: Value, anchor: usize, at: (usize, usize)) {
        if anchor != 0 {
            let n = count_values(&value);
            self.anchors.insert(anchor, (value.clone(), n));
        }
        let in_container = !self.stack.is_empty();
        match self.stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, merges, .. }) => {
                let k = key.take().expect("value position has a key");
                if k == "<<" {
                    merges.push(value);
                } else {
                    map.insert(k, value);
                }
            }
            None => {
                if self.root.is_none() {
                    self.root = Some(value);
                }
            }
        }
        if in_container {
            self.path.pop();
        }
        let _ = at;
    }

    fn take_key(&mut self, key: String, at: (usize, usize)) {
        let duplicate = match self.stack.last() {
            Some(Frame::Map { map, .. }) => map.contains_key(&key),
            _ => false,
        };
        let key_path = self.path.key(&key).to_string();
        if duplicate {
            self.path.push(PathSegment::Key(key.clone()));
            self.fail(
                Some(at),
                format!("duplicate key `{key}`: each key may appear once in a mapping"),
            );
            self.path.pop();
        }
        self.positions.insert(key_path, at);
        if let Some(Frame::Map { key: slot, .. }) = self.stack.last_mut() {
            *slot = Some(key);
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let at = pos(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let is_value = self.enter_value(&mark);
                let value = if style != TScalarStyle::Plain || tag.as_ref().is_some_and(|t| t.suffix == "str")
                {
                    Value::String(text)
                } else {
                    match resolve_plain(&text) {
                        Ok(v) => v,
                        Err(msg) => {
                            if !is_value {
                                self.path.push(PathSegment::Key(text.clone()));
                            }
                            self.fail(Some(at), msg);
                            return;
                        }
                    }
                };
                self.values += 1;
                if is_value {
                    if self.path.is_empty() || matches!(self.stack.last(), Some(Frame::Map { .. })) {
                        self.positions.entry(self.path.to_string()).or_insert(at);
                    }
                    self.finish_value(value, anchor, at);
                } else {
                    let key = match value {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        other => other.to_string(),
                    };
                    self.take_key(key, at);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                if !self.enter_value(&mark) {
                    self.fail(
                        Some(at),
                        "a mapping key must be a plain value, not a mapping or sequence".into(),
                    );
                    return;
                }
                if self.path.is_empty() {
                    self.positions.entry(String::new()).or_insert(at);
                }
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(Some(at), format!("nesting deeper than {MAX_DEPTH} levels"));
                    return;
                }
                self.values += 1;
                self.stack.push(if is_map {
                    Frame::Map {
                        map: Map::new(),
                        key: None,
                        anchor,
                        merges: Vec::new(),
                    }
                } else {
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else { return };
                let (value, anchor) = match frame {
                    Frame::Seq { items, anchor } => (Value::Array(items), anchor),
                    Frame::Map {
                        mut map,
                        anchor,
                        merges,
                        ..
                    } => {
                        for merge in merges {
                            let sources = match merge {
                                Value::Object(m) => vec![m],
                                Value::Array(items) => {
                                    let mut maps = Vec::new();
                                    for item in items {
                                        match item {
                                            Value::Object(m) => maps.push(m),
                                            _ => {
                                                self.path.push(PathSegment::Key("<<".into()));
                                                self.fail(
                                                    None,
                                                    "a merge key `<<` takes a mapping or a list of mappings"
                                                        .into(),
                                                );
                                                return;
                                            }
                                        }
                                    }
                                    maps
                                }
                                _ => {
                                    self.path.push(PathSegment::Key("<<".into()));
                                    self.fail(
                                        None,
                                        "a merge key `<<` takes a mapping or a list of mappings".into(),
                                    );
                                    return;
                                }
                            };
                            for source in sources {
                                for (k, v) in source {
                                    map.entry(k).or_insert(v);
                                }
                            }
                        }
                        (Value::Object(map), anchor)
                    }
                };
                self.finish_value(value, anchor, at);
            }
            Event::Alias(id) => {
                let is_value = self.enter_value(&mark);
                let Some((value, n)) = self.anchors.get(&id).cloned() else {
                    self.fail(Some(at), "alias to an unknown anchor".into());
                    return;
                };
                if !is_value {
                    self.fail(Some(at), "an alias cannot be a mapping key".into());
                    return;
                }
                self.values += n;
                if self.values > MAX_VALUES {
                    self.fail(
                        Some(at),
                        format!("aliases expand the document beyond {MAX_VALUES} values"),
                    );
                    return;
                }
                self.finish_value(value, 0, at);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_positions() {
        let doc = Document::parse(
            "t.yaml",
            "cluster_name: c1\nmax_workers: 3\nsetup_commands:\n  - echo a\n  - 'true'\nratio: 1.5\nflag: yes\nnothing:\n",
        )
        .unwrap();
        assert_eq!(
            doc.value,
            json!({"cluster_name": "c1", "max_workers": 3, "setup_commands": ["echo a", "true"],
                   "ratio": 1.5, "flag": "yes", "nothing": null})
        );
        assert_eq!(doc.position("max_workers"), Some((2, 1)));
        assert_eq!(doc.position("setup_commands[1]"), Some((5, 5)));
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let doc = Document::parse(
            "t.yaml",
            "base: &b {a: 1, b: 2}\nderived:\n  <<: *b\n  b: 3\nlist: [*b]\n",
        )
        .unwrap();
        assert_eq!(doc.value["derived"], json!({"a": 1, "b": 3}));
        assert_eq!(doc.value["list"], json!([{"a": 1, "b": 2}]));
    }

    #[test]
    fn hostile_input_is_refused_with_a_position() {
        let deep = "a: ".to_string() + &"[".repeat(200) + &"]".repeat(200);
        let e = Document::parse("t.yaml", &deep).unwrap_err();
        assert!(e.to_string().contains("nesting deeper"), "{e:#}");

        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb += &format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            );
        }
        let e = Document::parse("t.yaml", &bomb).unwrap_err();
        assert!(e.to_string().contains("aliases expand"), "{e:#}");

        let e = Document::parse("t.yaml", "a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.location().unwrap().path, "a");
        assert_eq!(e.location().unwrap().line, Some(2));

        let e = Document::parse_bytes("t.yaml", b"a: 1\nb: \xff\xfe\n").unwrap_err();
        let loc = e.location().unwrap();
        assert_eq!((loc.line, loc.column), (Some(2), Some(4)));

        let e = Document::parse("t.yaml", "a: [1, 2\n").unwrap_err();
        assert!(e.to_string().contains("YAML syntax error"), "{e:#}");

        let e = Document::parse("t.yaml", "a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.to_string().contains("one YAML document"), "{e:#}");

        let e = Document::parse("t.yaml", "a: .nan\n").unwrap_err();
        assert_eq!(e.location().unwrap().path, "a");
    }
}
