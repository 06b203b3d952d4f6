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

/// A platform feature, resolved from its name once per model rather than matched by name for every value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    EmbeddingSimilarity,
    CfScore,
    CfRankReciprocal,
    VectorScore,
    GraphScore,
    SourceCount,
    LogPopularity,
    AvgRating,
    CategoryAffinity,
    IsPopularFallback,
}

impl Feature {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "embedding_similarity" => Self::EmbeddingSimilarity,
            "cf_score" => Self::CfScore,
            "cf_rank_reciprocal" => Self::CfRankReciprocal,
            "vector_score" => Self::VectorScore,
            "graph_score" => Self::GraphScore,
            "source_count" => Self::SourceCount,
            "log_popularity" => Self::LogPopularity,
            "avg_rating" => Self::AvgRating,
            "category_affinity" => Self::CategoryAffinity,
            "is_popular_fallback" => Self::IsPopularFallback,
            _ => return None,
        })
    }
}

/// What every candidate of a request reads of the user, looked up once per request.
struct UserSide<'a> {
    input: &'a RankInput,
    top_categories: Option<&'a [String]>,
    embedding_norm: f32,
}

impl<'a> UserSide<'a> {
    fn new(input: &'a RankInput) -> Self {
        Self {
            input,
            top_categories: input
                .user_features
                .get("top_categories")
                .and_then(|v| v.as_string_list()),
            embedding_norm: input.user_embedding.as_ref().map_or(0.0, |e| e.norm()),
        }
    }
}

/// What the features read of an item, kept with it ([`crate::RankItem`]): its numeric inputs and its embedding's
/// norm.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ItemDerived {
    popularity: Option<f64>,
    avg_rating: Option<f64>,
    embedding_norm: f32,
}

impl ItemDerived {
    pub(crate) fn new(
        features: &reco_types::Features,
        embedding: Option<&reco_types::Embedding>,
    ) -> Self {
        Self {
            popularity: features.number("popularity"),
            avg_rating: features.number("avg_rating"),
            embedding_norm: embedding.map_or(0.0, |e| e.norm()),
        }
    }
}

/// What a candidate's sources say, read in one pass over them.
#[derive(Default)]
struct Found {
    cf: Option<(u32, f32)>,
    vector: Option<f32>,
    graph: Option<f32>,
    only_popular: bool,
}

impl Found {
    fn new(c: &RankCandidate) -> Self {
        let mut f = Found {
            only_popular: !c.sources.is_empty(),
            ..Default::default()
        };
        // The first hit of each source counts, as a search from the front would find it.
        for s in &c.sources {
            match s.source.as_str() {
                "cf" => f.cf = f.cf.or(Some((s.rank, s.score))),
                "vector" => f.vector = f.vector.or(Some(s.score)),
                "graph" => f.graph = f.graph.or(Some(s.score)),
                _ => {}
            }
            f.only_popular &= s.source.as_str() == "popular";
        }
        f
    }
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
    let feature = Feature::parse(name)?;
    Some(compute(feature, &UserSide::new(input), c, &Found::new(c)))
}

fn compute(feature: Feature, user: &UserSide<'_>, c: &RankCandidate, found: &Found) -> Lookup {
    let item = &c.item.derived;
    let item_number = |v: Option<f64>, map: fn(f64) -> f64| {
        v.map_or(Lookup::defaulted(0.0), |v| Lookup::present(map(v)))
    };
    match feature {
        Feature::EmbeddingSimilarity => match (&user.input.user_embedding, &c.item.embedding) {
            (Some(u), Some(i)) if u.dimension() == i.dimension() => {
                // Embedding::cosine, with both norms worked out once rather than for every pair.
                let n = user.embedding_norm * item.embedding_norm;
                Lookup::present(if n == 0.0 { 0.0 } else { (u.dot(i) / n) as f64 })
            }
            _ => Lookup::defaulted(0.0),
        },
        Feature::CfScore => Lookup::present(found.cf.map_or(0.0, |(_, s)| s as f64)),
        Feature::CfRankReciprocal => {
            Lookup::present(found.cf.map_or(0.0, |(r, _)| 1.0 / (1.0 + r as f64)))
        }
        Feature::VectorScore => Lookup::present(found.vector.map_or(0.0, |s| s as f64)),
        Feature::GraphScore => Lookup::present(found.graph.map_or(0.0, |s| s as f64)),
        Feature::SourceCount => Lookup::present(c.sources.len() as f64),
        Feature::LogPopularity => item_number(item.popularity, |p| p.max(0.0).ln_1p()),
        Feature::AvgRating => item_number(item.avg_rating, |r| r),
        Feature::CategoryAffinity => match user.top_categories {
            Some(top) if !c.item.categories.is_empty() => {
                let hits = c
                    .item
                    .categories
                    .iter()
                    .filter(|cat| top.iter().any(|t| t == cat.as_str()))
                    .count();
                Lookup::present(hits as f64 / c.item.categories.len() as f64)
            }
            _ => Lookup::defaulted(0.0),
        },
        Feature::IsPopularFallback => Lookup::present(if found.only_popular { 1.0 } else { 0.0 }),
    }
}

