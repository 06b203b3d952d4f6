//! Offline evaluation: hold out each user's latest interactions, load the rest into a platform, ask the gateway
//! for every held-out user, and score the answers against what the user did next, beside a popularity baseline.
//!
//! ```text
//!   dataset ─split by time─▶ train ─derive─▶ snapshot ─load─▶ platform ◀─Recommend─ each test user
//!                          └▶ held out ──────────────────────────────▶ HitRate@10, NDCG@10, Recall@10
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use reco_data::{Dataset, Interaction};
use reco_proto::gateway::v1::{RecommendRequest, gateway_client::GatewayClient};

use crate::platform::Platform;

/// A second gateway over `platform`'s services that serves the merged recall order without ranking, to measure
/// what ranking adds. Stops when the returned sender is dropped or sent to.
pub async fn start_unranked_gateway(
    platform: &Platform,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let cfg = reco_gateway::Config {
        no_rank: true,
        ..platform.gateway_config.clone()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = platform.gateway(&cfg)?;
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    reco_server::wait_serving(&addr, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok((addr, stop))
}

/// Cut-off of every metric.
pub const K: usize = 10;

/// How the split is made.
#[derive(Clone, Copy, Debug)]
pub struct SplitConfig {
    /// Share of each user's interactions held out (their latest), at least 1, at most `max_holdout`.
    pub holdout_share: f64,
    pub max_holdout: usize,
    /// Users with fewer interactions are not evaluated (they stay whole in training).
    pub min_interactions: usize,
    /// Breaks ties between interactions with the same time (Last.fm has none), reproducibly.
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            holdout_share: 0.2,
            max_holdout: 10,
            min_interactions: 5,
            seed: 42,
        }
    }
}

/// A dataset split into training data and each test user's held-out items.
pub struct Split {
    pub train: Dataset,
    /// Test user index -> held-out item indexes.
    pub held_out: BTreeMap<usize, HashSet<usize>>,
}

fn tiebreak(seed: u64, e: &Interaction) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, e.user, e.item).hash(&mut h);
    h.finish()
}

/// Holds out each eligible user's latest interactions (by time; ties broken by a seeded hash).
pub fn split(data: &Dataset, cfg: SplitConfig) -> Split {
    let mut by_user: HashMap<usize, Vec<&Interaction>> = HashMap::new();
    for e in &data.events {
        by_user.entry(e.user).or_default().push(e);
    }
    let mut held_out: BTreeMap<usize, HashSet<usize>> = BTreeMap::new();
    let mut held: HashSet<(usize, usize)> = HashSet::new();
    for (user, mut events) in by_user {
        if events.len() < cfg.min_interactions {
            continue;
        }
        events.sort_by_key(|e| (e.timestamp_ms, tiebreak(cfg.seed, e)));
        let n =
            ((events.len() as f64 * cfg.holdout_share).round() as usize).clamp(1, cfg.max_holdout);
        let last: HashSet<usize> = events[events.len() - n..].iter().map(|e| e.item).collect();
        held.extend(last.iter().map(|i| (user, *i)));
        held_out.insert(user, last);
    }
    let mut train = data.clone();
    train.events.retain(|e| !held.contains(&(e.user, e.item)));
    Split { train, held_out }
}

/// Metrics of one ranked list against the held-out set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    pub hit: f64,
    pub ndcg: f64,
    pub recall: f64,
}

/// HitRate, NDCG and Recall at [`K`] with binary relevance.
pub fn score(ranked: &[usize], relevant: &HashSet<usize>) -> Scores {
    if relevant.is_empty() {
        return Scores::default();
    }
    let top = &ranked[..ranked.len().min(K)];
    let hits: Vec<usize> = top
        .iter()
        .enumerate()
        .filter(|(_, i)| relevant.contains(i))
        .map(|(r, _)| r)
        .collect();
    let dcg: f64 = hits.iter().map(|r| 1.0 / ((*r as f64) + 2.0).log2()).sum();
    let ideal: f64 = (0..relevant.len().min(K))
        .map(|r| 1.0 / ((r as f64) + 2.0).log2())
        .sum();
    Scores {
        hit: if hits.is_empty() { 0.0 } else { 1.0 },
        ndcg: dcg / ideal,
        recall: hits.len() as f64 / relevant.len().min(K) as f64,
    }
}

