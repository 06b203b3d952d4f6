//! Random-walk recall (Pixie, up to 100,000 steps a request) on the embedded CSR graph, one core: on the Last.fm
//! friend and listening graph and on a generated graph of 1M users and 20M edges. Prints the graph's bytes per
//! edge, then per graph and k: p50/p99 latency, requests per second on one core, and the steps walks took (they
//! stop early once 2k items were each visited 4 times, so k=1000 walks close to the full 100k).
//!
//! Run: `cargo bench -p reco-graph-store --bench walk`. `RECO_DATASETS` (or ../shared/datasets) finds Last.fm;
//! `RECO_BENCH_USERS` / `RECO_BENCH_EDGES` size the generated graph (default 1,000,000 / 20,000,000);
//! `RECO_BENCH_N` requests per row (default 500).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Zipf};
use reco_graph_store::{AdjacencyGraph, Edge, GraphStore, RecallQuery, Strategy};
use reco_types::{ItemId, UserId};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lastfm() -> Option<(Vec<Edge>, Vec<UserId>)> {
    let root = std::env::var_os("RECO_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/datasets"
            ))
        });
    let dir = root.join("hetrec2011-lastfm-2k");
    if !dir.is_dir() {
        eprintln!("Last.fm not found under {}: skipping it", root.display());
        return None;
    }
    let (data, _) = reco_data::read::lastfm::read(&dir, Default::default()).unwrap();
    let users: Vec<UserId> = data
        .users
        .iter()
        .map(|u| UserId::parse("u", &u.id).unwrap())
        .collect();
    let items: Vec<ItemId> = data
        .items
        .iter()
        .map(|i| ItemId::parse("i", &i.id).unwrap())
        .collect();
    let mut edges: Vec<Edge> = data
        .follows
        .iter()
        .map(|&(a, b)| Edge::Follows {
            user: users[a].clone(),
            followee: users[b].clone(),
        })
        .collect();
    edges.extend(data.events.iter().map(|e| Edge::Engaged {
        user: users[e.user].clone(),
        item: items[e.item].clone(),
        weight: e.weight,
    }));
    let active: Vec<UserId> = {
        let mut seen = vec![false; users.len()];
        data.events.iter().for_each(|e| seen[e.user] = true);
        users
            .into_iter()
            .zip(seen)
            .filter(|(_, s)| *s)
            .map(|(u, _)| u)
            .collect()
    };
    Some((edges, active))
}

/// Users follow within communities of 1,000 (and sometimes anyone); engagements follow a Zipf popularity over
/// items, a quarter of them from the user's community's own slice of the catalogue. A quarter of the edges are
/// follows.
fn generated(users: usize, edges: usize) -> (Vec<Edge>, Vec<UserId>) {
    let items = (users / 5).max(1000);
    let mut rng = SmallRng::seed_from_u64(42);
    let uids: Vec<UserId> = (0..users)
        .map(|i| UserId::parse("u", format!("u{i}")).unwrap())
        .collect();
    let iids: Vec<ItemId> = (0..items)
        .map(|i| ItemId::parse("i", format!("i{i}")).unwrap())
        .collect();
    let popular = Zipf::new(items as f64, 1.0).unwrap();
    let follows = edges / 4;
    let mut out = Vec::with_capacity(edges);
    for _ in 0..follows {
        let a = rng.random_range(0..users);
        let b = if rng.random_bool(0.8) {
            (a / 1000) * 1000 + rng.random_range(0..1000)
        } else {
            rng.random_range(0..users)
        }
        .min(users - 1);
        out.push(Edge::Follows {
            user: uids[a].clone(),
            followee: uids[b].clone(),
        });
    }
    for _ in follows..edges {
        let u = rng.random_range(0..users);
        let i = if rng.random_bool(0.25) {
            let community = u / 1000;
            (community * 97 + rng.random_range(0..200)) % items
        } else {
            popular.sample(&mut rng) as usize - 1
        };
        out.push(Edge::Engaged {
            user: uids[u].clone(),
            item: iids[i].clone(),
            weight: rng.random_range(1..=5) as f32,
        });
    }
    (out, uids)
}

fn run(name: &str, edges: Vec<Edge>, users: Vec<UserId>, rt: &tokio::runtime::Runtime) {
    let n = env("RECO_BENCH_N", 500);
    let built = Instant::now();
    let g = AdjacencyGraph::from_edges(edges);
    let build = built.elapsed();
    let stats = rt.block_on(g.stats()).unwrap();
    let bytes = g.memory_bytes();
    // Engagements are held in both directions; bytes per edge counts each edge once.
    println!(
        "{name}: {} users, {} items, {} edges, built in {:.1} s; {} MB held, {:.1} bytes per edge",
        stats.users,
        stats.items,
        stats.edges,
        build.as_secs_f64(),
        bytes / 1_000_000,
        bytes as f64 / stats.edges as f64
    );
    let mut rng = SmallRng::seed_from_u64(7);
    for k in [100usize, 1000] {
        let mut h = Histogram::<u64>::new(3).unwrap();
        let (mut steps, mut truncated, mut empty) = (0u64, 0, 0);
        let started = Instant::now();
        for _ in 0..n {
            let user = users[rng.random_range(0..users.len())].clone();
            let q = RecallQuery {
                user,
                strategies: vec![Strategy::RandomWalk],
                k,
                max_steps: 100_000,
                time_budget: Duration::from_secs(1),
            };
            let t = Instant::now();
            let r = rt.block_on(g.recall(&q)).unwrap();
            h.record(t.elapsed().as_micros() as u64).unwrap();
            steps += r.steps;
            truncated += usize::from(r.truncated);
            empty += usize::from(r.candidates.is_empty());
        }
        let wall = started.elapsed().as_secs_f64();
        println!(
            "  walk k={k:<5} max_steps=100000: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  {:.0} req/s/core  mean steps {:.0}  \
             truncated {truncated}  empty {empty}  (n={n})",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            n as f64 / wall,
            steps as f64 / n as f64,
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    if let Some((edges, users)) = lastfm() {
        run("lastfm", edges, users, &rt);
    }
    let users = env("RECO_BENCH_USERS", 1_000_000);
    let edges = env("RECO_BENCH_EDGES", 20_000_000);
    let (edges, uids) = generated(users, edges);
    run(&format!("generated {users} users"), edges, uids, &rt);
}
