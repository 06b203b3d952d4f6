//! The ingest service against a real Kinesis API (a moto server of the test's own): a click put on the stream
//! reaches the user's very next answer; malformed records go to the dead-letter file and the rest flow; a
//! consumer killed with `kill -9` mid-stream resumes from its checkpoints and applies every event once; and a
//! reshard is read parents first.

use std::{collections::BTreeMap, path::Path, process::Child, time::Duration};

use aws_sdk_kinesis::{Client, primitives::Blob};
use reco_integration_tests::{TestPlatform, ask, recent_clicks, sequence};
use reco_proto::gateway::v1::RecommendRequest;
use reco_test_support::MotoServer;

async fn kinesis(moto: &MotoServer) -> Client {
    Client::new(
        &reco_aws::AwsSettings::local(moto.endpoint())
            .sdk_config()
            .await,
    )
}

/// A stream with `shards` shards, once it is ACTIVE.
async fn stream(k: &Client, name: &str, shards: i32) {
    k.create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = k
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .unwrap()
            .stream_status()
            .as_str()
            == "ACTIVE"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the stream is not active");
}

async fn put(k: &Client, name: &str, key: &str, data: &str) {
    put_at(k, name, key, None, data).await
}

/// Puts a record, at a chosen hash key when given (which shard takes it).
async fn put_at(k: &Client, name: &str, key: &str, hash: Option<u128>, data: &str) {
    k.put_record()
        .stream_name(name)
        .partition_key(key)
        .set_explicit_hash_key(hash.map(|h| h.to_string()))
        .data(Blob::new(data.as_bytes().to_vec()))
        .send()
        .await
        .unwrap();
}

fn ingest_config(
    moto: &MotoServer,
    stream: &str,
    gateway: &str,
    dir: &Path,
) -> reco_ingest::Config {
    let mut c = reco_ingest::Config {
        kinesis_stream: stream.into(),
        gateway_addr: gateway.into(),
        checkpoints: dir.join("checkpoints.json"),
        dead_letter: dir.join("dead-letter.jsonl"),
        poll_ms: 20,
        list_interval_ms: 200,
        ..Default::default()
    };
    c.kinesis.endpoint_url = Some(moto.endpoint());
    c.kinesis.region = Some("us-east-1".into());
    c
}

/// Starts the ingest service in this process; stopping the returned sender drains it.
async fn ingest_in_process(
    cfg: &reco_ingest::Config,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = reco_ingest::build(cfg).await.unwrap();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    reco_server::wait_serving(&addr, Duration::from_secs(30))
        .await
        .expect("ingest turns SERVING once the stream and the gateway answer");
    (stop, task)
}

