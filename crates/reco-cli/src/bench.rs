//! `reco bench`: load against the gateway or any single service.
//!
//! Open loop (default): requests are sent on a fixed schedule (`--rate` per second) whatever the answers do, and
//! each latency is measured from its *intended* send time, so a stall shows up as latency instead of hiding as a
//! lower send rate (coordinated omission). Closed loop: `--concurrency` workers send back to back, to find the
//! most the target sustains. Latencies go into an HDR histogram; errors are counted by gRPC status; against the
//! gateway, each stage's own elapsed time (from its stage reports) is aggregated too.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use reco_proto::{
    cache::v1::{GetRecommendationsRequest, cache_service_client::CacheServiceClient},
    common::v1::SourceHit,
    feature::v1::{
        BatchGetItemFeaturesRequest, GetUserContextRequest,
        feature_service_client::FeatureServiceClient,
    },
    gateway::v1::{
        RecommendRequest, RecordEventsRequest, UserEvent, gateway_client::GatewayClient,
    },
    graph_recall::v1::{RecallRequest, graph_recall_client::GraphRecallClient},
    ranking::v1::{RankCandidate, RankRequest, ranking_client::RankingClient},
    vector_recall::v1::{SearchRequest, search_request, vector_recall_client::VectorRecallClient},
};
use reco_server::TracedChannel;
use tokio::sync::Semaphore;

/// What to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Gateway Recommend, a different user each call (cache bypassed).
    Recommend,
    /// Feature GetUserContext.
    UserContext,
    /// Feature BatchGetItemFeatures of 200 items.
    ItemBatch,
    /// Cache GetRecommendations (a hit or a miss, as the user's cache holds).
    CacheGet,
    /// Vector-recall Search by user, k = 100.
    VectorSearch,
    /// Graph-recall Recall by user with the default strategies, k = 100.
    GraphRecall,
    /// Ranking Rank of 500 candidates found by CF.
    Rank,
    /// Gateway RecordEvents of a batch of [`EVENTS_PER_CALL`] clicks (fresh ids, users and items spread over the
    /// data): how many events a second the outbox and its sinks take.
    RecordEvents,
}

/// Events in one RecordEvents call of the `record-events` target.
pub const EVENTS_PER_CALL: usize = 100;

impl Target {
    /// What one call carries: events for RecordEvents, one request otherwise.
    pub fn per_call(self) -> u64 {
        match self {
            Target::RecordEvents => EVENTS_PER_CALL as u64,
            _ => 1,
        }
    }
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub target: Target,
    pub addr: String,
    /// Requests per second (open loop); None runs closed loop.
    pub rate: Option<u32>,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub users: Vec<String>,
    pub items: Vec<String>,
    /// The caller deadline sent with each request.
    pub timeout: Duration,
    /// Feature-service targets: build every answer as the generated Rust types, as the gateway does. Off, each
    /// answer is received in full, every field of it read and checked for its wire form, and what it says checked
    /// (the user named; each of the 200 ids answered or listed missing), but nothing is built: building 200
    /// items took the load generator ~0.6 ms of CPU per answer, time counted in each call's latency and CPU that
    /// on a 2-core machine the service under test then competes for.
    pub decode_answers: bool,
}

/// One run's results.
pub struct BenchReport {
    pub sent: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub degraded: u64,
    pub latency: Histogram<u64>,
    pub stages: BTreeMap<String, Histogram<u64>>,
    /// Latency of the calls due in each second of the run, in order: shows whether a tail is spread over the run
    /// or comes from a few bad seconds (a stall, a burst of cache expiries).
    pub by_second: Vec<Histogram<u64>>,
    pub elapsed: Duration,
    /// Events (or requests) one call carries.
    pub per_call: u64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    degraded: u64,
    stages: BTreeMap<String, Histogram<u64>>,
    by_second: Vec<Histogram<u64>>,
}

#[derive(Clone)]
struct Caller {
    target: Target,
    channel: TracedChannel,
    users: Arc<Vec<String>>,
    items: Arc<Vec<String>>,
    timeout: Duration,
    decode_answers: bool,
    /// Makes this run's event ids its own (a gateway refuses ids it has seen).
    nonce: u64,
}

/// An answer read without being built ([`BenchConfig::decode_answers`] off): every field is read and checked for
/// its wire form, and counted by its number.
#[derive(Clone, Debug, Default)]
struct Counted {
    by_number: [usize; 8],
}

impl Counted {
    fn of(&self, number: usize) -> usize {
        self.by_number.get(number).copied().unwrap_or(0)
    }
}

