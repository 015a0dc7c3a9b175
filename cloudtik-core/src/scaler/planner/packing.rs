//! The planner's hot path: resources as small dense vectors over interned names, demands
//! grouped by identical shape, nodes grouped by identical free capacity, first-fit-decreasing
//! packing over the groups and the greedy choice of new nodes by utilization score.
//!
//! Grouping allocates per distinct shape or capacity, never per demand or node; after it, a
//! packing pass over `S` distinct shapes and `G` node groups costs `O(S * G * R)` for `R`
//! resource names, and each round of the greedy choice `O(S * T * R)` for `T` node types.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::resources::{GPU, Resources};

/// Slack for float comparisons, as in [`Resources::fits`].
pub(crate) const EPS: f64 = 1e-9;

/// A small, fast, non-cryptographic hasher (the `FxHash` mix) for the grouping maps.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A hash map keyed by vectors' bit patterns.
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The interned resource names of one planning pass, sorted, so index order is name order.
#[derive(Debug, Clone)]
pub(crate) struct Space {
    names: Vec<String>,
    /// Length and first 8 bytes of each name.
    keys: Vec<(usize, u64)>,
    gpu: Option<usize>,
}

/// The first 8 bytes of a name, zero-padded, as a number.
#[inline]
fn prefix(b: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    for (d, s) in buf.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(buf)
}

impl Space {
    /// A space over the given names (deduplicated and sorted here).
    pub(crate) fn new(mut names: Vec<String>) -> Self {
        names.sort_unstable();
        names.dedup();
        let gpu = names.binary_search_by(|n| n.as_str().cmp(GPU)).ok();
        let keys = names.iter().map(|n| (n.len(), prefix(n.as_bytes()))).collect();
        Space { names, keys, gpu }
    }

    /// Number of resource names.
    pub(crate) fn dim(&self) -> usize {
        self.names.len()
    }

    /// The index of the GPU resource, if any node type or node has GPUs.
    pub(crate) fn gpu(&self) -> Option<usize> {
        self.gpu
    }

    /// The index of a name. Spaces are small (CPU, GPU, memory and a few custom resources):
    /// names are matched by length and their first 8 bytes, which decides names of up to 8
    /// bytes without a string comparison.
    #[inline]
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        let b = name.as_bytes();
        let key = (b.len(), prefix(b));
        self.keys
            .iter()
            .position(|k| *k == key)
            .filter(|i| b.len() <= 8 || self.names[*i] == name)
            .or_else(|| {
                // Names longer than 8 bytes can share a prefix: look them all up.
                (b.len() > 8)
                    .then(|| self.names.binary_search_by(|n| n.as_str().cmp(name)).ok())
                    .flatten()
            })
    }

    /// Writes `r` as a dense vector into `out` (length [`Space::dim`]). Negative and NaN amounts
    /// count as zero (an infinite demand fits nothing). Returns false when `r` has a positive amount of a resource outside the space,
    /// which nothing in the cluster can hold.
    pub(crate) fn load(&self, r: &Resources, out: &mut [f64]) -> bool {
        out.fill(0.0);
        let mut known = true;
        for (name, amount) in r.iter() {
            if amount.is_nan() || amount <= 0.0 {
                continue;
            }
            match self.find(name) {
                Some(i) => out[i] = amount,
                None => known = false,
            }
        }
        known
    }

    /// A dense vector for `r`, with unknown resources ignored (for node capacities).
    pub(crate) fn vector(&self, r: &Resources) -> Box<[f64]> {
        let mut v = vec![0.0; self.dim()].into_boxed_slice();
        self.load(r, &mut v);
        v
    }

    /// The bag of a dense vector.
    pub(crate) fn resources(&self, v: &[f64]) -> Resources {
        self.names
            .iter()
            .zip(v)
            .filter(|(_, a)| **a > 0.0)
            .map(|(n, a)| (n.as_str(), *a))
            .collect()
    }
}

