//! `reco bench-events`: the stream path measured against a running gateway and a Kinesis API (moto here).
//!
//! 1. **Consumer throughput**: `--events` click records are put on a new stream first (spread over its shards,
//!    a last record per shard after them); then an ingest service starts in this process, and the time from its
//!    start until every shard's last record is in its user's recent clicks gives events a second. Shards are read
//!    in order, so the last record there means every record before it was recorded.
//! 2. **Freshness**: `--samples` times, one after another: a new user's answer is read (result cache on), a click
//!    on its first item is put on the stream, and Recommend is asked again every `--check-ms` until that item is
//!    gone; the time from the put to that answer is one sample (p50, p99, max). The consumer's poll interval
//!    (`--poll-ms`) is most of it.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::{
    Client,
    primitives::Blob,
    types::{PutRecordsRequestEntry, StreamStatus},
};
use hdrhistogram::Histogram;
use reco_proto::{
    cache::v1::{GetRecentEventsRequest, cache_service_client::CacheServiceClient},
    gateway::v1::{RecommendRequest, gateway_client::GatewayClient},
};

/// What to measure.
#[derive(Clone, Debug)]
pub struct EventsBench {
    pub gateway: String,
    pub cache: String,
    pub kinesis_endpoint: Option<String>,
    pub region: Option<String>,
    pub shards: i32,
    pub events: usize,
    pub samples: usize,
    pub poll_ms: u64,
    pub check_ms: u64,
    /// Items to click (any the platform knows).
    pub items: Vec<String>,
}

/// What it measured.
#[derive(Debug)]
pub struct EventsReport {
    pub events: usize,
    pub shards: i32,
    pub drain: Duration,
    pub freshness: Histogram<u64>,
    pub poll_ms: u64,
}

impl EventsReport {
    pub fn consumer_rate(&self) -> f64 {
        self.events as f64 / self.drain.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        let ms = |q: f64| self.freshness.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "consumer: {} events over {} shards recorded in {:.2?}: {:.0} events/s\n\
             freshness (stream put until Recommend reflects it, poll {} ms, {} samples): \
             p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.events,
            self.shards,
            self.drain,
            self.consumer_rate(),
            self.poll_ms,
            self.freshness.len(),
            ms(0.5),
            ms(0.99),
            self.freshness.max() as f64 / 1000.0
        )
    }

    pub fn json(&self) -> String {
        let ms = |q: f64| self.freshness.value_at_quantile(q) as f64 / 1000.0;
        serde_json::json!({
            "events": self.events,
            "shards": self.shards,
            "drain_s": self.drain.as_secs_f64(),
            "consumer_events_per_s": self.consumer_rate(),
            "poll_ms": self.poll_ms,
            "freshness_samples": self.freshness.len(),
            "freshness_p50_ms": ms(0.5),
            "freshness_p99_ms": ms(0.99),
            "freshness_max_ms": self.freshness.max() as f64 / 1000.0,
        })
        .to_string()
    }
}

fn click(user: &str, item: &str, id: &str) -> Vec<u8> {
    serde_json::json!({"user_id": user, "item_id": item, "kind": "click", "event_id": id})
        .to_string()
        .into_bytes()
}

