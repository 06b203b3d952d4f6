//! One direction of one edge kind in compressed sparse row form, plus an overlay for real-time changes.
//!
//! ```text
//!   offsets: [0, 3, 3, 5, ...]         node a's edges are targets[offsets[a]..offsets[a+1]], sorted by target
//!   targets: [7, 9, 12, 1, 4, ...]     u32 node ids
//!   weights: [1., 2., NaN, 5., 1., ...] NaN marks an edge removed since the last compaction
//!   overlay: {a: [(target, weight)]}   edges added since the last compaction
//! ```
//!
//! A bulk load builds the arrays in one sort; a real-time edge goes to the overlay (or revives/re-weights its slot)
//! and is visible to the next read. Once the overlay and the removed slots outgrow half the arrays, the owner
//! compacts: a merge into fresh arrays, so a stream of small batches costs amortised linear time.
//!
//! Why not a crate: petgraph's `Csr` has no removal and no overlay, and its `Graph` spends 16+ bytes per edge on
//! linked edge lists; what a walk needs (a uniform random neighbour in O(1), a heaviest-first cap) is this short.

use std::cmp::Ordering;

use rand::Rng;

/// No node: what [`Csr::random_many`] answers for a node without live neighbours.
pub(crate) const NONE: u32 = u32::MAX;
/// Most nodes one [`Csr::random_many`] call takes.
pub(crate) const MAX_BATCH: usize = 16;

/// Edges per direction below which compaction is not worth it.
const MIN_COMPACTION: usize = 1 << 16;

#[derive(Default)]
pub(crate) struct Csr {
    offsets: Vec<u64>,
    targets: Vec<u32>,
    weights: Vec<f32>,
    overlay: foldhash::HashMap<u32, Vec<(u32, f32)>>,
    overlay_edges: usize,
    dead: usize,
}

impl Csr {
    /// Builds from `(source, target, weight)`; a repeated pair keeps its last weight.
    pub(crate) fn from_edges(mut edges: Vec<(u32, u32, f32)>) -> Self {
        // A stable sort keeps the input order within a pair, so dedup can keep the last weight.
        edges.sort_by_key(|&(a, b, _)| (a, b));
        let mut deduped: Vec<(u32, u32, f32)> = Vec::with_capacity(edges.len());
        for e in edges {
            match deduped.last_mut() {
                Some(last) if (last.0, last.1) == (e.0, e.1) => last.2 = e.2,
                _ => deduped.push(e),
            }
        }
        let nodes = deduped.last().map_or(0, |e| e.0 as usize + 1);
        let mut offsets = vec![0u64; nodes + 1];
        for &(a, _, _) in &deduped {
            offsets[a as usize + 1] += 1;
        }
        for i in 0..nodes {
            offsets[i + 1] += offsets[i];
        }
        Self {
            offsets,
            targets: deduped.iter().map(|e| e.1).collect(),
            weights: deduped.iter().map(|e| e.2).collect(),
            ..Self::default()
        }
    }

    fn base_range(&self, a: u32) -> std::ops::Range<usize> {
        let a = a as usize;
        if a + 1 >= self.offsets.len() {
            return 0..0;
        }
        self.offsets[a] as usize..self.offsets[a + 1] as usize
    }

    fn base_slot(&self, a: u32, b: u32) -> Option<usize> {
        let r = self.base_range(a);
        let start = r.start;
        self.targets[r].binary_search(&b).ok().map(|i| start + i)
    }

    fn extra(&self, a: u32) -> &[(u32, f32)] {
        if self.overlay_edges == 0 {
            return &[];
        }
        self.overlay.get(&a).map_or(&[], Vec::as_slice)
    }

    /// The weight of a live edge.
    #[cfg(test)]
    pub(crate) fn get(&self, a: u32, b: u32) -> Option<f32> {
        if let Some(s) = self.base_slot(a, b) {
            let w = self.weights[s];
            return (!w.is_nan()).then_some(w);
        }
        self.extra(a).iter().find(|(t, _)| *t == b).map(|e| e.1)
    }

    /// Adds or re-weights an edge; true when it was not live before.
    pub(crate) fn set(&mut self, a: u32, b: u32, w: f32) -> bool {
        if let Some(s) = self.base_slot(a, b) {
            let was_dead = self.weights[s].is_nan();
            self.weights[s] = w;
            if was_dead {
                self.dead -= 1;
            }
            return was_dead;
        }
        let list = self.overlay.entry(a).or_default();
        match list.iter_mut().find(|(t, _)| *t == b) {
            Some(e) => {
                e.1 = w;
                false
            }
            None => {
                list.push((b, w));
                self.overlay_edges += 1;
                true
            }
        }
    }

