//! The features a ranking model may read, computed from a request. One definition, used by every model and by
//! the gateway's explain mode, so what a caller is shown is what the model saw.

use crate::{RankCandidate, RankInput};

/// Every feature the platform supplies, with what it means.
pub const FEATURES: &[(&str, &str)] = &[
    (
        "embedding_similarity",
        "cosine of user and item embeddings; 0 when either is missing",
    ),
    (
        "cf_score",
        "score from the collaborative-filtering recall pool; 0 when not found there",
    ),
    (
        "cf_rank_reciprocal",
        "1 / (1 + rank) in the CF pool; 0 when not found there",
    ),
    (
        "vector_score",
        "score from vector recall; 0 when not found there",
    ),
    (
        "graph_score",
        "score from graph recall; 0 when not found there",
    ),
    ("source_count", "how many recall sources found the item"),
    ("log_popularity", "ln(1 + item feature `popularity`)"),
    ("avg_rating", "item feature `avg_rating`, 0 when absent"),
    (
        "category_affinity",
        "share of the item's categories among the user's `top_categories`",
    ),
    (
        "is_popular_fallback",
        "1 when only the popular fallback found the item",
    ),
];

/// The item features [`FEATURES`] are computed from (besides the item's embedding, categories and sources): all
/// a caller has to send of an item's feature map.
pub const ITEM_INPUTS: &[&str] = &["popularity", "avg_rating"];

/// The user features [`FEATURES`] are computed from (besides the user's embedding).
pub const USER_INPUTS: &[&str] = &["top_categories"];

/// The names of [`FEATURES`].
pub fn known() -> Vec<&'static str> {
    FEATURES.iter().map(|(n, _)| *n).collect()
}

fn source_score(c: &RankCandidate, source: &str) -> Option<(u32, f32)> {
    c.sources
        .iter()
        .find(|s| s.source.as_str() == source)
        .map(|s| (s.rank, s.score))
}

/// A feature's value for one candidate, and whether it was defaulted because its input was missing (no
/// embedding on either side, no `popularity` or `avg_rating` item feature, no `top_categories` user feature or no
/// item categories). Not being found by a recall source is a value (0), not a missing input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lookup {
    pub value: f64,
    pub missing: bool,
}

impl Lookup {
    fn present(value: f64) -> Self {
        Self {
            value,
            missing: false,
        }
    }

    fn defaulted(value: f64) -> Self {
        Self {
            value,
            missing: true,
        }
    }
}

/// The value of feature `name` for candidate `c`, or None when the name is not a platform feature.
pub fn value(name: &str, input: &RankInput, c: &RankCandidate) -> Option<f64> {
    lookup(name, input, c).map(|l| l.value)
}

/// [`value`], saying whether the value is a default standing in for a missing input.
pub fn lookup(name: &str, input: &RankInput, c: &RankCandidate) -> Option<Lookup> {
    let item_number = |f: &str, map: fn(f64) -> f64| {
        c.features
            .number(f)
            .map_or(Lookup::defaulted(0.0), |v| Lookup::present(map(v)))
    };
    Some(match name {
        "embedding_similarity" => match (&input.user_embedding, &c.embedding) {
            (Some(u), Some(i)) if u.dimension() == i.dimension() => {
                Lookup::present(u.cosine(i) as f64)
            }
            _ => Lookup::defaulted(0.0),
        },
        "cf_score" => Lookup::present(source_score(c, "cf").map_or(0.0, |(_, s)| s as f64)),
        "cf_rank_reciprocal" => {
            Lookup::present(source_score(c, "cf").map_or(0.0, |(r, _)| 1.0 / (1.0 + r as f64)))
        }
        "vector_score" => Lookup::present(source_score(c, "vector").map_or(0.0, |(_, s)| s as f64)),
        "graph_score" => Lookup::present(source_score(c, "graph").map_or(0.0, |(_, s)| s as f64)),
        "source_count" => Lookup::present(c.sources.len() as f64),
        "log_popularity" => item_number("popularity", |p| p.max(0.0).ln_1p()),
        "avg_rating" => item_number("avg_rating", |r| r),
        "category_affinity" => {
            let top = input
                .user_features
                .get("top_categories")
                .and_then(|v| v.as_string_list());
            match top {
                Some(top) if !c.categories.is_empty() => {
                    let hits = c
                        .categories
                        .iter()
                        .filter(|cat| top.iter().any(|t| t == cat.as_str()))
                        .count();
                    Lookup::present(hits as f64 / c.categories.len() as f64)
                }
                _ => Lookup::defaulted(0.0),
            }
        }
        "is_popular_fallback" => {
            let only_popular =
                !c.sources.is_empty() && c.sources.iter().all(|s| s.source.as_str() == "popular");
            Lookup::present(if only_popular { 1.0 } else { 0.0 })
        }
        _ => return None,
    })
}

