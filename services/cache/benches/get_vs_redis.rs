//! What the cache service adds on top of Redis, measured in one run on one redis-server:
//!
//! ```text
//!   redis-benchmark GET            C client -> redis                     (the floor)
//!   store HGET                     fred pool -> redis (+ JSON decode)    (what the backend adds)
//!   gRPC GetRecommendations        tonic client -> cache service -> fred -> redis   (what a caller sees)
//!   tonic + one fred GET           tonic client -> bare tonic server -> fred GET -> redis   (nothing of reco's)
//! ```
//!
//! The last row is the floor of any cache service that answers a gRPC get by asking Redis, on this machine: a tonic
//! server with none of reco's layers whose one handler does a single fred GET of a short string.
//!
//! One request in flight at a time (like `redis-benchmark -c 1`), so the figures are latencies, not throughput.
//! Run: `cargo bench -p reco-cache --bench get_vs_redis` (needs redis-server and redis-benchmark on PATH).
//! `RECO_BENCH_N` sets the number of measured calls (default 20000).

use std::{process::Command, time::Duration, time::Instant};

use hdrhistogram::Histogram;
use reco_cache_store::{CacheStore, RedisCacheStore, RedisConfig};
use reco_proto::{
    cache::v1::{
        GetRecommendationsRequest, PutRecommendationsRequest,
        cache_service_client::CacheServiceClient,
    },
    common::v1::{Candidate, SourceHit},
};
use reco_test_support::RedisServer;
use reco_types::{Scene, UserId};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
};

struct Row {
    name: &'static str,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn row(name: &'static str, h: &Histogram<u64>) -> Row {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Row {
        name,
        p50: us(0.5),
        p90: us(0.9),
        p99: us(0.99),
        p999: us(0.999),
        max: h.max() as f64 / 1000.0,
    }
}

/// A health service whose check asks Redis for one short string first: tonic plus one fred GET, nothing else.
struct GetThenAnswer(fred::clients::Client);

#[tonic::async_trait]
impl Health for GetThenAnswer {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        use fred::interfaces::KeysInterface;
        let v: Option<String> = self
            .0
            .get("floor-key")
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let status = if v.is_some() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }
    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, tonic::Status>>;
    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not part of the bench"))
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

/// redis-benchmark's GET row: (p50, p95, p99, max) in µs. It reports no other percentiles.
fn redis_benchmark(port: u16, n: usize) -> (f64, f64, f64, f64) {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "1",
            "-n",
            &n.to_string(),
            "-t",
            "set,get",
            "--csv",
        ])
        .output()
        .expect("redis-benchmark runs (Debian's redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    let get = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .unwrap_or_else(|| panic!("no GET row in redis-benchmark output:\n{text}"));
    let f: Vec<f64> = get
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse().expect("a number"))
        .collect();
    // rps, avg, min, p50, p95, p99, max (ms)
    (f[3] * 1000.0, f[4] * 1000.0, f[5] * 1000.0, f[6] * 1000.0)
}

