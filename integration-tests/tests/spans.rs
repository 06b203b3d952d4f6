//! Trace spans are the same on both one-process wirings: each call the gateway makes to another service is a span
//! naming the service and the RPC, whether it went over gRPC (the server's `grpc` span) or in process (the
//! service's `in_process` span), inside the gateway's span of the stage that made it.
//!
//! Its own test binary: it installs a process-wide subscriber that records every span.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use reco_integration_tests::{TestPlatform, Wiring, ask};
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// A span as recorded: its name, its `service` and `rpc` fields, and the names of the spans around it.
#[derive(Clone, Debug)]
struct Seen {
    name: &'static str,
    service: String,
    rpc: String,
    within: Vec<&'static str>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

#[derive(Default)]
struct Fields {
    service: String,
    rpc: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "service" => self.service = value.to_string(),
            "rpc" => self.rpc = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let within = ctx
            .span(id)
            .map(|s| s.scope().skip(1).map(|p| p.name()).collect())
            .unwrap_or_default();
        self.0.lock().unwrap().push(Seen {
            name: attrs.metadata().name(),
            service: fields.service,
            rpc: fields.rpc,
            within,
        });
    }
}

/// The downstream calls one Recommend made, as (service, rpc), from the spans named `name`.
fn calls(seen: &[Seen], name: &str) -> BTreeSet<(String, String)> {
    seen.iter()
        .filter(|s| s.name == name && s.service != "gateway" && !s.rpc.contains("grpc.health"))
        .map(|s| (s.service.clone(), s.rpc.clone()))
        .collect()
}

async fn one_recommend(wiring: Wiring, recorder: &Recorder) -> Vec<Seen> {
    let p = TestPlatform::start_on(wiring).await;
    recorder.0.lock().unwrap().clear();
    let mut req = ask(&p.known_user);
    req.bypass_cache = true;
    req.include_graph = true;
    let answer = p.recommend(req).await.expect("recommend");
    assert!(!answer.degraded, "{:?}", answer.stages);
    // The after-answer write is made once the answer is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = recorder.0.lock().unwrap().clone();
    p.platform.shutdown().await.expect("shutdown");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_downstream_call_is_a_span_on_both_wirings() {
    let recorder = Recorder::default();
    tracing_subscriber::registry()
        .with(recorder.clone())
        .try_init()
        .expect("the only subscriber of this test binary");

    let in_process = one_recommend(Wiring::InProcess, &recorder).await;
    let over_grpc = one_recommend(Wiring::OverGrpc, &recorder).await;

    let direct = calls(&in_process, "in_process");
    let wired = calls(&over_grpc, "grpc");
    for rpc in [
        "/reco.cache.v1.CacheService/BeginRecommend",
        "/reco.feature.v1.FeatureService/GetUserContext",
        "/reco.vector_recall.v1.VectorRecall/Search",
        "/reco.graph_recall.v1.GraphRecall/Recall",
        "/reco.feature.v1.FeatureService/BatchGetItemFeatures",
        "/reco.ranking.v1.Ranking/Rank",
        "/reco.cache.v1.CacheService/PutRecommendationsBatch",
    ] {
        assert!(
            direct.iter().any(|(_, r)| r == rpc),
            "in process, no span for {rpc}: {direct:?}"
        );
    }
    assert_eq!(direct, wired, "the same calls, as spans, on both wirings");
    // In process, a call's span sits inside the span of the stage that made it (over gRPC the link is the
    // `traceparent` header, which needs an OpenTelemetry exporter to follow).
    for s in in_process.iter().filter(|s| s.name == "in_process") {
        assert!(
            s.within.contains(&"stage") || s.within.contains(&"after_answer"),
            "{s:?}"
        );
    }
}
