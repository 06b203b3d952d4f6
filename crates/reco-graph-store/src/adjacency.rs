//! The embedded graph: interned node ids and one [`Csr`] per edge kind and direction, built in one sort from a
//! bulk load and changed in place by real-time edges (no rebuild before they are visible).

use std::{
    cmp::Ordering,
    hash::{BuildHasher, Hash},
    time::Instant,
};

use async_trait::async_trait;
use indexmap::IndexSet;
use parking_lot::RwLock;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use reco_types::{ItemId, Name, UserId};

use crate::{
    Edge, FOF_POOL, GraphCandidate, GraphStats, GraphStore, PEERS, RecallQuery, RecallResult,
    Result, Strategy, TargetKind,
    csr::{Csr, NONE},
    merge_strategies, reasons,
};

/// Neighbours expanded per node by default (the heaviest), so one celebrity cannot make a request slow.
pub const DEFAULT_FANOUT: usize = 1000;
/// Most seed items a walk starts from (the user's heaviest engagements).
const MAX_SEEDS: usize = 20;
/// Restart probability per hop.
const RESTART: f64 = 0.5;
/// A walk stops early once 2k items were each visited this many times.
const EARLY_STOP_VISITS: u32 = 4;
/// Walks advancing in lockstep.
const WALKERS: usize = 16;

/// A thread's scratch for walks: counters dense over item ids (one load per step, no hashing), each reset after
/// use by the lists of what was touched. 12 bytes per item per thread that walks.
#[derive(Default)]
struct WalkScratch {
    /// Visits from the current seed.
    visits: Vec<u32>,
    /// Σ over seeds of √visits.
    root: Vec<f32>,
    /// Visits from all seeds.
    total: Vec<u32>,
    touched: Vec<u32>,
    touched_all: Vec<u32>,
}

impl WalkScratch {
    fn fit(&mut self, items: usize) {
        if self.visits.len() < items {
            self.visits.resize(items, 0);
            self.root.resize(items, 0.0);
            self.total.resize(items, 0);
        }
    }

    /// Folds the current seed's visits into the boosted sums, and clears them.
    fn fold(&mut self) {
        for &i in &self.touched {
            let i = i as usize;
            let v = std::mem::take(&mut self.visits[i]);
            if self.total[i] == 0 {
                self.touched_all.push(i as u32);
            }
            self.root[i] += (v as f32).sqrt();
            self.total[i] += v;
        }
        self.touched.clear();
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<WalkScratch> = std::cell::RefCell::default();
}

/// Ids interned once: the set's index is the node id.
struct Interner<K>(IndexSet<K, foldhash::fast::RandomState>);

impl<K: Hash + Eq + Clone + AsRef<str>> Interner<K> {
    fn intern(&mut self, k: &K) -> u32 {
        match self.0.get_index_of(k) {
            Some(i) => i as u32,
            None => self.0.insert_full(k.clone()).0 as u32,
        }
    }

    fn get(&self, k: &K) -> Option<u32> {
        self.0.get_index_of(k).map(|i| i as u32)
    }

    fn name(&self, i: u32) -> &str {
        self.0[i as usize].as_ref()
    }

    /// Orders two node ids by name: the tie-break every backend shares.
    fn by_name(&self, a: u32, b: u32) -> Ordering {
        self.name(a).cmp(self.name(b))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn bytes(&self) -> usize {
        // Entry (hash + Arc pointer), index slot, and the shared string with its two counters.
        self.0
            .iter()
            .map(|k| 8 + 16 + 8 + 16 + k.as_ref().len())
            .sum()
    }
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self(IndexSet::default())
    }
}

#[derive(Default)]
struct Graph {
    users: Interner<UserId>,
    items: Interner<ItemId>,
    tags: Interner<Name>,
    follows: Csr,
    engaged: Csr,
    engaged_by: Csr,
    created: Csr,
    tags_of: Csr,
}

/// An in-memory CSR graph behind one read-write lock.
pub struct AdjacencyGraph {
    graph: RwLock<Graph>,
    fanout: usize,
}

impl Default for AdjacencyGraph {
    fn default() -> Self {
        Self::with_fanout(DEFAULT_FANOUT)
    }
}

/// Scores per node, with how many contributions each had.
#[derive(Default)]
struct Tally(foldhash::HashMap<u32, (f32, u32)>);

impl Tally {
    fn add(&mut self, id: u32, s: f32) {
        let e = self.0.entry(id).or_default();
        e.0 += s;
        e.1 += 1;
    }