/// The feature rows of a request, one per candidate, in `names` order, with how many values of each feature were
/// defaulted. Every model backend builds its input here, so the in-process model and a remote endpoint see the
/// same numbers. Names must be platform features (models are checked at load); an unknown one reads as 0.
pub fn matrix(names: &[String], input: &RankInput) -> (Vec<Vec<f64>>, Vec<u64>) {
    let mut missing = vec![0u64; names.len()];
    let rows = input
        .candidates
        .iter()
        .map(|c| {
            names
                .iter()
                .zip(missing.iter_mut())
                .map(|(name, miss)| {
                    let l = lookup(name, input, c).unwrap_or(Lookup::defaulted(0.0));
                    *miss += l.missing as u64;
                    l.value
                })
                .collect()
        })
        .collect();
    (rows, missing)
}

#[cfg(test)]
mod tests {
    use reco_types::{Embedding, FeatureValue, Features, ItemId, Name, SourceHit, UserId};

    use super::*;

    fn features(pairs: &[(&str, FeatureValue)]) -> Features {
        let mut f = Features::new();
        for (k, v) in pairs {
            f.insert(*k, v.clone());
        }
        f
    }

    fn keep(f: &Features, names: &[&str]) -> Features {
        let mut out = Features::new();
        for (k, v) in f.iter().filter(|(k, _)| names.contains(&k.as_str())) {
            out.insert(k.clone(), v.clone());
        }
        out
    }

    /// The gateway sends ranking only ITEM_INPUTS and USER_INPUTS of the feature maps: every feature must come
    /// out the same from those alone.
    #[test]
    fn the_declared_inputs_are_all_the_features_read() {
        let user = features(&[
            (
                "top_categories",
                FeatureValue::StringList(vec!["Drama".into(), "War".into()]),
            ),
            ("activity_count", FeatureValue::Int(40)),
            ("avg_rating", FeatureValue::Float(3.1)),
            ("gender", FeatureValue::Str("F".into())),
        ]);
        let item = features(&[
            ("popularity", FeatureValue::Int(120)),
            ("avg_rating", FeatureValue::Float(4.2)),
            ("rating_count", FeatureValue::Int(77)),
            ("year", FeatureValue::Int(1994)),
            ("tags", FeatureValue::StringList(vec!["classic".into()])),
        ]);
        let e = |v: &[f32]| Embedding::parse("embedding", v.to_vec()).unwrap();
        let candidate = |f: Features| RankCandidate {
            item_id: ItemId::parse("i", "m1").unwrap(),
            features: f,
            categories: vec![Name::parse("c", "Drama").unwrap()],
            sources: vec![SourceHit {
                source: Name::parse("s", "cf").unwrap(),
                rank: 2,
                score: 0.7,
            }],
            embedding: Some(e(&[0.1, 0.2, 0.3])),
        };
        let input = |f: Features| RankInput {
            user_id: UserId::parse("u", "u1").unwrap(),
            user_features: f,
            user_embedding: Some(e(&[0.3, 0.2, 0.1])),
            candidates: Vec::new(),
            context: Default::default(),
        };
        let (full_in, full_c) = (input(user.clone()), candidate(item.clone()));
        let (slim_in, slim_c) = (
            input(keep(&user, USER_INPUTS)),
            candidate(keep(&item, ITEM_INPUTS)),
        );
        for name in known() {
            assert_eq!(
                lookup(name, &full_in, &full_c),
                lookup(name, &slim_in, &slim_c),
                "{name} reads a feature missing from ITEM_INPUTS or USER_INPUTS"
            );
            assert!(!lookup(name, &full_in, &full_c).unwrap().missing, "{name}");
        }
    }
}