impl prost::Message for Counted {
    fn encode_raw(&self, _: &mut impl prost::bytes::BufMut) {
        unreachable!("decoded from answers only, never sent")
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if let Some(n) = self.by_number.get_mut(tag as usize) {
            *n += 1;
        }
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Caller {
    /// Calls the unary method at `path` and reads the answer without building it.
    async fn counted<T: prost::Message + Send + 'static>(
        &self,
        path: &'static str,
        request: tonic::Request<T>,
    ) -> Result<Counted, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{path}: not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        let codec = reco_proto::codec::SliceCodec::<T, Counted>::default();
        Ok(grpc.unary(request, path, codec).await?.into_inner())
    }

    /// A request carrying the run's deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        r
    }

    /// Sends call number `n`; Ok carries the stage reports (gateway) and whether the answer was degraded.
    async fn call(&self, n: u64) -> Result<(Vec<(String, u64)>, bool), tonic::Status> {
        let user = self.users[(n as usize) % self.users.len().max(1)].clone();
        match self.target {
            Target::Recommend => {
                let r = self.request(RecommendRequest {
                    user_id: user,
                    bypass_cache: true,
                    ..Default::default()
                });
                let a = GatewayClient::new(self.channel.clone())
                    .recommend(r)
                    .await?
                    .into_inner();
                Ok((
                    a.stages
                        .into_iter()
                        .map(|s| (s.stage, s.elapsed_us))
                        .collect(),
                    a.degraded,
                ))
            }
            Target::UserContext => {
                let r = self.request(GetUserContextRequest {
                    user_id: user.clone(),
                    ..Default::default()
                });
                // The answer names the user asked about (field 1 of GetUserContextResponse).
                let named = if self.decode_answers {
                    let a = FeatureServiceClient::new(self.channel.clone())
                        .get_user_context(r)
                        .await?
                        .into_inner();
                    a.user_id == user
                } else {
                    self.counted("/reco.feature.v1.FeatureService/GetUserContext", r)
                        .await?
                        .of(1)
                        == 1
                };
                if !named {
                    return Err(tonic::Status::internal(format!(
                        "the answer does not name user {user}"
                    )));
                }
                Ok((Vec::new(), false))
            }
            Target::ItemBatch => {
                let start = (n as usize * 37) % self.items.len().max(1);
                let ids = (0..200)
                    .map(|k| self.items[(start + k) % self.items.len()].clone())
                    .collect();
                let r = self.request(BatchGetItemFeaturesRequest {
                    item_ids: ids,
                    include_embeddings: true,
                    ..Default::default()
                });
                let answered = if self.decode_answers {
                    let a = FeatureServiceClient::new(self.channel.clone())
                        .batch_get_item_features(r)
                        .await?
                        .into_inner();
                    a.items.len() + a.missing_item_ids.len()
                } else {
                    // Fields 1 and 2 of BatchGetItemFeaturesResponse: items, missing_item_ids.
                    let a = self
                        .counted("/reco.feature.v1.FeatureService/BatchGetItemFeatures", r)
                        .await?;
                    a.of(1) + a.of(2)
                };
                if answered != 200 {
                    return Err(tonic::Status::internal(format!(
                        "200 items asked, {answered} answered or listed missing"
                    )));
                }
                Ok((Vec::new(), false))
            }
            Target::CacheGet => {
                let r = self.request(GetRecommendationsRequest {
                    user_id: user,
                    ..Default::default()
                });
                CacheServiceClient::new(self.channel.clone())
                    .get_recommendations(r)
                    .await?;
                Ok((Vec::new(), false))
            }
            Target::VectorSearch => {
                let r = self.request(SearchRequest {
                    query: Some(search_request::Query::UserId(user)),
                    k: 100,
                    ..Default::default()
                });
                VectorRecallClient::new(self.channel.clone())
                    .search(r)
                    .await?;
                Ok((Vec::new(), false))
            }
            Target::GraphRecall => {
                let r = self.request(RecallRequest {
                    user_id: user,
                    k: 100,
                    ..Default::default()
                });
                GraphRecallClient::new(self.channel.clone())
                    .recall(r)
                    .await?;
                Ok((Vec::new(), false))
            }
            Target::Rank => {
                let start = (n as usize * 37) % self.items.len().max(1);
                let candidates = (0..500.min(self.items.len()))
                    .map(|k| RankCandidate {
                        item_id: self.items[(start + k) % self.items.len()].clone(),
                        sources: vec![SourceHit {
                            source: "cf".into(),
                            rank: k as u32,
                            score: 1.0 / (1.0 + k as f32),
                        }],
                        ..Default::default()
                    })
                    .collect();
                let r = self.request(RankRequest {
                    user_id: user,
                    candidates,
                    ..Default::default()
                });
                RankingClient::new(self.channel.clone()).rank(r).await?;
                Ok((Vec::new(), false))
            }
            Target::RecordEvents => {
                let events = (0..EVENTS_PER_CALL)
                    .map(|k| {
                        let at = n as usize * EVENTS_PER_CALL + k;
                        UserEvent {
                            user_id: self.users[at % self.users.len()].clone(),
                            item_id: self.items[(at * 31) % self.items.len()].clone(),
                            kind: "click".into(),
                            event_id: format!("bench-{:x}-{n}-{k}", self.nonce),
                            ..Default::default()
                        }
                    })
                    .collect();
                let r = self.request(RecordEventsRequest { events });
                let a = GatewayClient::new(self.channel.clone())
                    .record_events(r)
                    .await?
                    .into_inner();
                if a.accepted as usize != EVENTS_PER_CALL {
                    return Err(tonic::Status::internal(format!(
                        "{EVENTS_PER_CALL} events sent, {} accepted",
                        a.accepted
                    )));
                }
                // An answer with events still pending (a sink slower than the call's wait) counts as degraded.
                Ok((Vec::new(), a.pending > 0))
            }
        }
    }
}

