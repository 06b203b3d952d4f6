//! Bulk loads into running services: a bad row, a strict load that refuses it, and a load interrupted half-way,
//! all while the previous snapshot keeps serving.

use std::{path::Path, sync::Arc};

use reco_cli::load::{LoadOptions, Targets, load_with};
use reco_data::read::Format;
use reco_integration_tests::{TestPlatform, Wiring, ask};
use reco_proto::{
    feature::v1::{
        GetUserContextRequest, ListVersionsRequest, feature_service_client::FeatureServiceClient,
    },
    vector_recall::v1::{
        ActivateIndexRequest, StatsRequest, vector_recall_client::VectorRecallClient,
    },
};

/// A small MovieLens-format dataset whose ratings.csv has a malformed row at line 7.
fn movielens_with_a_bad_row(dir: &Path) {
    std::fs::write(
        dir.join("movies.csv"),
        "movieId,title,genres\nm1,One,Drama\nm2,Two,Comedy\nm3,Three,Drama|Comedy\nm4,Four,Action\n",
    )
    .unwrap();
    let mut ratings = String::from("userId,movieId,rating,timestamp\n");
    for (n, (u, m)) in [
        ("ml-a", "m1"),
        ("ml-a", "m2"),
        ("ml-b", "m2"),
        ("ml-b", "m3"),
        ("ml-c", "m1"),
    ]
    .iter()
    .enumerate()
    {
        ratings.push_str(&format!("{u},{m},4.0,{}\n", 1_600_000_000 + n));
    }
    ratings.push_str("ml-c,m3,four stars,1600000100\n"); // line 7
    for (n, (u, m)) in [("ml-c", "m4"), ("ml-a", "m3"), ("ml-b", "m4")]
        .iter()
        .enumerate()
    {
        ratings.push_str(&format!("{u},{m},3.5,{}\n", 1_600_000_200 + n));
    }
    std::fs::write(dir.join("ratings.csv"), ratings).unwrap();
}

