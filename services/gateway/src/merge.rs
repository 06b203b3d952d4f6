//! Merging recall lists and re-ranking: pure functions over candidates, so they are tested without any server.
//!
//! ```text
//!   cf ─┐
//!   vector ─┼─▶ dedup (provenance kept) ─▶ drop seen / blocked ─▶ fuse (RRF) ─▶ quotas ─▶ cut to max
//!   graph ─┤
//!   popular ┘
//! ```

use std::collections::{HashMap, HashSet};

use reco_types::{Candidate, ItemId, Name, SourceHit};

/// Reciprocal-rank-fusion constant: a hit at rank r adds 1 / (RRF_K + r + 1).
const RRF_K: f32 = 60.0;

/// Why a candidate left the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Seen,
    FrequencyCap,
    Blocked,
    Quota,
    Diversity,
    BelowCut,
    NoFeatures,
    /// No recall source returned it (explain only).
    NotRecalled,
}

/// A candidate after merging: every source that found it, and its fused recall score.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    pub item_id: ItemId,
    pub sources: Vec<SourceHit>,
    pub fused: f32,
}

/// A candidate that was dropped, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    pub item_id: ItemId,
    pub sources: Vec<SourceHit>,
    pub reason: DropReason,
    pub detail: String,
}

/// How merging is shaped.
#[derive(Clone, Debug)]
pub struct MergePolicy {
    /// Most candidates passed on to hydration and ranking.
    pub max_candidates: usize,
    /// Largest share of the merged list a source may fill, by source name; absent sources are unlimited.
    pub max_share: HashMap<String, f32>,
    /// Least share of the merged list kept for a source's best candidates, by source name.
    pub min_share: HashMap<String, f32>,
}

/// Dedups the sources' lists (keeping every source that found an item), drops seen and blocked items, orders by
/// reciprocal-rank fusion, applies per-source quotas and cuts to `max_candidates`.
pub fn merge<S: std::hash::BuildHasher, B: std::hash::BuildHasher>(
    lists: Vec<Vec<Candidate>>,
    seen: &HashSet<ItemId, S>,
    blocked: &HashSet<ItemId, B>,
    policy: &MergePolicy,
    dropped: &mut Vec<Dropped>,
) -> Vec<Merged> {
    // First sight order, with an index from id to place: one hash of each id, no second copy of it.
    let total: usize = lists.iter().map(Vec::len).sum();
    let mut at: foldhash::HashMap<ItemId, usize> =
        foldhash::HashMap::with_capacity_and_hasher(total, Default::default());
    let mut order: Vec<Merged> = Vec::with_capacity(total);
    for list in lists {
        for c in list {
            match at.get(&c.item_id) {
                Some(&i) => order[i].sources.extend(c.sources),
                None => {
                    at.insert(c.item_id.clone(), order.len());
                    order.push(Merged {
                        item_id: c.item_id,
                        sources: c.sources,
                        fused: 0.0,
                    });
                }
            }
        }
    }
    drop(at);

    let mut kept = Vec::with_capacity(order.len());
    for mut m in order {
        let reason = if blocked.contains(&m.item_id) {
            Some((DropReason::Blocked, "on the blocklist"))
        } else if seen.contains(&m.item_id) {
            Some((DropReason::Seen, "in the user's recent events"))
        } else {
            None
        };
        if let Some((reason, detail)) = reason {
            dropped.push(Dropped {
                item_id: m.item_id,
                sources: m.sources,
                reason,
                detail: detail.into(),
            });
            continue;
        }
        m.fused = m
            .sources
            .iter()
            .map(|s| 1.0 / (RRF_K + s.rank as f32 + 1.0))
            .sum();
        m.sources.sort_by_key(|s| s.rank);
        kept.push(m);
    }
    kept.sort_by(|a, b| {
        b.fused
            .total_cmp(&a.fused)
            .then_with(|| a.item_id.cmp(&b.item_id))
    });

    // Quotas. An item counts against the source that ranked it best. First each source with a minimum share
    // has its best candidates (by its own ranks) set aside; the rest of the list fills in fused order, each
    // source up to its maximum share. Maximum shares shape a mix: when only one source found anything, they do
    // not apply (a cold-start user gets every popular item rather than a fifth of them).
    fn primary(m: &Merged) -> &str {
        m.sources.first().map_or("", |s| s.source.as_str())
    }
    let contributors: HashSet<&str> = kept.iter().map(primary).collect();
    let mixed = contributors.len() > 1;
    let cap = policy.max_candidates;
    let share_cap = |share: f32| ((cap as f32) * share).ceil() as usize;
    let mut reserved = vec![false; kept.len()];
    let mut n_reserved = 0;
    let mut min_sources: Vec<(&String, &f32)> = policy
        .min_share
        .iter()
        .filter(|(_, share)| **share > 0.0)
        .collect();
    min_sources.sort_by(|a, b| a.0.cmp(b.0));
    for (source, share) in min_sources {
        let mut by_rank: Vec<(u32, usize)> = kept
            .iter()
            .enumerate()
            .filter(|(i, _)| !reserved[*i])
            .filter_map(|(i, m)| {
                m.sources
                    .iter()
                    .find(|s| s.source.as_str() == source)
                    .map(|s| (s.rank, i))
            })
            .collect();
        by_rank.sort_unstable();
        for (_, i) in by_rank.into_iter().take(share_cap(*share)) {
            if n_reserved >= cap {
                break;
            }
            reserved[i] = true;
            n_reserved += 1;
        }
    }
    // How many each source has placed; a handful of sources, so a list, and a name copied once per source.
    let mut used: Vec<(String, usize)> = Vec::new();
    fn slot<'a>(used: &'a mut Vec<(String, usize)>, source: &str) -> &'a mut usize {
        let i = match used.iter().position(|(s, _)| s == source) {
            Some(i) => i,
            None => {
                used.push((source.to_string(), 0));
                used.len() - 1
            }
        };
        &mut used[i].1
    }
    let mut free = cap - n_reserved;
    let mut out = Vec::with_capacity(cap.min(kept.len()));
    for (i, m) in kept.into_iter().enumerate() {
        if reserved[i] {
            *slot(&mut used, primary(&m)) += 1;
            out.push(m);
            continue;
        }
        if free == 0 {
            dropped.push(Dropped {
                detail: format!("beyond the {cap} candidates passed to ranking"),
                item_id: m.item_id,
                sources: m.sources,
                reason: DropReason::Quota,
            });
            continue;
        }
        let placed = slot(&mut used, primary(&m));
        if mixed && let Some(share) = policy.max_share.get(primary(&m)) {
            let limit = share_cap(*share);
            if *placed >= limit {
                dropped.push(Dropped {
                    detail: format!("source {} already filled its quota of {limit}", primary(&m)),
                    item_id: m.item_id,
                    sources: m.sources,
                    reason: DropReason::Quota,
                });
                continue;
            }
        }
        *placed += 1;
        free -= 1;
        out.push(m);
    }
    out
}

