//! A graph store over any openCypher server: Amazon Neptune in production ([`crate::NeptuneRunner`]) and
//! FalkorDB ([`crate::FalkorRunner`]), which the tests start to check that these queries answer what the
//! embedded graph answers.
//!
//! ```text
//!   (:User {id})-[:FOLLOWS]->(:User)      (:User)-[:ENGAGED {weight}]->(:Item)-[:HAS_TAG]->(:Tag {id})
//!                                         (:User)-[:CREATED]->(:Item {id})
//! ```
//!
//! Every query text is a `&'static str` constant and every id travels as a parameter: a runner cannot be handed
//! text built from a request, so an id holding quotes or Cypher keywords is data, never code.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Map, Value, json};

use crate::{
    Edge, FOF_POOL, GraphCandidate, GraphStats, GraphStore, GraphStoreError, PEERS, RecallQuery,
    RecallResult, Result, Strategy, TargetKind, merge_strategies, reasons,
};

/// One row of an answer: column name -> value.
pub type Row = Map<String, Value>;

/// Runs one parameterised openCypher query.
#[async_trait]
pub trait CypherRunner: Send + Sync + 'static {
    /// Runs `query` with `params` ($name in the text), giving up after `timeout`
    /// ([`GraphStoreError::Timeout`]).
    async fn run(&self, query: &'static str, params: Row, timeout: Duration) -> Result<Vec<Row>>;
    /// The backend's name in stats and logs.
    fn name(&self) -> &'static str;
}

/// Edges per write query.
const WRITE_BATCH: usize = 500;
/// Most seed items a remote walk starts from, as the embedded walk.
const MAX_SEEDS: usize = 20;
/// Walkers moved one hop per round trip.
const WALKERS: usize = 64;
/// Restart probability per hop, as the embedded walk.
const RESTART: f64 = 0.5;

macro_rules! add_query {
    ($src:literal, $rel:literal, $dst:literal) => {
        concat!(
            "UNWIND $edges AS e\n",
            "MERGE (a:",
            $src,
            " {id: e.src})\n",
            "MERGE (b:",
            $dst,
            " {id: e.dst})\n",
            "WITH a, b, e\n",
            "OPTIONAL MATCH (a)-[old:",
            $rel,
            "]->(b)\n",
            "WITH a, b, e, count(old) AS had\n",
            "MERGE (a)-[r:",
            $rel,
            "]->(b)\n",
            "SET r.weight = e.weight\n",
            "RETURN sum(CASE WHEN had = 0 THEN 1 ELSE 0 END) AS changed"
        )
    };
}

macro_rules! remove_query {
    ($src:literal, $rel:literal, $dst:literal) => {
        concat!(
            "UNWIND $edges AS e\n",
            "MATCH (a:",
            $src,
            " {id: e.src})-[r:",
            $rel,
            "]->(b:",
            $dst,
            " {id: e.dst})\n",
            "DELETE r\n",
            "RETURN count(*) AS changed"
        )
    };
}

/// The query texts, public so the tests and the docs show exactly what is sent.
pub mod queries {
    pub const ADD_FOLLOWS: &str = add_query!("User", "FOLLOWS", "User");
    pub const ADD_ENGAGED: &str = add_query!("User", "ENGAGED", "Item");
    pub const ADD_CREATED: &str = add_query!("User", "CREATED", "Item");
    pub const ADD_HAS_TAG: &str = add_query!("Item", "HAS_TAG", "Tag");
    pub const REMOVE_FOLLOWS: &str = remove_query!("User", "FOLLOWS", "User");
    pub const REMOVE_ENGAGED: &str = remove_query!("User", "ENGAGED", "Item");
    pub const REMOVE_CREATED: &str = remove_query!("User", "CREATED", "Item");
    pub const REMOVE_HAS_TAG: &str = remove_query!("Item", "HAS_TAG", "Tag");

    pub const STATS: &str = "\
OPTIONAL MATCH (u:User) WITH count(u) AS users
OPTIONAL MATCH (i:Item) WITH users, count(i) AS items
OPTIONAL MATCH (t:Tag) WITH users, items, count(t) AS tags
OPTIONAL MATCH ()-[r]->()
RETURN users, items, tags, count(r) AS edges";

    /// Users followed by the user's friends, by mutual friends.
    pub const FRIENDS_OF_FRIENDS: &str = "\
MATCH (u:User {id: $user})-[:FOLLOWS]->(f:User)
WITH u, collect(f) AS friends
UNWIND friends AS f
MATCH (f)-[:FOLLOWS]->(g:User)
WHERE g <> u AND NOT g IN friends
RETURN g.id AS id, count(*) AS score, count(*) AS hits
ORDER BY score DESC, id
LIMIT $k";

