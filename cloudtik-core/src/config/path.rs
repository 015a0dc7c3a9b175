//! YAML paths as shown in error messages: `available_node_types."worker.cpu".min_workers`,
//! `setup_commands[2]`.

use std::fmt;

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// A key of a mapping.
    Key(String),
    /// An index of a sequence.
    Index(usize),
}

/// A path from the document root to a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct YamlPath(Vec<PathSegment>);

impl YamlPath {
    /// The root.
    pub fn root() -> Self {
        YamlPath(Vec::new())
    }

    /// The path with a key appended.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(PathSegment::Key(key.to_string()));
        p
    }

    /// The path with an index appended.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(PathSegment::Index(i));
        p
    }

    /// Appends a segment in place.
    pub fn push(&mut self, seg: PathSegment) {
        self.0.push(seg);
    }

    /// Removes the last segment.
    pub fn pop(&mut self) -> Option<PathSegment> {
        self.0.pop()
    }

    /// The segments.
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the root.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent path (the root's parent is the root).
    pub fn parent(&self) -> Self {
        let mut p = self.clone();
        p.0.pop();
        p
    }
}

fn needs_quotes(key: &str) -> bool {
    key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '+' || c == '/' || c == '~')
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                PathSegment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if needs_quotes(k) {
                        write!(f, "{k:?}")?;
                    } else {
                        f.write_str(k)?;
                    }
                }
                PathSegment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_format_readably() {
        let p = YamlPath::root()
            .key("available_node_types")
            .key("worker.cpu")
            .key("min_workers");
        assert_eq!(p.to_string(), "available_node_types.\"worker.cpu\".min_workers");
        let p = YamlPath::root().key("setup_commands").index(2);
        assert_eq!(p.to_string(), "setup_commands[2]");
        assert_eq!(YamlPath::root().to_string(), "");
        assert_eq!(
            YamlPath::root().key("setup_commands++").to_string(),
            "setup_commands++"
        );
    }
}
