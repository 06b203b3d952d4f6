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
//! | `reco.gateway.events.recorded` | counter | `outcome` (accepted, duplicate) |
//! | `reco.gateway.events.applied` | counter | `sink` (feature, cache, graph) |
//! | `reco.gateway.events.apply.duration` | histogram, ms | `sink`: one batch applied |
//! | `reco.gateway.events.failures` | counter | `sink`: a batch its service did not take (it is tried again) |
//! | `reco.gateway.events.refused` | counter | `sink`: an event its service refused (dropped) |
//! | `reco.gateway.events.pending` | gauge | `sink`: events in the outbox the sink has not applied |

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Gauge, Histogram},
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
    events_recorded: Counter<u64>,
    events_applied: Counter<u64>,
    events_apply_duration: Histogram<f64>,
    events_failures: Counter<u64>,
    events_refused: Counter<u64>,
    events_pending: Gauge<u64>,
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
            events_recorded: meter
                .u64_counter("reco.gateway.events.recorded")
                .with_description(
                    "Events taken by RecordEvents: accepted, or duplicates of accepted ones",
                )
                .build(),
            events_applied: meter
                .u64_counter("reco.gateway.events.applied")
                .with_description("Events applied, by sink")
                .build(),
            events_apply_duration: meter
                .f64_histogram("reco.gateway.events.apply.duration")
                .with_unit("ms")
                .with_description("One batch of events applied, by sink")
                .with_boundaries(BOUNDS_MS.to_vec())
                .build(),
            events_failures: meter
                .u64_counter("reco.gateway.events.failures")
                .with_description("Batches of events a sink's service did not take (tried again)")
                .build(),
            events_refused: meter
                .u64_counter("reco.gateway.events.refused")
                .with_description("Events a sink's service refused as invalid (dropped)")
                .build(),
            events_pending: meter
                .u64_gauge("reco.gateway.events.pending")
                .with_description("Events in the outbox a sink has not applied")
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

/// Events a RecordEvents call took.
pub fn events_recorded(accepted: u64, duplicates: u64) {
    let i = instruments();
    i.events_recorded
        .add(accepted, &[KeyValue::new("outcome", "accepted")]);
    if duplicates > 0 {
        i.events_recorded
            .add(duplicates, &[KeyValue::new("outcome", "duplicate")]);
    }
}

/// A batch of events a sink applied.
pub fn events_applied(sink: &'static str, n: u64, elapsed: Duration) {
    let i = instruments();
    let attrs = [KeyValue::new("sink", sink)];
    i.events_applied.add(n, &attrs);
    i.events_apply_duration.record(ms(elapsed), &attrs);
}

/// A batch a sink's service did not take.
pub fn events_failed(sink: &'static str) {
    instruments()
        .events_failures
        .add(1, &[KeyValue::new("sink", sink)]);
}

/// An event a sink's service refused.
pub fn events_refused(sink: &'static str) {
    instruments()
        .events_refused
        .add(1, &[KeyValue::new("sink", sink)]);
}

/// Events waiting for a sink.
pub fn events_pending(sink: &'static str, n: u64) {
    instruments()
        .events_pending
        .record(n, &[KeyValue::new("sink", sink)]);
}