async fn active_version(t: &TestPlatform) -> String {
    let mut f = FeatureServiceClient::new(
        reco_server::channel(&t.platform.addrs.feature.to_string()).unwrap(),
    );
    f.list_versions(ListVersionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .active_version
}

async fn vector_stats(t: &TestPlatform) -> reco_proto::vector_recall::v1::StatsResponse {
    let mut v = VectorRecallClient::new(
        reco_server::channel(&t.platform.addrs.vector.to_string()).unwrap(),
    );
    v.stats(StatsRequest {}).await.unwrap().into_inner()
}

async fn context(t: &TestPlatform, user: &str) -> reco_proto::feature::v1::GetUserContextResponse {
    let mut f = FeatureServiceClient::new(
        reco_server::channel(&t.platform.addrs.feature.to_string()).unwrap(),
    );
    f.get_user_context(GetUserContextRequest {
        user_id: user.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// Anything at all is known of the user (features, pool, or real-time events, which are not versioned).
async fn user_found(t: &TestPlatform, user: &str) -> bool {
    context(t, user).await.found
}

/// The active version holds features for the user.
async fn has_features(t: &TestPlatform, user: &str) -> bool {
    context(t, user).await.features.is_some()
}

async fn a_bad_row_is_reported_by_line_and_a_strict_load_leaves_the_previous_snapshot_serving(
    wiring: Wiring,
) {
    let t = TestPlatform::start_on(wiring).await;
    let to = Targets::from(&t.platform.addrs);
    let dir = tempfile::tempdir().unwrap();
    movielens_with_a_bad_row(dir.path());
    let before = active_version(&t).await;

    let err = reco_cli::sync::sync(
        dir.path(),
        Format::Auto,
        true,
        1,
        &to,
        Some("strict-try".into()),
        false,
    )
    .await
    .err()
    .expect("a strict load stops at the bad row");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ratings.csv:7") && msg.contains("four stars"),
        "{msg}"
    );
    assert_eq!(active_version(&t).await, before, "nothing was switched");
    assert!(!user_found(&t, "ml-a").await, "nothing was written");
    assert!(user_found(&t, &t.known_user).await);
    assert_eq!(
        t.recommend(ask(&t.known_user)).await.unwrap().items.len(),
        10
    );

    let r = reco_cli::sync::sync(
        dir.path(),
        Format::Auto,
        false,
        1,
        &to,
        Some("lenient".into()),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.read.total_rejected(), 1);
    assert_eq!(r.read.rejected[0].line, 7);
    assert_eq!(r.loaded.users, 3);
    assert_eq!(
        (r.loaded.activated.as_deref(), r.loaded.previous.as_deref()),
        (Some("lenient"), Some(before.as_str()))
    );
    assert_eq!(active_version(&t).await, "lenient");
    assert!(user_found(&t, "ml-a").await, "the new snapshot serves");
    let stats = vector_stats(&t).await;
    assert_eq!(
        (stats.index_version.as_str(), stats.count),
        ("lenient", 4),
        "the vector index was swapped whole"
    );

    let mut v = VectorRecallClient::new(
        reco_server::channel(&t.platform.addrs.vector.to_string()).unwrap(),
    );
    let err = v
        .activate_index(ActivateIndexRequest {
            index_version: "never-staged".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // A feature version nothing was loaded into is not activated (every user would cold-start).
    let mut f = FeatureServiceClient::new(
        reco_server::channel(&t.platform.addrs.feature.to_string()).unwrap(),
    );
    let err = f
        .activate_version(reco_proto::feature::v1::ActivateVersionRequest {
            feature_version: "never-loaded".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("never-loaded"), "{err:?}");
    assert_eq!(
        active_version(&t).await,
        "lenient",
        "the active version stays"
    );
    t.platform.shutdown().await.unwrap();
}

async fn a_load_interrupted_half_way_leaves_the_old_snapshot_answering(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let before = active_version(&t).await;
    let vectors_before = vector_stats(&t).await;
    // A bigger snapshot whose users are new, loaded as version "next", interrupted after the first user batch.
    let data = reco_data::generate(&reco_data::GenConfig {
        users: 3000,
        items: 400,
        seed: 9,
        ..Default::default()
    });
    let mut snap = reco_data::derive(&data, 9);
    for u in &mut snap.users {
        u.user_id = reco_types_id(&format!("next-{}", u.user_id));
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let on_batch: reco_cli::load::Progress = Arc::new(move |table, done| {
        if table == "users"
            && done >= 500
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let to = Targets::from(&t.platform.addrs);
    let load = tokio::spawn(async move {
        load_with(
            snap,
            &to,
            LoadOptions {
                version: Some("next".into()),
                show_progress: false,
                on_batch: Some(on_batch),
            },
        )
        .await
    });
    rx.await.expect("the load got half-way");
    load.abort();
    assert!(load.await.unwrap_err().is_cancelled());

    assert_eq!(
        active_version(&t).await,
        before,
        "the half-written version was never activated"
    );
    assert!(
        user_found(&t, &t.known_user).await,
        "the old snapshot still answers"
    );
    assert!(
        !user_found(&t, "next-u0").await,
        "nothing of the new snapshot is visible"
    );
    assert_eq!(
        vector_stats(&t).await,
        vectors_before,
        "the serving vector index is untouched"
    );
    let r = t.recommend(ask(&t.known_user)).await.unwrap();
    assert_eq!(r.items.len(), 10);
    assert!(!r.degraded);
    t.platform.shutdown().await.unwrap();
}

fn reco_types_id(s: &str) -> reco_types::UserId {
    reco_types::UserId::parse("user_id", s).unwrap()
}

async fn with_the_hot_key_cache_on_a_sync_switch_is_seen_at_once(wiring: Wiring) {
    let mut cfg = reco_cli::platform::PlatformConfig {
        wiring,
        ..Default::default()
    };
    cfg.feature.cache_ttl_ms = 60_000;
    let t = TestPlatform::start_with(cfg).await;
    assert!(has_features(&t, &t.known_user).await, "cached now");
    let dir = tempfile::tempdir().unwrap();
    movielens_with_a_bad_row(dir.path());
    let to = Targets::from(&t.platform.addrs);
    reco_cli::sync::sync(
        dir.path(),
        Format::Auto,
        false,
        1,
        &to,
        Some("cached-next".into()),
        false,
    )
    .await
    .unwrap();
    // The activation dropped every cached entry: the old users' features are not in the active version (their
    // real-time sequences, which are not versioned, still are), the new users' are.
    assert!(!has_features(&t, &t.known_user).await);
    assert!(has_features(&t, "ml-a").await);
    t.platform.shutdown().await.unwrap();
}

/// The history's events carry ids derived from the data, so a second sync of the same data appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_run_twice_appends_the_sequences_once() {
    let t = TestPlatform::start().await;
    let to = Targets::from(&t.platform.addrs);
    let dir = tempfile::tempdir().unwrap();
    movielens_with_a_bad_row(dir.path());
    let mut seen = Vec::new();
    for version in ["first", "second"] {
        reco_cli::sync::sync(
            dir.path(),
            Format::Auto,
            false,
            1,
            &to,
            Some(version.into()),
            false,
        )
        .await
        .unwrap();
        let ids: Vec<String> = context(&t, "ml-a")
            .await
            .recent_events
            .into_iter()
            .map(|e| format!("{} {}", e.item_id, e.event_id))
            .collect();
        seen.push(ids);
    }
    assert_eq!(seen[0].len(), 3, "ml-a's three ratings: {:?}", seen[0]);
    assert_eq!(seen[0], seen[1], "the second sync appended nothing");
    t.platform.shutdown().await.unwrap();
}

reco_integration_tests::on_both_wirings!(
    a_bad_row_is_reported_by_line_and_a_strict_load_leaves_the_previous_snapshot_serving,
    a_load_interrupted_half_way_leaves_the_old_snapshot_answering,
    with_the_hot_key_cache_on_a_sync_switch_is_seen_at_once,
);