    /// The top `k` as (id, score, hits): highest score first, ties by name. Names are compared only where scores
    /// tie (a name comparison is a random load and a memcmp, and walk scores tie often): the cut is found by score
    /// alone, and the candidates tied at the cut are then ordered by name.
    fn top(self, k: usize, by_name: impl Fn(u32, u32) -> Ordering) -> Vec<(u32, f32, u32)> {
        let mut v: Vec<_> = self.0.into_iter().map(|(id, (s, n))| (id, s, n)).collect();
        if k == 0 {
            return Vec::new();
        }
        if v.len() > k {
            v.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            let cut = v[k - 1].1;
            let mut tied: Vec<_> = v
                .iter()
                .filter(|x| x.1.total_cmp(&cut).is_eq())
                .copied()
                .collect();
            v.retain(|x| x.1.total_cmp(&cut).is_gt());
            tied.sort_by(|a, b| by_name(a.0, b.0));
            tied.truncate(k - v.len());
            v.extend(tied);
        }
        v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        for run in v.chunk_by_mut(|a, b| a.1.total_cmp(&b.1).is_eq()) {
            if run.len() > 1 {
                run.sort_by(|a, b| by_name(a.0, b.0));
            }
        }
        v
    }
}

impl AdjacencyGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// A graph that expands at most `fanout` neighbours (the heaviest) per node.
    pub fn with_fanout(fanout: usize) -> Self {
        Self {
            graph: RwLock::new(Graph::default()),
            fanout: fanout.max(1),
        }
    }

    /// Builds a graph from a snapshot in one pass: ids interned, then one sort per edge kind and direction.
    pub fn from_edges(edges: impl IntoIterator<Item = Edge>) -> Self {
        let this = Self::new();
        {
            let mut g = this.graph.write();
            let mut lists: [Vec<(u32, u32, f32)>; 5] = Default::default();
            for e in edges {
                match e {
                    Edge::Follows { user, followee } => {
                        let (a, b) = (g.users.intern(&user), g.users.intern(&followee));
                        lists[0].push((a, b, 1.0));
                    }
                    Edge::Engaged { user, item, weight } => {
                        let (a, b) = (g.users.intern(&user), g.items.intern(&item));
                        lists[1].push((a, b, weight));
                        lists[2].push((b, a, weight));
                    }
                    Edge::Created { user, item } => {
                        let (a, b) = (g.users.intern(&user), g.items.intern(&item));
                        lists[3].push((a, b, 1.0));
                    }
                    Edge::HasTag { item, tag } => {
                        let (a, b) = (g.items.intern(&item), g.tags.intern(&tag));
                        lists[4].push((a, b, 1.0));
                    }
                }
            }
            let [follows, engaged, engaged_by, created, tags_of] = lists;
            g.follows = Csr::from_edges(follows);
            g.engaged = Csr::from_edges(engaged);
            g.engaged_by = Csr::from_edges(engaged_by);
            g.created = Csr::from_edges(created);
            g.tags_of = Csr::from_edges(tags_of);
        }
        this
    }

    /// Bytes the graph holds: adjacency arrays, overlays and interned ids.
    pub fn memory_bytes(&self) -> usize {
        let g = self.graph.read();
        g.users.bytes()
            + g.items.bytes()
            + g.tags.bytes()
            + [
                &g.follows,
                &g.engaged,
                &g.engaged_by,
                &g.created,
                &g.tags_of,
            ]
            .iter()
            .map(|c| c.bytes())
            .sum::<usize>()
    }
}

impl Graph {
    fn edges(&self) -> usize {
        self.follows.len() + self.engaged.len() + self.created.len() + self.tags_of.len()
    }

