//! `reco train`: learn the ranking model from interactions, as the offline side would.
//!
//! ```text
//!   history ─derive─▶ snapshot ─▶ for each user: candidates as serving recalls them (CF pool, vector k-NN,
//!   popular), with the features the ranker reads ─▶ label: did the user engage it next? ─▶ logistic regression
//! ```
//!
//! Training candidates come from the same recall sources and the same feature definitions
//! (`reco_ranker::features`) as serving, so the model learns on what it will score. Graph recall is on demand in
//! serving and not simulated here; its feature stays 0 in training.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use reco_data::{Dataset, Snapshot};
use reco_ranker::{
    LinearModel, RankCandidate, RankInput, features,
    train::{TrainConfig, auc, fit},
};
use reco_types::{Name, SourceHit};

/// Candidates per recall source, as the gateway asks.
const PER_SOURCE: usize = 100;
/// Negatives sampled per positive.
const NEGATIVES_PER_POSITIVE: usize = 1000;

/// Training rows: one per (user, candidate), with the user's index for splitting by user.
pub struct Examples {
    pub features: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    pub labels: Vec<bool>,
    pub users: Vec<usize>,
}

fn source(name: &str, rank: usize, score: f32) -> SourceHit {
    SourceHit {
        source: Name::parse("source", name).expect("valid"),
        rank: rank as u32,
        score,
    }
}

/// Builds training rows from a snapshot of `history` and each user's `future` items (dataset indexes).
pub fn examples(
    history: &Dataset,
    snap: &Snapshot,
    future: &BTreeMap<usize, HashSet<usize>>,
    seed: u64,
) -> Examples {
    let names: Vec<String> = features::known().into_iter().map(String::from).collect();
    let pools: HashMap<&str, &Vec<reco_types::Candidate>> =
        snap.pools.iter().map(|(u, p)| (u.as_str(), p)).collect();
    let item_index: HashMap<&str, usize> = history
        .items
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let with_vectors: Vec<usize> = (0..snap.items.len())
        .filter(|i| snap.items[*i].embedding.is_some())
        .collect();
    let mut seen: HashMap<usize, HashSet<usize>> = HashMap::new();
    for e in &history.events {
        seen.entry(e.user).or_default().insert(e.item);
    }
    let popular: Vec<(usize, f32)> = snap
        .popular
        .iter()
        .filter_map(|c| item_index.get(c.item_id.as_str()).map(|i| (*i, c.score)))
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Examples {
        features: names.clone(),
        rows: Vec::new(),
        labels: Vec::new(),
        users: Vec::new(),
    };
    let empty = HashSet::new();
    for (&u, next) in future {
        let user = &snap.users[u];
        let mine = seen.get(&u).unwrap_or(&empty);
        let mut sources: BTreeMap<usize, Vec<SourceHit>> = BTreeMap::new();
        if let Some(pool) = pools.get(user.user_id.as_str()) {
            for (r, c) in pool.iter().take(PER_SOURCE).enumerate() {
                if let Some(&i) = item_index.get(c.item_id.as_str()) {
                    sources.entry(i).or_default().push(source("cf", r, c.score));
                }
            }
        }
        if let Some(e) = &user.embedding {
            let mut near: Vec<(usize, f32)> = with_vectors
                .iter()
                .filter(|i| !mine.contains(i))
                .map(|&i| {
                    (
                        i,
                        e.cosine(snap.items[i].embedding.as_ref().expect("filtered")),
                    )
                })
                .collect();
            near.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (r, (i, s)) in near.into_iter().take(PER_SOURCE).enumerate() {
                sources.entry(i).or_default().push(source("vector", r, s));
            }
        }
        for (r, (i, s)) in popular
            .iter()
            .filter(|(i, _)| !mine.contains(i))
            .take(PER_SOURCE)
            .enumerate()
        {
            sources
                .entry(*i)
                .or_default()
                .push(source("popular", r, *s));
        }
        let input = RankInput {
            user_id: user.user_id.clone(),
            user_features: user.features.clone(),
            user_embedding: user.embedding.clone(),
            candidates: Vec::new(),
            context: BTreeMap::new(),
        };
        let (positives, mut negatives): (Vec<_>, Vec<_>) =
            sources.into_iter().partition(|(i, _)| next.contains(i));
        if positives.is_empty() {
            continue;
        }
        negatives.shuffle(&mut rng);
        negatives.truncate(positives.len() * NEGATIVES_PER_POSITIVE);
        for (label, (i, mut hits)) in positives
            .into_iter()
            .map(|p| (true, p))
            .chain(negatives.into_iter().map(|n| (false, n)))
        {
            hits.sort_by_key(|h| h.rank);
            let item = &snap.items[i];
            let c = RankCandidate::new(
                item.item_id.clone(),
                item.features.clone(),
                item.categories.clone(),
                hits,
                item.embedding.clone(),
            );
            out.rows.push(
                names
                    .iter()
                    .map(|f| features::value(f, &input, &c).unwrap_or(0.0))
                    .collect(),
            );
            out.labels.push(label);
            out.users.push(u);
        }
    }
    out
}

