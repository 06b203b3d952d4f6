//! The generator. Popularity is Zipf-skewed, users have tastes (a few favourite categories), follow mostly people
//! of their own community, and act over time. The same seed gives the same data.

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use rand_distr::{Distribution, LogNormal, Zipf};

use crate::{Dataset, DatasetBuilder, Interaction};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    pub users: usize,
    pub items: usize,
    pub categories: usize,
    /// Mean interactions per user (log-normally spread).
    pub mean_interactions: f64,
    /// Mean accounts followed per user.
    pub mean_follows: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            users: 2000,
            items: 1500,
            categories: 16,
            mean_interactions: 40.0,
            mean_follows: 12.0,
        }
    }
}

const COUNTRIES: &[&str] = &["fr", "de", "us", "br", "in", "jp", "ng", "gb"];
/// The data spans the 90 days before this instant (ms).
const SPAN_MS: i64 = 90 * 24 * 3600 * 1000;
const END_MS: i64 = 1_780_000_000_000;

/// Generates a dataset for `cfg`; deterministic for a given seed.
pub fn generate(cfg: &GenConfig) -> Dataset {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let categories = cfg.categories.max(1);
    let mut b = DatasetBuilder::new(&format!("generated(seed={})", cfg.seed));
    for u in 0..cfg.users {
        let i = b.user(&format!("u{u}"));
        b.data.users[i].age = Some(rng.random_range(16..70));
        b.data.users[i].location = Some(COUNTRIES.choose(&mut rng).unwrap().to_string());
    }

    // Items: a category each, and a popularity rank (Zipf over item index).
    let item_category: Vec<usize> = (0..cfg.items)
        .map(|_| rng.random_range(0..categories))
        .collect();
    for (n, c) in item_category.iter().enumerate() {
        let i = b.item(&format!("i{n}"));
        b.data.items[i].categories = vec![format!("cat{c:02}")];
        b.data.items[i].title = Some(format!("Item {n}"));
    }
    let zipf = Zipf::new(cfg.items.max(1) as f64, 1.05).expect("valid zipf");
    let mut by_category: Vec<Vec<usize>> = vec![Vec::new(); categories];
    for (i, c) in item_category.iter().enumerate() {
        by_category[*c].push(i);
    }

    // Users: one to three favourite categories, the first is their community.
    let tastes: Vec<Vec<usize>> = (0..cfg.users)
        .map(|_| {
            let n = rng.random_range(1..=3);
            (0..n).map(|_| rng.random_range(0..categories)).collect()
        })
        .collect();
    let activity =
        LogNormal::new(cfg.mean_interactions.max(1.0).ln() - 0.5, 1.0).expect("valid lognormal");

    for (u, taste) in tastes.iter().enumerate() {
        let n = (activity.sample(&mut rng) as usize).clamp(3, cfg.items.max(3));
        let mut t = END_MS - SPAN_MS + rng.random_range(0..SPAN_MS / 2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            // Mostly within taste, by popularity inside the category; sometimes anything popular.
            let item = if rng.random_bool(0.75) {
                let pool = &by_category[taste[rng.random_range(0..taste.len())]];
                if pool.is_empty() {
                    continue;
                }
                pool[(zipf.sample(&mut rng) as usize - 1) % pool.len()]
            } else {
                zipf.sample(&mut rng) as usize - 1
            };
            if !seen.insert(item) {
                continue;
            }
            let base: f32 = if taste.contains(&item_category[item]) {
                4.0
            } else {
                2.5
            };
            let rating = (base + rng.random_range(-1.5f32..1.0)).clamp(0.5, 5.0);
            t += rng.random_range(60_000..(SPAN_MS / (2 * n as i64)).max(60_001));
            b.data.events.push(Interaction {
                user: u,
                item,
                weight: (rating * 2.0).round() / 2.0,
                timestamp_ms: t.min(END_MS),
            });
        }
    }

    // Follows: mostly within the community (first favourite category).
    let mut community: Vec<Vec<usize>> = vec![Vec::new(); categories];
    for (u, taste) in tastes.iter().enumerate() {
        community[taste[0]].push(u);
    }
    let all: Vec<usize> = (0..cfg.users).collect();
    for (u, taste) in tastes.iter().enumerate() {
        let n = rng.random_range(0..=(cfg.mean_follows * 2.0) as usize);
        for _ in 0..n {
            let pool = if rng.random_bool(0.8) {
                &community[taste[0]]
            } else {
                &all
            };
            if let Some(&v) = pool.choose(&mut rng) {
                b.data.follows.push((u, v));
            }
        }
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_and_popularity_is_skewed() {
        let cfg = GenConfig {
            users: 300,
            items: 200,
            ..GenConfig::default()
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.events, b.events);
        assert_eq!(a.follows, b.follows);
        let c = generate(&GenConfig {
            seed: 7,
            ..cfg.clone()
        });
        assert_ne!(a.events, c.events);

        let mut counts = vec![0usize; cfg.items];
        for e in &a.events {
            counts[e.item] += 1;
        }
        counts.sort_unstable_by(|x, y| y.cmp(x));
        let top10: usize = counts[..10].iter().sum();
        let total: usize = counts.iter().sum();
        // Uniform popularity would give the top 5% of items 5% of interactions.
        assert!(
            top10 * 100 > total * 15,
            "the top 5% of items take 3x their share: {top10}/{total}"
        );
        assert!(
            a.events
                .windows(2)
                .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms)
        );
        assert!(!a.follows.is_empty() && a.follows.iter().all(|(x, y)| x != y));
    }
}
