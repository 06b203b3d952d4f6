//! The embedded graph: interned node ids and adjacency lists, updated in place (no rebuild for real-time edges).

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    time::Instant,
};

use async_trait::async_trait;
use parking_lot::RwLock;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use reco_types::{ItemId, Name, UserId};

use crate::{
    Edge, GraphCandidate, GraphStats, GraphStore, RecallQuery, RecallResult, Result, Strategy,
    TargetKind,
};

/// Neighbours looked at per node when expanding, so one celebrity cannot make a request slow.
const FANOUT_CAP: usize = 500;
/// Most seed items a walk starts from (the user's heaviest engagements).
const MAX_SEEDS: usize = 20;
/// Restart probability per hop.
const RESTART: f64 = 0.5;
/// A walk stops early once k items were each visited this many times.
const EARLY_STOP_VISITS: u32 = 4;

struct Interner<K> {
    ids: HashMap<K, u32>,
    names: Vec<K>,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn new() -> Self {
        Self {
            ids: HashMap::new(),
            names: Vec::new(),
        }
    }

    fn intern(&mut self, k: &K) -> u32 {
        if let Some(&i) = self.ids.get(k) {
            return i;
        }
        let i = self.names.len() as u32;
        self.ids.insert(k.clone(), i);
        self.names.push(k.clone());
        i
    }

    fn get(&self, k: &K) -> Option<u32> {
        self.ids.get(k).copied()
    }
}

fn grow<T: Default>(v: &mut Vec<T>, i: u32) -> &mut T {
    let i = i as usize;
    if v.len() <= i {
        v.resize_with(i + 1, T::default);
    }
    &mut v[i]
}

/// Inserts or re-weights `(to, w)` in a list; true when it was new.
fn upsert(list: &mut Vec<(u32, f32)>, to: u32, w: f32) -> bool {
    match list.iter_mut().find(|(n, _)| *n == to) {
        Some(e) => {
            e.1 = w;
            false
        }
        None => {
            list.push((to, w));
            true
        }
    }
}

fn remove(list: &mut Vec<(u32, f32)>, to: u32) -> bool {
    let before = list.len();
    list.retain(|(n, _)| *n != to);
    list.len() != before
}

struct Graph {
    users: Interner<UserId>,
    items: Interner<ItemId>,
    tags: Interner<Name>,
    follows: Vec<Vec<(u32, f32)>>,
    engaged: Vec<Vec<(u32, f32)>>,
    engaged_by: Vec<Vec<(u32, f32)>>,
    created: Vec<Vec<(u32, f32)>>,
    tags_of: Vec<Vec<(u32, f32)>>,
    edges: u64,
}

/// An in-memory adjacency-list graph behind one read-write lock.
pub struct AdjacencyGraph {
    graph: RwLock<Graph>,
}

impl Default for AdjacencyGraph {
    fn default() -> Self {
        Self {
            graph: RwLock::new(Graph {
                users: Interner::new(),
                items: Interner::new(),
                tags: Interner::new(),
                follows: Vec::new(),
                engaged: Vec::new(),
                engaged_by: Vec::new(),
                created: Vec::new(),
                tags_of: Vec::new(),
                edges: 0,
            }),
        }
    }
}

impl AdjacencyGraph {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Accumulates scores per target and keeps the best reason.
#[derive(Default)]
struct Tally {
    score: HashMap<u32, f32>,
    hits: HashMap<u32, u32>,
}

impl Tally {
    fn add(&mut self, id: u32, s: f32) {
        *self.score.entry(id).or_default() += s;
        *self.hits.entry(id).or_default() += 1;
    }

    /// The top `k`, highest score first, ties by id for determinism.
    fn top(self, k: usize) -> Vec<(u32, f32, u32)> {
        let mut v: Vec<_> = self
            .score
            .into_iter()
            .map(|(id, s)| (id, s, self.hits[&id]))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }
}

impl Graph {
    fn friends(&self, u: u32) -> &[(u32, f32)] {
        self.follows.get(u as usize).map_or(&[], Vec::as_slice)
    }

    fn engaged_items(&self, u: u32) -> &[(u32, f32)] {
        self.engaged.get(u as usize).map_or(&[], Vec::as_slice)
    }

    fn engagers(&self, i: u32) -> &[(u32, f32)] {
        self.engaged_by.get(i as usize).map_or(&[], Vec::as_slice)
    }

