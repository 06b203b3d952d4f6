//! The gRPC edge: validates requests into domain types, scores, converts back.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use reco_client::{RankAnswer, Readiness};

use prost::Message;
use reco_proto::{
    common::v1 as pb_common,
    conversions::{self, each},
    ranking::v1::{self as pb, ITEM_REF_LEN, ranking_server::Ranking},
};
use reco_ranker::{MAX_CANDIDATES, RankCandidate, RankInput, RankItem, Ranker, rank};
use reco_types::{Embedding, ItemId, Name, SourceHit, UserId, ValidationError, check_candidates};

use crate::{
    Error,
    items::{DecodedItems, ItemPart},
};

/// How many decoded items the service keeps unless told otherwise.
pub const DEFAULT_ITEM_CACHE: usize = 100_000;

/// The Ranking implementation over any model.
pub struct RankingApi {
    ranker: Arc<dyn Ranker>,
    items: DecodedItems,
}

impl RankingApi {
    pub fn new(ranker: Arc<dyn Ranker>) -> Self {
        Self::with_item_cache(ranker, DEFAULT_ITEM_CACHE)
    }

    /// Keeping at most `capacity` decoded items (0: none).
    pub fn with_item_cache(ranker: Arc<dyn Ranker>, capacity: usize) -> Self {
        Self {
            ranker,
            items: DecodedItems::new(capacity),
        }
    }
}

/// A candidate's fields but its sources, checked; and its sources as they came.
fn rank_item(
    c: pb::RankCandidate,
) -> Result<(RankItem, Vec<pb_common::SourceHit>), ValidationError> {
    let pb::RankCandidate {
        item_id,
        item_features,
        sources,
        embedding,
        categories,
        item_ref: _,
    } = c;
    let item = RankItem::new(
        ItemId::parse("item_id", &item_id)?,
        conversions::features("item_features", item_features)?,
        each("categories", categories, |c| Name::parse("", c))?,
        Embedding::parse_optional("embedding", embedding)?,
    );
    Ok((item, sources))
}

/// A candidate's item part, as it came on the wire, decoded and checked.
fn item(part: &prost::bytes::Bytes) -> Result<RankItem, ValidationError> {
    let c = pb::RankCandidate::decode(part.as_ref())
        .map_err(|e| ValidationError::new("", format!("is malformed: {e}")))?;
    Ok(rank_item(c)?.0)
}

/// A candidate built in process (not read off the wire) in the form one read off the wire takes.
fn encoded(mut c: pb::RankCandidate) -> pb::EncodedCandidate {
    let sources = std::mem::take(&mut c.sources);
    let item_ref = std::mem::take(&mut c.item_ref).into();
    pb::EncodedCandidate {
        item: pb::EncodedCandidate::item_part(&c),
        sources,
        item_ref,
    }
}

/// How a candidate names its item: in full, or by a well-formed reference alone.
fn item_part(c: &pb::EncodedCandidate) -> Result<ItemPart<'_>, ValidationError> {
    if c.item_ref.is_empty() {
        return Ok(ItemPart::Full(&c.item));
    }
    if !c.item.is_empty() {
        return Err(ValidationError::new(
            "item_ref",
            "is set beside the item's fields; send one or the other",
        ));
    }
    <&[u8; ITEM_REF_LEN]>::try_from(c.item_ref.as_ref())
        .map(ItemPart::Ref)
        .map_err(|_| {
            ValidationError::new(
                "item_ref",
                format!(
                    "is {} bytes; a reference is {ITEM_REF_LEN}",
                    c.item_ref.len()
                ),
            )
        })
}

