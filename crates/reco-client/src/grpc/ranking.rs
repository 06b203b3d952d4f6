//! Ranking over gRPC, each item's part encoded once and, once ranking holds it, sent as a 16-byte reference.
//!
//! A candidate's item (id, the model's item inputs, embedding, categories) is the same from request to request
//! while its sources change. Encoding ~200 items (~90 KB) per request, and the ranking service decoding them, was
//! most of a Rank call's cost, so the client keeps each item's encoded part ([`Part`]) for as long as the caller
//! keeps the same `Arc<RankItem>`, and after ranking has answered a request that carried the part in full, sends
//! its reference instead (`RankCandidate.item_ref`, the part's digest). A ranking service that no longer holds a
//! part (it restarted, or let it go) names the references it could not resolve; they are sent again in full once,
//! within what is left of the call's budget.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use prost::bytes::Bytes;
use reco_proto::{
    common::v1 as common_pb,
    ranking::v1::{self as pb, EncodedCandidate, ranking_client::RankingClient},
};
use reco_ranker::{RankInput, RankItem, Scored, features::ITEM_INPUTS};
use reco_server::{ItemCache, TracedChannel};
use reco_types::ItemId;
use tonic::Status;

use super::{health, request};
use crate::{RankAnswer, Ranking, Readiness, Result};

/// How long an item's encoded part is kept without being used; the caller's own item cache usually replaces the
/// item sooner, which makes a new part.
const PART_TTL: Duration = Duration::from_secs(600);
/// Most encoded parts kept.
const PART_CAPACITY: usize = 200_000;

/// The wire a Rank call goes over: the tonic client, or a fake in tests.
#[async_trait]
pub trait RankWire: Send + Sync + 'static {
    async fn send(&self, r: pb::RankRequest, budget: Duration) -> Result<pb::RankResponse>;
    async fn ready(&self) -> Readiness;
}

#[async_trait]
impl RankWire for TracedChannel {
    async fn send(&self, r: pb::RankRequest, budget: Duration) -> Result<pb::RankResponse> {
        Ok(RankingClient::new(self.clone())
            .rank(request(r, budget))
            .await?
            .into_inner())
    }

    async fn ready(&self) -> Readiness {
        health(self).await
    }
}

/// One item as it goes on the wire.
struct Part {
    /// The item the part was made from: a part serves only that same item.
    item: Arc<RankItem>,
    bytes: Bytes,
    reference: Bytes,
    /// Ranking answered a request that carried `bytes`: later requests send `reference`.
    held: AtomicBool,
}

impl Part {
    fn new(item: &Arc<RankItem>) -> Self {
        let features = common_pb::Features {
            values: ITEM_INPUTS
                .iter()
                .filter_map(|k| {
                    let v = item.features().get(k)?;
                    Some((k.to_string(), v.clone().into()))
                })
                .collect(),
        };
        let bytes = EncodedCandidate::item_part(&pb::RankCandidate {
            item_id: item.item_id().to_string(),
            item_features: Some(features),
            sources: Vec::new(),
            embedding: item
                .embedding()
                .map(|e| e.as_slice().to_vec())
                .unwrap_or_default(),
            categories: item.categories().iter().map(ToString::to_string).collect(),
            item_ref: Vec::new(),
        });
        let reference = Bytes::copy_from_slice(&EncodedCandidate::digest(&bytes));
        Self {
            item: item.clone(),
            bytes,
            reference,
            held: AtomicBool::new(false),
        }
    }
}

/// The ranking service over gRPC (or any [`RankWire`]).
pub struct GrpcRanking<W = TracedChannel> {
    wire: W,
    /// Send parts ranking holds by reference; off always sends them in full (for a ranking service older than
    /// references).
    by_ref: bool,
    parts: ItemCache<Part>,
}

impl<W: RankWire> GrpcRanking<W> {
    pub fn new(wire: W, by_ref: bool) -> Self {
        Self {
            wire,
            by_ref,
            parts: ItemCache::new(PART_TTL, PART_CAPACITY),
        }
    }