    fn friends_of_friends(&self, u: u32, k: usize) -> Vec<GraphCandidate> {
        let direct = self.friends(u);
        let mut t = Tally::default();
        for &(f, _) in direct.iter().take(FANOUT_CAP) {
            for &(g, _) in self.friends(f).iter().take(FANOUT_CAP) {
                if g != u && !direct.iter().any(|(d, _)| *d == g) {
                    t.add(g, 1.0);
                }
            }
        }
        t.top(k)
            .into_iter()
            .map(|(g, s, _)| GraphCandidate {
                id: self.users.names[g as usize].to_string(),
                kind: TargetKind::User,
                score: s,
                strategy: Strategy::FriendsOfFriends,
                reason: format!("{s} mutual friends"),
            })
            .collect()
    }

    fn item_candidates(
        &self,
        u: u32,
        t: Tally,
        k: usize,
        strategy: Strategy,
        what: &str,
    ) -> Vec<GraphCandidate> {
        let seen = self.engaged_items(u);
        let mut t = t;
        t.score.retain(|i, _| !seen.iter().any(|(s, _)| s == i));
        t.top(k)
            .into_iter()
            .map(|(i, s, hits)| GraphCandidate {
                id: self.items.names[i as usize].to_string(),
                kind: TargetKind::Item,
                score: s,
                strategy,
                reason: format!("{what} {hits}"),
            })
            .collect()
    }

    fn friends_items(&self, u: u32, k: usize) -> Vec<GraphCandidate> {
        let mut t = Tally::default();
        for &(f, _) in self.friends(u).iter().take(FANOUT_CAP) {
            for &(i, w) in self.engaged_items(f).iter().take(FANOUT_CAP) {
                t.add(i, w.ln_1p());
            }
        }
        self.item_candidates(u, t, k, Strategy::FriendsItems, "engaged by friends:")
    }

    fn shared_interests(&self, u: u32, k: usize) -> Vec<GraphCandidate> {
        let mine = self.engaged_items(u);
        let mut peers = Tally::default();
        for &(i, _) in mine.iter().take(FANOUT_CAP) {
            for &(v, _) in self.engagers(i).iter().take(FANOUT_CAP) {
                if v != u {
                    peers.add(v, 1.0);
                }
            }
        }
        let mut t = Tally::default();
        for (v, overlap, _) in peers.top(FANOUT_CAP) {
            for &(i, w) in self.engaged_items(v).iter().take(FANOUT_CAP) {
                t.add(i, overlap * w.ln_1p());
            }
        }
        self.item_candidates(
            u,
            t,
            k,
            Strategy::SharedInterests,
            "engaged by similar users:",
        )
    }

    /// Pixie-style walks: item -> random engager -> random item, restarting at a seed with probability
    /// [`RESTART`] per hop. Visits are boosted across seeds: (Σ_seed √visits)², so items reached from several of
    /// the user's interests beat items reached often from one.
    fn random_walk(&self, u: u32, q: &RecallQuery) -> (Vec<GraphCandidate>, bool) {
        let mut seeds: Vec<(u32, f32)> = self.engaged_items(u).to_vec();
        if seeds.is_empty() {
            return (Vec::new(), false);
        }
        seeds.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        seeds.truncate(MAX_SEEDS);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        q.user.hash(&mut hasher);
        let mut rng = SmallRng::seed_from_u64(hasher.finish());

        let started = Instant::now();
        let mut per_seed: Vec<HashMap<u32, u32>> = vec![HashMap::new(); seeds.len()];
        let mut total: HashMap<u32, u32> = HashMap::new();
        let mut hot = 0usize;
        let mut truncated = false;
        let mut steps = 0usize;
        'walks: while steps < q.max_steps {
            let s = rng.random_range(0..seeds.len());
            let mut item = seeds[s].0;
            loop {
                let engagers = self.engagers(item);
                if engagers.is_empty() {
                    break;
                }
                let v = engagers[rng.random_range(0..engagers.len())].0;
                let items = self.engaged_items(v);
                if items.is_empty() {
                    break;
                }
                item = items[rng.random_range(0..items.len())].0;
                steps += 1;
                *per_seed[s].entry(item).or_default() += 1;
                let n = total.entry(item).or_default();
                *n += 1;
                if *n == EARLY_STOP_VISITS {
                    hot += 1;
                }
                if hot >= q.k * 2 || steps >= q.max_steps {
                    break 'walks;
                }
                if steps.is_multiple_of(1024) && started.elapsed() > q.time_budget {
                    truncated = true;
                    break 'walks;
                }
                if rng.random_bool(RESTART) {
                    break;
                }
            }
        }
        let mut t = Tally::default();
        for (item, _) in total {
            let boosted: f32 = per_seed
                .iter()
                .map(|m| (*m.get(&item).unwrap_or(&0) as f32).sqrt())
                .sum();
            t.add(item, boosted * boosted);
        }
        (
            self.item_candidates(
                u,
                t,
                q.k,
                Strategy::RandomWalk,
                "random-walk visits from seeds:",
            ),
            truncated,
        )
    }
}