    /// Friends of friends with their mutual-friend counts: every user followed by one the user follows, except the
    /// user and those it follows already.
    fn fof_tally(&self, u: u32, fanout: usize) -> Tally {
        let direct: foldhash::HashSet<u32> = self.follows.iter(u).map(|e| e.0).collect();
        let mut t = Tally::default();
        let by = |a, b| self.users.by_name(a, b);
        self.follows.for_each_capped(u, fanout, by, |f, _| {
            self.follows.for_each_capped(f, fanout, by, |g, _| {
                if g != u && !direct.contains(&g) {
                    t.add(g, 1.0);
                }
            });
        });
        t
    }

    fn friends_of_friends(&self, u: u32, k: usize, fanout: usize) -> Vec<GraphCandidate> {
        self.fof_tally(u, fanout)
            .top(k, |a, b| self.users.by_name(a, b))
            .into_iter()
            .map(|(g, s, _)| GraphCandidate {
                id: self.users.name(g).to_string(),
                kind: TargetKind::User,
                score: s,
                strategy: Strategy::FriendsOfFriends,
                reason: reasons::friends_of_friends(s as u64),
            })
            .collect()
    }

    /// Items of `users` (each weighted) that the user has not engaged, scored Σ weight·ln(1 + engagement).
    fn items_of(
        &self,
        u: u32,
        users: impl IntoIterator<Item = (u32, f32)>,
        k: usize,
        fanout: usize,
        strategy: Strategy,
    ) -> Vec<GraphCandidate> {
        let seen: foldhash::HashSet<u32> = self.engaged.iter(u).map(|e| e.0).collect();
        let mut t = Tally::default();
        let by = |a, b| self.items.by_name(a, b);
        for (v, weight) in users {
            self.engaged.for_each_capped(v, fanout, by, |i, w| {
                if !seen.contains(&i) {
                    t.add(i, weight * w.ln_1p());
                }
            });
        }
        t.top(k, by)
            .into_iter()
            .map(|(i, s, hits)| GraphCandidate {
                id: self.items.name(i).to_string(),
                kind: TargetKind::Item,
                score: s,
                strategy,
                reason: reasons::items(strategy, hits as u64),
            })
            .collect()
    }

    fn friends_items(&self, u: u32, k: usize, fanout: usize) -> Vec<GraphCandidate> {
        let mut users: Vec<(u32, f32)> = Vec::new();
        let by = |a, b| self.users.by_name(a, b);
        self.follows
            .for_each_capped(u, fanout, by, |f, _| users.push((f, 1.0)));
        let fof = self.fof_tally(u, fanout).top(FOF_POOL, by);
        users.extend(fof.into_iter().map(|(g, _, _)| (g, 0.5)));
        self.items_of(u, users, k, fanout, Strategy::FriendsItems)
    }

    fn shared_interests(&self, u: u32, k: usize, fanout: usize) -> Vec<GraphCandidate> {
        let mut peers = Tally::default();
        let by_item = |a, b| self.items.by_name(a, b);
        let by_user = |a, b| self.users.by_name(a, b);
        self.engaged.for_each_capped(u, fanout, by_item, |i, _| {
            self.engaged_by.for_each_capped(i, fanout, by_user, |v, _| {
                if v != u {
                    peers.add(v, 1.0);
                }
            });
        });
        let peers = peers.top(PEERS, by_user);
        self.items_of(
            u,
            peers.into_iter().map(|(v, overlap, _)| (v, overlap)),
            k,
            fanout,
            Strategy::SharedInterests,
        )
    }