/// Records call `took` that was due `at` after the window started.
fn record(
    tally: &Mutex<Tally>,
    latency: &Mutex<Histogram<u64>>,
    at: Duration,
    took: Duration,
    r: Result<(Vec<(String, u64)>, bool), tonic::Status>,
) {
    let us = took.as_micros().max(1) as u64;
    latency.lock().expect("not poisoned").saturating_record(us);
    let mut t = tally.lock().expect("not poisoned");
    let second = at.as_secs() as usize;
    if t.by_second.len() <= second {
        t.by_second.resize_with(second + 1, hist);
    }
    t.by_second[second].saturating_record(us);
    match r {
        Ok((stages, degraded)) => {
            t.ok += 1;
            t.degraded += u64::from(degraded);
            for (stage, us) in stages {
                if us > 0 {
                    t.stages
                        .entry(stage)
                        .or_insert_with(hist)
                        .saturating_record(us);
                }
            }
        }
        Err(s) => *t.errors.entry(format!("{:?}", s.code())).or_default() += 1,
    }
}

/// Runs the benchmark: warm-up (not recorded), then the measured window.
pub async fn run(cfg: &BenchConfig) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(!cfg.users.is_empty(), "no users to ask for");
    let caller = Caller {
        target: cfg.target,
        channel: reco_server::channel(&cfg.addr)?,
        users: Arc::new(cfg.users.clone()),
        items: Arc::new(cfg.items.clone()),
        timeout: cfg.timeout,
        decode_answers: cfg.decode_answers,
        nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    if matches!(
        cfg.target,
        Target::ItemBatch | Target::Rank | Target::RecordEvents
    ) {
        anyhow::ensure!(!cfg.items.is_empty(), "no items to ask for");
    }
    // Warm-up: the same load, not recorded.
    let _ = drive(cfg, &caller, cfg.warmup, 0).await;
    let (tally, latency, sent, elapsed) = drive(cfg, &caller, cfg.duration, 1_000_000).await;
    let t = std::mem::take(&mut *tally.lock().expect("not poisoned"));
    Ok(BenchReport {
        sent,
        ok: t.ok,
        errors: t.errors,
        degraded: t.degraded,
        latency: latency.lock().expect("not poisoned").clone(),
        stages: t.stages,
        by_second: t.by_second,
        elapsed,
        per_call: cfg.target.per_call(),
    })
}

type Drive = (Arc<Mutex<Tally>>, Arc<Mutex<Histogram<u64>>>, u64, Duration);