#[async_trait]
impl GraphStore for AdjacencyGraph {
    async fn add_edges(&self, edges: Vec<Edge>) -> Result<usize> {
        let mut g = self.graph.write();
        let mut added = 0;
        for e in edges {
            let new = match e {
                Edge::Follows { user, followee } => {
                    let (a, b) = (g.users.intern(&user), g.users.intern(&followee));
                    upsert(grow(&mut g.follows, a), b, 1.0)
                }
                Edge::Engaged { user, item, weight } => {
                    let (a, b) = (g.users.intern(&user), g.items.intern(&item));
                    upsert(grow(&mut g.engaged_by, b), a, weight);
                    upsert(grow(&mut g.engaged, a), b, weight)
                }
                Edge::Created { user, item } => {
                    let (a, b) = (g.users.intern(&user), g.items.intern(&item));
                    upsert(grow(&mut g.created, a), b, 1.0)
                }
                Edge::HasTag { item, tag } => {
                    let (a, b) = (g.items.intern(&item), g.tags.intern(&tag));
                    upsert(grow(&mut g.tags_of, a), b, 1.0)
                }
            };
            if new {
                g.edges += 1;
                added += 1;
            }
        }
        Ok(added)
    }

    async fn remove_edges(&self, edges: Vec<Edge>) -> Result<usize> {
        let mut g = self.graph.write();
        let mut removed = 0;
        for e in edges {
            let gone = match e {
                Edge::Follows { user, followee } => {
                    match (g.users.get(&user), g.users.get(&followee)) {
                        (Some(a), Some(b)) => remove(grow(&mut g.follows, a), b),
                        _ => false,
                    }
                }
                Edge::Engaged { user, item, .. } => {
                    match (g.users.get(&user), g.items.get(&item)) {
                        (Some(a), Some(b)) => {
                            remove(grow(&mut g.engaged_by, b), a);
                            remove(grow(&mut g.engaged, a), b)
                        }
                        _ => false,
                    }
                }
                Edge::Created { user, item } => match (g.users.get(&user), g.items.get(&item)) {
                    (Some(a), Some(b)) => remove(grow(&mut g.created, a), b),
                    _ => false,
                },
                Edge::HasTag { item, tag } => match (g.items.get(&item), g.tags.get(&tag)) {
                    (Some(a), Some(b)) => remove(grow(&mut g.tags_of, a), b),
                    _ => false,
                },
            };
            if gone {
                g.edges -= 1;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn recall(&self, q: &RecallQuery) -> Result<RecallResult> {
        let g = self.graph.read();
        let Some(u) = g.users.get(&q.user) else {
            return Ok(RecallResult::default());
        };
        let mut merged: Vec<GraphCandidate> = Vec::new();
        let mut truncated = false;
        for strategy in &q.strategies {
            let mut found = match strategy {
                Strategy::FriendsOfFriends => g.friends_of_friends(u, q.k),
                Strategy::FriendsItems => g.friends_items(u, q.k),
                Strategy::SharedInterests => g.shared_interests(u, q.k),
                Strategy::RandomWalk => {
                    let (c, t) = g.random_walk(u, q);
                    truncated |= t;
                    c
                }
            };
            // Scores of different strategies are on different scales: normalise each to (0, 1] before merging.
            let max = found.iter().map(|c| c.score).fold(0.0f32, f32::max);
            if max > 0.0 {
                found.iter_mut().for_each(|c| c.score /= max);
            }
            for c in found {
                match merged.iter_mut().find(|m| m.id == c.id && m.kind == c.kind) {
                    Some(m) => {
                        m.score += c.score;
                        m.reason = format!("{}; {}", m.reason, c.reason);
                    }
                    None => merged.push(c),
                }
            }
        }
        merged.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        merged.truncate(q.k);
        Ok(RecallResult {
            candidates: merged,
            truncated,
        })
    }

    async fn stats(&self) -> Result<GraphStats> {
        let g = self.graph.read();
        Ok(GraphStats {
            users: g.users.names.len() as u64,
            items: g.items.names.len() as u64,
            tags: g.tags.names.len() as u64,
            edges: g.edges,
        })
    }

    fn backend(&self) -> &'static str {
        "adjacency"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adjacency_graph_passes_the_shared_suite() {
        crate::suite::run_all(&AdjacencyGraph::new()).await;
    }
}
