//! The ingest service: users' events read from a stream and recorded through the gateway, so a stream and
//! `Gateway.RecordEvents` are one path (one set of checks, one durable outbox, one place each event is applied).
//!
//! ```text
//!   Kinesis ──GetRecords──▶ ingest ──RecordEvents──▶ gateway ─▶ outbox ─▶ feature, cache, graph
//!   (every shard,            │  checkpoint per shard (a file, or a DynamoDB table)
//!    parents first)          └─ bad records ─▶ dead-letter file (with the reason)
//! ```
//!
//! It serves gRPC health (and reflection) like the other services, SERVING once the stream and the gateway
//! answer. Records are JSON objects with the fields of `Gateway.RecordEvents`' `UserEvent` (docs/events.md).
//! One consumer per stream: it reads every shard itself (no leases shared between replicas).

pub mod checkpoint;
pub mod consumer;
pub mod dead_letter;
pub mod kinesis;
mod metrics;
pub mod sink;
pub mod source;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    checkpoint::{Checkpoints, DynamoCheckpoints, FileCheckpoints},
    consumer::{Consumer, ConsumerPlan},
    dead_letter::DeadLetters,
    kinesis::KinesisSource,
    sink::GatewaySink,
    source::Source,
};

/// The port the service listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 50057;

reco_aws::aws_args!(
    /// AWS settings of the Kinesis client.
    KinesisAwsArgs,
    "kinesis",
    "KINESIS"
);
reco_aws::aws_args!(
    /// AWS settings of the DynamoDB client that keeps checkpoints (with `--checkpoint-table`).
    CheckpointAwsArgs,
    "checkpoint-dynamodb",
    "CHECKPOINT_DYNAMODB"
);

/// Where a new consumer (no checkpoint yet) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// The oldest record the stream keeps.
    Oldest,
    /// Records that arrive from now on.
    Newest,
}

/// Flags of the ingest service; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "reco-ingest",
    about = "The reco ingest service: events from Kinesis into the platform",
    version
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// The Kinesis data stream to read.
    #[arg(long, env = "RECO_KINESIS_STREAM", default_value = "reco-events")]
    pub kinesis_stream: String,
    #[command(flatten)]
    pub kinesis: KinesisAwsArgs,
    /// The gateway events are recorded through.
    #[arg(long, env = "RECO_GATEWAY_ADDR", default_value = "127.0.0.1:50051")]
    pub gateway_addr: String,
    /// Longest one RecordEvents call may take, ms (the gateway answers before it, with what is still pending).
    #[arg(long, env = "RECO_INGEST_RECORD_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub record_timeout_ms: u64,
    /// The checkpoint file (per-shard positions), unless `--checkpoint-table` names a DynamoDB table.
    #[arg(
        long,
        env = "RECO_INGEST_CHECKPOINTS",
        default_value = "data/ingest/checkpoints.json"
    )]
    pub checkpoints: PathBuf,
    /// A DynamoDB table for the checkpoints (key `stream`, range key `partition`), instead of the file.
    #[arg(long, env = "RECO_INGEST_CHECKPOINT_TABLE")]
    pub checkpoint_table: Option<String>,
    /// Create the checkpoint table if it does not exist (pay per request).
    #[arg(long, env = "RECO_INGEST_CHECKPOINT_CREATE_TABLE")]
    pub checkpoint_create_table: bool,
    #[command(flatten)]
    pub checkpoint_aws: CheckpointAwsArgs,
    /// Where records that are not valid events go, one JSON line each with the reason.
    #[arg(
        long,
        env = "RECO_INGEST_DEAD_LETTER",
        default_value = "data/ingest/dead-letter.jsonl"
    )]
    pub dead_letter: PathBuf,
    /// Least time between two reads of one shard, ms (Kinesis allows 5 reads a second per shard; this bounds
    /// how fresh the platform is: about half of it on average, after the stream's own delay).
    #[arg(long, env = "RECO_INGEST_POLL_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_ms: u64,
    /// Most records one read takes (GetRecords allows 10,000).
    #[arg(long, env = "RECO_INGEST_MAX_RECORDS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_records: u64,
    /// How often the shards are listed again (to find a reshard's new shards), ms.
    #[arg(long, env = "RECO_INGEST_LIST_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub list_interval_ms: u64,
    /// Where a consumer with no checkpoint starts.
    #[arg(long, env = "RECO_INGEST_START_AT", value_enum, default_value_t = StartAt::Oldest)]
    pub start_at: StartAt,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-ingest"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }

    pub fn plan(&self) -> ConsumerPlan {
        ConsumerPlan {
            poll: Duration::from_millis(self.poll_ms),
            max_records: self.max_records as usize,
            list_interval: Duration::from_millis(self.list_interval_ms),
            start_at_newest: self.start_at == StartAt::Newest,
        }
    }
}

/// The service: the consumer starts now, health turns SERVING once the stream and the gateway answer, and a
/// drain stops the consumer after the batch it holds is recorded and checkpointed.
pub async fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    let stream = config.kinesis_stream.as_str();
    anyhow::ensure!(!stream.is_empty(), "--kinesis-stream must name a stream");
    let source: Arc<dyn Source> =
        Arc::new(KinesisSource::new(&(&config.kinesis).into(), stream).await);
    let checkpoints: Arc<dyn Checkpoints> = match &config.checkpoint_table {
        Some(table) => Arc::new(
            DynamoCheckpoints::new(
                &(&config.checkpoint_aws).into(),
                table,
                stream,
                config.checkpoint_create_table,
            )
            .await?,
        ),
        None => Arc::new(FileCheckpoints::open(&config.checkpoints, stream)?),
    };
    let dead = Arc::new(DeadLetters::open(&config.dead_letter, stream)?);
    let tls = config.server.tls.client()?;
    let gateway = reco_server::channel_tls(&config.gateway_addr, tls.as_ref())?;
    let sink = Arc::new(GatewaySink::new(
        gateway.clone(),
        Duration::from_millis(config.record_timeout_ms),
    ));
    let consumer = Consumer::new(source.clone(), checkpoints, sink, dead, config.plan());
    let stop = CancellationToken::new();
    let running = {
        let (c, stop) = (consumer.clone(), stop.clone());
        tokio::spawn(async move {
            let r = c.run(stop).await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "the consumer stopped");
            }
            r
        })
    };
    let stopping = stop.clone();
    Ok(GrpcServer::new("ingest", config.server.clone())
        .readiness(move || {
            let (source, gateway) = (source.clone(), gateway.clone());
            async move {
                source.partitions().await.map_err(|e| e.to_string())?;
                let status = HealthClient::new(gateway)
                    .check(HealthCheckRequest::default())
                    .await
                    .map_err(|e| format!("the gateway: {}", e.message()))?
                    .into_inner()
                    .status;
                if status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err("the gateway is not serving".to_string())
                }
            }
        })
        .after_drain(async move {
            stopping.cancel();
            match running.await {
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "the consumer panicked"),
            }
            let s = &consumer.stats;
            tracing::info!(
                records = s.records.load(std::sync::atomic::Ordering::Relaxed),
                applied = s.applied.load(std::sync::atomic::Ordering::Relaxed),
                duplicates = s.duplicates.load(std::sync::atomic::Ordering::Relaxed),
                refused = s.refused.load(std::sync::atomic::Ordering::Relaxed),
                "consumer stopped"
            );
        }))
}
