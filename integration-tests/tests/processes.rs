//! The platform as six processes, as production runs it: a downstream that stops answering, or dies, costs the
//! answer only that stage (reported as timeout or error, the answer marked degraded, within the caller's
//! deadline); its circuit breaker opens; and everything recovers by itself when the downstream is back.

use std::{collections::BTreeMap, path::Path, time::Duration};

use reco_cli::processes::{ProcessOptions, ProcessPlatform};
use reco_integration_tests::{known_user, small_data};
use reco_proto::gateway::v1::{
    RecommendRequest, RecommendResponse, StageReport, StageStatus, gateway_client::GatewayClient,
};

const BREAKER_FAILURES: u32 = 3;

/// Six processes with generated data loaded; every budget generous for a debug build except `tight`
/// (`--budget-<stage>-ms`), which the test makes a downstream miss.
async fn platform(tight: (&str, u64)) -> (ProcessPlatform, String) {
    let mut budgets = BTreeMap::from([
        ("total", 8000),
        ("features", 1500),
        ("cache", 1500),
        ("vector", 1500),
        ("graph", 1500),
        ("ranking", 1500),
    ]);
    budgets.insert(tight.0, tight.1);
    let mut gateway: Vec<String> = budgets
        .iter()
        .map(|(stage, ms)| format!("--budget-{stage}-ms={ms}"))
        .collect();
    gateway.extend([
        "--rate-limit=0".to_string(),
        "--breaker-open-ms=300".to_string(),
        // A frozen process never answers: cut it off after a few timeouts rather than wait out every budget.
        "--breaker-count-timeouts".to_string(),
        format!("--breaker-failures={BREAKER_FAILURES}"),
    ]);
    let p = ProcessPlatform::start(
        Path::new(env!("CARGO_BIN_EXE_reco-it-serve")),
        ProcessOptions {
            flags: BTreeMap::from([("gateway", gateway)]),
            ..Default::default()
        },
    )
    .await
    .expect("six processes start");
    let snap = small_data();
    let user = known_user(&snap);
    reco_cli::load::load(snap, &p.addrs)
        .await
        .expect("data loads");
    (p, user)
}

async fn recommend(p: &ProcessPlatform, user: &str) -> RecommendResponse {
    let mut client =
        GatewayClient::new(reco_server::channel(&p.addrs.gateway.to_string()).unwrap());
    let mut r = tonic::Request::new(RecommendRequest {
        user_id: user.to_string(),
        bypass_cache: true,
        ..Default::default()
    });
    // The caller's deadline: an answer that came back at all came back within it.
    r.set_timeout(Duration::from_secs(12));
    client
        .recommend(r)
        .await
        .expect("the gateway answers whatever its downstreams do")
        .into_inner()
}

fn stage<'a>(r: &'a RecommendResponse, name: &str) -> &'a StageReport {
    r.stages
        .iter()
        .find(|s| s.stage == name)
        .unwrap_or_else(|| panic!("no {name} report in {:#?}", r.stages))
}

fn status(s: &StageReport) -> StageStatus {
    StageStatus::try_from(s.status).unwrap()
}

