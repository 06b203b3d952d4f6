//! Explain: for each candidate (or each item asked about), where it came from, the features the model read, its
//! score, its place in the answer, and if it is not in the answer, why: seen, capped, over quota, no features,
//! diversity, below the cut, or no recall source returned it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use reco_ranker::{RankCandidate, RankInput, RankItem, features as rank_features};
use reco_types::{Features, ItemId, StageReport, StageStatus};

use super::{
    candidates::Candidates,
    rank::user_inputs,
    request::{Explanation, Query},
    rerank::Cut,
    user_context::Context,
};
use crate::merge::DropReason;

/// The explanations of an answer, given the stages' reports so far.
pub fn explain(
    q: &Query,
    ctx: &Context,
    candidates: &Candidates,
    cut: &Cut,
    reports: &[StageReport],
) -> Vec<Explanation> {
    let positions: HashMap<&ItemId, u32> = cut
        .top
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.item_id, i as u32 + 1))
        .collect();
    let reasons: HashMap<&ItemId, (DropReason, &str)> = cut
        .left_out
        .iter()
        .map(|(id, r, d)| (id, (*r, d.as_str())))
        .collect();
    let input = RankInput {
        user_id: q.user_id.clone(),
        user_features: user_inputs(&ctx.features),
        user_embedding: ctx.embedding.clone(),
        candidates: Vec::new(),
        context: q.context.clone(),
    };
    let mut out = Vec::new();
    for c in candidates.iter() {
        let rc = RankCandidate {
            item: c.item.clone().unwrap_or_else(|| {
                Arc::new(RankItem::new(
                    c.item_id.clone(),
                    Features::new(),
                    Vec::new(),
                    None,
                ))
            }),
            sources: c.sources.clone(),
        };
        let features = rank_features::known()
            .into_iter()
            .filter_map(|f| rank_features::value(f, &input, &rc).map(|v| (f.to_string(), v)))
            .collect();
        let (dropped, detail) = match reasons.get(&c.item_id) {
            Some((r, d)) => (Some(*r), d.to_string()),
            None => (None, String::new()),
        };
        out.push(Explanation {
            item_id: c.item_id.clone(),
            sources: c.sources.clone(),
            categories: rc.item.categories().to_vec(),
            features,
            score: c.score.unwrap_or(c.fused),
            position: positions.get(&c.item_id).copied().unwrap_or(0),
            dropped,
            detail,
        });
    }
    for d in candidates.dropped() {
        out.push(Explanation {
            // Dropped before hydration, or for having no features: none were read.
            item_id: d.item_id.clone(),
            sources: d.sources.clone(),
            categories: Vec::new(),
            features: BTreeMap::new(),
            score: 0.0,
            position: 0,
            dropped: Some(d.reason),
            detail: d.detail.clone(),
        });
    }
    if !q.explain_items.is_empty() {
        out = only_asked(q, out, reports);
    }
    out
}

/// Only the items asked about, each once (a candidate can be dropped once per merge pass), in the order asked,
/// and a line for each one no source found, saying what each recall stage did.
fn only_asked(q: &Query, mut out: Vec<Explanation>, reports: &[StageReport]) -> Vec<Explanation> {
    let mut wanted: HashSet<&ItemId> = q.explain_items.iter().collect();
    out.retain(|e| wanted.remove(&e.item_id));
    let asked: HashMap<&ItemId, usize> = q
        .explain_items
        .iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    out.sort_by_key(|e| asked[&e.item_id]);
    let recall: Vec<String> = reports
        .iter()
        .filter(|r| r.stage.starts_with("recall."))
        .map(summary)
        .collect();
    for id in q.explain_items.iter().filter(|id| wanted.contains(id)) {
        out.push(Explanation {
            item_id: id.clone(),
            sources: Vec::new(),
            categories: Vec::new(),
            features: BTreeMap::new(),
            score: 0.0,
            position: 0,
            dropped: Some(DropReason::NotRecalled),
            detail: format!("no recall source returned it ({})", recall.join("; ")),
        });
    }
    out
}

/// How a recall stage went, in a few words.
fn summary(r: &StageReport) -> String {
    match r.status {
        StageStatus::Ok | StageStatus::Cached => {
            format!("{} returned {}", r.stage, r.candidates_out)
        }
        status => format!("{} {}", r.stage, status.as_str()),
    }
}