    /// Pixie-style walks: from each seed in turn (the user's heaviest items), item -> random engager -> random
    /// item, back to the seed with probability [`RESTART`] per hop, for steps in proportion to the seed's weight
    /// or until enough items are well visited. Visits are boosted across seeds: (Σ_seed √visits)², so items
    /// reached from several of the user's interests beat items reached often from one. Returns the candidates, whether the time budget cut
    /// the walk, and the steps taken.
    fn random_walk(
        &self,
        u: u32,
        q: &RecallQuery,
        fanout: usize,
    ) -> (Vec<GraphCandidate>, bool, usize) {
        let by_item = |a, b| self.items.by_name(a, b);
        let mut seeds: Vec<(u32, f32)> = Vec::new();
        self.engaged
            .for_each_capped(u, fanout, by_item, |i, w| seeds.push((i, w)));
        if seeds.is_empty() {
            return (Vec::new(), false, 0);
        }
        seeds.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| by_item(a.0, b.0)));
        seeds.truncate(MAX_SEEDS);
        let mut rng = SmallRng::seed_from_u64(
            foldhash::fast::FixedState::with_seed(7).hash_one(q.user.as_str()),
        );

        let started = Instant::now();
        let seen: foldhash::HashSet<u32> = self.engaged.iter(u).map(|e| e.0).collect();
        let weight_sum: f64 = seeds
            .iter()
            .map(|s| s.1.max(0.0) as f64)
            .sum::<f64>()
            .max(1e-9);
        // Pixie's early stopping per seed: stop once this many items were each visited EARLY_STOP_VISITS times,
        // so that over all seeds about 2k candidates are well estimated.
        let enough = (2 * q.k).div_ceil(seeds.len());
        let mut truncated = false;
        let mut steps = 0usize;
        let mut t = Tally::default();
        SCRATCH.with_borrow_mut(|sc| {
            sc.fit(self.items.len());
            'seeds: for &(seed, weight) in &seeds {
                // Steps in proportion to the seed's weight, as Pixie does.
                let budget = ((q.max_steps as f64 * weight.max(0.0) as f64 / weight_sum).ceil()
                    as usize)
                    .max(1);
                let (mut taken, mut hot, mut attempts) = (0usize, 0usize, 0usize);
                // WALKERS walks advance in lockstep, one hop for all at a time: a walk is bound by cache misses,
                // and the misses of independent walks overlap when their loads go out together (Csr::random_many).
                let mut at = [seed; WALKERS];
                let mut via = [NONE; WALKERS];
                let mut next = [NONE; WALKERS];
                'walks: loop {
                    self.engaged_by.random_many(&at, &mut via, &mut rng);
                    self.engaged.random_many(&via, &mut next, &mut rng);
                    for w in 0..WALKERS {
                        let n = next[w];
                        if n == NONE {
                            at[w] = seed;
                            continue;
                        }
                        taken += 1;
                        steps += 1;
                        let c = &mut sc.visits[n as usize];
                        if *c == 0 {
                            sc.touched.push(n);
                        }
                        *c += 1;
                        hot += usize::from(*c == EARLY_STOP_VISITS);
                        if hot >= enough || taken >= budget {
                            break 'walks;
                        }
                        if steps.is_multiple_of(1024) && started.elapsed() > q.time_budget {
                            truncated = true;
                            sc.fold();
                            break 'seeds;
                        }
                        at[w] = if rng.random_bool(RESTART) { seed } else { n };
                    }
                    // Draws that led nowhere count too, so a seed that is a dead end cannot spin forever.
                    attempts += WALKERS;
                    if attempts > 2 * budget + 1024 {
                        break;
                    }
                }
                sc.fold();
            }
            for &i in &sc.touched_all {
                let (root, total) = (sc.root[i as usize], sc.total[i as usize]);
                if !seen.contains(&i) {
                    t.0.insert(i, (root * root, total));
                }
                sc.root[i as usize] = 0.0;
                sc.total[i as usize] = 0;
            }
            sc.touched_all.clear();
        });
        let found = t
            .top(q.k, by_item)
            .into_iter()
            .map(|(i, s, visits)| GraphCandidate {
                id: self.items.name(i).to_string(),
                kind: TargetKind::Item,
                score: s,
                strategy: Strategy::RandomWalk,
                reason: reasons::walk(visits as u64),
            })
            .collect();
        (found, truncated, steps)
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
                    g.follows.set(a, b, 1.0)
                }
                Edge::Engaged { user, item, weight } => {
                    let (a, b) = (g.users.intern(&user), g.items.intern(&item));
                    g.engaged_by.set(b, a, weight);
                    g.engaged.set(a, b, weight)
                }
                Edge::Created { user, item } => {
                    let (a, b) = (g.users.intern(&user), g.items.intern(&item));
                    g.created.set(a, b, 1.0)
                }
                Edge::HasTag { item, tag } => {
                    let (a, b) = (g.items.intern(&item), g.tags.intern(&tag));
                    g.tags_of.set(a, b, 1.0)
                }
            };
            added += usize::from(new);
        }
        let g = &mut *g;
        for c in [
            &mut g.follows,
            &mut g.engaged,
            &mut g.engaged_by,
            &mut g.created,
            &mut g.tags_of,
        ] {
            if c.wants_compaction() {
                c.compact();
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
                        (Some(a), Some(b)) => g.follows.remove(a, b),
                        _ => false,
                    }
                }
                Edge::Engaged { user, item, .. } => {
                    match (g.users.get(&user), g.items.get(&item)) {
                        (Some(a), Some(b)) => {
                            g.engaged_by.remove(b, a);
                            g.engaged.remove(a, b)
                        }
                        _ => false,
                    }
                }
                Edge::Created { user, item } => match (g.users.get(&user), g.items.get(&item)) {
                    (Some(a), Some(b)) => g.created.remove(a, b),
                    _ => false,
                },
                Edge::HasTag { item, tag } => match (g.items.get(&item), g.tags.get(&tag)) {
                    (Some(a), Some(b)) => g.tags_of.remove(a, b),
                    _ => false,
                },
            };
            removed += usize::from(gone);
        }
        Ok(removed)
    }

    async fn recall(&self, q: &RecallQuery) -> Result<RecallResult> {
        let g = self.graph.read();
        let Some(u) = g.users.get(&q.user) else {
            return Ok(RecallResult::default());
        };
        let mut lists = Vec::with_capacity(q.strategies.len());
        let mut truncated = false;
        let mut steps = 0;
        for strategy in &q.strategies {
            lists.push(match strategy {
                Strategy::FriendsOfFriends => g.friends_of_friends(u, q.k, self.fanout),
                Strategy::FriendsItems => g.friends_items(u, q.k, self.fanout),
                Strategy::SharedInterests => g.shared_interests(u, q.k, self.fanout),
                Strategy::RandomWalk => {
                    let (c, t, s) = g.random_walk(u, q, self.fanout);
                    truncated |= t;
                    steps += s;
                    c
                }
            });
        }
        Ok(RecallResult {
            candidates: merge_strategies(lists, q.k),
            truncated,
            steps: steps as u64,
        })
    }

    async fn stats(&self) -> Result<GraphStats> {
        let g = self.graph.read();
        Ok(GraphStats {
            users: g.users.len() as u64,
            items: g.items.len() as u64,
            tags: g.tags.len() as u64,
            edges: g.edges() as u64,
        })
    }

    fn backend(&self) -> &'static str {
        "adjacency"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EdgeKind;

    #[tokio::test]
    async fn adjacency_graph_passes_the_shared_suite() {
        crate::suite::run_all(&AdjacencyGraph::new()).await;
    }

    #[tokio::test]
    async fn a_bulk_built_graph_answers_like_one_fed_edge_by_edge() {
        // Enough edges, fed in small batches, that the overlay is compacted into the arrays several times.
        let edges: Vec<Edge> = (0..300_000u32)
            .map(|i| {
                let u = format!("u{}", i % 9973);
                if i % 3 == 0 {
                    Edge::parse(EdgeKind::Follows, &u, &format!("u{}", (i * 7) % 9973), 1.0)
                } else {
                    Edge::parse(
                        EdgeKind::Engaged,
                        &u,
                        &format!("i{}", (i * 13) % 21101),
                        (i % 5) as f32,
                    )
                }
                .unwrap()
            })
            .collect();
        let bulk = AdjacencyGraph::from_edges(edges.clone());
        let fed = AdjacencyGraph::new();
        for chunk in edges.chunks(5000) {
            fed.add_edges(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(bulk.stats().await.unwrap(), fed.stats().await.unwrap());
        {
            let g = fed.graph.read();
            assert!(
                g.engaged.overlay_len() < g.engaged.len() / 2,
                "the overlay was compacted: {} of {}",
                g.engaged.overlay_len(),
                g.engaged.len()
            );
        }
        for user in ["u1", "u5", "u50"] {
            let q = RecallQuery {
                user: UserId::parse("user_id", user).unwrap(),
                strategies: vec![
                    Strategy::FriendsOfFriends,
                    Strategy::FriendsItems,
                    Strategy::SharedInterests,
                ],
                k: 20,
                max_steps: 5000,
                time_budget: std::time::Duration::from_secs(10),
            };
            assert_eq!(
                bulk.recall(&q).await.unwrap(),
                fed.recall(&q).await.unwrap(),
                "{user}"
            );
        }
    }
}
