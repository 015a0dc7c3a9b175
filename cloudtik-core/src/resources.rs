//! Resources of nodes and demands: CPU, memory (bytes), GPU and custom resources.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The CPU resource name.
pub const CPU: &str = "CPU";
/// The GPU resource name.
pub const GPU: &str = "GPU";
/// The memory resource name, in bytes.
pub const MEMORY: &str = "memory";

/// A bag of named resource amounts, e.g. `{CPU: 8, memory: 34359738368, GPU: 1}`.
///
/// Amounts are `f64` as in CloudTik and Ray (fractional CPUs are allowed). Zero amounts
/// are kept out of the map, so two bags with the same non-zero amounts are equal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Resources(BTreeMap<String, f64>);

impl Resources {
    /// An empty bag.
    pub fn new() -> Self {
        Resources(BTreeMap::new())
    }

    /// Builds a bag from `(name, amount)` pairs; zero amounts are dropped.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        let mut r = Resources::new();
        for (k, v) in pairs {
            r.set(k, v);
        }
        r
    }

    /// Sets an amount; zero removes the resource.
    pub fn set(&mut self, name: &str, amount: f64) {
        if amount == 0.0 {
            self.0.remove(name);
        } else {
            self.0.insert(name.to_string(), amount);
        }
    }

    /// Sets an amount, builder style.
    pub fn with(mut self, name: &str, amount: f64) -> Self {
        self.set(name, amount);
        self
    }

    /// The amount of a resource (0 when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
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
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
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
