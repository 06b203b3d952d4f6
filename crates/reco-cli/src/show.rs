//! Printing a Recommend answer for people.

use std::fmt::Write;

use reco_proto::gateway::v1::{RecommendResponse, StageStatus};

/// A table of the items and one line per stage.
pub fn answer(r: &RecommendResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} items{}{}{}  (request {}, model {})",
        r.items.len(),
        if r.from_cache { ", from cache" } else { "" },
        if r.degraded { ", DEGRADED" } else { "" },
        if r.cold_start { ", cold start" } else { "" },
        r.request_id,
        if r.model_version.is_empty() {
            "-"
        } else {
            &r.model_version
        },
    );
    for (n, item) in r.items.iter().enumerate() {
        let sources: Vec<String> = item
            .sources
            .iter()
            .map(|s| format!("{}#{}", s.source, s.rank + 1))
            .collect();
        let _ = writeln!(
            out,
            "  {:>2}. {:<12} score {:>8.4}  via {}",
            n + 1,
            item.item_id,
            item.score,
            sources.join(", ")
        );
    }
    let _ = writeln!(out, "stages:");
    for s in &r.stages {
        let status = StageStatus::try_from(s.status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("STAGE_STATUS_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| s.status.to_string());
        let _ = writeln!(
            out,
            "  {:<27} {:<8} {:>7} us of {:>7} us  {:>4} -> {:<4} {}",
            s.stage, status, s.elapsed_us, s.budget_us, s.candidates_in, s.candidates_out, s.detail
        );
    }
    out
}
