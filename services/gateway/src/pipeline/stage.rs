//! Running one stage under its budget: the instrumentation every stage shares.
//!
//! A stage is a future. [`run`] gives it its carved budget, cancels it when the budget runs out (dropping the
//! future drops its in-flight RPC; nothing waits for it), and writes the stage's report and span.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use reco_types::{StageReport, StageStatus};
use tower::ServiceExt;
use tracing::Instrument;

use crate::resilience::{Call, StageService};

/// The outcome of one stage: its value when it finished in time, and its report.
pub struct Outcome<T> {
    pub value: Option<T>,
    pub report: StageReport,
}

impl<T> Outcome<T> {
    /// The report of one of the stages a shared call serves: the call's report under that stage's name.
    pub fn part(&self, stage: &str) -> StageReport {
        StageReport {
            stage: stage.to_string(),
            ..self.report.clone()
        }
    }
}

/// Runs `fut` as stage `name` with `budget`. A zero budget skips the stage: there is no time left for it.
pub async fn run<T, F>(name: &str, budget: Duration, fut: F) -> Outcome<T>
where
    F: Future<Output = Result<T, tonic::Status>>,
{
    let mut report = StageReport {
        stage: name.to_string(),
        status: StageStatus::Ok,
        budget,
        elapsed: Duration::ZERO,
        candidates_in: 0,
        candidates_out: 0,
        detail: String::new(),
    };
    if budget.is_zero() {
        report.status = StageStatus::Skipped;
        report.detail = "no time left before the deadline".into();
        return Outcome {
            value: None,
            report,
        };
    }
    let span = tracing::info_span!(
        "stage",
        stage = name,
        budget_us = budget.as_micros() as u64,
        status = tracing::field::Empty
    );
    let started = Instant::now();
    let result = tokio::time::timeout(budget, fut)
        .instrument(span.clone())
        .await;
    report.elapsed = started.elapsed();
    let value = match result {
        Ok(Ok(v)) => Some(v),
        // A client over gRPC gives up at the same budget (it was sent as grpc-timeout), and may get there first.
        Ok(Err(status))
            if status.code() == tonic::Code::DeadlineExceeded
                || (status.code() == tonic::Code::Cancelled && report.elapsed >= budget) =>
        {
            report.status = StageStatus::Timeout;
            report.detail = format!("cancelled after its budget of {} us", budget.as_micros());
            None
        }
        Ok(Err(status)) => {
            report.status = StageStatus::Error;
            report.detail = format!("{:?}: {}", status.code(), status.message());
            None
        }
        Err(_) => {
            report.status = StageStatus::Timeout;
            report.detail = format!("cancelled after its budget of {} us", budget.as_micros());
            None
        }
    };
    span.record("status", report.status.as_str());
    if report.status.is_degraded() {
        // Debug, not warn: under load a line per cut stage is thousands a second, and writing them costs the
        // CPU that made the stages late. The answer's report, the span and the outcome metrics carry it.
        tracing::debug!(stage = name, status = report.status.as_str(), detail = %report.detail, "stage cut off");
    }
    Outcome { value, report }
}

/// Runs a stage's one call as stage `name`: `budget` goes with the call (its deadline at the service, and what the
/// service bounds its work by) and bounds the stage.
pub async fn call<M, R>(
    name: &str,
    budget: Duration,
    service: &StageService<M, R>,
    message: M,
) -> Outcome<R>
where
    M: Send + 'static,
    R: Send + 'static,
{
    let call = service.clone().oneshot(Call { message, budget });
    run(name, budget, call).await
}