async fn make_stream(k: &Client, name: &str, shards: i32) -> anyhow::Result<Vec<(String, u128)>> {
    k.create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .with_context(|| format!("cannot create the stream {name}"))?;
    for _ in 0..200 {
        let d = k.describe_stream_summary().stream_name(name).send().await?;
        if d.stream_description_summary()
            .is_some_and(|s| s.stream_status() == &StreamStatus::Active)
        {
            let listed = k.list_shards().stream_name(name).send().await?;
            return Ok(listed
                .shards()
                .iter()
                .map(|s| {
                    let start = s
                        .hash_key_range()
                        .and_then(|r| r.starting_hash_key().parse().ok())
                        .unwrap_or(0);
                    (s.shard_id().to_string(), start)
                })
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the stream {name} did not become active")
}

async fn recent_has(cache: &str, user: &str, id: &str) -> anyhow::Result<bool> {
    let events = CacheServiceClient::new(reco_server::channel(cache)?)
        .get_recent_events(GetRecentEventsRequest {
            user_id: user.into(),
            limit: 0,
        })
        .await?
        .into_inner()
        .events;
    Ok(events.iter().any(|e| e.event_id == id))
}

async fn answer(gateway: &str, user: &str) -> anyhow::Result<Vec<String>> {
    let mut r = tonic::Request::new(RecommendRequest {
        user_id: user.into(),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(2));
    Ok(GatewayClient::new(reco_server::channel(gateway)?)
        .recommend(r)
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|i| i.item_id)
        .collect())
}

pub async fn run(cfg: &EventsBench) -> anyhow::Result<EventsReport> {
    anyhow::ensure!(!cfg.items.is_empty(), "no items to click");
    let aws = reco_aws::AwsSettings {
        region: cfg.region.clone(),
        endpoint_url: cfg.kinesis_endpoint.clone(),
        operation_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let k = Client::new(&aws.sdk_config().await);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let stream = format!("reco-bench-{nonce}");
    let shards = make_stream(&k, &stream, cfg.shards).await?;

    // The backlog: records spread round-robin over the shards (an explicit hash key in each one's range), then a
    // last one per shard.
    let mut entries = Vec::with_capacity(cfg.events);
    for n in 0..cfg.events {
        let user = format!("bench-{nonce}-u{}", n % 1_000);
        let item = &cfg.items[(n * 31) % cfg.items.len()];
        let (_, hash) = &shards[n % shards.len()];
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key(&user)
                .explicit_hash_key(hash.to_string())
                .data(Blob::new(click(&user, item, &format!("b-{nonce}-{n}"))))
                .build()?,
        );
    }
    let sentinels: Vec<(String, String)> = shards
        .iter()
        .enumerate()
        .map(|(i, (_, hash))| {
            let user = format!("bench-{nonce}-last{i}");
            let id = format!("b-{nonce}-last{i}");
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(&user)
                    .explicit_hash_key(hash.to_string())
                    .data(Blob::new(click(&user, &cfg.items[0], &id)))
                    .build()
                    .expect("a full entry"),
            );
            (user, id)
        })
        .collect();
    let put_started = Instant::now();
    for chunk in entries.chunks(500) {
        let out = k
            .put_records()
            .stream_name(&stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await?;
        anyhow::ensure!(
            out.failed_record_count().unwrap_or(0) == 0,
            "the stream refused some records"
        );
    }
    eprintln!(
        "{} records put on {stream} in {:.1?}",
        entries.len(),
        put_started.elapsed()
    );

    // The consumer, in this process, from the oldest record.
    let dir = tempfile::tempdir()?;
    let mut ingest = reco_ingest::Config {
        kinesis_stream: stream.clone(),
        gateway_addr: cfg.gateway.clone(),
        checkpoints: dir.path().join("checkpoints.json"),
        dead_letter: dir.path().join("dead-letter.jsonl"),
        poll_ms: cfg.poll_ms,
        max_records: 10_000,
        list_interval_ms: 1_000,
        ..Default::default()
    };
    ingest.kinesis.endpoint_url = cfg.kinesis_endpoint.clone();
    ingest.kinesis.region = cfg.region.clone();
    ingest.kinesis.operation_timeout_ms = 30_000;
    ingest.kinesis.attempt_timeout_ms = 10_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let server = reco_ingest::build(&ingest).await?;
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut left = sentinels.clone();
    while !left.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the backlog was not recorded within 10 minutes"
        );
        let mut still = Vec::new();
        for (user, id) in left {
            if !recent_has(&cfg.cache, &user, &id).await? {
                still.push((user, id));
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let drain = started.elapsed();

    // Freshness, one sample at a time.
    let mut freshness = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for s in 0..cfg.samples {
        let user = format!("fresh-{nonce}-{s}");
        let before = answer(&cfg.gateway, &user).await?;
        let Some(item) = before.first().cloned() else {
            anyhow::bail!("{user} got an empty answer");
        };
        // Let the answer reach the result cache (written after it), so the next call is a cached one.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let at = Instant::now();
        k.put_record()
            .stream_name(&stream)
            .partition_key(&user)
            .data(Blob::new(click(&user, &item, &format!("f-{nonce}-{s}"))))
            .send()
            .await?;
        loop {
            anyhow::ensure!(
                at.elapsed() < Duration::from_secs(60),
                "{user}: the click was not reflected within a minute"
            );
            if !answer(&cfg.gateway, &user).await?.contains(&item) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(cfg.check_ms)).await;
        }
        freshness.saturating_record(at.elapsed().as_micros().max(1) as u64);
    }
    let _ = stop.send(());
    serving.await??;
    let _ = k
        .delete_stream()
        .stream_name(&stream)
        .enforce_consumer_deletion(true)
        .send()
        .await;
    Ok(EventsReport {
        events: entries.len(),
        shards: cfg.shards,
        drain,
        freshness,
        poll_ms: cfg.poll_ms,
    })
}
