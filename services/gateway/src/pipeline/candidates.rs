//! The candidates of one request from merge to the answer, as one value: those still in, in merge order, each with
//! what the stages after merge learn of it (its item, its model score), and those dropped, each with why. No stage
//! keeps a list of its own that must be kept in step with another.

use std::sync::Arc;

use reco_ranker::RankItem;
use reco_types::{ItemId, SourceHit};

use crate::merge::{DropReason, Dropped, Merged};

/// A candidate still in the running.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub item_id: ItemId,
    /// Every source that found it, best rank first.
    pub sources: Vec<SourceHit>,
    /// Its fused recall score (the order when ranking does not answer).
    pub fused: f32,
    /// What the feature store knows of it, once hydrated.
    pub item: Option<Arc<RankItem>>,
    /// The model's score, once ranked.
    pub score: Option<f32>,
}

/// The candidates in, and the ones dropped.
#[derive(Debug, Default)]
pub struct Candidates {
    live: Vec<Candidate>,
    dropped: Vec<Dropped>,
}

impl Candidates {
    /// What merge kept, and what it dropped.
    pub fn merged(merged: Vec<Merged>, dropped: Vec<Dropped>) -> Self {
        Self {
            live: merged
                .into_iter()
                .map(|m| Candidate {
                    item_id: m.item_id,
                    sources: m.sources,
                    fused: m.fused,
                    item: None,
                    score: None,
                })
                .collect(),
            dropped,
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Candidate> {
        self.live.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Candidate> {
        self.live.iter_mut()
    }

    /// Drops every candidate `why` gives a reason for (the detail of its drop), keeping the order of the rest.
    pub fn drop_where(
        &mut self,
        reason: DropReason,
        mut why: impl FnMut(&Candidate) -> Option<String>,
    ) {
        let dropped = &mut self.dropped;
        self.live.retain(|c| match why(c) {
            Some(detail) => {
                dropped.push(Dropped {
                    item_id: c.item_id.clone(),
                    sources: c.sources.clone(),
                    reason,
                    detail,
                });
                false
            }
            None => true,
        });
    }

    /// Every candidate dropped so far, in the order dropped.
    pub fn dropped(&self) -> &[Dropped] {
        &self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(ids: &[&str]) -> Vec<Merged> {
        ids.iter()
            .map(|id| Merged {
                item_id: ItemId::parse("item_id", id).unwrap(),
                sources: Vec::new(),
                fused: 0.0,
            })
            .collect()
    }

    #[test]
    fn a_drop_keeps_the_rest_in_order_and_says_why() {
        let mut c = Candidates::merged(merged(&["a", "b", "c", "d"]), Vec::new());
        c.drop_where(DropReason::FrequencyCap, |c| {
            (c.item_id.as_str() == "b" || c.item_id.as_str() == "d").then(|| "shown".to_string())
        });
        let live: Vec<&str> = c.iter().map(|c| c.item_id.as_str()).collect();
        assert_eq!(live, ["a", "c"]);
        let dropped: Vec<(&str, DropReason)> = c
            .dropped()
            .iter()
            .map(|d| (d.item_id.as_str(), d.reason))
            .collect();
        assert_eq!(
            dropped,
            [
                ("b", DropReason::FrequencyCap),
                ("d", DropReason::FrequencyCap)
            ]
        );
    }
}
