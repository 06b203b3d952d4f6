//! RecordEvents end to end: what a user does reaches their very next answer (the result cache on), their recent
//! clicks, their real-time sequence and their recall; bad events are refused whole, naming the event and field;
//! and nothing acknowledged is lost while the cache service is down, even if the gateway is killed meanwhile.

use std::{collections::BTreeMap, path::Path, time::Duration};

use reco_cli::processes::{ProcessOptions, ProcessPlatform};
use reco_integration_tests::{TestPlatform, Wiring, ask, recent_clicks, sequence, small_data};
use reco_proto::gateway::v1::{
    RecommendRequest, RecommendResponse, RecordEventsRequest, RecordEventsResponse, StageStatus,
    UserEvent, gateway_client::GatewayClient,
};
use tonic::Code;

fn click(user: &str, item: &str, id: &str) -> UserEvent {
    UserEvent {
        user_id: user.into(),
        item_id: item.into(),
        kind: "click".into(),
        event_id: id.into(),
        ..Default::default()
    }
}

async fn record(
    gateway: &str,
    events: Vec<UserEvent>,
) -> Result<RecordEventsResponse, tonic::Status> {
    let mut client = GatewayClient::new(reco_server::channel(gateway).unwrap());
    let mut r = tonic::Request::new(RecordEventsRequest { events });
    r.set_timeout(Duration::from_secs(10));
    client
        .record_events(r)
        .await
        .map(tonic::Response::into_inner)
}

fn ids(r: &RecommendResponse) -> Vec<String> {
    r.items.iter().map(|i| i.item_id.clone()).collect()
}

