//! Re-ranking: by model score when ranking answered, else by fused recall score; at most `per_category` items of
//! one category; the top N. With explain, every candidate left out is kept with why (diversity, or below the cut).

use std::time::{Duration, Instant};

use reco_types::{ItemId, StageReport, StageStatus};

use super::{candidates::Candidates, request::AnswerItem, request::Run};
use crate::{
    merge::{self, DropReason, Ranked},
    plan::Plan,
};

pub struct Rerank {
    per_category: usize,
}

/// The top N, and with explain, what was cut and why.
pub struct Cut {
    pub top: Vec<AnswerItem>,
    pub left_out: Vec<(ItemId, DropReason, String)>,
}

impl Rerank {
    pub fn new(plan: &Plan) -> Self {
        Self {
            per_category: plan.per_category,
        }
    }

    /// `scored`: the candidates carry model scores (a candidate ranking left out then goes last).
    pub fn run(&self, run: &mut Run<'_>, candidates: &Candidates, scored: bool) -> Cut {
        let started = Instant::now();
        let mut ranked: Vec<Ranked> = candidates
            .iter()
            .map(|c| Ranked {
                item_id: c.item_id.clone(),
                score: if scored {
                    c.score.unwrap_or(f32::MIN)
                } else {
                    c.fused
                },
                category: c
                    .item
                    .as_ref()
                    .and_then(|i| i.categories().first().cloned()),
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        let mut left_out = Vec::new();
        let top = merge::diversify(
            ranked,
            run.q.count,
            self.per_category,
            run.q.explaining().then_some(&mut left_out),
        );
        run.report(StageReport {
            stage: "rerank".into(),
            status: StageStatus::Ok,
            budget: Duration::ZERO,
            elapsed: started.elapsed(),
            candidates_in: candidates.len() as u32,
            candidates_out: top.len() as u32,
            detail: format!("at most {} per category", self.per_category),
        });
        let sources: foldhash::HashMap<&ItemId, _> = candidates
            .iter()
            .map(|c| (&c.item_id, &c.sources))
            .collect();
        let top = top
            .into_iter()
            .map(|r| AnswerItem {
                sources: sources
                    .get(&r.item_id)
                    .map(|s| (*s).clone())
                    .unwrap_or_default(),
                item_id: r.item_id,
                score: r.score,
            })
            .collect();
        Cut { top, left_out }
    }
}
