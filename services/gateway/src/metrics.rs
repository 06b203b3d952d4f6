//! The gateway's metrics, exported over OTLP with the traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see
//! reco-telemetry); without an exporter they cost one no-op call each.
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `reco.gateway.stage.duration` | histogram, ms | `stage`, `status` |
//! | `reco.gateway.stage.outcomes` | counter | `stage`, `status` |
//! | `reco.gateway.recommend.duration` | histogram, ms | `outcome` (ok, degraded, cached, refused) |
//! | `reco.gateway.breaker.transitions` | counter | `downstream`, `state` (open, half_open, closed) |
//! | `reco.gateway.hedges` | counter | `outcome` (not_needed, first_won, second_won) |

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram},
};
use reco_types::StageStatus;

/// Bucket bounds in ms: fine below a millisecond, where most stages answer, up to the 200 ms request budget.
const BOUNDS_MS: &[f64] = &[
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0,
    150.0, 200.0, 500.0,
];

struct Instruments {
    stage_duration: Histogram<f64>,
    stage_outcomes: Counter<u64>,
    recommend_duration: Histogram<f64>,
    breaker_transitions: Counter<u64>,
    hedges: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = global::meter("reco-gateway");
        Instruments {
            stage_duration: meter
                .f64_histogram("reco.gateway.stage.duration")
                .with_unit("ms")
                .with_description("Time each pipeline stage took, by stage and outcome")
                .with_boundaries(BOUNDS_MS.to_vec())
                .build(),
            stage_outcomes: meter
                .u64_counter("reco.gateway.stage.outcomes")
                .with_description("Pipeline stage outcomes: ok, timeout, error, skipped, cached")
                .build(),
            recommend_duration: meter
                .f64_histogram("reco.gateway.recommend.duration")
                .with_unit("ms")
                .with_description("Recommend calls end to end, by outcome")
                .with_boundaries(BOUNDS_MS.to_vec())
                .build(),
            breaker_transitions: meter
                .u64_counter("reco.gateway.breaker.transitions")
                .with_description("Circuit breaker state changes, by downstream service")
                .build(),
            hedges: meter
                .u64_counter("reco.gateway.hedges")
                .with_description("Hedged calls, by which call answered first")
                .build(),
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One stage's outcome.
pub fn stage(stage: &str, status: StageStatus, elapsed: Duration) {
    let attrs = [
        KeyValue::new("stage", stage.to_string()),
        KeyValue::new("status", status.as_str()),
    ];
    let i = instruments();
    i.stage_outcomes.add(1, &attrs);
    if !matches!(status, StageStatus::Skipped) {
        i.stage_duration.record(ms(elapsed), &attrs);
    }
}

/// One Recommend call.
pub fn recommend(outcome: &'static str, elapsed: Duration) {
    instruments()
        .recommend_duration
        .record(ms(elapsed), &[KeyValue::new("outcome", outcome)]);
}

/// A breaker's change of state (open, half_open, closed).
pub fn breaker_transition(downstream: &'static str, state: &'static str) {
    instruments().breaker_transitions.add(
        1,
        &[
            KeyValue::new("downstream", downstream),
            KeyValue::new("state", state),
        ],
    );
}

/// A hedged call's outcome (not_needed, first_won, second_won).
pub fn hedge(outcome: &'static str) {
    instruments()
        .hedges
        .add(1, &[KeyValue::new("outcome", outcome)]);
}