    /// Items of friends (weight 1) and of the $fof friends of friends with the most mutual friends (weight ½),
    /// scored Σ weight·ln(1 + engagement), without the user's own items. The middle node is named and counted:
    /// FalkorDB answers an anonymous middle node with one row per end node, not one per path.
    pub const FRIENDS_ITEMS: &str = "\
MATCH (u:User {id: $user})
OPTIONAL MATCH (u)-[:ENGAGED]->(s:Item)
WITH u, collect(s) AS seen
OPTIONAL MATCH (u)-[:FOLLOWS]->(f:User)
WITH u, seen, collect(f) AS friends
OPTIONAL MATCH (u)-[:FOLLOWS]->(m:User)-[:FOLLOWS]->(g:User)
WHERE g <> u AND NOT g IN friends
WITH seen, friends, g, count(m) AS mutual
ORDER BY mutual DESC, g.id
LIMIT $fof
WITH seen, friends, collect(g) AS fof
UNWIND friends + fof AS v
MATCH (v)-[r:ENGAGED]->(i:Item)
WHERE NOT i IN seen
WITH i, r, CASE WHEN v IN friends THEN 1.0 ELSE 0.5 END AS hop
RETURN i.id AS id, sum(hop * log(1.0 + r.weight)) AS score, count(*) AS hits
ORDER BY score DESC, id
LIMIT $k";

    /// Items of the $peers users sharing the most items with the user, scored Σ overlap·ln(1 + engagement).
    pub const SHARED_INTERESTS: &str = "\
MATCH (u:User {id: $user})-[:ENGAGED]->(s:Item)
WITH u, collect(s) AS seen
UNWIND seen AS s
MATCH (s)<-[:ENGAGED]-(v:User)
WHERE v <> u
WITH seen, v, count(*) AS overlap
ORDER BY overlap DESC, v.id
LIMIT $peers
MATCH (v)-[r:ENGAGED]->(i:Item)
WHERE NOT i IN seen
RETURN i.id AS id, sum(overlap * log(1.0 + r.weight)) AS score, count(*) AS hits
ORDER BY score DESC, id
LIMIT $k";

    /// The user's items, heaviest first: the walk's seeds and what it must not return.
    pub const USER_ITEMS: &str = "\
MATCH (:User {id: $user})-[r:ENGAGED]->(i:Item)
RETURN i.id AS id, r.weight AS weight
ORDER BY weight DESC, id";

    /// One hop for each walker: from its item to a random engager, then to a random item of theirs.
    pub const WALK_HOP: &str = "\
UNWIND $walkers AS w
MATCH (:Item {id: w.item})<-[:ENGAGED]-(v:User)
WITH w, collect(v) AS vs
WITH w, vs[toInteger(floor(rand() * size(vs)))] AS v
MATCH (v)-[:ENGAGED]->(j:Item)
WITH w, collect(j.id) AS js
RETURN w.walker AS walker, js[toInteger(floor(rand() * size(js)))] AS next";
}

/// A graph store that sends openCypher to a server.
pub struct CypherGraph {
    runner: Arc<dyn CypherRunner>,
    timeout: Duration,
}