/// The feature rows of a request, one per candidate, in `names` order, with how many values of each feature were
/// defaulted. Every model backend builds its input here, so the in-process model and a remote endpoint see the
/// same numbers. Names must be platform features (models are checked at load); an unknown one reads as 0.
pub fn matrix(names: &[String], input: &RankInput) -> (Vec<Vec<f64>>, Vec<u64>) {
    let features: Vec<Option<Feature>> = names.iter().map(|n| Feature::parse(n)).collect();
    let user = UserSide::new(input);
    let mut missing = vec![0u64; names.len()];
    let rows = input
        .candidates
        .iter()
        .map(|c| {
            let found = Found::new(c);
            features
                .iter()
                .zip(missing.iter_mut())
                .map(|(feature, miss)| {
                    let l =
                        feature.map_or(Lookup::defaulted(0.0), |f| compute(f, &user, c, &found));
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
        let candidate = |f: Features| {
            RankCandidate::new(
                ItemId::parse("i", "m1").unwrap(),
                f,
                vec![Name::parse("c", "Drama").unwrap()],
                vec![SourceHit {
                    source: Name::parse("s", "cf").unwrap(),
                    rank: 2,
                    score: 0.7,
                }],
                Some(e(&[0.1, 0.2, 0.3])),
            )
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

    /// The rows models read are the values `lookup` gives (explain mode shows those), for every platform feature.
    #[test]
    fn matrix_rows_are_the_lookups() {
        let e = |v: &[f32]| Embedding::parse("embedding", v.to_vec()).unwrap();
        let hit = |s: &str, rank, score| SourceHit::parse(s, rank, score).unwrap();
        let input = RankInput {
            user_id: UserId::parse("u", "u1").unwrap(),
            user_features: features(&[(
                "top_categories",
                FeatureValue::StringList(vec!["Drama".into()]),
            )]),
            user_embedding: Some(e(&[1.0, 0.0])),
            candidates: vec![
                RankCandidate::new(
                    ItemId::parse("i", "a").unwrap(),
                    features(&[("popularity", FeatureValue::Int(9))]),
                    vec![
                        Name::parse("c", "Drama").unwrap(),
                        Name::parse("c", "War").unwrap(),
                    ],
                    vec![hit("vector", 0, 0.9), hit("cf", 4, 0.3), hit("cf", 1, 0.8)],
                    Some(e(&[0.6, 0.8])),
                ),
                RankCandidate::new(
                    ItemId::parse("i", "b").unwrap(),
                    Features::new(),
                    Vec::new(),
                    vec![hit("popular", 0, 0.1)],
                    None,
                ),
            ],
            context: Default::default(),
        };
        let names: Vec<String> = known().iter().map(|n| n.to_string()).collect();
        let (rows, missing) = matrix(&names, &input);
        for (row, c) in rows.iter().zip(&input.candidates) {
            for (v, n) in row.iter().zip(&names) {
                assert_eq!(Some(*v), value(n, &input, c), "{n}");
            }
        }
        let at = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert_eq!(
            rows[0][at("cf_rank_reciprocal")],
            1.0 / 5.0,
            "the first cf hit counts"
        );
        assert_eq!(rows[0][at("category_affinity")], 0.5);
        assert_eq!(rows[1][at("is_popular_fallback")], 1.0);
        // b has no embedding, popularity, avg_rating or categories; a has no avg_rating.
        assert_eq!(missing[at("avg_rating")], 2);
        assert_eq!(missing[at("embedding_similarity")], 1);
        assert_eq!(missing[at("cf_score")], 0);
        let unknown = matrix(&["no_such_feature".to_string()], &input);
        assert_eq!(unknown, (vec![vec![0.0], vec![0.0]], vec![2]));
    }
}