/// Mean scores over users.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mean {
    sum: (f64, f64, f64),
    pub n: usize,
}

impl Mean {
    pub fn add(&mut self, s: Scores) {
        self.sum.0 += s.hit;
        self.sum.1 += s.ndcg;
        self.sum.2 += s.recall;
        self.n += 1;
    }

    pub fn get(&self) -> Scores {
        let n = self.n.max(1) as f64;
        Scores {
            hit: self.sum.0 / n,
            ndcg: self.sum.1 / n,
            recall: self.sum.2 / n,
        }
    }
}

/// The popularity baseline: the most popular training items the user has not interacted with.
pub fn popular_for(popular: &[usize], seen: &HashSet<usize>) -> Vec<usize> {
    popular
        .iter()
        .filter(|i| !seen.contains(i))
        .take(K)
        .copied()
        .collect()
}

/// What one evaluation found.
pub struct Report {
    pub users: usize,
    pub platform: Scores,
    /// The same platform with ranking off (the merged recall order), when measured.
    pub unranked: Option<Scores>,
    pub popular: Scores,
    pub errors: usize,
    pub degraded: usize,
    pub latency: Histogram<u64>,
    pub stages: BTreeMap<String, Histogram<u64>>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Asks the gateway at `gateway` for every test user (at most `max_users`, in id order) and scores the answers.
pub async fn run(gateway: &str, split: &Split, max_users: usize) -> anyhow::Result<Report> {
    let train = &split.train;
    let mut counts = vec![0usize; train.items.len()];
    let mut seen: HashMap<usize, HashSet<usize>> = HashMap::new();
    for e in &train.events {
        counts[e.item] += 1;
        seen.entry(e.user).or_default().insert(e.item);
    }
    let mut popular: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] > 0).collect();
    popular.sort_by(|a, b| counts[*b].cmp(&counts[*a]).then(a.cmp(b)));
    let item_index: HashMap<&str, usize> = train
        .items
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();

    let mut client = GatewayClient::new(reco_server::channel(gateway)?);
    let (mut ours, mut base) = (Mean::default(), Mean::default());
    let (mut errors, mut degraded) = (0, 0);
    let mut latency = hist();
    let mut stages: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let empty = HashSet::new();
    for (&user, relevant) in split.held_out.iter().take(max_users) {
        let mut request = tonic::Request::new(RecommendRequest {
            user_id: train.users[user].id.clone(),
            count: Some(K as u32),
            bypass_cache: true,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(1));
        let started = Instant::now();
        let answer = client.recommend(request).await;
        latency.record(started.elapsed().as_micros().max(1) as u64)?;
        let ranked: Vec<usize> = match answer {
            Ok(r) => {
                let r = r.into_inner();
                degraded += usize::from(r.degraded);
                for s in &r.stages {
                    if s.elapsed_us > 0 {
                        stages
                            .entry(s.stage.clone())
                            .or_insert_with(hist)
                            .record(s.elapsed_us)?;
                    }
                }
                r.items
                    .iter()
                    .filter_map(|i| item_index.get(i.item_id.as_str()).copied())
                    .collect()
            }
            Err(status) => {
                errors += 1;
                tracing::warn!(user = %train.users[user].id, %status, "recommend failed during eval");
                Vec::new()
            }
        };
        ours.add(score(&ranked, relevant));
        base.add(score(
            &popular_for(&popular, seen.get(&user).unwrap_or(&empty)),
            relevant,
        ));
    }
    Ok(Report {
        users: ours.n,
        platform: ours.get(),
        unranked: None,
        popular: base.get(),
        errors,
        degraded,
        latency,
        stages,
    })
}