fn stage<'a>(r: &'a RecommendResponse, name: &str) -> &'a reco_proto::gateway::v1::StageReport {
    r.stages
        .iter()
        .find(|s| s.stage == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

async fn a_click_reaches_the_next_answer_the_recent_clicks_the_sequence_and_recall(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let user = t.known_user.clone();
    let gateway = t.gateway_addr();
    let (cache, feature) = (
        t.platform.addrs.cache.to_string(),
        t.platform.addrs.feature.to_string(),
    );

    // An answer in the result cache (written after the first answer, off its path).
    let first = t.recommend(ask(&user)).await.unwrap();
    let mut cached = None;
    for _ in 0..100 {
        let r = t.recommend(ask(&user)).await.unwrap();
        if r.from_cache {
            cached = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cached = cached.expect("the result cache answers within 2 s");
    assert_eq!(ids(&cached), ids(&first));
    let clicked = cached.items[0].item_id.clone();

    let r = record(&gateway, vec![click(&user, &clicked, "ev-click-1")])
        .await
        .unwrap();
    assert_eq!((r.accepted, r.duplicates, r.pending), (1, 0, 0), "{r:?}");
    assert_eq!(r.event_ids, ["ev-click-1"]);

    // The very next call, the result cache on: the clicked item is gone, and the answer is still full.
    let next = t.recommend(ask(&user)).await.unwrap();
    assert!(!ids(&next).contains(&clicked), "{:?}", ids(&next));
    assert_eq!(next.items.len(), 10);
    // First in the recent clicks and in the sequence.
    assert_eq!(
        recent_clicks(&cache, &user).await.first(),
        Some(&(clicked.clone(), "ev-click-1".to_string()))
    );
    assert_eq!(
        sequence(&feature, &user).await.first(),
        Some(&(clicked.clone(), "ev-click-1".to_string()))
    );

    // The same event again (a retry) changes nothing.
    let again = record(&gateway, vec![click(&user, &clicked, "ev-click-1")])
        .await
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    let seq = sequence(&feature, &user).await;
    assert_eq!(
        seq.iter().filter(|(_, id)| id == "ev-click-1").count(),
        1,
        "{seq:?}"
    );

    // A user nobody knows has nothing to search by; one click later, vector recall searches by that item.
    let newcomer = "newcomer-1";
    let explain = RecommendRequest {
        explain: true,
        bypass_cache: true,
        ..ask(newcomer)
    };
    let before = t.recommend(explain.clone()).await.unwrap();
    assert!(before.cold_start);
    let vector = stage(&before, "recall.vector");
    assert_eq!(
        StageStatus::try_from(vector.status).unwrap(),
        StageStatus::Skipped,
        "{vector:?}"
    );
    record(&gateway, vec![click(newcomer, &clicked, "ev-new-1")])
        .await
        .unwrap();
    let after = t.recommend(explain).await.unwrap();
    assert!(!after.cold_start, "one click and the user is known");
    let vector = stage(&after, "recall.vector");
    assert_eq!(
        StageStatus::try_from(vector.status).unwrap(),
        StageStatus::Ok,
        "{vector:?}"
    );
    assert!(vector.candidates_out > 0, "{vector:?}");
    assert!(
        after
            .explanations
            .iter()
            .any(|e| e.sources.iter().any(|s| s.source == "vector")),
        "candidates recalled by the clicked item"
    );
    assert!(
        !ids(&after).contains(&clicked),
        "the clicked item is not served back"
    );
    t.platform.shutdown().await.unwrap();
}

async fn bad_events_are_refused_whole_naming_the_event_and_field(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let gateway = t.gateway_addr();
    let ok = || click("bad-input-user", "i1", "ev-fine");
    let now = reco_types::now_ms() as i64;
    let cases: Vec<(Vec<UserEvent>, &str)> = vec![
        (vec![], "events: must not be empty"),
        (
            vec![
                ok(),
                UserEvent {
                    user_id: String::new(),
                    ..ok()
                },
            ],
            "events[1].user_id",
        ),
        (
            vec![
                ok(),
                UserEvent {
                    item_id: "x".repeat(257),
                    ..ok()
                },
            ],
            "events[1].item_id",
        ),
        (
            vec![
                ok(),
                UserEvent {
                    event_id: "e".repeat(257),
                    ..ok()
                },
            ],
            "events[1].event_id",
        ),
        (
            vec![UserEvent {
                kind: "clack".into(),
                ..ok()
            }],
            "events[0].kind",
        ),
        (
            vec![
                ok(),
                UserEvent {
                    timestamp_ms: now + 3_600_000,
                    ..ok()
                },
            ],
            "events[1].timestamp_ms",
        ),
        (
            vec![UserEvent {
                weight: f32::NAN,
                ..ok()
            }],
            "events[0].weight",
        ),
        (
            vec![UserEvent {
                kind: "follow".into(),
                item_id: String::new(),
                ..ok()
            }],
            "events[0].target_user_id",
        ),
        (
            vec![UserEvent {
                kind: "follow".into(),
                target_user_id: "u2".into(),
                ..ok()
            }],
            "events[0].item_id: must be empty for a follow",
        ),
        (vec![ok(); 1_001], "the limit is 1000"),
    ];
    for (events, named) in cases {
        let e = record(&gateway, events).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{named}: {e:?}");
        assert!(e.message().contains(named), "{named}: {}", e.message());
    }
    // Nothing of a refused batch was kept, and the good events after them flow.
    assert!(
        sequence(&t.platform.addrs.feature.to_string(), "bad-input-user")
            .await
            .is_empty()
    );
    let r = record(&gateway, vec![ok()]).await.unwrap();
    assert_eq!(r.accepted, 1, "{r:?}");
    t.platform.shutdown().await.unwrap();
}

reco_integration_tests::on_both_wirings!(
    a_click_reaches_the_next_answer_the_recent_clicks_the_sequence_and_recall,
    bad_events_are_refused_whole_naming_the_event_and_field,
);

const USERS: usize = 20;
const PER_USER: usize = 10;

fn batch(round: usize) -> Vec<UserEvent> {
    (0..USERS)
        .map(|u| {
            click(
                &format!("outage-u{u}"),
                &format!("i{}", (u * 7 + round) % 250),
                &format!("outage-u{u}-{round}"),
            )
        })
        .collect()
}

/// Six processes; the cache service dies while events arrive, and then the gateway is killed with events still
/// waiting for it. When both are back, every event is in every place once: none lost, none doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_while_the_cache_is_down_even_when_the_gateway_is_killed() {
    let mut p = ProcessPlatform::start(
        Path::new(env!("CARGO_BIN_EXE_reco-it-serve")),
        ProcessOptions {
            flags: BTreeMap::from([("gateway", vec!["--event-wait-ms=3000".to_string()])]),
            ..Default::default()
        },
    )
    .await
    .expect("six processes start");
    reco_cli::load::load(small_data(), &p.addrs)
        .await
        .expect("data loads");
    // The outage users are new ones: their sequences hold only these events.
    let gateway = p.addrs.gateway.to_string();
    let (cache, feature) = (p.addrs.cache.to_string(), p.addrs.feature.to_string());

    // Half the events with everything up.
    for round in 0..PER_USER / 2 {
        let r = record(&gateway, batch(round)).await.unwrap();
        assert_eq!((r.accepted, r.pending), (USERS as u32, 0), "{r:?}");
    }
    // The cache dies; events are still acknowledged (on disk), and pending for it.
    p.kill("cache").unwrap();
    for round in PER_USER / 2..PER_USER {
        let r = record(&gateway, batch(round)).await.unwrap();
        assert_eq!(r.accepted, USERS as u32, "{r:?}");
        assert!(r.pending > 0, "the cache cannot have them: {r:?}");
    }
    // The gateway is killed with them waiting; the cache comes back (empty: its memory store died with it), then
    // the gateway.
    p.kill("gateway").unwrap();
    p.restart("cache").await.unwrap();
    p.restart("gateway").await.unwrap();

    let mut done = false;
    for _ in 0..300 {
        let mut all = true;
        for u in 0..USERS {
            if recent_clicks(&cache, &format!("outage-u{u}")).await.len() < PER_USER / 2 {
                all = false;
                break;
            }
        }
        if all {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the cache got what waited for it");
    for u in 0..USERS {
        let user = format!("outage-u{u}");
        let want = |rounds: std::ops::Range<usize>| -> Vec<String> {
            rounds.rev().map(|r| format!("{user}-{r}")).collect()
        };
        let seq: Vec<String> = sequence(&feature, &user)
            .await
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(
            seq,
            want(0..PER_USER),
            "{user}: the sequence has each event once, in order"
        );
        let clicks: Vec<String> = recent_clicks(&cache, &user)
            .await
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(
            clicks,
            want(PER_USER / 2..PER_USER),
            "{user}: the restarted cache has what arrived while it was down, once"
        );
    }
    p.shutdown(Duration::from_secs(10));
}
