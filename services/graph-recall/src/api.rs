//! The gRPC edge: validates requests into domain types, calls the store, converts back.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use reco_client::{GraphEdge, GraphQuery, Hit, Readiness};
use reco_graph_store::{
    Edge, EdgeKind, GraphStore, MAX_K, MAX_STEPS, RecallQuery, RecallResult, Strategy, TargetKind,
};
use reco_proto::{
    conversions::each,
    graph_recall::v1::{self as pb, graph_recall_server::GraphRecall},
};
use reco_types::{ItemId, UserId, ValidationError, check_batch, count};

use crate::Error;

/// The GraphRecall implementation over any store.
pub struct GraphApi {
    store: Arc<dyn GraphStore>,
}

/// Most entries in `RecallRequest.strategies`: each strategy once.
const MAX_STRATEGIES: usize = 4;

impl GraphApi {
    pub fn new(store: Arc<dyn GraphStore>) -> Self {
        Self { store }
    }
}

fn strategy(s: i32) -> Result<Strategy, ValidationError> {
    match pb::Strategy::try_from(s) {
        Ok(pb::Strategy::FriendsOfFriends) => Ok(Strategy::FriendsOfFriends),
        Ok(pb::Strategy::FriendsItems) => Ok(Strategy::FriendsItems),
        Ok(pb::Strategy::SharedInterests) => Ok(Strategy::SharedInterests),
        Ok(pb::Strategy::RandomWalk) => Ok(Strategy::RandomWalk),
        Ok(pb::Strategy::Unspecified) | Err(_) => {
            Err(ValidationError::new("", format!("{s} is not a strategy")))
        }
    }
}

fn to_pb_strategy(s: Strategy) -> pb::Strategy {
    match s {
        Strategy::FriendsOfFriends => pb::Strategy::FriendsOfFriends,
        Strategy::FriendsItems => pb::Strategy::FriendsItems,
        Strategy::SharedInterests => pb::Strategy::SharedInterests,
        Strategy::RandomWalk => pb::Strategy::RandomWalk,
    }
}

fn edge(e: pb::Edge) -> Result<Edge, ValidationError> {
    let pb::Edge {
        src,
        dst,
        kind,
        weight,
    } = e;
    let kind = match pb::EdgeKind::try_from(kind) {
        Ok(pb::EdgeKind::Follows) => EdgeKind::Follows,
        Ok(pb::EdgeKind::Engaged) => EdgeKind::Engaged,
        Ok(pb::EdgeKind::Created) => EdgeKind::Created,
        Ok(pb::EdgeKind::HasTag) => EdgeKind::HasTag,
        Ok(pb::EdgeKind::Unspecified) | Err(_) => {
            return Err(ValidationError::new(
                "kind",
                format!("{kind} is not an edge kind"),
            ));
        }
    };
    Edge::parse(kind, &src, &dst, weight)
}

fn edges(list: Vec<pb::Edge>) -> Result<Vec<Edge>, ValidationError> {
    check_batch("edges", list.len())?;
    each("edges", list, edge)
}

impl GraphApi {
    async fn recall(&self, r: pb::RecallRequest) -> Result<pb::RecallResponse, Error> {
        let pb::RecallRequest {
            user_id,
            strategies,
            k,
            max_steps,
            time_budget_ms,
        } = r;
        let user = UserId::parse("user_id", &user_id)?;
        if strategies.len() > MAX_STRATEGIES {
            return Err(ValidationError::new(
                "strategies",
                format!(
                    "has {} entries, the limit is {MAX_STRATEGIES} (each strategy once)",
                    strategies.len()
                ),
            )
            .into());
        }
        let strategies = each("strategies", strategies, strategy)?;
        // Each strategy runs under its own time budget: a strategy named twice would double the call's work.
        if let Some(i) = (1..strategies.len()).find(|&i| strategies[..i].contains(&strategies[i])) {
            return Err(ValidationError::new(
                format!("strategies[{i}]"),
                format!("repeats {:?}: name each strategy once", strategies[i]),
            )
            .into());
        }
        let budget = count("time_budget_ms", time_budget_ms, 20, 1, 10_000)?;
        let result = self
            .walk(
                user,
                strategies,
                k,
                max_steps,
                Duration::from_millis(budget as u64),
            )
            .await?;
        Ok(pb::RecallResponse {
            candidates: result
                .candidates
                .into_iter()
                .map(|c| pb::GraphCandidate {
                    id: c.id,
                    kind: match c.kind {
                        TargetKind::Item => pb::TargetKind::Item,
                        TargetKind::User => pb::TargetKind::User,
                    } as i32,
                    score: c.score,
                    strategy: to_pb_strategy(c.strategy) as i32,
                    reason: c.reason,
                })
                .collect(),
            truncated: result.truncated,
        })
    }