    /// Each candidate's part, in order: kept ones where they were made from the same item, new ones otherwise.
    fn parts(&self, input: &RankInput) -> Vec<Arc<Part>> {
        let mut parts = Vec::with_capacity(input.candidates.len());
        let mut fresh = Vec::new();
        let ids = input.candidates.iter().map(|c| c.item_id());
        self.parts.get_many(ids, |_, kept| parts.push(kept));
        let parts = parts
            .into_iter()
            .zip(&input.candidates)
            .map(|(kept, c)| match kept {
                Some(p) if Arc::ptr_eq(&p.item, &c.item) => p,
                _ => {
                    let p = Arc::new(Part::new(&c.item));
                    fresh.push((c.item_id().clone(), p.clone()));
                    p
                }
            })
            .collect();
        if !fresh.is_empty() {
            self.parts.insert_many(fresh);
        }
        parts
    }

    fn message(input: &RankInput, parts: &[Arc<Part>], by_ref: bool) -> pb::RankRequest {
        pb::RankRequest {
            user_id: input.user_id.to_string(),
            user_features: Some(input.user_features.clone().into()),
            user_embedding: input
                .user_embedding
                .as_ref()
                .map(|e| e.as_slice().to_vec())
                .unwrap_or_default(),
            candidates: Vec::new(),
            top_n: 0,
            context: input.context.clone(),
            encoded_candidates: input
                .candidates
                .iter()
                .zip(parts)
                .map(|(c, p)| {
                    let sources = c.sources.iter().cloned().map(Into::into).collect();
                    if by_ref && p.held.load(Ordering::Relaxed) {
                        EncodedCandidate {
                            item: Bytes::new(),
                            sources,
                            item_ref: p.reference.clone(),
                        }
                    } else {
                        EncodedCandidate {
                            item: p.bytes.clone(),
                            sources,
                            item_ref: Bytes::new(),
                        }
                    }
                })
                .collect(),
        }
    }
}

