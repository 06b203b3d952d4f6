//! The load generator against a running platform: open loop sends on schedule, closed loop keeps its workers
//! busy, and every call is accounted for.

use std::time::Duration;

use reco_cli::bench::{BenchConfig, Target, run};
use reco_integration_tests::{TestPlatform, Wiring};

async fn open_and_closed_loop_runs_account_for_every_call(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let snap = reco_integration_tests::small_data();
    let users: Vec<String> = snap.users.iter().map(|u| u.user_id.to_string()).collect();
    let items: Vec<String> = snap.items.iter().map(|i| i.item_id.to_string()).collect();
    let cfg = BenchConfig {
        target: Target::Recommend,
        addr: t.gateway_addr(),
        rate: Some(40),
        concurrency: 1000,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        users,
        items,
        timeout: Duration::from_secs(5),
        decode_answers: false,
    };
    let r = run(&cfg).await.unwrap();
    assert_eq!(r.sent, 40, "one call per 25 ms for a second");
    assert_eq!(r.ok + r.errors.values().sum::<u64>(), r.sent);
    assert!(
        r.stages.contains_key("rank") && r.stages.contains_key("user_context.features"),
        "{:?}",
        r.stages.keys()
    );
    assert!(r.table().contains("end to end") && r.json().contains("\"p99_ms\""));
    assert_eq!(
        r.by_second.iter().map(|h| h.len()).sum::<u64>(),
        r.sent,
        "every call is counted in the second it was due"
    );
    assert!(
        r.by_second.len() <= 2,
        "a one-second run: {}",
        r.by_second.len()
    );

    // User contexts read both with and without building the answers.
    for decode_answers in [false, true] {
        let r = run(&BenchConfig {
            target: Target::UserContext,
            addr: t.platform.addrs.feature.to_string(),
            rate: None,
            concurrency: 2,
            decode_answers,
            ..cfg.clone()
        })
        .await
        .unwrap();
        assert!(r.sent > 0 && r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.ok, r.sent);
    }

    // Every single service can be loaded on its own, and answers every call; item batches checked both with and
    // without building their items.
    let a = &t.platform.addrs;
    let r = run(&BenchConfig {
        target: Target::ItemBatch,
        addr: a.feature.to_string(),
        rate: Some(20),
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        decode_answers: true,
        ..cfg.clone()
    })
    .await
    .unwrap();
    assert_eq!((r.sent, r.ok), (10, 10), "{:?}", r.errors);
    for (target, addr) in [
        (Target::ItemBatch, a.feature),
        (Target::CacheGet, a.cache),
        (Target::VectorSearch, a.vector),
        (Target::GraphRecall, a.graph),
        (Target::Rank, a.ranking),
    ] {
        let r = run(&BenchConfig {
            target,
            addr: addr.to_string(),
            rate: Some(20),
            duration: Duration::from_millis(500),
            warmup: Duration::ZERO,
            ..cfg.clone()
        })
        .await
        .unwrap();
        assert_eq!(r.sent, 10, "{target:?}");
        assert_eq!(r.ok, r.sent, "{target:?}: {:?}", r.errors);
    }
    t.platform.shutdown().await.unwrap();
}

reco_integration_tests::on_both_wirings!(open_and_closed_loop_runs_account_for_every_call,);
