//! The gateway's per-stage metrics, read back through OpenTelemetry's in-memory exporter: a latency histogram and
//! an outcome count per stage. (Its own test binary: the meter provider is process-global.)

use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
    data::{AggregatedMetrics, MetricData, ResourceMetrics},
};
use reco_integration_tests::{TestPlatform, Wiring, ask};
use reco_proto::gateway::v1::RecommendRequest;

fn has(attrs: &[KeyValue], key: &str, value: &str) -> bool {
    attrs
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
}

/// The count recorded for (stage, status) in the histogram and in the counter.
fn observed(metrics: &[ResourceMetrics], stage: &str, status: &str) -> (u64, u64) {
    let (mut in_histogram, mut in_counter) = (0, 0);
    for m in metrics
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
    {
        match (m.name(), m.data()) {
            ("reco.gateway.stage.duration", AggregatedMetrics::F64(MetricData::Histogram(h))) => {
                for p in h.data_points() {
                    let attrs: Vec<KeyValue> = p.attributes().cloned().collect();
                    if has(&attrs, "stage", stage) && has(&attrs, "status", status) {
                        in_histogram = in_histogram.max(p.count());
                    }
                }
            }
            ("reco.gateway.stage.outcomes", AggregatedMetrics::U64(MetricData::Sum(s))) => {
                for p in s.data_points() {
                    let attrs: Vec<KeyValue> = p.attributes().cloned().collect();
                    if has(&attrs, "stage", stage) && has(&attrs, "status", status) {
                        in_counter = in_counter.max(p.value());
                    }
                }
            }
            _ => {}
        }
    }
    (in_histogram, in_counter)
}

/// Both wirings in one test, one after the other: the meter provider is global to the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_records_its_latency_and_outcome() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    global::set_meter_provider(provider.clone());

    for (n, wiring) in [Wiring::InProcess, Wiring::OverGrpc]
        .into_iter()
        .enumerate()
    {
        let runs = 3 * (n as u64 + 1);
        record_three(wiring, &provider, &exporter, runs).await;
    }
}

/// Three Recommend calls; then every stage has been seen `runs` times since the test began.
async fn record_three(
    wiring: Wiring,
    provider: &SdkMeterProvider,
    exporter: &InMemoryMetricExporter,
    runs: u64,
) {
    let t = TestPlatform::start_on(wiring).await;
    for _ in 0..3 {
        let r = t
            .recommend(RecommendRequest {
                bypass_cache: true,
                ..ask(&t.known_user)
            })
            .await
            .unwrap();
        assert!(!r.degraded);
    }
    provider.force_flush().unwrap();
    let metrics = exporter.get_finished_metrics().unwrap();

    for stage in ["user_context.features", "recall.vector", "merge", "rank"] {
        assert_eq!(
            observed(&metrics, stage, "ok"),
            (runs, runs),
            "{stage} {wiring:?}: a timing in the histogram and an outcome per call"
        );
    }
    let (timed, counted) = observed(&metrics, "recall.graph", "skipped");
    assert_eq!(counted, runs, "skipped stages are counted");
    assert_eq!(timed, 0, "but not timed");
    t.platform.shutdown().await.unwrap();
}