    /// Removes an edge; true when it was live.
    pub(crate) fn remove(&mut self, a: u32, b: u32) -> bool {
        if let Some(s) = self.base_slot(a, b) {
            if self.weights[s].is_nan() {
                return false;
            }
            self.weights[s] = f32::NAN;
            self.dead += 1;
            return true;
        }
        let Some(list) = self.overlay.get_mut(&a) else {
            return false;
        };
        let Some(i) = list.iter().position(|(t, _)| *t == b) else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            self.overlay.remove(&a);
        }
        self.overlay_edges -= 1;
        true
    }

    /// Live edges of `a`, base first.
    pub(crate) fn iter(&self, a: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let r = self.base_range(a);
        self.targets[r.clone()]
            .iter()
            .zip(&self.weights[r])
            .filter(|(_, w)| !w.is_nan())
            .map(|(&t, &w)| (t, w))
            .chain(self.extra(a).iter().copied())
    }

    /// Calls `f` on `a`'s live edges, or, when it has more than `cap`, on its `cap` heaviest (ties broken by
    /// `tie`, which orders targets by name so every backend picks the same ones).
    pub(crate) fn for_each_capped(
        &self,
        a: u32,
        cap: usize,
        tie: impl Fn(u32, u32) -> Ordering,
        mut f: impl FnMut(u32, f32),
    ) {
        let r = self.base_range(a);
        if r.len() + self.extra(a).len() <= cap {
            self.iter(a).for_each(|(t, w)| f(t, w));
            return;
        }
        let mut all: Vec<(u32, f32)> = self.iter(a).collect();
        if all.len() > cap {
            all.select_nth_unstable_by(cap - 1, |x, y| {
                y.1.total_cmp(&x.1).then_with(|| tie(x.0, y.0))
            });
            all.truncate(cap);
        }
        all.into_iter().for_each(|(t, w)| f(t, w));
    }

    /// A uniformly random live neighbour of `a`.
    pub(crate) fn random(&self, a: u32, rng: &mut impl Rng) -> Option<u32> {
        let r = self.base_range(a);
        let extra = self.extra(a);
        let n = r.len() + extra.len();
        if n == 0 {
            return None;
        }
        if self.dead == 0 {
            // No removed slot anywhere: one draw, and no load of the weights (a second cache miss per hop).
            let i = rng.random_range(0..n);
            return Some(if i < r.len() {
                self.targets[r.start + i]
            } else {
                extra[i - r.len()].0
            });
        }
        // Removed slots are rare between compactions: retry a few times, then take the first live edge.
        for _ in 0..8 {
            let i = rng.random_range(0..n);
            if i >= r.len() {
                return Some(extra[i - r.len()].0);
            }
            if !self.weights[r.start + i].is_nan() {
                return Some(self.targets[r.start + i]);
            }
        }
        self.iter(a).next().map(|e| e.0)
    }

    /// A random live neighbour for each node of `from` (`NONE` for none, or for a `NONE` node), into `out`.
    /// Without overlay or removed slots, the loads go in two passes, all offsets then all targets: independent
    /// loads issued together overlap their cache misses, where one walk at a time waits for each in turn.
    pub(crate) fn random_many(&self, from: &[u32], out: &mut [u32], rng: &mut impl Rng) {
        debug_assert!(from.len() <= MAX_BATCH && out.len() >= from.len());
        if self.overlay_edges != 0 || self.dead != 0 {
            for (o, &a) in out.iter_mut().zip(from) {
                *o = if a == NONE {
                    NONE
                } else {
                    self.random(a, rng).unwrap_or(NONE)
                };
            }
            return;
        }
        let mut ranges = [(0u64, 0u64); MAX_BATCH];
        for (r, &a) in ranges.iter_mut().zip(from) {
            let a = a as usize;
            if a + 1 < self.offsets.len() {
                *r = (self.offsets[a], self.offsets[a + 1]);
            }
        }
        for (o, &(s, e)) in out.iter_mut().zip(&ranges[..from.len()]) {
            *o = if e > s {
                self.targets[(s + rng.random_range(0..e - s)) as usize]
            } else {
                NONE
            };
        }
    }

    /// True when the overlay and removed slots have grown enough that a merge pays for itself.
    pub(crate) fn wants_compaction(&self) -> bool {
        let changed = self.overlay_edges + self.dead;
        changed > MIN_COMPACTION.max(self.targets.len() / 2)
    }

    /// Merges the overlay into the arrays and drops removed slots.
    pub(crate) fn compact(&mut self) {
        let nodes = (self.offsets.len().saturating_sub(1))
            .max(self.overlay.keys().max().map_or(0, |&a| a as usize + 1));
        let live = self.targets.len() - self.dead + self.overlay_edges;
        let mut offsets = Vec::with_capacity(nodes + 1);
        let mut targets = Vec::with_capacity(live);
        let mut weights = Vec::with_capacity(live);
        offsets.push(0u64);
        let mut row: Vec<(u32, f32)> = Vec::new();
        for a in 0..nodes as u32 {
            row.clear();
            row.extend(self.iter(a));
            row.sort_unstable_by_key(|e| e.0);
            targets.extend(row.iter().map(|e| e.0));
            weights.extend(row.iter().map(|e| e.1));
            offsets.push(targets.len() as u64);
        }
        *self = Self {
            offsets,
            targets,
            weights,
            ..Self::default()
        };
    }

    /// Edges in the overlay, not yet compacted.
    #[cfg(test)]
    pub(crate) fn overlay_len(&self) -> usize {
        self.overlay_edges
    }

    /// Live edges.
    pub(crate) fn len(&self) -> usize {
        self.targets.len() - self.dead + self.overlay_edges
    }

    /// Bytes held (arrays and overlay), for the state-per-edge figure.
    pub(crate) fn bytes(&self) -> usize {
        self.offsets.capacity() * 8
            + self.targets.capacity() * 4
            + self.weights.capacity() * 4
            + self
                .overlay
                .values()
                .map(|v| v.capacity() * 8 + 32)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn base_overlay_and_removal_agree_after_compaction() {
        let mut c = Csr::from_edges(vec![(0, 2, 1.0), (0, 1, 2.0), (2, 0, 1.0), (0, 1, 3.0)]);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.get(0, 1),
            Some(3.0),
            "the last weight of a repeated pair wins"
        );
        assert!(c.set(1, 5, 1.0), "overlay edge");
        assert!(!c.set(1, 5, 4.0), "re-weight is not new");
        assert!(c.remove(0, 2));
        assert!(!c.remove(0, 2), "already removed");
        assert_eq!(c.get(0, 2), None);
        assert!(c.set(0, 2, 7.0), "a removed slot revives");
        assert!(c.remove(0, 2));
        let before: Vec<Vec<(u32, f32)>> = (0..6).map(|a| sorted(c.iter(a))).collect();
        c.compact();
        let after: Vec<Vec<(u32, f32)>> = (0..6).map(|a| sorted(c.iter(a))).collect();
        assert_eq!(before, after);
        assert_eq!(after[1], [(5, 4.0)]);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn random_neighbours_are_live_and_cover_the_list() {
        let mut c = Csr::from_edges((0..10).map(|b| (0, b, 1.0)).collect());
        for b in 0..5 {
            c.remove(0, b);
        }
        c.set(0, 42, 1.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let t = c.random(0, &mut rng).unwrap();
            assert!(t >= 5, "removed neighbour {t} drawn");
            seen.insert(t);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [5, 6, 7, 8, 9, 42]);
        assert_eq!(c.random(3, &mut rng), None);
        let mut out = [0; 3];
        c.random_many(&[0, 3, NONE], &mut out, &mut rng);
        assert!(out[0] >= 5 && out[1] == NONE && out[2] == NONE, "{out:?}");
        c.compact();
        for _ in 0..100 {
            c.random_many(&[0, 3, NONE], &mut out, &mut rng);
            assert!(
                out[0] >= 5 && out[0] != NONE && out[1] == NONE && out[2] == NONE,
                "{out:?}"
            );
        }
    }

    #[test]
    fn the_cap_keeps_the_heaviest_with_ties_by_the_tie_order() {
        let c = Csr::from_edges(vec![(0, 1, 1.0), (0, 2, 5.0), (0, 3, 1.0), (0, 4, 3.0)]);
        let mut got = Vec::new();
        // Reverse id order as the tie-break: 3 beats 1 at weight 1.
        c.for_each_capped(0, 3, |x, y| y.cmp(&x), |t, _| got.push(t));
        got.sort_unstable();
        assert_eq!(got, [2, 3, 4]);
    }

    fn sorted(it: impl Iterator<Item = (u32, f32)>) -> Vec<(u32, f32)> {
        let mut v: Vec<_> = it.collect();
        v.sort_by_key(|e| e.0);
        v
    }
}
