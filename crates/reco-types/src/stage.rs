//! What the gateway reports about each stage of a request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Ran and finished within its budget.
    Ok,
    /// Ran past its budget and was cancelled.
    Timeout,
    /// Failed: a downstream error, or unavailable.
    Error,
    /// Did not run: disabled, not asked for, or not needed.
    Skipped,
    /// Answered from a cache.
    Cached,
}

impl StageStatus {
    /// Whether this outcome means something is missing from the answer.
    pub fn is_degraded(self) -> bool {
        matches!(self, StageStatus::Timeout | StageStatus::Error)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Ok => "ok",
            StageStatus::Timeout => "timeout",
            StageStatus::Error => "error",
            StageStatus::Skipped => "skipped",
            StageStatus::Cached => "cached",
        }
    }
}

/// One stage's report in a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    pub status: StageStatus,
    pub budget: Duration,
    pub elapsed: Duration,
    pub candidates_in: u32,
    pub candidates_out: u32,
    pub detail: String,
}

impl StageReport {
    pub fn skipped(stage: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            stage: stage.into(),
            status: StageStatus::Skipped,
            budget: Duration::ZERO,
            elapsed: Duration::ZERO,
            candidates_in: 0,
            candidates_out: 0,
            detail: detail.into(),
        }
    }
}