/// Waits (a long while at most: not a timing) until `done` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_the_stream_reaches_the_next_answer_and_bad_records_are_dead_lettered() {
    let Some(moto) = MotoServer::start() else {
        eprintln!("moto_server is not installed: skipped (CI sets RECO_REQUIRE_MOTO)");
        return;
    };
    let k = kinesis(&moto).await;
    stream(&k, "clicks", 1).await;
    let t = TestPlatform::start().await;
    let (cache, feature) = (
        t.platform.addrs.cache.to_string(),
        t.platform.addrs.feature.to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = ingest_config(&moto, "clicks", &t.gateway_addr(), dir.path());
    let (stop, task) = ingest_in_process(&cfg).await;

    // An answer in the result cache.
    let user = t.known_user.clone();
    t.recommend(ask(&user)).await.unwrap();
    let mut cached = None;
    for _ in 0..100 {
        let r = t.recommend(ask(&user)).await.unwrap();
        if r.from_cache {
            cached = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clicked = cached.expect("a cached answer").items[0].item_id.clone();

    // Bad records first: they must not hold back the click behind them.
    put(&k, "clicks", &user, "{not json").await;
    put(
        &k,
        "clicks",
        &user,
        r#"{"user_id":"u1","item_id":"i1","kind":"clack"}"#,
    )
    .await;
    put(
        &k,
        "clicks",
        &user,
        r#"{"user_id":"u1","item_id":"i1","kind":"click","colour":"red"}"#,
    )
    .await;
    put(
        &k,
        "clicks",
        &user,
        &serde_json::json!({"user_id": user, "item_id": clicked, "kind": "click"}).to_string(),
    )
    .await;
    until("the click reaches the recent clicks", || async {
        recent_clicks(&cache, &user).await.first().map(|e| &e.0) == Some(&clicked)
    })
    .await;
    let (_, id) = recent_clicks(&cache, &user).await[0].clone();
    assert!(
        id.starts_with("clicks:shardId-"),
        "the record's place is its id: {id}"
    );
    assert_eq!(sequence(&feature, &user).await[0], (clicked.clone(), id));
    let next = t.recommend(ask(&user)).await.unwrap();
    assert!(
        next.items.iter().all(|i| i.item_id != clicked),
        "gone from the next answer"
    );
    assert_eq!(next.items.len(), 10);

    // One click on the stream and a user nobody knew is recalled for by that item.
    put(
        &k,
        "clicks",
        "n",
        &serde_json::json!({"user_id": "stream-newcomer", "item_id": clicked, "kind": "click"})
            .to_string(),
    )
    .await;
    until("the newcomer's click arrives", || async {
        !recent_clicks(&cache, "stream-newcomer").await.is_empty()
    })
    .await;
    let r = t
        .recommend(RecommendRequest {
            explain: true,
            bypass_cache: true,
            ..ask("stream-newcomer")
        })
        .await
        .unwrap();
    assert!(!r.cold_start);
    let vector = r
        .stages
        .iter()
        .find(|s| s.stage == "recall.vector")
        .unwrap();
    assert!(vector.candidates_out > 0, "{vector:?}");

    let dead: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("dead-letter.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert!(reasons[0].contains("not an event"), "{reasons:?}");
    assert!(
        reasons[1].contains("kind") && reasons[1].contains("clack"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("unknown field `colour`"), "{reasons:?}");
    assert_eq!(dead[0]["data"], "{not json");
    assert!(dead[0]["position"].as_str().is_some() && dead[0]["partition"].as_str().is_some());

    let _ = stop.send(());
    task.await.unwrap();
    t.platform.shutdown().await.unwrap();
}

const USERS: usize = 30;
const PER_USER: usize = 20;

/// `reco-it-serve serve ingest ...` as a child process.
fn spawn_ingest(cfg_args: &[String]) -> Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_reco-it-serve"))
        .arg("serve")
        .arg("ingest")
        .args(cfg_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Every user's sequence holds exactly their events, each once, in the order they were put.
async fn every_event_once(feature: &str) -> Result<(), String> {
    for u in 0..USERS {
        let user = format!("stream-u{u}");
        let ids: Vec<String> = sequence(feature, &user)
            .await
            .into_iter()
            .map(|e| e.1)
            .collect();
        let want: Vec<String> = (0..PER_USER).rev().map(|i| format!("{user}-{i}")).collect();
        if ids != want {
            return Err(format!("{user}: {ids:?}"));
        }
    }
    Ok(())
}

/// 600 events over two shards; the consumer is killed (SIGKILL) partway, restarted on the same checkpoints, and
/// meanwhile a shard is split. Every user's sequence ends with each of their events once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_and_a_reshard_lose_and_double_nothing() {
    let Some(moto) = MotoServer::start() else {
        eprintln!("moto_server is not installed: skipped (CI sets RECO_REQUIRE_MOTO)");
        return;
    };
    let k = kinesis(&moto).await;
    stream(&k, "stream-events", 2).await;
    let t = TestPlatform::start().await;
    let feature = t.platform.addrs.feature.to_string();
    let dir = tempfile::tempdir().unwrap();
    let args = vec![
        "--listen=127.0.0.1:0".to_string(),
        "--kinesis-stream=stream-events".into(),
        format!("--kinesis-endpoint-url={}", moto.endpoint()),
        "--kinesis-region=us-east-1".into(),
        format!("--gateway-addr={}", t.gateway_addr()),
        format!(
            "--checkpoints={}",
            dir.path().join("checkpoints.json").display()
        ),
        format!("--dead-letter={}", dir.path().join("dead.jsonl").display()),
        // Small reads, so the kill lands mid-stream.
        "--max-records=15".into(),
        "--poll-ms=10".into(),
        "--list-interval-ms=200".into(),
    ];
    let event = |u: usize, i: usize| {
        let user = format!("stream-u{u}");
        // Explicit ids: moto's SplitShard puts a parent's records into its children again (Kinesis keeps them
        // in the parent), and the ids make the copies the duplicates they are.
        serde_json::json!({
            "user_id": user, "item_id": format!("i{}", (u + i) % 250), "kind": "click",
            "event_id": format!("{user}-{i}")
        })
        .to_string()
    };
    // Each user at a hash key of their own, half the users in each shard, spread over the shard's range (so both
    // halves of a split take some): a user's events stay in one shard, in order.
    let shards = k
        .list_shards()
        .stream_name("stream-events")
        .send()
        .await
        .unwrap();
    let ranges: Vec<(String, u128, u128)> = shards
        .shards()
        .iter()
        .map(|s| {
            let r = s.hash_key_range().unwrap();
            (
                s.shard_id().to_string(),
                r.starting_hash_key().parse().unwrap(),
                r.ending_hash_key().parse().unwrap(),
            )
        })
        .collect();
    let hash = |u: usize| {
        let (_, lo, hi) = &ranges[u % 2];
        let step = (hi - lo) / (USERS as u128 / 2 + 1);
        lo + step * (u as u128 / 2 + 1)
    };
    let put_event = |u: usize, i: usize| {
        let (k, data) = (k.clone(), event(u, i));
        async move {
            put_at(
                &k,
                "stream-events",
                &format!("stream-u{u}"),
                Some(hash(u)),
                &data,
            )
            .await
        }
    };
    for i in 0..PER_USER / 2 {
        for u in 0..USERS {
            put_event(u, i).await;
        }
    }
    let mut child = spawn_ingest(&args);
    let mut applied = 0;
    for _ in 0..600 {
        applied = 0;
        for u in 0..USERS {
            applied += sequence(&feature, &format!("stream-u{u}")).await.len();
        }
        if applied >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        (40..USERS * PER_USER / 2).contains(&applied),
        "killed mid-stream: {applied} applied"
    );

    // The second half while the consumer is down, then a reshard: the two shards merged into one. (Moto routes a
    // record put after a reshard to the closed parent, where Kinesis would route it to the child, so the merge
    // comes after the last put; moto also copies the parents' records into the child, which the event ids make
    // the duplicates they are. Parents are read to their end before the child.)
    for i in PER_USER / 2..PER_USER {
        for u in 0..USERS {
            put_event(u, i).await;
        }
    }
    k.merge_shards()
        .stream_name("stream-events")
        .shard_to_merge(&ranges[0].0)
        .adjacent_shard_to_merge(&ranges[1].0)
        .send()
        .await
        .unwrap();
    let mut child = spawn_ingest(&args);
    let path = dir.path().join("checkpoints.json");
    let read = || -> BTreeMap<String, serde_json::Value> {
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| serde_json::from_value(c["partitions"].clone()).ok())
            .unwrap_or_default()
    };
    // The child read: it holds every record again (moto's copies), so the consumer has read all of them.
    let child_read = |p: &BTreeMap<String, serde_json::Value>| {
        p.iter().any(|(id, c)| {
            !ranges.iter().any(|r| &r.0 == id)
                && c["after"].as_str().and_then(|a| a.parse::<usize>().ok())
                    == Some(USERS * PER_USER)
        })
    };
    let mut partitions = read();
    for _ in 0..600 {
        if child_read(&partitions) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        partitions = read();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        child_read(&partitions),
        "the merge's child is read: {partitions:?}"
    );
    assert_eq!(
        partitions.len(),
        3,
        "two shards and the merge's child: {partitions:?}"
    );
    for (parent, ..) in &ranges {
        assert_eq!(
            partitions[parent]["finished"], true,
            "{parent} is read to its end"
        );
    }
    // What the gateway took is applied (its answer waits for that, within its wait); allow for a slow machine.
    let mut last = every_event_once(&feature).await;
    for _ in 0..100 {
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = every_event_once(&feature).await;
    }
    last.expect("every event once, in order");
    t.platform.shutdown().await.unwrap();
}

/// Checkpoints in DynamoDB (production's place for them), on moto: the table is made on demand, positions
/// outlive the client, and two streams sharing the table keep apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_in_dynamodb_outlive_the_consumer() {
    use reco_ingest::checkpoint::{Checkpoints, DynamoCheckpoints, Position};
    let Some(moto) = MotoServer::start() else {
        eprintln!("moto_server is not installed: skipped (CI sets RECO_REQUIRE_MOTO)");
        return;
    };
    let aws = reco_aws::AwsSettings::local(moto.endpoint());
    let a = DynamoCheckpoints::new(&aws, "reco-ingest-checkpoints", "events-a", true)
        .await
        .unwrap();
    let at = |s: &str, finished| Position {
        after: Some(s.into()),
        finished,
    };
    a.save("shardId-000000000000", &at("49590", false))
        .await
        .unwrap();
    a.save("shardId-000000000001", &at("77", true))
        .await
        .unwrap();
    a.save("shardId-000000000000", &at("49600", false))
        .await
        .unwrap();
    // A new client (a restarted consumer), the table made again (already there: fine), another stream beside.
    let again = DynamoCheckpoints::new(&aws, "reco-ingest-checkpoints", "events-a", true)
        .await
        .unwrap();
    let b = DynamoCheckpoints::new(&aws, "reco-ingest-checkpoints", "events-b", false)
        .await
        .unwrap();
    b.save("shardId-000000000000", &at("1", false))
        .await
        .unwrap();
    let got = again.load().await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got["shardId-000000000000"], at("49600", false));
    assert_eq!(got["shardId-000000000001"], at("77", true));
    assert_eq!(b.load().await.unwrap().len(), 1);
}
