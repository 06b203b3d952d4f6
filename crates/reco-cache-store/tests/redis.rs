//! The Redis backend against a real redis-server on a free port: the shared suite, exact rate limiting under
//! concurrency, and an outage the store rides out without being rebuilt.

use std::{sync::Arc, time::Duration};

use reco_cache_store::{
    CacheStore, CacheStoreError, MemoryCacheStore, RedisCacheStore, RedisConfig, suite,
};
use reco_test_support::RedisServer;
use reco_types::{Event, UserId};

fn store(server: &RedisServer, prefix: &str) -> RedisCacheStore {
    RedisCacheStore::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(500),
        key_prefix: prefix.into(),
        ..Default::default()
    })
    .unwrap()
}

async fn until_ready(store: &dyn CacheStore) {
    for _ in 0..200 {
        if store.ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_shared_suite() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "suite");
    until_ready(&s).await;
    suite::run_all(&s, "redis").await;
}

/// Many callers at once on one key: exactly `limit` get through, whatever the interleaving, and the rest are told
/// when to retry. The memory backend must agree.
async fn exact_under_concurrency(store: Arc<dyn CacheStore>) {
    let limit = 50;
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move {
                s.check_rate_limit("hot-key", limit, Duration::from_secs(600), 1)
                    .await
            })
        })
        .collect();
    let mut allowed = 0;
    for c in calls {
        let d = c.await.unwrap().unwrap();
        if d.allowed {
            allowed += 1;
        } else {
            assert!(d.retry_after > Duration::ZERO, "{d:?}");
        }
    }
    assert_eq!(allowed, limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_allows_exactly_the_limit_under_concurrency() {
    exact_under_concurrency(Arc::new(MemoryCacheStore::new())).await;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "rl");
    until_ready(&s).await;
    exact_under_concurrency(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_calls_fast_and_the_store_recovers_by_itself() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = store(&server, "outage");
    until_ready(&s).await;
    let u = UserId::parse("u", "outage-user").unwrap();
    let event = || Event::parse("i1", "click", 0, 1.0).unwrap();
    assert_eq!(s.push_event(&u, event(), 10).await.unwrap(), 1);

    server.stop();
    for _ in 0..5 {
        // Bounded so a hang fails the test instead of stalling it; the store's own timeout is 500 ms.
        let r = tokio::time::timeout(Duration::from_secs(5), s.push_event(&u, event(), 10))
            .await
            .expect("a call during the outage returns instead of hanging");
        assert!(
            matches!(
                r,
                Err(CacheStoreError::Unavailable(_) | CacheStoreError::Timeout(_))
            ),
            "{r:?}"
        );
    }

    server.restart();
    // The pool reconnects with backoff; the same store object serves again.
    let mut recovered = false;
    for _ in 0..100 {
        if s.push_event(&u, event(), 10).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store reconnects without being rebuilt");
    // Redis restarted empty (no persistence): the list holds what was written since.
    assert!(!s.recent_events(&u, 0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_shared_suite_on_a_cluster() {
    let Some(cluster) = reco_test_support::RedisCluster::start(3) else {
        return;
    };
    let s = RedisCacheStore::connect(&RedisConfig {
        url: cluster.url(),
        cluster: true,
        command_timeout: Duration::from_millis(500),
        key_prefix: "cluster".into(),
        ..Default::default()
    })
    .unwrap();
    until_ready(&s).await;
    // Keys of many users land on every node; each user's multi-key scripts stay in one slot.
    suite::run_all(&s, "cluster").await;
    for i in 0..30 {
        let u = UserId::parse("u", format!("spread-{i}")).unwrap();
        let items: Vec<_> = (0..5)
            .map(|n| reco_types::ItemId::parse("i", format!("i{n}")).unwrap())
            .collect();
        s.record_impressions(&u, &items, reco_types::now_ms())
            .await
            .unwrap();
        let capped = s
            .filter_capped(&u, &items, 1, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(capped.len(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_shared_suite_over_tls() {
    let Some(server) = RedisServer::start_tls() else {
        return;
    };
    let ca = server.ca_file().unwrap().to_path_buf();
    let s = RedisCacheStore::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(500),
        key_prefix: "tls".into(),
        tls_ca_file: Some(ca.clone()),
        ..Default::default()
    })
    .unwrap();
    until_ready(&s).await;
    suite::run_all(&s, "tls").await;

    // Without trusting the server's CA (system roots only) the handshake fails: encryption is real, not optional.
    let untrusted = RedisCacheStore::connect(&RedisConfig {
        url: server.url(),
        command_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap();
    for _ in 0..5 {
        assert!(untrusted.ping().await.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a CA file with a plain redis:// URL is a configuration error, said at once.
    let err = RedisCacheStore::connect(&RedisConfig {
        url: "redis://127.0.0.1:1".into(),
        tls_ca_file: Some(ca),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("rediss://"), "{err}");
}
