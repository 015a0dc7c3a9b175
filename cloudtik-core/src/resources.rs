//! Resources of nodes and demands: CPU, memory (bytes), GPU and custom resources.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The CPU resource name.
pub const CPU: &str = "CPU";
/// The GPU resource name.
pub const GPU: &str = "GPU";
/// The memory resource name, in bytes.
pub const MEMORY: &str = "memory";

/// A resource name: the common names ([`CPU`], [`GPU`], [`MEMORY`]) borrow a static
/// string, other names own theirs.
type Name = Cow<'static, str>;

fn name(text: &str) -> Name {
    match text {
        CPU => Cow::Borrowed(CPU),
        GPU => Cow::Borrowed(GPU),
        MEMORY => Cow::Borrowed(MEMORY),
        other => Cow::Owned(other.to_owned()),
    }
}

/// A bag of named resource amounts, e.g. `{CPU: 8, memory: 34359738368, GPU: 1}`.
///
/// Amounts are `f64` as in CloudTik and Ray (fractional CPUs are allowed). Zero amounts
/// are kept out of the map, so two bags with the same non-zero amounts are equal.
//
// Serialized as a map from name to amount, ordered by name. Kept as a vector sorted by
// name rather than a map: a node has a handful of resources, and a controller holds two
// bags per node (10,000s of them), so one small allocation per bag and none for the
// common names keep building and dropping the heartbeat snapshot cheap.
#[derive(Clone, Default, PartialEq, schemars::JsonSchema)]
#[schemars(transparent)]
pub struct Resources(#[schemars(with = "BTreeMap<String, f64>")] Vec<(Name, f64)>);

impl Resources {
    /// An empty bag.
    pub fn new() -> Self {
        Resources(Vec::new())
    }

    /// Builds a bag from `(name, amount)` pairs; zero amounts are dropped.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        let mut r = Resources::new();
        for (k, v) in pairs {
            r.set(k, v);
        }
        r
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    /// Sets an amount; zero removes the resource.
    pub fn set(&mut self, name: &str, amount: f64) {
        match (self.position(name), amount == 0.0) {
            (Ok(i), true) => {
                self.0.remove(i);
            }
            (Ok(i), false) => self.0[i].1 = amount,
            (Err(_), true) => {}
            (Err(i), false) => self.0.insert(i, (self::name(name), amount)),
        }
    }

    /// Sets an amount, builder style.
    pub fn with(mut self, name: &str, amount: f64) -> Self {
        self.set(name, amount);
        self
    }

    /// The amount of a resource (0 when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.position(name).map_or(0.0, |i| self.0[i].1)
    }

    /// CPUs.
    pub fn cpu(&self) -> f64 {
        self.get(CPU)
    }

    /// GPUs.
    pub fn gpu(&self) -> f64 {
        self.get(GPU)
    }

    /// Memory in bytes.
    pub fn memory(&self) -> f64 {
        self.get(MEMORY)
    }

    /// True when there is no resource with a non-zero amount.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(name, amount)` pairs, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Number of resources with non-zero amounts.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when every amount in `demand` fits in `self`.
    pub fn fits(&self, demand: &Resources) -> bool {
        demand.iter().all(|(k, v)| self.get(k) + 1e-9 >= v)
    }

    /// Subtracts `demand` (which must fit); amounts that reach zero are removed.
    pub fn subtract(&mut self, demand: &Resources) {
        for (k, v) in demand.iter() {
            let left = self.get(k) - v;
            self.set(k, if left.abs() < 1e-9 { 0.0 } else { left });
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        for (k, v) in other.iter() {
            let sum = self.get(k) + v;
            self.set(k, sum);
        }
    }

    /// Parses a memory amount such as `4G`, `512M`, `1024` (bytes) or `1.5GB` into bytes.
    pub fn parse_memory(text: &str) -> Option<f64> {
        let t = text.trim();
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.trim().parse().ok()?;
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let mult = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1.0,
            "K" | "KB" | "KI" | "KIB" => 1024.0,
            "M" | "MB" | "MI" | "MIB" => 1024.0 * 1024.0,
            "G" | "GB" | "GI" | "GIB" => 1024.0 * 1024.0 * 1024.0,
            "T" | "TB" | "TI" | "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some((n * mult).floor())
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if k == MEMORY {
                write!(f, "{k}: {:.1}GiB", v / (1024.0 * 1024.0 * 1024.0))?;
            } else {
                write!(f, "{k}: {v}")?;
            }
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Map<'a>(&'a Resources);
        impl fmt::Debug for Map<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.iter()).finish()
            }
        }
        f.debug_tuple("Resources").field(&Map(self)).finish()
    }
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Resources {
    /// Reads a map from name to amount. As before this type kept its bag in a map, the
    /// amounts are taken as given (zeros too) and the last of repeated names wins.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, f64>::deserialize(deserializer)?;
        Ok(Resources(
            map.into_iter()
                .map(|(k, v)| {
                    let k = match name(&k) {
                        Cow::Borrowed(b) => Cow::Borrowed(b),
                        Cow::Owned(_) => Cow::Owned(k),
                    };
                    (k, v)
                })
                .collect(),
        ))
    }
}

