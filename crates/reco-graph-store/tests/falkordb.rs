//! The openCypher the Neptune backend sends, run on a real FalkorDB: the shared suite, and on the Last.fm friend
//! and listening graph, the same answers as the embedded graph.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use reco_graph_store::{
    AdjacencyGraph, CypherGraph, Edge, EdgeKind, FalkorRunner, GraphCandidate, GraphStore,
    RecallQuery, Strategy, TargetKind,
};
use reco_test_support::RedisServer;
use reco_types::UserId;

async fn falkor(server: &RedisServer, graph: &str) -> CypherGraph {
    let runner = FalkorRunner::connect(&server.url(), graph).await.unwrap();
    CypherGraph::new(Arc::new(runner), Duration::from_secs(30))
}

#[tokio::test]
async fn falkordb_passes_the_shared_suite() {
    let Some(server) = RedisServer::start_falkordb() else {
        return;
    };
    let g = falkor(&server, "suite").await;
    assert_eq!(g.backend(), "falkordb");
    reco_graph_store::suite::run_all(&g).await;
}

fn lastfm_dir() -> Option<PathBuf> {
    let Some(root) = std::env::var_os("RECO_DATASETS") else {
        eprintln!(
            "NOT RUN: RECO_DATASETS is not set (scripts/test.sh sets it when ../shared/datasets exists)"
        );
        return None;
    };
    let dir = PathBuf::from(root).join("hetrec2011-lastfm-2k");
    assert!(
        dir.is_dir(),
        "RECO_DATASETS is set but {} is missing",
        dir.display()
    );
    Some(dir)
}

/// The Last.fm friend and listening graph as edges.
fn lastfm_edges(dir: &std::path::Path) -> Vec<Edge> {
    let (data, _) = reco_data::read::lastfm::read(dir, Default::default()).unwrap();
    let user = |i: usize| data.users[i].id.as_str();
    let follows = data
        .follows
        .iter()
        .map(|&(a, b)| Edge::parse(EdgeKind::Follows, user(a), user(b), 1.0).unwrap());
    let engaged = data.events.iter().map(|e| {
        Edge::parse(
            EdgeKind::Engaged,
            user(e.user),
            &data.items[e.item].id,
            e.weight,
        )
        .unwrap()
    });
    follows.chain(engaged).collect()
}

/// Equal answers: the same scores rank by rank (f32 here, f64 there), and the same ids, except that candidates
/// tied at the last score may differ (either backend may cut a tie at k).
fn assert_same(what: &str, embedded: &[GraphCandidate], cypher: &[GraphCandidate]) {
    assert_eq!(
        embedded.len(),
        cypher.len(),
        "{what}: lengths\n{embedded:?}\n{cypher:?}"
    );
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * a.abs().max(1.0);
    for (a, b) in embedded.iter().zip(cypher) {
        assert!(close(a.score, b.score), "{what}: {a:?} vs {b:?}");
    }
    let Some(last) = embedded.last().map(|c| c.score) else {
        return;
    };
    let above = |l: &[GraphCandidate]| -> BTreeSet<(String, String)> {
        l.iter()
            .filter(|c| !close(c.score, last))
            .map(|c| (c.id.clone(), c.reason.clone()))
            .collect()
    };
    assert_eq!(
        above(embedded),
        above(cypher),
        "{what}: ids above the last score"
    );
}

#[tokio::test]
async fn cypher_answers_equal_the_embedded_graph_on_lastfm() {
    let Some(dir) = lastfm_dir() else { return };
    let Some(server) = RedisServer::start_falkordb() else {
        return;
    };
    let edges = lastfm_edges(&dir);
    let embedded = AdjacencyGraph::from_edges(edges.clone());
    let cypher = falkor(&server, "lastfm").await;
    let added = cypher.add_edges(edges.clone()).await.unwrap();
    let edges_of_users = edges;
    let (a, b) = (
        embedded.stats().await.unwrap(),
        cypher.stats().await.unwrap(),
    );
    assert_eq!(a, b, "the same graph on both sides");
    assert!(
        added as u64 == a.edges && a.edges > 100_000,
        "{added} edges added"
    );

    let users: Vec<String> = {
        let (data, _) = reco_data::read::lastfm::read(&dir, Default::default()).unwrap();
        data.users
            .iter()
            .step_by(47)
            .map(|u| u.id.clone())
            .collect()
    };
    let mut compared = [0usize; 3];
    for user in &users {
        for (n, strategy) in [
            Strategy::FriendsOfFriends,
            Strategy::FriendsItems,
            Strategy::SharedInterests,
        ]
        .into_iter()
        .enumerate()
        {
            let q = RecallQuery {
                user: UserId::parse("user_id", user).unwrap(),
                strategies: vec![strategy],
                k: 50,
                max_steps: 10_000,
                time_budget: Duration::from_secs(10),
            };
            let e = embedded.recall(&q).await.unwrap().candidates;
            let c = cypher.recall(&q).await.unwrap().candidates;
            assert_same(&format!("user {user}, {strategy:?}"), &e, &c);
            compared[n] += usize::from(!e.is_empty());
        }
    }
    eprintln!(
        "compared {} users; non-empty answers per strategy: {compared:?}",
        users.len()
    );
    assert!(
        compared.iter().all(|&n| n >= users.len() / 2),
        "{compared:?}"
    );

    // Walks are random: both must reach new items only, from the user's own neighbourhood.
    for user in users.iter().take(5) {
        let q = RecallQuery {
            user: UserId::parse("user_id", user).unwrap(),
            strategies: vec![Strategy::RandomWalk],
            k: 20,
            max_steps: 2_000,
            time_budget: Duration::from_secs(10),
        };
        let own: BTreeSet<&str> = edges_of_users
            .iter()
            .filter_map(|e| match e {
                Edge::Engaged { user: u, item, .. } if u.as_str() == user => Some(item.as_str()),
                _ => None,
            })
            .collect();
        let walk = cypher.recall(&q).await.unwrap();
        assert!(!walk.truncated, "a 10 s budget is enough for 2,000 steps");
        assert!(!walk.candidates.is_empty(), "user {user}");
        for c in &walk.candidates {
            assert_eq!(c.kind, TargetKind::Item);
            assert!(
                !own.contains(c.id.as_str()),
                "user {user}: {} is the user's own",
                c.id
            );
        }
    }
}