impl Report {
    /// The table `reco eval` prints.
    pub fn table(&self, name: &str) -> String {
        use std::fmt::Write;
        // The label column fits the longest stage name, so every row is named in full.
        let w = self
            .stages
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(18);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{name}: {} test users ({} errors, {} degraded answers)",
            self.users, self.errors, self.degraded
        );
        let _ = writeln!(
            out,
            "  {:<w$} {:>10} {:>10} {:>10}",
            "", "HitRate@10", "NDCG@10", "Recall@10"
        );
        let rows = [
            ("reco", Some(self.platform)),
            ("reco, no ranking", self.unranked),
            ("popularity", Some(self.popular)),
        ];
        for (label, s) in rows.into_iter().filter_map(|(l, s)| s.map(|s| (l, s))) {
            let _ = writeln!(
                out,
                "  {label:<w$} {:>10.4} {:>10.4} {:>10.4}",
                s.hit, s.ndcg, s.recall
            );
        }
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "  {:<w$} {:>10} {:>10} {:>10}",
            "latency (ms)", "p50", "p99", "max"
        );
        let _ = writeln!(
            out,
            "  {:<w$} {:>10.2} {:>10.2} {:>10.2}",
            "Recommend",
            q(&self.latency, 0.5),
            q(&self.latency, 0.99),
            self.latency.max() as f64 / 1000.0
        );
        for (stage, h) in &self.stages {
            let _ = writeln!(
                out,
                "  {stage:<w$} {:>10.2} {:>10.2} {:>10.2}",
                q(h, 0.5),
                q(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        out
    }

    /// One JSON object with the figures, for scripts.
    pub fn json(&self, name: &str) -> String {
        format!(
            "{{\"dataset\":{name:?},\"users\":{},\"unranked_ndcg\":{},\"reco\":{{\"hit_rate\":{:.4},\"ndcg\":{:.4},\"recall\":{:.4}}},\"popularity\":{{\"hit_rate\":{:.4},\"ndcg\":{:.4},\"recall\":{:.4}}},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"errors\":{},\"degraded\":{}}}",
            self.users,
            self.unranked
                .map_or("null".to_string(), |u| format!("{:.4}", u.ndcg)),
            self.platform.hit,
            self.platform.ndcg,
            self.platform.recall,
            self.popular.hit,
            self.popular.ndcg,
            self.popular.recall,
            self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.errors,
            self.degraded
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_a_known_list() {
        let relevant: HashSet<usize> = [3, 7].into();
        let s = score(&[1, 3, 5, 7], &relevant);
        assert_eq!(s.hit, 1.0);
        assert_eq!(s.recall, 1.0);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((s.ndcg - dcg / idcg).abs() < 1e-12);
        assert_eq!(score(&[1, 2], &relevant), Scores::default());
        assert_eq!(score(&[3, 7], &relevant).ndcg, 1.0);
    }

    #[test]
    fn the_split_holds_out_each_users_latest_and_is_reproducible() {
        let data = reco_data::generate(&reco_data::GenConfig {
            users: 100,
            items: 80,
            ..Default::default()
        });
        let s = split(&data, SplitConfig::default());
        let again = split(&data, SplitConfig::default());
        assert_eq!(s.held_out, again.held_out);
        assert_eq!(
            s.train.events.len() + s.held_out.values().map(HashSet::len).sum::<usize>(),
            data.events.len()
        );
        for (user, items) in &s.held_out {
            let latest_train = s
                .train
                .events
                .iter()
                .filter(|e| e.user == *user)
                .map(|e| e.timestamp_ms)
                .max()
                .unwrap();
            let held_times = data
                .events
                .iter()
                .filter(|e| e.user == *user && items.contains(&e.item));
            assert!(
                held_times
                    .into_iter()
                    .all(|e| e.timestamp_ms >= latest_train)
            );
        }
    }
}
