//! The Neptune backend against a local HTTP stub of Neptune's openCypher endpoint (no Neptune runs here): the
//! requests it sends (POST /opencypher, SigV4-signed, query text constant, ids only in `parameters`), the parsing
//! of Neptune's documented `{"results": [...]}` answers, timeouts, and the walk's fallback.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reco_aws::AwsSettings;
use reco_graph_store::{
    CypherGraph, Edge, EdgeKind, GraphStore, GraphStoreError, NeptuneRunner, RecallQuery, Strategy,
    cypher::queries, suite::HOSTILE,
};
use reco_test_support::http;
use reco_types::UserId;
use serde_json::{Value, json};

/// One request as the stub saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: String,
    query: String,
    params: Value,
}

/// A stub of Neptune's `/opencypher` endpoint that answers each request with `answer(query)` and keeps what it saw.
struct Stub {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    fn start(answer: impl Fn(&str) -> (Duration, Value) + Send + Sync + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let url = http::serve(move |r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let query = body["query"].as_str().unwrap_or("").to_string();
            let params = serde_json::from_str(body["parameters"].as_str().unwrap_or("{}")).unwrap();
            log.lock().unwrap().push(Seen {
                path: r.path.clone(),
                authorization: r.header("authorization").to_string(),
                query: query.clone(),
                params,
            });
            let (delay, reply) = answer(&query);
            http::Reply {
                delay,
                ..http::Reply::json(200, reply)
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn graph(stub: &Stub, timeout: Duration) -> CypherGraph {
    let runner = NeptuneRunner::connect(&AwsSettings::local(&stub.url)).await;
    CypherGraph::new(Arc::new(runner), timeout)
}

fn query(user: &str, strategy: Strategy, budget: Duration) -> RecallQuery {
    RecallQuery {
        user: UserId::parse("user_id", user).unwrap(),
        strategies: vec![strategy],
        k: 10,
        max_steps: 1000,
        time_budget: budget,
    }
}

#[tokio::test]
async fn ids_travel_as_parameters_and_documented_answers_parse() {
    let stub = Stub::start(|q| {
        let results = if q == queries::FRIENDS_OF_FRIENDS {
            json!([{"id": "bob", "score": 2, "hits": 2}, {"id": "carol", "score": 1, "hits": 1}])
        } else if q == queries::STATS {
            json!([{"users": 3, "items": 2, "tags": 0, "edges": 5}])
        } else {
            json!([{"changed": 1}])
        };
        (Duration::ZERO, json!({ "results": results }))
    });
    let g = graph(&stub, Duration::from_secs(5)).await;
    assert_eq!(g.backend(), "neptune");
    let edges = vec![
        Edge::parse(EdgeKind::Follows, HOSTILE, "alice", 1.0).unwrap(),
        Edge::parse(EdgeKind::Engaged, HOSTILE, "it's", 2.5).unwrap(),
    ];
    assert_eq!(
        g.add_edges(edges).await.unwrap(),
        2,
        "one per query answered"
    );
    let fof = g
        .recall(&query(
            HOSTILE,
            Strategy::FriendsOfFriends,
            Duration::from_secs(1),
        ))
        .await
        .unwrap()
        .candidates;
    let got: Vec<_> = fof
        .iter()
        .map(|c| (c.id.as_str(), c.score, c.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("bob", 2.0, "2 mutual friends"),
            ("carol", 1.0, "1 mutual friends")
        ]
    );
    let stats = g.stats().await.unwrap();
    assert_eq!((stats.users, stats.items, stats.edges), (3, 2, 5));

    let seen = stub.seen();
    assert_eq!(seen.len(), 4);
    let all = [
        queries::ADD_FOLLOWS,
        queries::ADD_ENGAGED,
        queries::FRIENDS_OF_FRIENDS,
        queries::STATS,
    ];
    for (s, q) in seen.iter().zip(all) {
        assert_eq!(s.path, "/opencypher");
        assert!(
            s.authorization.starts_with("AWS4-HMAC-SHA256 ")
                && s.authorization.contains("/neptune-db/aws4_request"),
            "requests are SigV4-signed for neptune-db: {}",
            s.authorization
        );
        assert_eq!(s.query, q, "the query text is the constant");
        assert!(!s.query.contains("brien") && !s.query.contains("it's"));
    }
    assert_eq!(seen[0].params["edges"][0]["src"], HOSTILE);
    assert_eq!(seen[0].params["edges"][0]["dst"], "alice");
    assert_eq!(seen[1].params["edges"][0]["dst"], "it's");
    assert_eq!(seen[1].params["edges"][0]["weight"], 2.5);
    assert_eq!(seen[2].params["user"], HOSTILE);
    assert_eq!(seen[2].params["k"], 10);
}

#[tokio::test]
async fn an_answer_that_is_not_neptunes_format_is_an_error() {
    let stub = Stub::start(|_| (Duration::ZERO, json!({"results": {"not": "a list"}})));
    let g = graph(&stub, Duration::from_secs(5)).await;
    let err = g.stats().await.unwrap_err();
    assert!(err.to_string().contains("not a list"), "{err}");
}

#[tokio::test]
async fn a_slow_neptune_times_out_and_a_walk_falls_back_to_friends_items() {
    let stub = Stub::start(|q| {
        if q == queries::USER_ITEMS {
            (
                Duration::ZERO,
                json!({"results": [{"id": "seed", "weight": 5.0}]}),
            )
        } else if q == queries::FRIENDS_ITEMS {
            (
                Duration::ZERO,
                json!({"results": [{"id": "i9", "score": 1.5, "hits": 3}]}),
            )
        } else {
            (Duration::from_secs(3), json!({"results": []}))
        }
    });
    let g = graph(&stub, Duration::from_millis(300)).await;
    let err = g
        .recall(&query(
            "alice",
            Strategy::FriendsOfFriends,
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphStoreError::Timeout(_)), "{err}");

    let walk = g
        .recall(&query(
            "alice",
            Strategy::RandomWalk,
            Duration::from_millis(100),
        ))
        .await
        .unwrap();
    assert!(walk.truncated, "the walk ran out of time and says so");
    let got: Vec<_> = walk
        .candidates
        .iter()
        .map(|c| (c.id.as_str(), c.strategy))
        .collect();
    assert_eq!(
        got,
        [("i9", Strategy::FriendsItems)],
        "the fallback names its own strategy"
    );
}