async fn drive(cfg: &BenchConfig, caller: &Caller, length: Duration, offset: u64) -> Drive {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let latency = Arc::new(Mutex::new(hist()));
    let started = Instant::now();
    let sent = match cfg.rate {
        Some(rate) => {
            // Open loop: call i is due at start + i / rate; its latency counts from then. Calls are paced by an OS
            // thread: tokio's timer ticks in whole milliseconds, so a call paced by it leaves up to 1 ms late and
            // that lateness would be counted as the server's latency. A thread's sleep is accurate to tens of µs.
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let in_flight = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
            let handle = tokio::runtime::Handle::current();
            let (caller, tally2, latency2) = (caller.clone(), tally.clone(), latency.clone());
            let pacer = std::thread::spawn(move || {
                let mut tasks = Vec::new();
                let mut sent = 0u64;
                loop {
                    let due = started + interval * sent as u32;
                    if due.duration_since(started) >= length {
                        break;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let permit = handle
                        .block_on(in_flight.clone().acquire_owned())
                        .expect("never closed");
                    let (c, t, l, n) = (
                        caller.clone(),
                        tally2.clone(),
                        latency2.clone(),
                        offset + sent,
                    );
                    tasks.push(handle.spawn(async move {
                        let r = c.call(n).await;
                        record(&t, &l, due - started, due.elapsed(), r);
                        drop(permit);
                    }));
                    tasks.retain(|t| !t.is_finished());
                    sent += 1;
                }
                (sent, tasks)
            });
            let (n, tasks) = tokio::task::spawn_blocking(move || pacer.join())
                .await
                .expect("pacer joins")
                .expect("pacer does not panic");
            for t in tasks {
                let _ = t.await;
            }
            n
        }
        None => {
            // Closed loop: each worker sends its next call when the last one is answered.
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..cfg.concurrency.max(1) {
                let (c, t, l, k) = (
                    caller.clone(),
                    tally.clone(),
                    latency.clone(),
                    counter.clone(),
                );
                tasks.spawn(async move {
                    while started.elapsed() < length {
                        let n = k.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let at = Instant::now();
                        let r = c.call(offset + n).await;
                        record(&t, &l, at - started, at.elapsed(), r);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            counter.load(std::sync::atomic::Ordering::Relaxed)
        }
    };
    (tally, latency, sent, started.elapsed())
}

impl BenchReport {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(h: &Histogram<u64>, q: f64) -> f64 {
        h.value_at_quantile(q) as f64 / 1000.0
    }

    /// The table `reco bench` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sent {}, ok {}, errors {:?}, degraded {}, {:.0} ok/s over {:.1?}{}",
            self.sent,
            self.ok,
            self.errors,
            self.degraded,
            self.throughput(),
            self.elapsed,
            if self.per_call > 1 {
                format!(
                    " ({:.0} events/s, {} a call)",
                    self.throughput() * self.per_call as f64,
                    self.per_call
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, h: &Histogram<u64>| {
            let _ = writeln!(
                out,
                "  {name:<26.26} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                Self::ms(h, 0.5),
                Self::ms(h, 0.9),
                Self::ms(h, 0.99),
                Self::ms(h, 0.999),
                h.max() as f64 / 1000.0
            );
        };
        row("end to end", &self.latency);
        for (stage, h) in &self.stages {
            row(stage, h);
        }
        let mut worst: Vec<(usize, &Histogram<u64>)> = self.by_second.iter().enumerate().collect();
        worst.sort_by_key(|(_, h)| std::cmp::Reverse(h.value_at_quantile(0.99)));
        if worst.len() > 1 {
            let seconds: Vec<String> = worst
                .iter()
                .take(3)
                .map(|(s, h)| {
                    format!(
                        "{s} s: p99 {:.2} ms, max {:.2} ms",
                        Self::ms(h, 0.99),
                        h.max() as f64 / 1000.0
                    )
                })
                .collect();
            let _ = writeln!(out, "  worst seconds: {}", seconds.join("; "));
        }
        out
    }

    /// The figures as one JSON object.
    pub fn json(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| Self::ms(h, q);
        let stages: serde_json::Map<String, serde_json::Value> = self
            .stages
            .iter()
            .map(|(s, h)| {
                (
                    s.clone(),
                    serde_json::json!({"p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99)}),
                )
            })
            .collect();
        serde_json::json!({
            "sent": self.sent,
            "ok": self.ok,
            "throughput": self.throughput(),
            "per_call": self.per_call,
            "events_per_s": self.throughput() * self.per_call as f64,
            "p50_ms": ms(&self.latency, 0.5),
            "p90_ms": ms(&self.latency, 0.9),
            "p99_ms": ms(&self.latency, 0.99),
            "p999_ms": ms(&self.latency, 0.999),
            "max_ms": self.latency.max() as f64 / 1000.0,
            "degraded": self.degraded,
            "errors": self.errors,
            "stages": stages,
            "by_second": self.by_second.iter().map(|h| serde_json::json!({
                "calls": h.len(),
                "p99_ms": ms(h, 0.99),
                "max_ms": h.max() as f64 / 1000.0,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use reco_proto::feature::v1::{BatchGetItemFeaturesResponse, Item};

    use super::Counted;

    #[test]
    fn an_answer_read_without_building_it_is_counted_by_field_and_checked_for_its_wire_form() {
        let answer = BatchGetItemFeaturesResponse {
            items: (0..3)
                .map(|i| Item {
                    item_id: format!("i{i}"),
                    embedding: vec![0.5; 64],
                    ..Default::default()
                })
                .collect(),
            missing_item_ids: vec!["gone".into()],
            feature_version: "v1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let counted = Counted::decode(answer.as_slice()).unwrap();
        assert_eq!(
            (counted.of(1), counted.of(2), counted.of(3), counted.of(4)),
            (3, 1, 1, 0)
        );
        assert!(
            Counted::decode(&answer[..answer.len() - 5]).is_err(),
            "a cut answer is refused"
        );
    }
}