/// Demands grouped by identical shape, in first-fit-decreasing order once [`Shapes::sort`] ran.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shapes {
    /// The distinct shapes (non-empty, positive amounts).
    pub(crate) vectors: Vec<Box<[f64]>>,
    /// How many demands have each shape.
    pub(crate) counts: Vec<usize>,
}

/// Demands sorted into groups: known shapes, and shapes naming resources no node has.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grouped {
    /// Shapes over the space's resources.
    pub(crate) shapes: Shapes,
    /// Demands naming a resource outside the space, deduplicated, with counts.
    pub(crate) unknown: Vec<(Resources, usize)>,
}

/// Groups demands by shape. Empty demands (nothing positive) need nothing and are dropped.
pub(crate) fn group(space: &Space, demands: &[Resources]) -> Grouped {
    const NONE: usize = usize::MAX;
    let dim = space.dim();
    // Shapes by the hash of their bits, chained through `next` on collisions: a hit costs a
    // short inline comparison of `dim` numbers, not a boxed key.
    let mut heads: FxMap<u64, usize> = FxMap::default();
    let mut next: Vec<usize> = Vec::new();
    let mut unknown_index: FxMap<Vec<(String, u64)>, usize> = FxMap::default();
    let mut out = Grouped::default();
    let mut buf = vec![0.0; dim];
    for d in demands {
        if !space.load(d, &mut buf) {
            let k: Vec<(String, u64)> = d.iter().map(|(n, a)| (n.to_string(), a.to_bits())).collect();
            let i = *unknown_index.entry(k).or_insert_with(|| {
                out.unknown.push((d.clone(), 0));
                out.unknown.len() - 1
            });
            out.unknown[i].1 += 1;
            continue;
        }
        if buf.iter().all(|a| *a <= 0.0) {
            continue;
        }
        let h = hash_bits(&buf);
        let mut s = heads.get(&h).copied().unwrap_or(NONE);
        while s != NONE && !same_bits(&out.shapes.vectors[s], &buf) {
            s = next[s];
        }
        if s == NONE {
            s = out.shapes.vectors.len();
            out.shapes.vectors.push(buf.clone().into_boxed_slice());
            out.shapes.counts.push(0);
            next.push(heads.insert(h, s).unwrap_or(NONE));
        }
        out.shapes.counts[s] += 1;
    }
    out
}

impl Shapes {
    /// Sorts into first-fit-decreasing order (see [`decreasing`]); `scale` holds each
    /// resource's largest amount in a node type (1 where no type has it), `gpu` the GPU index.
    pub(crate) fn sort(&mut self, gpu: Option<usize>, scale: &[f64]) {
        let keys: Vec<ShapeKey> = self
            .vectors
            .iter()
            .map(|v| ShapeKey::new(v, gpu, scale))
            .collect();
        let mut order: Vec<usize> = (0..self.vectors.len()).collect();
        order.sort_by(|a, b| decreasing(&keys[*a], &self.vectors[*a], &keys[*b], &self.vectors[*b]));
        self.vectors = order.iter().map(|i| self.vectors[*i].clone()).collect();
        self.counts = order.iter().map(|i| self.counts[*i]).collect();
    }
}

/// What first-fit-decreasing orders shapes by, computed once per shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeKey {
    /// The shape needs a GPU.
    gpu: bool,
    /// Number of resource kinds.
    kinds: usize,
    /// Sum of amounts, each as a fraction of the resource's largest amount in a node type.
    size: f64,
}

impl ShapeKey {
    pub(crate) fn new(v: &[f64], gpu: Option<usize>, scale: &[f64]) -> Self {
        ShapeKey {
            gpu: is_gpu(v, gpu),
            kinds: v.iter().filter(|x| **x > 0.0).count(),
            size: v.iter().zip(scale).map(|(x, s)| x / s).sum(),
        }
    }
}

