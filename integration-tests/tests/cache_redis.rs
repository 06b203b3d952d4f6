//! The cache service on a real redis-server: through gRPC, through an outage, and under the gateway.

use std::time::Duration;

use reco_cli::platform::PlatformConfig;
use reco_integration_tests::{TestPlatform, ask};
use reco_proto::{
    cache::v1::{
        GetRecentEventsRequest, GetRecommendationsRequest, PushEventRequest,
        cache_service_client::CacheServiceClient,
    },
    common::v1::Event,
    gateway::v1::RecommendRequest,
};
use reco_test_support::RedisServer;
use tonic::Code;

fn redis_config(server: &RedisServer) -> reco_cache::Config {
    reco_cache::Config {
        backend: reco_cache::Backend::Redis,
        redis_url: server.url(),
        redis_timeout_ms: 200,
        ..Default::default()
    }
}

/// A cache service alone on `redis`, serving on a free port until `stop` is sent; `server` ends with it.
async fn cache_service(
    redis: &RedisServer,
) -> (
    CacheServiceClient<reco_server::TracedChannel>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), reco_server::ServerError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(reco_cache::build(&redis_config(redis)).unwrap().serve(
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    reco_server::wait_serving(&addr, Duration::from_secs(10))
        .await
        .unwrap();
    let client = CacheServiceClient::new(reco_server::channel(&addr).unwrap());
    (client, stop, server)
}

fn push(user: &str) -> PushEventRequest {
    PushEventRequest {
        user_id: user.into(),
        event: Some(Event {
            item_id: "i1".into(),
            kind: "click".into(),
            ..Default::default()
        }),
        max_len: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_service_fails_fast_while_redis_is_down_and_recovers_without_a_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (mut client, stop, server) = cache_service(&redis).await;
    assert_eq!(
        client
            .push_event(push("outage"))
            .await
            .unwrap()
            .into_inner()
            .length,
        1
    );

    redis.stop();
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), client.push_event(push("outage")))
            .await
            .expect("answers within the command timeout instead of hanging");
        let code = r.unwrap_err().code();
        assert!(
            matches!(code, Code::Unavailable | Code::DeadlineExceeded),
            "{code:?}"
        );
    }

    redis.restart();
    let mut recovered = false;
    for _ in 0..100 {
        if client.push_event(push("outage")).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the same service process serves again once redis is back"
    );
    let events = client
        .get_recent_events(GetRecentEventsRequest {
            user_id: "outage".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!events.is_empty());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_caches_results_and_rate_limits_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut cfg = PlatformConfig {
        cache: redis_config(&redis),
        ..Default::default()
    };
    cfg.gateway.rate_limit = 5;
    cfg.gateway.rate_window_ms = 60_000;
    let t = TestPlatform::start_with(cfg).await;

    let first = t.recommend(ask(&t.known_user)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert!(!first.from_cache);
    let mut cached = false;
    for _ in 0..3 {
        let r = t.recommend(ask(&t.known_user)).await.unwrap();
        if r.from_cache {
            cached = true;
            assert_eq!(r.items.len(), 10);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cached, "the answer came back from redis");
    // 5 allowed per minute, with 1 to 4 used above.
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = t
            .recommend(RecommendRequest {
                bypass_cache: true,
                ..ask(&t.known_user)
            })
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the sixth call in a minute is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    t.platform.shutdown().await.unwrap();
}

/// The gateway's result-cache writes go out in batches after the answers; a gateway that shuts down sends what is
/// queued before it exits. Checked on Redis, which outlives the platform: a cache service started afterwards on
/// the same Redis finds every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_queued_for_the_result_cache_are_written_before_the_gateway_exits() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let t = TestPlatform::start_with(PlatformConfig {
        cache: redis_config(&redis),
        ..Default::default()
    })
    .await;
    let users: Vec<String> = reco_integration_tests::small_data()
        .users
        .iter()
        .take(40)
        .map(|u| u.user_id.to_string())
        .collect();
    // At once, so that answers queue up behind each other's writes.
    let answers = futures::future::join_all(users.iter().map(|u| t.recommend(ask(u)))).await;
    for a in &answers {
        let a = a.as_ref().unwrap();
        assert!(!a.degraded && !a.items.is_empty(), "{:#?}", a.stages);
    }
    t.platform.shutdown().await.unwrap();

    let (mut client, stop, server) = cache_service(&redis).await;
    for (user, answer) in users.iter().zip(&answers) {
        let cached = client
            .get_recommendations(GetRecommendationsRequest {
                user_id: user.clone(),
                scene: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(cached.found, "{user}'s answer was written");
        let written: Vec<String> = cached.items.into_iter().map(|c| c.item_id).collect();
        let answered: Vec<String> = answer
            .as_ref()
            .unwrap()
            .items
            .iter()
            .map(|i| i.item_id.clone())
            .collect();
        assert_eq!(written, answered);
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