#[async_trait]
impl<W: RankWire> Ranking for GrpcRanking<W> {
    async fn rank(&self, input: Arc<RankInput>, budget: Duration) -> Result<RankAnswer> {
        let started = Instant::now();
        let parts = self.parts(&input);
        let mut notes = Vec::new();
        let mut r = self
            .wire
            .send(Self::message(&input, &parts, self.by_ref), budget)
            .await?;
        if !r.unresolved_item_refs.is_empty() {
            let n = r.unresolved_item_refs.len();
            for &i in &r.unresolved_item_refs {
                if let Some(p) = parts.get(i as usize) {
                    p.held.store(false, Ordering::Relaxed);
                }
            }
            let left = budget.saturating_sub(started.elapsed());
            r = self
                .wire
                .send(Self::message(&input, &parts, false), left)
                .await?;
            if !r.unresolved_item_refs.is_empty() {
                return Err(Status::internal(format!(
                    "ranking did not hold {} items sent in full",
                    r.unresolved_item_refs.len()
                )));
            }
            notes.push(format!(
                "ranking no longer held {n} items sent by reference: sent again in full"
            ));
        }
        if self.by_ref {
            for p in &parts {
                if !p.held.load(Ordering::Relaxed) {
                    p.held.store(true, Ordering::Relaxed);
                }
            }
        }
        let scores = r
            .scores
            .into_iter()
            .map(|s| {
                let item_id = ItemId::parse("scores.item_id", &s.item_id).map_err(|e| {
                    Status::data_loss(format!(
                        "the ranking service's answer does not validate: {e}"
                    ))
                })?;
                Ok(Scored {
                    item_id,
                    score: s.score,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RankAnswer {
            scores,
            missing: r.missing_features,
            model_version: r.model_version,
            notes,
        })
    }

    async fn ready(&self) -> Readiness {
        self.wire.ready().await
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashSet},
        sync::Mutex,
    };

    use reco_ranker::RankCandidate;
    use reco_types::{Features, UserId};

    use super::*;

    /// A ranking service that holds what it was sent in full until told to forget, and scores by position.
    #[derive(Default)]
    struct Wire {
        held: Mutex<HashSet<Bytes>>,
        /// Per call: how many candidates came in full and how many by reference.
        calls: Mutex<Vec<(usize, usize)>>,
    }

    #[async_trait]
    impl RankWire for Arc<Wire> {
        async fn send(&self, r: pb::RankRequest, _budget: Duration) -> Result<pb::RankResponse> {
            let mut held = self.held.lock().unwrap();
            let full = r
                .encoded_candidates
                .iter()
                .filter(|c| c.item_ref.is_empty())
                .count();
            self.calls
                .lock()
                .unwrap()
                .push((full, r.encoded_candidates.len() - full));
            let unresolved: Vec<u32> = (0..r.encoded_candidates.len() as u32)
                .filter(|&i| {
                    let c = &r.encoded_candidates[i as usize];
                    !c.item_ref.is_empty() && !held.contains(&c.item_ref)
                })
                .collect();
            if !unresolved.is_empty() {
                return Ok(pb::RankResponse {
                    unresolved_item_refs: unresolved,
                    ..Default::default()
                });
            }
            let mut scores = Vec::new();
            for (i, c) in r.encoded_candidates.iter().enumerate() {
                if c.item_ref.is_empty() {
                    held.insert(Bytes::copy_from_slice(&EncodedCandidate::digest(&c.item)));
                }
                scores.push(pb::ScoredItem {
                    item_id: format!("i{i}"),
                    score: -(i as f32),
                });
            }
            Ok(pb::RankResponse {
                scores,
                model_version: "m1".into(),
                ..Default::default()
            })
        }

        async fn ready(&self) -> Readiness {
            Ok(())
        }
    }

    fn input(n: usize) -> Arc<RankInput> {
        Arc::new(RankInput {
            user_id: UserId::parse("user_id", "u1").unwrap(),
            user_features: Features::new(),
            user_embedding: None,
            candidates: (0..n)
                .map(|i| {
                    RankCandidate::new(
                        ItemId::parse("item_id", format!("i{i}")).unwrap(),
                        Features::new(),
                        Vec::new(),
                        Vec::new(),
                        None,
                    )
                })
                .collect(),
            context: BTreeMap::new(),
        })
    }

    #[tokio::test]
    async fn items_go_in_full_once_then_by_reference_and_again_in_full_when_ranking_forgot_them() {
        let wire = Arc::new(Wire::default());
        let ranking = GrpcRanking::new(wire.clone(), true);
        let input = input(3);

        let first = ranking
            .rank(input.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(first.scores.len(), 3);
        assert!(first.notes.is_empty());
        ranking
            .rank(input.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(*wire.calls.lock().unwrap(), [(3, 0), (0, 3)]);

        // Ranking restarts: it holds nothing. The references go unresolved, and every item is sent again in full
        // within the same call.
        wire.held.lock().unwrap().clear();
        let again = ranking
            .rank(input.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(again.scores.len(), 3);
        assert_eq!(
            again.notes,
            ["ranking no longer held 3 items sent by reference: sent again in full"]
        );
        assert_eq!(
            wire.calls.lock().unwrap()[2..],
            [(0, 3), (3, 0)],
            "one call by reference, one resend in full"
        );
    }

    #[tokio::test]
    async fn a_new_item_under_a_known_id_is_sent_in_full_and_references_can_be_turned_off() {
        let wire = Arc::new(Wire::default());
        let ranking = GrpcRanking::new(wire.clone(), true);
        ranking
            .rank(input(2), Duration::from_secs(1))
            .await
            .unwrap();
        // The same ids, but items made anew (their features changed): their parts are new.
        ranking
            .rank(input(2), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(*wire.calls.lock().unwrap(), [(2, 0), (2, 0)]);

        let wire = Arc::new(Wire::default());
        let ranking = GrpcRanking::new(wire.clone(), false);
        let input = input(2);
        for _ in 0..2 {
            ranking
                .rank(input.clone(), Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert_eq!(*wire.calls.lock().unwrap(), [(2, 0), (2, 0)]);
    }
}