/// Each resource's largest amount in one of `caps` (1 where none has it), the scale of
/// [`ShapeKey::size`]: it makes amounts of different units comparable (memory bytes against
/// CPU counts) and depends on resources only, never on type names.
pub(crate) fn scale<'c>(dim: usize, caps: impl IntoIterator<Item = &'c [f64]>) -> Vec<f64> {
    let mut scale = vec![0.0f64; dim];
    for cap in caps {
        for (s, c) in scale.iter_mut().zip(cap) {
            if *c > *s {
                *s = *c;
            }
        }
    }
    for s in &mut scale {
        if *s <= 0.0 || !s.is_finite() {
            *s = 1.0;
        }
    }
    scale
}

/// The first-fit-decreasing order of two shapes (`Less` means `a` is packed first): shapes
/// needing a GPU first (the scarce resource: GPU work takes the GPUs before other work takes
/// the CPUs next to them), then more resource kinds (as Ray), then the larger normalized size
/// (Ray sums raw amounts, which lets memory bytes outweigh everything), then the
/// lexicographically larger `(name, amount)` list.
pub(crate) fn decreasing(ka: &ShapeKey, a: &[f64], kb: &ShapeKey, b: &[f64]) -> Ordering {
    kb.gpu
        .cmp(&ka.gpu)
        .then(kb.kinds.cmp(&ka.kinds))
        .then_with(|| kb.size.total_cmp(&ka.size))
        .then_with(|| {
            // Compare the (name, amount) lists of non-zero entries; names are in index order.
            let ia = a.iter().enumerate().filter(|(_, x)| **x > 0.0);
            let ib = b.iter().enumerate().filter(|(_, x)| **x > 0.0);
            for ((na, xa), (nb, xb)) in ia.zip(ib) {
                // A smaller index is a smaller name, which makes the list smaller.
                match nb.cmp(&na).then_with(|| xb.total_cmp(xa)) {
                    Ordering::Equal => continue,
                    o => return o,
                }
            }
            Ordering::Equal
        })
}

/// How many copies of `shape` fit in `free`, at most `cap`.
#[inline]
pub(crate) fn fit_count(free: &[f64], shape: &[f64], cap: usize) -> usize {
    // The least ratio, truncated once at the end: floor(min(r)) == min(floor(r)) for r >= 0.
    let mut k = cap as f64;
    for (f, s) in free.iter().zip(shape) {
        if *s > 0.0 {
            let n = (f + EPS) / s;
            if n < k {
                k = n;
                if k < 1.0 {
                    return 0;
                }
            }
        }
    }
    k as usize
}

/// `free -= k * shape`, clamping float dust to zero.
#[inline]
pub(crate) fn take(free: &mut [f64], shape: &[f64], k: usize) {
    let k = k as f64;
    for (f, s) in free.iter_mut().zip(shape) {
        if *s > 0.0 {
            let left = *f - k * s;
            *f = if left < EPS { 0.0 } else { left };
        }
    }
}

/// `count` nodes with the same free capacity.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BinGroup {
    /// Free capacity of each node of the group.
    pub(crate) free: Box<[f64]>,
    /// Number of nodes.
    pub(crate) count: usize,
}

/// Node groups, in first-fit order, built from nodes in order with identical capacities merged
/// into the group where the first of them appeared.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bins {
    /// The groups.
    pub(crate) groups: Vec<BinGroup>,
    /// The last group with a given hash of its capacity; `next` chains collisions.
    heads: FxMap<u64, usize>,
    next: Vec<usize>,
}

/// The hash of a vector's bits (+0.0 and -0.0 alike).
#[inline]
fn hash_bits(v: &[f64]) -> u64 {
    let mut h = FxHasher::default();
    for a in v {
        h.write_u64(if *a == 0.0 { 0 } else { a.to_bits() });
    }
    h.finish()
}

/// True when two vectors have the same bits (+0.0 and -0.0 alike).
#[inline]
fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0))
}