    /// A recall, whichever way the call came: no strategies are friends' items and shared interests; `k` (0: 100)
    /// and `max_steps` (0: 10,000) within bounds.
    async fn walk(
        &self,
        user: UserId,
        mut strategies: Vec<Strategy>,
        k: u32,
        max_steps: u32,
        time_budget: Duration,
    ) -> Result<RecallResult, Error> {
        if strategies.is_empty() {
            strategies = vec![Strategy::FriendsItems, Strategy::SharedInterests];
        }
        // Each once, in the order first named (callers in process are not checked like gRPC requests).
        let mut seen = Vec::with_capacity(strategies.len());
        strategies.retain(|s| {
            let new = !seen.contains(s);
            seen.push(*s);
            new
        });
        let k = count("k", k, 100, 1, MAX_K as u32)?;
        let max_steps = count("max_steps", max_steps, 10_000, 1, MAX_STEPS as u32)?;
        Ok(self
            .store
            .recall(&RecallQuery {
                user,
                strategies,
                k: k as usize,
                max_steps: max_steps as usize,
                time_budget,
            })
            .await?)
    }

    async fn add_edges(&self, r: pb::AddEdgesRequest) -> Result<pb::AddEdgesResponse, Error> {
        let added = self.store.add_edges(edges(r.edges)?).await?;
        Ok(pb::AddEdgesResponse {
            added: added as u32,
        })
    }

    async fn remove_edges(
        &self,
        r: pb::RemoveEdgesRequest,
    ) -> Result<pb::RemoveEdgesResponse, Error> {
        let removed = self.store.remove_edges(edges(r.edges)?).await?;
        Ok(pb::RemoveEdgesResponse {
            removed: removed as u32,
        })
    }

    async fn stats(&self, _r: pb::StatsRequest) -> Result<pb::StatsResponse, Error> {
        let s = self.store.stats().await?;
        Ok(pb::StatsResponse {
            users: s.users,
            items: s.items,
            tags: s.tags,
            edges: s.edges,
            backend: self.store.backend().to_string(),
        })
    }
}

reco_server::delegate_rpcs! { GraphRecall => GraphApi {
    recall(pb::RecallRequest) -> pb::RecallResponse;
    add_edges(pb::AddEdgesRequest) -> pb::AddEdgesResponse;
    remove_edges(pb::RemoveEdgesRequest) -> pb::RemoveEdgesResponse;
    stats(pb::StatsRequest) -> pb::StatsResponse;
}}

/// The service called in process (`reco_client::GraphRecall`): the same checks and store recall as Recall, by the
/// default strategies, bounded by the caller's budget, with nothing encoded.
#[async_trait]
impl reco_client::GraphRecall for GraphApi {
    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "graph-recall",
            rpc = "/reco.graph_recall.v1.GraphRecall/Recall"
        )
    )]
    async fn recall(&self, q: GraphQuery, _budget: Duration) -> reco_client::Result<Vec<Hit>> {
        let GraphQuery {
            user_id,
            k,
            time_budget,
        } = q;
        let time_budget = time_budget.clamp(Duration::from_millis(1), Duration::from_secs(10));
        let result = self.walk(user_id, Vec::new(), k, 0, time_budget).await?;
        Ok(result
            .candidates
            .into_iter()
            .filter(|c| c.kind == TargetKind::Item)
            .filter_map(|c| {
                let item_id = ItemId::parse("item_id", &c.id).ok()?;
                Some(Hit {
                    item_id,
                    score: c.score,
                })
            })
            .collect())
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "graph-recall",
            rpc = "/reco.graph_recall.v1.GraphRecall/AddEdges"
        )
    )]
    async fn add_edges(&self, list: Vec<GraphEdge>, _budget: Duration) -> reco_client::Result<()> {
        check_batch("edges", list.len()).map_err(Error::from)?;
        let edges = list
            .into_iter()
            .map(|e| match e {
                GraphEdge::Follows { user, followee } => Edge::Follows { user, followee },
                GraphEdge::Engaged { user, item, weight } => Edge::Engaged { user, item, weight },
            })
            .collect();
        self.store.add_edges(edges).await.map_err(Error::from)?;
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        self.store
            .stats()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