fn main() {
    let n: usize = std::env::var("RECO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let redis = RedisServer::start().expect("redis-server on PATH");
    let port = redis.addr().port();

    // The service on its own runtime, as in its own process; the client on another thread.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = reco_cache::Config {
        backend: reco_cache::Backend::Redis,
        redis_url: redis.url(),
        redis_timeout_ms: 1000,
        ..Default::default()
    };
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = server_rt.block_on(async { reco_cache::build(&cfg).unwrap() });
    server_rt.spawn(server.serve(listener, std::future::pending()));

    // A bare tonic server with only the health service and none of reco's layers: the transport's own floor.
    let bare_listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let bare_addr = bare_listener.local_addr().unwrap().to_string();
    let (_reporter, bare_health) = tonic_health::server::health_reporter();
    server_rt.spawn(
        tonic::transport::Server::builder()
            .add_service(bare_health)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(bare_listener).with_nodelay(Some(true)),
            ),
    );

    // The floor: the same bare server, but its check first GETs a key from the same redis-server through fred.
    let floor_listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let floor_addr = floor_listener.local_addr().unwrap().to_string();
    let floor_redis = server_rt.block_on(async {
        use fred::interfaces::{ClientLike, KeysInterface};
        let c = fred::types::Builder::from_config(
            fred::types::config::Config::from_url(&redis.url()).unwrap(),
        )
        .with_connection_config(|c| {
            c.tcp = fred::types::config::TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            }
        })
        .build()
        .unwrap();
        c.init().await.unwrap();
        let _: () = c.set("floor-key", "ok", None, None, false).await.unwrap();
        c
    });
    server_rt.spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(GetThenAnswer(floor_redis)))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(floor_listener)
                    .with_nodelay(Some(true)),
            ),
    );

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (grpc, store, transport, bare_rtt, plain_rtt, floor) = client_rt.block_on(async {
        reco_server::wait_serving(&addr, Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = CacheServiceClient::new(reco_server::channel(&addr).unwrap());
        let items = (0..10)
            .map(|i| Candidate {
                item_id: format!("item-{i}"),
                score: 1.0 / (i as f32 + 1.0),
                sources: vec![SourceHit {
                    source: "cf".into(),
                    rank: i,
                    score: 0.5,
                }],
            })
            .collect();
        client
            .put_recommendations(PutRecommendationsRequest {
                user_id: "bench-user".into(),
                scene: "home".into(),
                items,
                ttl_ms: 3_600_000,
                record_impressions: false,
            })
            .await
            .unwrap();
        let req = || GetRecommendationsRequest {
            user_id: "bench-user".into(),
            scene: "home".into(),
        };
        for _ in 0..2000 {
            assert!(
                client
                    .get_recommendations(req())
                    .await
                    .unwrap()
                    .into_inner()
                    .found
            );
        }
        // The transport alone: a health check does no work, so it is the gRPC round trip's floor.
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            reco_server::channel(&addr).unwrap(),
        );
        let hreq = || tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        // 2,000 calls to warm up, then `n` timed ones.
        macro_rules! health_rtt {
            ($client:expr) => {{
                let client = &mut $client;
                for _ in 0..2000 {
                    client.check(hreq()).await.unwrap();
                }
                let mut h = hist();
                for _ in 0..n {
                    let t = Instant::now();
                    client.check(hreq()).await.unwrap();
                    h.record(t.elapsed().as_nanos() as u64).unwrap();
                }
                h
            }};
        }
        let transport = health_rtt!(health);
        let bare_rtt = health_rtt!(tonic_health::pb::health_client::HealthClient::new(
            reco_server::channel(&bare_addr).unwrap(),
        ));
        // The same bare server through a plain tonic channel, without reco's write coalescing.
        let plain_rtt = health_rtt!(tonic_health::pb::health_client::HealthClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{bare_addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect_lazy(),
        ));
        let floor = health_rtt!(tonic_health::pb::health_client::HealthClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{floor_addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .connect_lazy(),
        ));
        let mut grpc = hist();
        for _ in 0..n {
            let t = Instant::now();
            let r = client.get_recommendations(req()).await.unwrap();
            grpc.record(t.elapsed().as_nanos() as u64).unwrap();
            assert!(r.get_ref().found);
        }

        // The backend alone, in the client's process: fred + HGET + JSON decode.
        let store = RedisCacheStore::connect(&RedisConfig {
            url: redis.url(),
            pool_size: 1,
            command_timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap();
        let (u, s) = (
            UserId::parse("u", "bench-user").unwrap(),
            Scene::parse("s", "home").unwrap(),
        );
        while store.ping().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..2000 {
            let _ = store.get_result(&u, &s).await;
        }
        let mut direct = hist();
        for _ in 0..n {
            let t = Instant::now();
            let r = store.get_result(&u, &s).await.unwrap();
            direct.record(t.elapsed().as_nanos() as u64).unwrap();
            assert!(r.is_some());
        }
        (grpc, direct, transport, bare_rtt, plain_rtt, floor)
    });

    let (rb_p50, rb_p95, rb_p99, rb_max) = redis_benchmark(port, n);
    let rows = [
        row("gRPC GetRecommendations", &grpc),
        row("store get_result (fred)", &store),
        row("gRPC health check", &transport),
        row("bare tonic health check", &bare_rtt),
        row("  ... plain tonic channel", &plain_rtt),
        row("tonic + one fred GET", &floor),
    ];
    println!("cache get latency, {n} sequential calls each, one redis-server (µs):");
    println!(
        "  {:<26} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "p50", "p90", "p99", "p99.9", "max"
    );
    for r in &rows {
        println!(
            "  {:<26} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            r.name, r.p50, r.p90, r.p99, r.p999, r.max
        );
    }
    println!(
        "  {:<26} {:>8.1} {:>8} {:>8.1} {:>8} {:>8.1}   (p95 {rb_p95:.1}; redis-benchmark reports no p90/p99.9)",
        "redis-benchmark GET", rb_p50, "-", rb_p99, "-", rb_max
    );
    let added = rows[0].p99 - rb_p99;
    println!(
        "added over redis-benchmark: p50 {:.1} µs, p99 {added:.1} µs (target < 150 µs at p99)",
        rows[0].p50 - rb_p50
    );
    println!(
        "added over the backend's own round trip: p50 {:.1} µs, p99 {:.1} µs; a bare tonic round trip alone is p50 {:.1}, p99 {:.1}, and reco's server layers add p50 {:.1}, p99 {:.1} to it",
        rows[0].p50 - rows[1].p50,
        rows[0].p99 - rows[1].p99,
        rows[3].p50,
        rows[3].p99,
        rows[2].p50 - rows[3].p50,
        rows[2].p99 - rows[3].p99,
    );
    println!(
        "the floor (tonic + one fred GET, nothing of reco's) adds p50 {:.1} µs, p99 {:.1} µs over redis-benchmark",
        rows[5].p50 - rb_p50,
        rows[5].p99 - rb_p99
    );
    println!(
        "{{\"bench\":\"cache_get_vs_redis\",\"n\":{n},\"grpc_p50_us\":{:.1},\"grpc_p99_us\":{:.1},\"store_p99_us\":{:.1},\"redis_benchmark_p50_us\":{rb_p50:.1},\"redis_benchmark_p99_us\":{rb_p99:.1},\"added_p99_us\":{added:.1},\"floor_p99_us\":{:.1}}}",
        rows[0].p50, rows[0].p99, rows[1].p99, rows[5].p99
    );
    drop(server_rt);
}