impl Bins {
    /// Adds `count` nodes with free capacity `free`.
    pub(crate) fn add(&mut self, free: &[f64], count: usize) {
        if count == 0 {
            return;
        }
        let h = hash_bits(free);
        let mut g = self.heads.get(&h).copied().unwrap_or(usize::MAX);
        while g != usize::MAX {
            if same_bits(&self.groups[g].free, free) {
                self.groups[g].count += count;
                return;
            }
            g = self.next[g];
        }
        let g = self.groups.len();
        self.groups.push(BinGroup {
            free: free.into(),
            count,
        });
        self.next.push(self.heads.insert(h, g).unwrap_or(usize::MAX));
    }

    /// The groups, for packing (grouping stops mattering once packing starts).
    pub(crate) fn into_groups(self) -> Vec<BinGroup> {
        self.groups
    }
}

/// First-fit-decreasing packing of `counts[s]` copies of each shape (in the given order) onto
/// the node groups (in order). Placed demands are taken off `counts` and their resources off
/// the groups, which are split where only some of their nodes receive demands. Returns the
/// number of demands placed.
///
/// Equivalent to first-fit of every single demand over every single node in that order: the
/// copies of a shape fill the first node that holds any as far as it can, then the next.
pub(crate) fn pack(groups: &mut Vec<BinGroup>, shapes: &[Box<[f64]>], counts: &mut [usize]) -> usize {
    let mut placed = 0;
    for (shape, count) in shapes.iter().zip(counts.iter_mut()) {
        let mut g = 0;
        while *count > 0 && g < groups.len() {
            let k = fit_count(&groups[g].free, shape, *count);
            if k == 0 {
                g += 1;
                continue;
            }
            let n = groups[g].count;
            let full = (*count / k).min(n);
            if full == n {
                take(&mut groups[g].free, shape, k);
                *count -= n * k;
                placed += n * k;
                g += 1;
                continue;
            }
            // The demands run out inside this group: `full` nodes take `k`, one takes the rest.
            let rest = *count - full * k;
            let untouched = n - full - usize::from(rest > 0);
            let original = groups[g].free.clone();
            let mut at = g;
            if full > 0 {
                take(&mut groups[g].free, shape, k);
                groups[g].count = full;
                at += 1;
            }
            if rest > 0 {
                let mut free = original.clone();
                take(&mut free, shape, rest);
                let part = BinGroup { free, count: 1 };
                if at == g {
                    groups[g] = part;
                } else {
                    groups.insert(at, part);
                }
                at += 1;
            }
            if untouched > 0 {
                groups.insert(
                    at,
                    BinGroup {
                        free: original,
                        count: untouched,
                    },
                );
            }
            placed += *count;
            *count = 0;
        }
    }
    placed
}

/// A node type as the greedy choice sees it.
#[derive(Debug, Clone)]
pub(crate) struct TypeCap {
    /// Full resources of a node of the type.
    pub(crate) cap: Box<[f64]>,
    /// How many more nodes of the type may be added.
    pub(crate) room: usize,
    /// The type may have workers at all (`max_workers` above zero).
    pub(crate) usable: bool,
}

/// The utilization score of one node type for what it would hold; larger is better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Score {
    /// False for a GPU type that would hold no GPU demand.
    pub(crate) gpu_ok: bool,
    /// How many of the type's resource kinds the held demands use.
    pub(crate) matching: usize,
    /// Lowest utilization over the type's resources.
    pub(crate) min_util: f64,
    /// Mean utilization over the type's resources.
    pub(crate) mean_util: f64,
}

impl Score {
    fn cmp(&self, o: &Score) -> Ordering {
        self.gpu_ok
            .cmp(&o.gpu_ok)
            .then(self.matching.cmp(&o.matching))
            .then(self.min_util.total_cmp(&o.min_util))
            .then(self.mean_util.total_cmp(&o.mean_util))
    }
}

