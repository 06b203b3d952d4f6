//! The durable embedded store under `kill -9`: the real `reco-feature` binary takes a stream of writes, is killed
//! without warning, and after a restart on the same data directory every write it had acknowledged is there.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use reco_proto::{
    common::v1::Event,
    feature::v1::{
        AppendEventsRequest, GetUserContextRequest, PutUserFeaturesRequest, User,
        feature_service_client::FeatureServiceClient,
    },
};

fn start(dir: &std::path::Path) -> (Child, String) {
    let port = reco_test_support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_reco-feature"))
        .args([
            "--listen",
            &addr,
            "--backend",
            "redb",
            "--max-events",
            "10000",
            "--log-filter",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the reco-feature binary starts");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path());
    reco_server::wait_serving(&addr, Duration::from_secs(20))
        .await
        .unwrap();
    let client = FeatureServiceClient::new(reco_server::channel(&addr).unwrap());

    // Writers append numbered events as fast as they are acknowledged, each to its own user so acknowledgements
    // are ordered per user; a feature write goes along every tenth event.
    let acked: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mut client, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                for n in 1..=10_000usize {
                    let r = client
                        .append_events(AppendEventsRequest {
                            user_id: format!("writer-{w}"),
                            events: vec![Event {
                                item_id: format!("item-{n}"),
                                kind: "click".into(),
                                timestamp_ms: n as i64,
                                weight: 1.0,
                                event_id: String::new(),
                            }],
                        })
                        .await;
                    if r.is_err() {
                        return;
                    }
                    if n % 10 == 0 {
                        let r = client
                            .put_user_features(PutUserFeaturesRequest {
                                users: vec![User {
                                    user_id: format!("writer-{w}"),
                                    embedding: vec![n as f32],
                                    ..Default::default()
                                }],
                                ..Default::default()
                            })
                            .await;
                        if r.is_err() {
                            return;
                        }
                    }
                    acked[w].store(n, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Kill once every writer has had some writes acknowledged.
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < 30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }

    let (mut restarted, addr) = start(dir.path());
    reco_server::wait_serving(&addr, Duration::from_secs(20))
        .await
        .unwrap();
    let mut client = FeatureServiceClient::new(reco_server::channel(&addr).unwrap());
    for (w, a) in acked.iter().enumerate() {
        let acknowledged = a.load(Ordering::SeqCst);
        let ctx = client
            .get_user_context(GetUserContextRequest {
                user_id: format!("writer-{w}"),
                max_events: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let have: std::collections::HashSet<String> = ctx
            .recent_events
            .iter()
            .map(|e| e.item_id.clone())
            .collect();
        for n in 1..=acknowledged {
            assert!(
                have.contains(&format!("item-{n}")),
                "writer {w}: acknowledged event {n} is lost"
            );
        }
        // The last acknowledged feature write is there too (a later unacknowledged one may be as well).
        let embedding = ctx.embedding.first().copied().unwrap_or(0.0) as usize;
        assert!(
            embedding >= acknowledged / 10 * 10,
            "writer {w}: features at {embedding}, acknowledged {acknowledged}"
        );
    }
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}
