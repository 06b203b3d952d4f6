//! The gateway: one Recommend call fans out to every other service under budgets carved from the request's
//! deadline, and answers with the top items and a report per stage, even when backends are slow or down.
//!
//! ```text
//!   caller ──Recommend──▶ GatewayApi ──▶ Pipeline (pipeline/: one file per stage)
//!                              │            └─▶ Downstreams: feature, cache, vector-recall, graph-recall, ranking
//!                              │                 (reco-client: over gRPC, or the services' own code in process)
//!                              ◀── items + stage reports (ok / timeout / error / skipped / cached) + degraded
//!   caller ──RecordEvents──▶ GatewayApi ──▶ events::Recorder ──▶ outbox file ──▶ a worker per sink
//!                                                                (feature sequence, cache, graph)
//! ```
//!
//! How the modules depend on each other (no circles): `api` → `pipeline` → `plan`, `resilience`, `merge`,
//! `budget`, `metrics`; `api` → `events` → `metrics`; `config` → `plan` → `resilience` → `metrics`;
//! `config` → `events`.

mod api;
mod budget;
mod config;
mod error;
mod events;
#[cfg(test)]
mod fakes;
pub mod merge;
mod metrics;
mod pipeline;
mod plan;
mod resilience;

use std::sync::Arc;

use api::GatewayApi;
pub use config::{Config, DEFAULT_PORT};
use pipeline::Pipeline;
pub use reco_client::Downstreams;
use reco_client::grpc::{GrpcCache, GrpcFeature, GrpcGraphRecall, GrpcRanking, GrpcVectorRecall};
use reco_proto::gateway::v1::gateway_server::GatewayServer;
use reco_server::GrpcServer;

/// The full name of this service's API.
pub const API: &str = "reco.gateway.v1.Gateway";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &["RecordEvents"];

/// Every downstream over gRPC at the configured addresses: lazily connected channels (one per service, shared by
/// its calls: HTTP/2 multiplexes them), over TLS when `--tls-ca` is set.
pub fn grpc_downstreams(config: &Config) -> anyhow::Result<Downstreams> {
    let tls = config.server.tls.client()?;
    let channel = |addr: &str| reco_server::channel_tls(addr, tls.as_ref());
    Ok(Downstreams {
        feature: Arc::new(GrpcFeature::new(channel(&config.feature_addr)?)),
        cache: Arc::new(GrpcCache::new(channel(&config.cache_addr)?)),
        vector: Arc::new(GrpcVectorRecall::new(channel(&config.vector_addr)?)),
        graph: Arc::new(GrpcGraphRecall::new(channel(&config.graph_addr)?)),
        ranking: Arc::new(GrpcRanking::new(
            channel(&config.ranking_addr)?,
            !config.no_rank_item_refs,
        )),
    })
}

/// The gateway over `downstreams`, however they are reached, ready to serve once they are.
pub fn server(config: &Config, downstreams: Downstreams) -> anyhow::Result<GrpcServer> {
    let pipeline = Arc::new(Pipeline::new(config.plan()?, &downstreams));
    let recorder = events::Recorder::start(&config.events_plan(), downstreams.clone())?;
    let background = pipeline.clone();
    let event_workers = recorder.clone();
    Ok(GrpcServer::new("gateway", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(GatewayServer::new(GatewayApi::new(pipeline, recorder)))
        // Result-cache and impression writes started by answered requests complete before the process exits; the
        // event workers finish the batch they are applying (what is left waits in the outbox).
        .after_drain(async move {
            background.finish_background().await;
            event_workers.finish().await;
        })
        .readiness(move || {
            let d = downstreams.clone();
            async move { d.ready().await }
        }))
}

/// The gateway over gRPC to the configured addresses.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    server(config, grpc_downstreams(config)?)
}