impl<'a> FromIterator<(&'a str, f64)> for Resources {
    fn from_iter<I: IntoIterator<Item = (&'a str, f64)>>(iter: I) -> Self {
        Resources::from_pairs(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_amounts_are_dropped_and_fit_works() {
        let node = Resources::from_pairs([(CPU, 4.0), (MEMORY, 8.0), (GPU, 0.0)]);
        assert_eq!(node.len(), 2);
        let mut free = node.clone();
        let d = Resources::from_pairs([(CPU, 1.5)]);
        assert!(free.fits(&d));
        free.subtract(&d);
        assert_eq!(free.cpu(), 2.5);
        assert!(!free.fits(&Resources::from_pairs([(GPU, 1.0)])));
        free.subtract(&Resources::from_pairs([(CPU, 2.5)]));
        assert_eq!(free.get(CPU), 0.0);
        assert_eq!(free.len(), 1);
    }

    #[test]
    fn bags_are_ordered_by_name_and_serialize_as_before() {
        let mut r = Resources::from_pairs([("z", 1.0), (MEMORY, 2.0), ("a", 3.0), (CPU, 4.0), (GPU, 5.0)]);
        r.set("a", 6.0);
        r.set("z", 0.0);
        let names: Vec<&str> = r.iter().map(|(k, _)| k).collect();
        assert_eq!(names, [CPU, GPU, "a", MEMORY]);
        assert_eq!(r.get("a"), 6.0);
        assert_eq!(r.get("z"), 0.0);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"CPU":4.0,"GPU":5.0,"a":6.0,"memory":2.0}"#);
        let back: Resources = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            format!("{r:?}"),
            r#"Resources({"CPU": 4.0, "GPU": 5.0, "a": 6.0, "memory": 2.0})"#
        );
        // As when the bag was a map: amounts as given, the last repeated name wins.
        let read: Resources = serde_json::from_str(r#"{"x":1,"CPU":0,"x":2}"#).unwrap();
        assert_eq!(read.iter().collect::<Vec<_>>(), [(CPU, 0.0), ("x", 2.0)]);
    }

    #[test]
    fn memory_units_parse() {
        assert_eq!(
            Resources::parse_memory("4G"),
            Some(4.0 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(Resources::parse_memory("512M"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(Resources::parse_memory("1024"), Some(1024.0));
        assert_eq!(
            Resources::parse_memory("1.5GiB"),
            Some(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(Resources::parse_memory("lots"), None);
        assert_eq!(Resources::parse_memory("-1G"), None);
        assert_eq!(Resources::parse_memory("4Q"), None);
    }
}