fn params(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Row {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn field_str(row: &Row, key: &str) -> Result<String> {
    match row.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        other => Err(GraphStoreError::Backend(format!(
            "answer column {key} is {other:?}, expected a string"
        ))),
    }
}

fn field_f64(row: &Row, key: &str) -> Result<f64> {
    row.get(key).and_then(Value::as_f64).ok_or_else(|| {
        GraphStoreError::Backend(format!(
            "answer column {key} is {:?}, expected a number",
            row.get(key)
        ))
    })
}

impl CypherGraph {
    /// A store over `runner`; every query gives up after `timeout` (a walk after its own budget).
    pub fn new(runner: Arc<dyn CypherRunner>, timeout: Duration) -> Self {
        Self { runner, timeout }
    }

    async fn run(&self, query: &'static str, p: Row) -> Result<Vec<Row>> {
        self.runner.run(query, p, self.timeout).await
    }

    async fn write(&self, edges: Vec<Edge>, remove: bool) -> Result<usize> {
        use queries::*;
        let mut by_query: Vec<(&'static str, Vec<Value>)> = Vec::new();
        // One edge once per call (the last weight wins), so a batch cannot count one edge twice.
        let mut dedup: std::collections::HashMap<(&'static str, String, String), (usize, usize)> =
            Default::default();
        for e in edges {
            let (q, src, dst, w) = match e {
                Edge::Follows { user, followee } => (
                    if remove { REMOVE_FOLLOWS } else { ADD_FOLLOWS },
                    user.to_string(),
                    followee.to_string(),
                    1.0,
                ),
                Edge::Engaged { user, item, weight } => (
                    if remove { REMOVE_ENGAGED } else { ADD_ENGAGED },
                    user.to_string(),
                    item.to_string(),
                    weight,
                ),
                Edge::Created { user, item } => (
                    if remove { REMOVE_CREATED } else { ADD_CREATED },
                    user.to_string(),
                    item.to_string(),
                    1.0,
                ),
                Edge::HasTag { item, tag } => (
                    if remove { REMOVE_HAS_TAG } else { ADD_HAS_TAG },
                    item.to_string(),
                    tag.to_string(),
                    1.0,
                ),
            };
            let row = json!({"src": src, "dst": dst, "weight": w as f64});
            match dedup.get(&(q, src.clone(), dst.clone())) {
                Some(&(i, j)) => by_query[i].1[j] = row,
                None => {
                    let i = match by_query.iter().position(|(bq, _)| *bq == q) {
                        Some(i) => i,
                        None => {
                            by_query.push((q, Vec::new()));
                            by_query.len() - 1
                        }
                    };
                    dedup.insert((q, src, dst), (i, by_query[i].1.len()));
                    by_query[i].1.push(row);
                }
            }
        }
        let mut changed = 0;
        for (q, rows) in by_query {
            for chunk in rows.chunks(WRITE_BATCH) {
                let answer = self
                    .run(q, params([("edges", Value::Array(chunk.to_vec()))]))
                    .await?;
                changed += answer
                    .first()
                    .map(|r| field_f64(r, "changed"))
                    .transpose()?
                    .unwrap_or(0.0) as usize;
            }
        }
        Ok(changed)
    }

    /// A deterministic strategy: one query, rows of id, score and hits.
    async fn scored(
        &self,
        query: &'static str,
        strategy: Strategy,
        q: &RecallQuery,
    ) -> Result<Vec<GraphCandidate>> {
        let rows = self
            .run(
                query,
                params([
                    ("user", json!(q.user.as_str())),
                    ("k", json!(q.k)),
                    ("fof", json!(FOF_POOL)),
                    ("peers", json!(PEERS)),
                ]),
            )
            .await?;
        rows.iter()
            .map(|r| {
                let hits = field_f64(r, "hits")? as u64;
                let score = field_f64(r, "score")? as f32;
                let (kind, reason) = match strategy {
                    Strategy::FriendsOfFriends => {
                        (TargetKind::User, reasons::friends_of_friends(hits))
                    }
                    _ => (TargetKind::Item, reasons::items(strategy, hits)),
                };
                Ok(GraphCandidate {
                    id: field_str(r, "id")?,
                    kind,
                    score,
                    strategy,
                    reason,
                })
            })
            .collect()
    }

    /// Pixie walks over the network: [`WALKERS`] walkers move one hop per round trip until the steps or the time
    /// budget run out. A walk that visits nothing in its budget falls back to friends' and friends of friends'
    /// items, and says so (`truncated`).
    async fn random_walk(&self, q: &RecallQuery) -> Result<(Vec<GraphCandidate>, bool, usize)> {
        let started = Instant::now();
        let left = |budget: Duration| budget.saturating_sub(started.elapsed());
        let items = self
            .runner
            .run(
                queries::USER_ITEMS,
                params([("user", json!(q.user.as_str()))]),
                left(q.time_budget),
            )
            .await;
        let items = match items {
            Ok(rows) => rows,
            Err(GraphStoreError::Timeout(_)) => return self.walk_fallback(q).await,
            Err(e) => return Err(e),
        };
        let seen: std::collections::HashSet<String> = items
            .iter()
            .map(|r| field_str(r, "id"))
            .collect::<Result<_>>()?;
        let seeds: Vec<String> = items
            .iter()
            .take(MAX_SEEDS)
            .map(|r| field_str(r, "id"))
            .collect::<Result<_>>()?;
        if seeds.is_empty() {
            return Ok((Vec::new(), false, 0));
        }
        let mut rng = SmallRng::from_os_rng();
        let mut walkers: Vec<(usize, String)> = (0..WALKERS.min(q.max_steps))
            .map(|_| {
                let s = rng.random_range(0..seeds.len());
                (s, seeds[s].clone())
            })
            .collect();
        let mut visits: std::collections::HashMap<String, (Vec<u32>, u32)> = Default::default();
        let mut steps = 0usize;
        let mut truncated = false;
        while steps < q.max_steps {
            let budget = left(q.time_budget);
            if budget.is_zero() {
                truncated = true;
                break;
            }
            let batch: Vec<Value> = walkers
                .iter()
                .enumerate()
                .map(|(i, (_, item))| json!({"walker": i, "item": item}))
                .collect();
            let rows = match self
                .runner
                .run(
                    queries::WALK_HOP,
                    params([("walkers", Value::Array(batch))]),
                    budget,
                )
                .await
            {
                Ok(rows) => rows,
                Err(GraphStoreError::Timeout(_)) => {
                    truncated = true;
                    break;
                }
                Err(e) => return Err(e),
            };
            let mut moved = vec![None; walkers.len()];
            for r in &rows {
                let w = field_f64(r, "walker")? as usize;
                if let (Some(slot), Some(Value::String(next))) = (moved.get_mut(w), r.get("next")) {
                    *slot = Some(next.clone());
                }
            }
            for (w, next) in moved.into_iter().enumerate() {
                let seed = walkers[w].0;
                match next {
                    Some(next) if steps < q.max_steps => {
                        steps += 1;
                        let v = visits
                            .entry(next.clone())
                            .or_insert_with(|| (vec![0; seeds.len()], 0));
                        v.0[seed] += 1;
                        v.1 += 1;
                        walkers[w].1 = next;
                        if rng.random_bool(RESTART) {
                            walkers[w] = (seed, seeds[seed].clone());
                        }
                    }
                    _ => {
                        let s = rng.random_range(0..seeds.len());
                        walkers[w] = (s, seeds[s].clone());
                    }
                }
            }
            if rows.is_empty() {
                // No walker can move: every seed is a dead end.
                break;
            }
        }
        if visits.is_empty() && truncated {
            return self.walk_fallback(q).await;
        }
        let mut found: Vec<GraphCandidate> = visits
            .into_iter()
            .filter(|(id, _)| !seen.contains(id))
            .map(|(id, (per_seed, total))| {
                let root_sum: f32 = per_seed.iter().map(|&n| (n as f32).sqrt()).sum();
                GraphCandidate {
                    id,
                    kind: TargetKind::Item,
                    score: root_sum * root_sum,
                    strategy: Strategy::RandomWalk,
                    reason: reasons::walk(total as u64),
                }
            })
            .collect();
        found.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        found.truncate(q.k);
        Ok((found, truncated, steps))
    }

    async fn walk_fallback(&self, q: &RecallQuery) -> Result<(Vec<GraphCandidate>, bool, usize)> {
        let found = self
            .scored(queries::FRIENDS_ITEMS, Strategy::FriendsItems, q)
            .await?;
        Ok((found, true, 0))
    }
}

#[async_trait]
impl GraphStore for CypherGraph {
    async fn add_edges(&self, edges: Vec<Edge>) -> Result<usize> {
        self.write(edges, false).await
    }

    async fn remove_edges(&self, edges: Vec<Edge>) -> Result<usize> {
        self.write(edges, true).await
    }

    async fn recall(&self, q: &RecallQuery) -> Result<RecallResult> {
        let mut lists = Vec::with_capacity(q.strategies.len());
        let mut truncated = false;
        let mut steps = 0;
        // The strategies run concurrently: each is one round trip (a walk, several).
        let answers = futures::future::join_all(q.strategies.iter().map(|s| async move {
            match s {
                Strategy::FriendsOfFriends => self
                    .scored(queries::FRIENDS_OF_FRIENDS, *s, q)
                    .await
                    .map(|c| (c, false, 0)),
                Strategy::FriendsItems => self
                    .scored(queries::FRIENDS_ITEMS, *s, q)
                    .await
                    .map(|c| (c, false, 0)),
                Strategy::SharedInterests => self
                    .scored(queries::SHARED_INTERESTS, *s, q)
                    .await
                    .map(|c| (c, false, 0)),
                Strategy::RandomWalk => self.random_walk(q).await,
            }
        }))
        .await;
        for a in answers {
            let (c, t, s) = a?;
            lists.push(c);
            truncated |= t;
            steps += s;
        }
        Ok(RecallResult {
            candidates: merge_strategies(lists, q.k),
            truncated,
            steps: steps as u64,
        })
    }

    async fn stats(&self) -> Result<GraphStats> {
        let rows = self.run(queries::STATS, Row::new()).await?;
        let r = rows
            .first()
            .ok_or_else(|| GraphStoreError::Backend("stats query returned no row".into()))?;
        Ok(GraphStats {
            users: field_f64(r, "users")? as u64,
            items: field_f64(r, "items")? as u64,
            tags: field_f64(r, "tags")? as u64,
            edges: field_f64(r, "edges")? as u64,
        })
    }

    fn backend(&self) -> &'static str {
        self.runner.name()
    }
}
