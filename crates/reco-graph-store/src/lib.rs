//! Graph recall: candidates from who follows whom and who engaged what.
//!
//! ```text
//!   user ──follows──▶ user        user ──engaged(w)──▶ item ──has_tag──▶ tag
//!                                 user ──created─────▶ item
//! ```
//!
//! Backends: [`AdjacencyGraph`] (embedded default, CSR in memory) and [`CypherGraph`], which sends parameterised
//! openCypher to Amazon Neptune ([`NeptuneRunner`]) or FalkorDB ([`FalkorRunner`]). Every backend runs the
//! shared [`suite`]; the integration tests check the Cypher answers equal the embedded ones on Last.fm.

mod adjacency;
mod csr;
pub mod cypher;
mod falkordb;
mod neptune;
pub mod suite;

use std::time::Duration;

use async_trait::async_trait;
use reco_types::{ItemId, Name, UserId, ValidationError};

pub use adjacency::{AdjacencyGraph, DEFAULT_FANOUT};
pub use cypher::{CypherGraph, CypherRunner};
pub use falkordb::FalkorRunner;
pub use neptune::NeptuneRunner;

/// Largest k a recall may ask for.
pub const MAX_K: usize = 1000;
/// Most random-walk steps one request may ask for.
pub const MAX_STEPS: usize = 1_000_000;
/// Friends of friends (the most mutual friends first) whose items count, at half weight, in friends' items.
pub const FOF_POOL: usize = 100;
/// Users with the most items in common whose items make the shared-interests candidates.
pub const PEERS: usize = 200;

/// A typed edge; the endpoint types follow from the kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Edge {
    Follows {
        user: UserId,
        followee: UserId,
    },
    Engaged {
        user: UserId,
        item: ItemId,
        weight: f32,
    },
    Created {
        user: UserId,
        item: ItemId,
    },
    HasTag {
        item: ItemId,
        tag: Name,
    },
}

/// The kinds of edge, as named on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    Follows,
    Engaged,
    Created,
    HasTag,
}

impl Edge {
    /// Builds an edge from wire fields, validating each endpoint as the kind requires.
    pub fn parse(
        kind: EdgeKind,
        src: &str,
        dst: &str,
        weight: f32,
    ) -> Result<Self, ValidationError> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(ValidationError::new(
                "weight",
                format!("is {weight}, expected a finite number >= 0"),
            ));
        }
        let weight = if weight == 0.0 { 1.0 } else { weight };
        Ok(match kind {
            EdgeKind::Follows => Edge::Follows {
                user: UserId::parse("src", src)?,
                followee: UserId::parse("dst", dst)?,
            },
            EdgeKind::Engaged => Edge::Engaged {
                user: UserId::parse("src", src)?,
                item: ItemId::parse("dst", dst)?,
                weight,
            },
            EdgeKind::Created => Edge::Created {
                user: UserId::parse("src", src)?,
                item: ItemId::parse("dst", dst)?,
            },
            EdgeKind::HasTag => Edge::HasTag {
                item: ItemId::parse("src", src)?,
                tag: Name::parse("dst", dst)?,
            },
        })
    }
}

/// A recall strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Users followed by the users the user follows, by mutual friends.
    FriendsOfFriends,
    /// Items engaged by the user's friends.
    FriendsItems,
    /// Items engaged by users who engaged the same items.
    SharedInterests,
    /// Random walks with restarts from the user's items (Pixie).
    RandomWalk,
}

/// What a recall returns a candidate as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Item,
    User,
}

/// One graph candidate, with the reason it was found.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphCandidate {
    pub id: String,
    pub kind: TargetKind,
    pub score: f32,
    pub strategy: Strategy,
    pub reason: String,
}

/// A recall request.
#[derive(Clone, Debug)]
pub struct RecallQuery {
    pub user: UserId,
    pub strategies: Vec<Strategy>,
    pub k: usize,
    pub max_steps: usize,
    pub time_budget: Duration,
}

/// A recall answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecallResult {
    /// Best first.
    pub candidates: Vec<GraphCandidate>,
    /// A walk stopped at its time budget before its step budget (or a remote walk fell back).
    pub truncated: bool,
    /// Random-walk steps taken.
    pub steps: u64,
}

/// Graph statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphStats {
    pub users: u64,
    pub items: u64,
    pub tags: u64,
    pub edges: u64,
}

/// Errors of a graph store.
#[derive(Debug, thiserror::Error)]
pub enum GraphStoreError {
    /// The backend failed or could not be reached.
    #[error("graph backend failed: {0}")]
    Backend(String),
    /// A query did not answer within its timeout.
    #[error("graph query did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T, E = GraphStoreError> = std::result::Result<T, E>;

/// A graph store. Object-safe: services hold an `Arc<dyn GraphStore>` chosen at start-up.
#[async_trait]
pub trait GraphStore: Send + Sync + 'static {
    /// Adds edges (an existing edge's weight is replaced); returns how many were new.
    async fn add_edges(&self, edges: Vec<Edge>) -> Result<usize>;
    /// Removes edges; returns how many existed.
    async fn remove_edges(&self, edges: Vec<Edge>) -> Result<usize>;
    /// Candidates from every requested strategy, merged and best first. An unknown user gets an empty answer.
    async fn recall(&self, query: &RecallQuery) -> Result<RecallResult>;
    async fn stats(&self) -> Result<GraphStats>;
    fn backend(&self) -> &'static str;
}

/// Merges the lists of several strategies: each list's scores are normalised to (0, 1] (strategies score on
/// different scales), a candidate found by several sums its scores and joins its reasons; best first, ties by id.
/// One list keeps its own scores.
pub fn merge_strategies(lists: Vec<Vec<GraphCandidate>>, k: usize) -> Vec<GraphCandidate> {
    let normalise = lists.len() > 1;
    let mut merged: Vec<GraphCandidate> = Vec::new();
    let mut at: std::collections::HashMap<(String, bool), usize> = Default::default();
    for mut found in lists {
        let max = found.iter().map(|c| c.score).fold(0.0f32, f32::max);
        if normalise && max > 0.0 {
            found.iter_mut().for_each(|c| c.score /= max);
        }
        for c in found {
            let key = (c.id.clone(), c.kind == TargetKind::User);
            match at.get(&key) {
                Some(&i) => {
                    let m = &mut merged[i];
                    m.score += c.score;
                    m.reason = format!("{}; {}", m.reason, c.reason);
                }
                None => {
                    at.insert(key, merged.len());
                    merged.push(c);
                }
            }
        }
    }
    merged.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    merged.truncate(k);
    merged
}

/// The reasons every backend gives, so answers read the same whichever store served them.
pub(crate) mod reasons {
    use crate::Strategy;

    pub fn friends_of_friends(mutual: u64) -> String {
        format!("{mutual} mutual friends")
    }

    pub fn items(strategy: Strategy, engagers: u64) -> String {
        match strategy {
            Strategy::SharedInterests => {
                format!("engaged by {engagers} users with shared interests")
            }
            _ => format!("engaged by {engagers} friends and friends of friends"),
        }
    }

    pub fn walk(visits: u64) -> String {
        format!("{visits} random-walk visits")
    }
}