/// Scratch space of the greedy choice, reused across rounds.
struct Trial {
    free: Vec<f64>,
    used: Vec<f64>,
    takes: Vec<usize>,
}

impl Trial {
    fn new(dim: usize, shapes: usize) -> Self {
        Trial {
            free: vec![0.0; dim],
            used: vec![0.0; dim],
            takes: vec![0; shapes],
        }
    }

    /// First-fit of the remaining demands onto one empty node with capacity `cap`; the score,
    /// or None when nothing fits.
    fn score(
        &mut self,
        cap: &[f64],
        shapes: &[Box<[f64]>],
        counts: &[usize],
        active: &[usize],
        gpu: Option<usize>,
        gpu_allowed: &[bool],
    ) -> Option<Score> {
        self.free.copy_from_slice(cap);
        self.used.fill(0.0);
        let mut any = false;
        let is_gpu_type = gpu.is_some_and(|g| cap[g] > 0.0);
        let mut holds_allowed = false;
        for &s in active {
            let k = fit_count(&self.free, &shapes[s], counts[s]);
            holds_allowed |= k > 0 && gpu_allowed[s];
            self.takes[s] = k;
            if k > 0 {
                any = true;
                take(&mut self.free, &shapes[s], k);
                for (u, a) in self.used.iter_mut().zip(shapes[s].iter()) {
                    *u += k as f64 * a;
                }
            }
        }
        if !any || (is_gpu_type && !holds_allowed) {
            // A GPU node is only added for work that may go to it; once added, other
            // work may share it.
            return None;
        }
        let mut matching = 0;
        let mut min_util = f64::INFINITY;
        let mut sum = 0.0;
        let mut kinds = 0;
        for (c, u) in cap.iter().zip(&self.used) {
            if *c > 0.0 {
                kinds += 1;
                if *u > 0.0 {
                    matching += 1;
                }
                let util = (u / c).min(1.0);
                min_util = min_util.min(util);
                sum += util;
            }
        }
        let gpu_type = gpu.is_some_and(|g| cap[g] > 0.0);
        let holds_gpu = gpu.is_some_and(|g| self.used[g] > 0.0);
        Some(Score {
            gpu_ok: !gpu_type || holds_gpu,
            matching,
            min_util: if kinds == 0 { 0.0 } else { min_util },
            mean_util: if kinds == 0 { 0.0 } else { sum / kinds as f64 },
        })
    }
}

/// True for a node capacity with GPUs.
#[inline]
pub(crate) fn is_gpu(cap: &[f64], gpu: Option<usize>) -> bool {
    gpu.is_some_and(|g| cap[g] > 0.0)
}

/// GPU nodes are kept for GPU work: per shape, whether it is GPU work, i.e. needs a GPU or
/// fits no usable type without GPUs. Only GPU work may cause a GPU node to be added.
pub(crate) fn gpu_work(types: &[TypeCap], shapes: &[Box<[f64]>], gpu: Option<usize>) -> Vec<bool> {
    shapes
        .iter()
        .map(|shape| {
            is_gpu(shape, gpu)
                || !types
                    .iter()
                    .any(|ty| ty.usable && !is_gpu(&ty.cap, gpu) && fit_count(&ty.cap, shape, 1) == 1)
        })
        .collect()
}

