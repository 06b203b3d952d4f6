//! The ingest service's metrics, exported over OTLP like every service's (reco-telemetry).
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `reco.ingest.lag` | gauge, ms | `partition`: how far the last read is behind the partition's newest record |
//! | `reco.ingest.records` | counter | `partition`: records read |
//! | `reco.ingest.events` | counter | `outcome`: applied (new to the gateway), duplicate (it had the id), refused (dead-lettered) |
//! | `reco.ingest.gateway.failures` | counter | a batch the gateway did not take (tried again) |

use std::sync::OnceLock;

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Gauge},
};

struct Instruments {
    lag: Gauge<i64>,
    records: Counter<u64>,
    events: Counter<u64>,
    gateway_failures: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static I: OnceLock<Instruments> = OnceLock::new();
    I.get_or_init(|| {
        let meter = global::meter("reco-ingest");
        Instruments {
            lag: meter
                .i64_gauge("reco.ingest.lag")
                .with_unit("ms")
                .with_description("How far the consumer is behind the newest record of a partition")
                .build(),
            records: meter
                .u64_counter("reco.ingest.records")
                .with_description("Records read from the stream")
                .build(),
            events: meter
                .u64_counter("reco.ingest.events")
                .with_description("Events by outcome: applied, duplicate, refused")
                .build(),
            gateway_failures: meter
                .u64_counter("reco.ingest.gateway.failures")
                .with_description("Batches the gateway did not take (tried again)")
                .build(),
        }
    })
}

pub fn lag(partition: &str, ms: i64) {
    instruments()
        .lag
        .record(ms, &[KeyValue::new("partition", partition.to_string())]);
}

pub fn records(partition: &str, n: u64) {
    instruments()
        .records
        .add(n, &[KeyValue::new("partition", partition.to_string())]);
}

pub fn events(outcome: &'static str, n: u64) {
    if n > 0 {
        instruments()
            .events
            .add(n, &[KeyValue::new("outcome", outcome)]);
    }
}

pub fn gateway_failure() {
    instruments().gateway_failures.add(1, &[]);
}