/// A trained model and how well it separates held-out users' next items from other candidates.
pub struct Trained {
    pub model: LinearModel,
    pub auc: f64,
    /// The built-in model's AUC on the same held-out rows, for comparison.
    pub default_auc: f64,
    pub train_rows: usize,
    pub test_rows: usize,
}

fn score(model: &LinearModel, features: &[String], row: &[f64]) -> f64 {
    let f = model.file();
    f.bias
        + f.features
            .iter()
            .zip(&f.weights)
            .map(|(name, w)| {
                w * features
                    .iter()
                    .position(|n| n == name)
                    .map_or(0.0, |j| row[j])
            })
            .sum::<f64>()
}

/// Fits on 80% of the users' rows and measures AUC on the other 20%.
pub fn train(ex: &Examples, version: &str) -> anyhow::Result<Trained> {
    let test = |u: usize| u.is_multiple_of(5);
    let pick = |want: bool| -> (Vec<Vec<f64>>, Vec<bool>) {
        ex.rows
            .iter()
            .zip(&ex.labels)
            .zip(&ex.users)
            .filter(|(_, u)| test(**u) == want)
            .map(|((r, l), _)| (r.clone(), *l))
            .unzip()
    };
    let (train_rows, train_labels) = pick(false);
    let (test_rows, test_labels) = pick(true);
    anyhow::ensure!(
        train_labels.iter().any(|l| *l) && test_labels.iter().any(|l| *l),
        "not enough positive examples to train on ({} rows)",
        ex.rows.len()
    );
    let model = fit(
        version,
        &ex.features,
        &train_rows,
        &train_labels,
        TrainConfig::default(),
    )?;
    let ours: Vec<f64> = test_rows
        .iter()
        .map(|r| score(&model, &ex.features, r))
        .collect();
    let default = LinearModel::default_model();
    let theirs: Vec<f64> = test_rows
        .iter()
        .map(|r| score(&default, &ex.features, r))
        .collect();
    Ok(Trained {
        auc: auc(&ours, &test_labels),
        default_auc: auc(&theirs, &test_labels),
        model,
        train_rows: train_rows.len(),
        test_rows: test_rows.len(),
    })
}

/// The whole offline job on `data`: split by time, derive, build examples, fit.
pub fn train_on(data: &Dataset, seed: u64, version: &str) -> anyhow::Result<Trained> {
    let split = crate::eval::split(
        data,
        crate::eval::SplitConfig {
            seed,
            ..Default::default()
        },
    );
    let snap = reco_data::derive(&split.train, seed);
    let ex = examples(&split.train, &snap, &split.held_out, seed);
    train(&ex, version)
}