/// Greedily adds new nodes for the remaining demands (`counts`, updated to what stays
/// unplaced): each round scores every type with room by first-fit of the remaining demands onto
/// one empty node of the type, adds a node of the best type (ties: the lower type index) and
/// places on it what it holds; stops when everything is placed, no type with room holds
/// anything, or `global_room` nodes were added. Returns the nodes added per type.
///
/// A round whose outcome repeats (no type's first-fit changes while the chosen pattern is taken
/// again) is applied several times at once, so the cost grows with the number of distinct
/// rounds, not with the number of nodes.
pub(crate) fn choose(
    types: &mut [TypeCap],
    mut global_room: usize,
    shapes: &[Box<[f64]>],
    counts: &mut [usize],
    gpu: Option<usize>,
) -> Vec<usize> {
    let dim = shapes.first().map_or(0, |s| s.len());
    let mut added = vec![0; types.len()];
    let mut trial = Trial::new(dim, shapes.len());
    let mut takes_by_type: Vec<Vec<usize>> = vec![vec![0; shapes.len()]; types.len()];
    let mut scored = vec![false; types.len()];
    let mut active: Vec<usize> = (0..shapes.len()).filter(|s| counts[*s] > 0).collect();
    let gpu_allowed = gpu_work(types, shapes, gpu);
    while !active.is_empty() && global_room > 0 {
        let mut best: Option<(usize, Score)> = None;
        for (t, ty) in types.iter().enumerate() {
            scored[t] = false;
            if ty.room == 0 {
                continue;
            }
            if let Some(score) = trial.score(&ty.cap, shapes, counts, &active, gpu, &gpu_allowed) {
                scored[t] = true;
                for &s in &active {
                    takes_by_type[t][s] = trial.takes[s];
                }
                if best.is_none_or(|(_, b)| score.cmp(&b) == Ordering::Greater) {
                    best = Some((t, score));
                }
            }
        }
        let Some((t, _)) = best else { break };
        // How many times this round repeats unchanged: every scored type's take of every
        // shape the chosen node takes must stay limited by capacity, not by the count left.
        let mut repeat = types[t].room.min(global_room);
        for &s in &active {
            let k = takes_by_type[t][s];
            if k == 0 {
                continue;
            }
            for (u, ok) in scored.iter().enumerate() {
                if !ok {
                    continue;
                }
                let ku = takes_by_type[u][s];
                // A take equal to the count may shrink as soon as the count does.
                let r = if ku >= counts[s] {
                    1
                } else {
                    1 + (counts[s] - ku) / k
                };
                repeat = repeat.min(r);
            }
            repeat = repeat.min(counts[s] / k);
        }
        let repeat = repeat.max(1);
        for &s in &active {
            counts[s] -= takes_by_type[t][s] * repeat;
        }
        added[t] += repeat;
        types[t].room -= repeat;
        global_room -= repeat;
        active.retain(|s| counts[*s] > 0);
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> Space {
        Space::new(vec!["CPU".into(), "GPU".into(), "memory".into()])
    }

    /// Per-demand, per-node first fit: the obviously correct reference for [`pack`].
    fn naive_pack(nodes: &mut [Vec<f64>], demands: &[Vec<f64>]) -> usize {
        let mut placed = 0;
        for d in demands {
            for n in nodes.iter_mut() {
                if fit_count(n, d, 1) == 1 {
                    take(n, d, 1);
                    placed += 1;
                    break;
                }
            }
        }
        placed
    }

    #[test]
    fn grouping_counts_identical_shapes_and_drops_empty_demands() {
        let sp = space();
        let cpu1 = Resources::from_pairs([("CPU", 1.0)]);
        let gpu = Resources::from_pairs([("CPU", 1.0), ("GPU", 1.0)]);
        let odd = Resources::from_pairs([("TPU", 1.0)]);
        let g = group(
            &sp,
            &[
                cpu1.clone(),
                gpu.clone(),
                cpu1.clone(),
                Resources::new(),
                odd.clone(),
                odd.clone(),
            ],
        );
        assert_eq!(g.shapes.vectors.len(), 2);
        assert_eq!(g.shapes.counts, vec![2, 1]);
        assert_eq!(g.unknown, vec![(odd, 2)]);
        assert_eq!(sp.resources(&g.shapes.vectors[1]), gpu);
    }

    #[test]
    fn names_are_found_short_and_long() {
        let sp = Space::new(vec![
            "CPU".into(),
            "memory".into(),
            "accelerator_type:A100".into(),
            "accelerator_type:H100".into(),
        ]);
        assert_eq!(sp.find("CPU"), Some(0));
        assert_eq!(sp.find("memory"), Some(3));
        assert_eq!(sp.find("accelerator_type:H100"), Some(2));
        assert_eq!(sp.find("accelerator_type:A100"), Some(1));
        assert_eq!(sp.find("accelerator_type:B200"), None);
        assert_eq!(sp.find("CPUs"), None);
        assert_eq!(sp.find("GPU"), None);
        assert_eq!(sp.find(""), None);
    }

    #[test]
    fn sort_puts_more_kinds_then_larger_sums_first() {
        let mut s = Shapes {
            vectors: vec![
                vec![1.0, 0.0, 0.0].into(),
                vec![1.0, 1.0, 0.0].into(),
                vec![4.0, 0.0, 0.0].into(),
            ],
            counts: vec![1, 2, 3],
        };
        s.sort(None, &[1.0; 3]);
        assert_eq!(s.counts, vec![2, 3, 1]);
    }

    #[test]
    fn sort_puts_gpu_work_first_and_compares_amounts_by_the_largest_node() {
        // CPU, GPU, memory (bytes).
        let gib = (1u64 << 30) as f64;
        let mut s = Shapes {
            vectors: vec![
                vec![2.0, 0.0, 4.0 * gib].into(),
                vec![1.0, 0.0, 2.0 * gib].into(),
                vec![1.0, 1.0, 0.0].into(),
                vec![8.0, 0.0, 1.0 * gib].into(),
                vec![1.0, 0.0, 0.0].into(),
            ],
            counts: vec![1, 2, 3, 4, 5],
        };
        // The largest node: 16 CPUs, 1 GPU, 64 GiB. {CPU 8, 1 GiB} is larger than
        // {CPU 2, 4 GiB} (0.52 against 0.19), whatever the raw bytes say.
        s.sort(Some(1), &[16.0, 1.0, 64.0 * gib]);
        assert_eq!(s.counts, vec![3, 4, 1, 2, 5]);
    }

    #[test]
    fn fit_count_respects_every_resource_and_the_cap() {
        assert_eq!(fit_count(&[8.0, 0.0, 16.0], &[1.0, 0.0, 4.0], 100), 4);
        assert_eq!(fit_count(&[8.0, 0.0, 16.0], &[1.0, 0.0, 4.0], 3), 3);
        assert_eq!(fit_count(&[8.0, 0.0, 16.0], &[1.0, 1.0, 0.0], 3), 0);
        // 0.1 * 10 accumulates float error; the slack keeps it fitting.
        assert_eq!(fit_count(&[1.0], &[0.1], 100), 10);
    }

    #[test]
    fn pack_splits_a_group_where_the_demands_run_out() {
        let mut groups = vec![BinGroup {
            free: vec![4.0].into(),
            count: 5,
        }];
        let shapes: Vec<Box<[f64]>> = vec![vec![1.0].into()];
        let mut counts = vec![10];
        assert_eq!(pack(&mut groups, &shapes, &mut counts), 10);
        assert_eq!(counts, vec![0]);
        assert_eq!(
            groups,
            vec![
                BinGroup {
                    free: vec![0.0].into(),
                    count: 2
                },
                BinGroup {
                    free: vec![2.0].into(),
                    count: 1
                },
                BinGroup {
                    free: vec![4.0].into(),
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn choose_prefers_non_gpu_types_for_cpu_work_and_gpu_types_for_gpu_work() {
        let sp = space();
        let mut types = vec![
            TypeCap {
                cap: vec![8.0, 0.0, 32.0].into(),
                room: 10,
                usable: true,
            },
            TypeCap {
                cap: vec![8.0, 1.0, 32.0].into(),
                room: 10,
                usable: true,
            },
        ];
        let shapes: Vec<Box<[f64]>> = vec![vec![1.0, 1.0, 0.0].into(), vec![1.0, 0.0, 0.0].into()];
        let mut counts = vec![2, 9];
        let added = choose(&mut types, 100, &shapes, &mut counts, sp.gpu());
        // Two GPU nodes for the two GPU demands (each also takes 7 CPU demands), one CPU node
        // could then hold the rest: 9 - 14 < 0, so no CPU node at all.
        assert_eq!(added, vec![0, 2]);
        assert_eq!(counts, vec![0, 0]);
        let mut counts = vec![0, 9];
        let added = choose(&mut types, 100, &shapes, &mut counts, sp.gpu());
        assert_eq!(added, vec![2, 0]);
    }

    #[test]
    fn choose_batches_repeated_rounds_with_the_same_result_as_single_rounds() {
        let mut types = vec![
            TypeCap {
                cap: vec![8.0, 0.0, 32.0].into(),
                room: 1000,
                usable: true,
            },
            TypeCap {
                cap: vec![4.0, 0.0, 32.0].into(),
                room: 1000,
                usable: true,
            },
        ];
        let shapes: Vec<Box<[f64]>> = vec![vec![3.0, 0.0, 8.0].into(), vec![1.0, 0.0, 1.0].into()];
        let mut counts = vec![100, 37];
        let batched = choose(&mut types.clone(), 1000, &shapes, &mut counts.clone(), None);
        // One round at a time, through a global room of 1 per call.
        let mut single = vec![0; 2];
        loop {
            let a = choose(&mut types, 1, &shapes, &mut counts, None);
            if a.iter().sum::<usize>() == 0 {
                break;
            }
            for (s, x) in single.iter_mut().zip(a) {
                *s += x;
            }
        }
        assert_eq!(batched, single);
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn grouped_pack_equals_per_demand_first_fit(
            nodes in prop::collection::vec((0u8..4, 1usize..4), 1..8),
            demands in prop::collection::vec((0u8..5, 1usize..12), 1..6),
        ) {
            let node_caps = [[4.0, 0.0, 16.0], [8.0, 1.0, 32.0], [2.0, 0.0, 2.0], [3.5, 0.0, 8.0]];
            let shapes_all = [[1.0, 0.0, 2.0], [0.5, 0.0, 0.0], [1.0, 1.0, 4.0], [2.0, 0.0, 8.0], [0.0, 0.0, 3.0]];
            let mut bins = Bins::default();
            let mut expanded_nodes = Vec::new();
            for (t, n) in &nodes {
                bins.add(&node_caps[*t as usize], *n);
            }
            // The naive reference sees nodes in group order.
            for g in &bins.groups {
                for _ in 0..g.count {
                    expanded_nodes.push(g.free.to_vec());
                }
            }
            let mut s = Shapes::default();
            for (i, c) in &demands {
                s.vectors.push(shapes_all[*i as usize].to_vec().into());
                s.counts.push(*c);
            }
            s.sort(Some(1), &[8.0, 2.0, 32.0]);
            let mut expanded_demands = Vec::new();
            for (v, c) in s.vectors.iter().zip(&s.counts) {
                for _ in 0..*c {
                    expanded_demands.push(v.to_vec());
                }
            }
            let mut groups = bins.into_groups();
            let mut counts = s.counts.clone();
            let placed = pack(&mut groups, &s.vectors, &mut counts);
            let naive = naive_pack(&mut expanded_nodes, &expanded_demands);
            prop_assert_eq!(placed, naive);
            prop_assert_eq!(placed + counts.iter().sum::<usize>(), s.counts.iter().sum::<usize>());
            // The free capacities left are the same multiset.
            let mut left: Vec<Vec<u64>> = Vec::new();
            for g in &groups {
                for _ in 0..g.count {
                    left.push(g.free.iter().map(|x| x.to_bits()).collect());
                }
            }
            let mut naive_left: Vec<Vec<u64>> =
                expanded_nodes.iter().map(|n| n.iter().map(|x| x.to_bits()).collect()).collect();
            left.sort();
            naive_left.sort();
            prop_assert_eq!(left, naive_left);
        }
    }
}