impl RankingApi {
    async fn rank(&self, r: pb::RankRequest) -> Result<pb::RankResponse, Error> {
        let pb::RankRequest {
            user_id,
            user_features,
            user_embedding,
            candidates,
            top_n,
            context,
            encoded_candidates,
        } = r;
        // Decoded off the wire, every candidate is in `encoded_candidates`; a caller in process may fill either.
        check_candidates("candidates", candidates.len() + encoded_candidates.len())?;
        if top_n as usize > MAX_CANDIDATES {
            return Err(ValidationError::new(
                "top_n",
                format!("is {top_n}, the limit is {MAX_CANDIDATES}"),
            )
            .into());
        }
        let user_id = UserId::parse("user_id", &user_id)?;
        let user_features = conversions::features("user_features", user_features)?;
        let user_embedding = Embedding::parse_optional("user_embedding", user_embedding)?;
        let candidates = match self.candidates(candidates, encoded_candidates)? {
            Ok(c) => c,
            Err(unresolved_item_refs) => {
                return Ok(pb::RankResponse {
                    model_version: self.ranker.model_version(),
                    unresolved_item_refs,
                    ..Default::default()
                });
            }
        };
        let input = RankInput {
            user_id,
            user_features,
            user_embedding,
            candidates,
            context: context.into_iter().collect(),
        };
        let ranked = self.score(&input, top_n as usize).await?;
        Ok(pb::RankResponse {
            scores: ranked
                .items
                .into_iter()
                .map(|s| pb::ScoredItem {
                    item_id: s.item_id.into(),
                    score: s.score,
                })
                .collect(),
            model_version: self.ranker.model_version(),
            missing_features: ranked.missing.into_iter().collect(),
            unresolved_item_refs: Vec::new(),
        })
    }

    /// Scores a request, whichever way it came: at most [`MAX_CANDIDATES`], best `top_n` first (0: all).
    async fn score(&self, input: &RankInput, top_n: usize) -> Result<reco_ranker::Ranked, Error> {
        check_candidates("candidates", input.candidates.len())?;
        Ok(rank(self.ranker.as_ref(), input, top_n).await?)
    }

    /// The domain candidates of a request, `candidates` first, then `encoded`, whose items are looked up among
    /// the items decoded before, by reference or by their bytes. `Err` lists the positions of the references this
    /// service does not hold.
    fn candidates(
        &self,
        candidates: Vec<pb::RankCandidate>,
        mut encoded: Vec<pb::EncodedCandidate>,
    ) -> Result<Result<Vec<RankCandidate>, Vec<u32>>, ValidationError> {
        if !candidates.is_empty() {
            encoded.splice(0..0, candidates.into_iter().map(self::encoded));
        }
        let parts = encoded
            .iter()
            .enumerate()
            .map(|(i, c)| item_part(c).map_err(|e| e.at("candidates", i)))
            .collect::<Result<Vec<_>, _>>()?;
        let items = self.items.get_or_decode(&parts, |i, part| {
            item(part).map_err(|e| e.at("candidates", i))
        })?;
        let unresolved: Vec<u32> = (0..items.len() as u32)
            .filter(|&i| items[i as usize].is_none())
            .collect();
        if !unresolved.is_empty() {
            return Ok(Err(unresolved));
        }
        let mut out = Vec::with_capacity(encoded.len());
        for (i, (c, item)) in encoded.into_iter().zip(items).enumerate() {
            let sources = each("sources", c.sources, SourceHit::try_from)
                .map_err(|e| e.at("candidates", i))?;
            out.push(RankCandidate {
                item: item.expect("every reference resolved"),
                sources,
            });
        }
        Ok(Ok(out))
    }

    async fn model_info(&self, _r: pb::ModelInfoRequest) -> Result<pb::ModelInfoResponse, Error> {
        Ok(pb::ModelInfoResponse {
            model_version: self.ranker.model_version(),
            features: self.ranker.feature_names(),
            backend: self.ranker.backend().to_string(),
        })
    }
}

reco_server::delegate_rpcs! { Ranking => RankingApi {
    rank(pb::RankRequest) -> pb::RankResponse;
    model_info(pb::ModelInfoRequest) -> pb::ModelInfoResponse;
}}

/// The service called in process (`reco_client::Ranking`): the candidates' items are the caller's own
/// `Arc<RankItem>`s, so nothing is encoded, decoded or looked up by reference.
#[async_trait]
impl reco_client::Ranking for RankingApi {
    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(service = "ranking", rpc = "/reco.ranking.v1.Ranking/Rank")
    )]
    async fn rank(
        &self,
        input: Arc<RankInput>,
        _budget: Duration,
    ) -> reco_client::Result<RankAnswer> {
        let ranked = self.score(&input, 0).await?;
        Ok(RankAnswer {
            scores: ranked.items,
            missing: ranked.missing,
            model_version: self.ranker.model_version(),
            notes: Vec::new(),
        })
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}