/// An item ready for the final cut: its score and primary category.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub item_id: ItemId,
    pub score: f32,
    pub category: Option<Name>,
}

/// Takes the top `n` of a best-first list with at most `per_category` items of any one category (0 = no cap).
/// Items passed over for diversity fill the list only when there are not enough others. With `dropped`, every
/// item left out is recorded with the reason (for explain; without it nothing is formatted).
pub fn diversify(
    ranked: Vec<Ranked>,
    n: usize,
    per_category: usize,
    dropped: Option<&mut Vec<(ItemId, DropReason, String)>>,
) -> Vec<Ranked> {
    let mut out = Vec::with_capacity(n);
    let mut backlog = Vec::new();
    let mut counts: HashMap<Option<Name>, usize> = HashMap::new();
    let mut rest = Vec::new();
    let record = dropped.is_some();
    for r in ranked {
        if out.len() >= n {
            if !record {
                break;
            }
            rest.push(r);
            continue;
        }
        let c = counts.entry(r.category.clone()).or_default();
        if per_category > 0 && r.category.is_some() && *c >= per_category {
            backlog.push(r);
        } else {
            *c += 1;
            out.push(r);
        }
    }
    let fill = n.saturating_sub(out.len());
    let mut backlog = backlog.into_iter();
    out.extend(backlog.by_ref().take(fill));
    let Some(dropped) = dropped else {
        return out;
    };
    for r in backlog {
        let detail = format!(
            "already {per_category} items of category {} in the top {n}",
            r.category.as_ref().map(Name::as_str).unwrap_or("-")
        );
        dropped.push((r.item_id, DropReason::Diversity, detail));
    }
    for r in rest {
        dropped.push((
            r.item_id,
            DropReason::BelowCut,
            format!("ranked below the top {n}"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ItemId {
        ItemId::parse("i", s).unwrap()
    }

    fn list(source: &str, ids: &[&str]) -> Vec<Candidate> {
        let src = Name::parse("s", source).unwrap();
        ids.iter()
            .enumerate()
            .map(|(r, i)| Candidate::from_source(id(i), &src, r as u32, 1.0 / (r as f32 + 1.0)))
            .collect()
    }

    fn policy(max: usize, shares: &[(&str, f32)]) -> MergePolicy {
        MergePolicy {
            max_candidates: max,
            max_share: shares.iter().map(|(s, f)| (s.to_string(), *f)).collect(),
            min_share: HashMap::new(),
        }
    }

    #[test]
    fn dedup_keeps_every_source_and_fuses_ranks() {
        let mut dropped = Vec::new();
        let out = merge(
            vec![list("cf", &["a", "b", "c"]), list("vector", &["c", "d"])],
            &HashSet::new(),
            &HashSet::new(),
            &policy(10, &[]),
            &mut dropped,
        );
        let ids: Vec<_> = out.iter().map(|m| m.item_id.as_str()).collect();
        assert_eq!(ids[0], "c", "found by two sources, it fuses highest");
        assert_eq!(out.len(), 4);
        let c = &out[0];
        let sources: Vec<_> = c
            .sources
            .iter()
            .map(|s| (s.source.as_str(), s.rank))
            .collect();
        assert_eq!(sources, [("vector", 0), ("cf", 2)]);
        assert!(dropped.is_empty());
    }

    #[test]
    fn seen_blocked_and_quota_are_dropped_with_reasons() {
        let mut dropped = Vec::new();
        let seen = HashSet::from([id("a")]);
        let blocked = HashSet::from([id("b")]);
        let out = merge(
            vec![
                list("cf", &["a", "b", "c", "d"]),
                list("popular", &["p1", "p2", "p3", "p4"]),
            ],
            &seen,
            &blocked,
            &policy(4, &[("popular", 0.25)]),
            &mut dropped,
        );
        let ids: Vec<_> = out.iter().map(|m| m.item_id.as_str()).collect();
        assert_eq!(
            ids,
            ["p1", "c", "d"],
            "one popular item (25% of 4), then cf's survivors"
        );
        let reasons: Vec<_> = dropped
            .iter()
            .map(|d| (d.item_id.as_str(), d.reason))
            .collect();
        assert!(reasons.contains(&("a", DropReason::Seen)));
        assert!(reasons.contains(&("b", DropReason::Blocked)));
        assert!(reasons.contains(&("p2", DropReason::Quota)));
    }

    #[test]
    fn a_minimum_share_keeps_a_sources_best_candidates_in_a_short_list() {
        let mut dropped = Vec::new();
        // cf and graph agree, so their items fuse ahead of everything vector found: without a minimum, vector
        // would be cut out entirely.
        let both: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let both: Vec<&str> = both.iter().map(String::as_str).collect();
        let without = merge(
            vec![
                list("cf", &both),
                list("graph", &both),
                list("vector", &["v0", "v1", "v2"]),
            ],
            &HashSet::new(),
            &HashSet::new(),
            &policy(4, &[]),
            &mut Vec::new(),
        );
        assert!(without.iter().all(|m| m.item_id.as_str().starts_with('c')));
        let mut p = policy(4, &[]);
        p.min_share.insert("vector".into(), 0.5);
        let out = merge(
            vec![
                list("cf", &both),
                list("graph", &both),
                list("vector", &["v0", "v1", "v2"]),
            ],
            &HashSet::new(),
            &HashSet::new(),
            &p,
            &mut dropped,
        );
        let mut ids: Vec<_> = out.iter().map(|m| m.item_id.as_str()).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["c0", "c1", "v0", "v1"],
            "two slots of four kept for vector's best"
        );
    }

    #[test]
    fn a_maximum_share_does_not_apply_when_one_source_found_everything() {
        let mut dropped = Vec::new();
        let out = merge(
            vec![list("popular", &["p1", "p2", "p3", "p4"])],
            &HashSet::new(),
            &HashSet::new(),
            &policy(4, &[("popular", 0.25)]),
            &mut dropped,
        );
        assert_eq!(out.len(), 4, "a cold-start user gets every popular item");
    }

    #[test]
    fn diversity_caps_a_category_but_fills_when_short() {
        let cat = |s: &str| Some(Name::parse("c", s).unwrap());
        let ranked: Vec<Ranked> = [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "x")]
            .iter()
            .enumerate()
            .map(|(i, (item, c))| Ranked {
                item_id: id(item),
                score: 10.0 - i as f32,
                category: cat(c),
            })
            .collect();
        let mut dropped = Vec::new();
        let top = diversify(ranked.clone(), 3, 2, Some(&mut dropped));
        assert_eq!(
            top,
            diversify(ranked.clone(), 3, 2, None),
            "recording changes nothing"
        );
        let ids: Vec<_> = top.iter().map(|r| r.item_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert!(
            dropped
                .iter()
                .any(|(i, r, _)| i.as_str() == "c" && *r == DropReason::Diversity)
        );
        assert!(
            dropped
                .iter()
                .any(|(i, r, _)| i.as_str() == "e" && *r == DropReason::BelowCut)
        );

        let mut dropped = Vec::new();
        let top = diversify(ranked, 5, 1, Some(&mut dropped));
        assert_eq!(
            top.len(),
            5,
            "too few other categories: capped items fill the list"
        );
    }
}
