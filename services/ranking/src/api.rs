//! The gRPC edge: validates requests into domain types, scores, converts back.

use std::sync::Arc;

use reco_proto::{
    conversions::{self, each},
    ranking::v1::{self as pb, ranking_server::Ranking},
};
use reco_ranker::{MAX_CANDIDATES, RankCandidate, RankInput, Ranker, rank};
use reco_types::{Embedding, ItemId, Name, SourceHit, UserId, ValidationError, check_candidates};

use crate::Error;

/// The Ranking implementation over any model.
pub struct RankingApi {
    ranker: Arc<dyn Ranker>,
}

impl RankingApi {
    pub fn new(ranker: Arc<dyn Ranker>) -> Self {
        Self { ranker }
    }
}

fn candidate(c: pb::RankCandidate) -> Result<RankCandidate, ValidationError> {
    let pb::RankCandidate {
        item_id,
        item_features,
        sources,
        embedding,
        categories,
    } = c;
    Ok(RankCandidate {
        item_id: ItemId::parse("item_id", &item_id)?,
        features: conversions::features("item_features", item_features)?,
        categories: each("categories", categories, |c| Name::parse("", c))?,
        sources: each("sources", sources, SourceHit::try_from)?,
        embedding: Embedding::parse_optional("embedding", embedding)?,
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
            // Only a sender fills it: decoded, every candidate is in `candidates`.
            encoded_candidates: _,
        } = r;
        check_candidates("candidates", candidates.len())?;
        if top_n as usize > MAX_CANDIDATES {
            return Err(ValidationError::new(
                "top_n",
                format!("is {top_n}, the limit is {MAX_CANDIDATES}"),
            )
            .into());
        }
        let input = RankInput {
            user_id: UserId::parse("user_id", &user_id)?,
            user_features: conversions::features("user_features", user_features)?,
            user_embedding: Embedding::parse_optional("user_embedding", user_embedding)?,
            candidates: each("candidates", candidates, candidate)?,
            context: context.into_iter().collect(),
        };
        let ranked = rank(self.ranker.as_ref(), &input, top_n as usize).await?;
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
        })
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