/// Calls until `done` holds for an answer (at most `tries` calls, `pause` apart); returns that answer.
async fn until(
    p: &ProcessPlatform,
    user: &str,
    tries: usize,
    pause: Duration,
    done: impl Fn(&RecommendResponse) -> bool,
) -> Option<RecommendResponse> {
    for _ in 0..tries {
        let r = recommend(p, user).await;
        if done(&r) {
            return Some(r);
        }
        tokio::time::sleep(pause).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_downstream_times_out_within_the_budget_opens_its_breaker_and_recovers() {
    let (mut p, user) = platform(("vector", 300)).await;
    // Healthy first (a debug build on a busy machine may need a call or two to warm its connections).
    until(&p, &user, 20, Duration::from_millis(100), |r| {
        status(stage(r, "recall.vector")) == StageStatus::Ok && !r.degraded
    })
    .await
    .expect("a healthy platform answers in full");

    p.pause("vector-recall").unwrap();
    let cut = recommend(&p, &user).await;
    let v = stage(&cut, "recall.vector");
    assert_eq!(status(v), StageStatus::Timeout, "{v:?}");
    assert!(v.budget_us <= 300_000, "its budget was {} us", v.budget_us);
    assert!(cut.degraded, "a cut stage marks the answer degraded");
    assert_eq!(
        cut.items.len(),
        10,
        "the other sources still fill the answer"
    );
    assert!(
        cut.items
            .iter()
            .all(|i| i.sources.iter().all(|s| s.source != "vector")),
        "nothing from the frozen source"
    );

    // Consecutive timeouts open the breaker: from then on the stage fails at once instead of waiting out its
    // budget on every request.
    let open = until(
        &p,
        &user,
        2 * BREAKER_FAILURES as usize,
        Duration::ZERO,
        |r| stage(r, "recall.vector").detail.contains("circuit open"),
    )
    .await
    .expect("the breaker opens after consecutive timeouts");
    let v = stage(&open, "recall.vector");
    assert_eq!(status(v), StageStatus::Error, "{v:?}");
    assert!(v.detail.contains("circuit open for vector-recall"), "{v:?}");
    assert!(open.degraded);

    p.resume("vector-recall").unwrap();
    let back = until(&p, &user, 100, Duration::from_millis(100), |r| {
        status(stage(r, "recall.vector")) == StageStatus::Ok
    })
    .await
    .expect("vector recall is used again once it answers");
    assert!(!back.degraded, "{:#?}", back.stages);
    p.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_downstream_is_an_error_opens_its_breaker_and_recovers_on_restart() {
    let (mut p, user) = platform(("ranking", 1500)).await;
    let healthy = until(&p, &user, 20, Duration::from_millis(100), |r| {
        status(stage(r, "rank")) == StageStatus::Ok
    })
    .await
    .expect("a healthy platform ranks");
    assert!(!healthy.model_version.is_empty());

    p.kill("ranking").unwrap();
    let cut = recommend(&p, &user).await;
    let rank = stage(&cut, "rank");
    assert_eq!(status(rank), StageStatus::Error, "{rank:?}");
    assert!(
        rank.detail.contains("fell back to recall order"),
        "{rank:?}"
    );
    assert!(cut.degraded);
    assert_eq!(cut.items.len(), 10, "recall order still answers");
    assert!(cut.model_version.is_empty(), "no model scored this answer");

    let open = until(
        &p,
        &user,
        2 * BREAKER_FAILURES as usize,
        Duration::ZERO,
        |r| stage(r, "rank").detail.contains("circuit open for ranking"),
    )
    .await
    .expect("the breaker opens after consecutive errors");
    assert_eq!(status(stage(&open, "rank")), StageStatus::Error);

    p.restart("ranking").await.unwrap();
    let back = until(&p, &user, 100, Duration::from_millis(100), |r| {
        status(stage(r, "rank")) == StageStatus::Ok
    })
    .await
    .expect("ranking is used again once it is back");
    assert!(!back.degraded, "{:#?}", back.stages);
    assert!(!back.model_version.is_empty());
    // The gateway had sent these items before, so it sent references the restarted ranking did not hold, and
    // sent the items again in full in the same stage; from then on the references resolve.
    let rank = stage(&back, "rank");
    assert!(rank.detail.contains("sent again in full"), "{rank:?}");
    let after = recommend(&p, &user).await;
    let rank = stage(&after, "rank");
    assert_eq!(status(rank), StageStatus::Ok, "{rank:?}");
    assert!(!rank.detail.contains("sent again"), "{rank:?}");
    assert_eq!(after.items, back.items);
    p.shutdown(Duration::from_secs(5));
}
