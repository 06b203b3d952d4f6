//! `reco sync`: read a dataset, derive a snapshot, and bulk-load it into running services with an atomic switch.

use std::path::Path;

use reco_data::read::{Format, ReadOptions, ReadReport};

use crate::load::{LoadOptions, LoadReport, Targets, load_with, version_now};

/// What a sync did.
pub struct SyncReport {
    pub read: ReadReport,
    pub loaded: LoadReport,
}

/// Reads `path`, derives its snapshot and loads it into `to` as feature version `version` (a new name when None).
/// A read error (in strict mode, the first malformed row) stops everything before any write.
pub async fn sync(
    path: &Path,
    format: Format,
    strict: bool,
    seed: u64,
    to: &Targets,
    version: Option<String>,
    show_progress: bool,
) -> anyhow::Result<SyncReport> {
    let (data, read) = reco_data::read::read(path, format, ReadOptions { strict })?;
    let snap = reco_data::derive(&data, seed);
    let loaded = load_with(
        snap,
        to,
        LoadOptions {
            version: Some(version.unwrap_or_else(version_now)),
            show_progress,
            on_batch: None,
        },
    )
    .await?;
    Ok(SyncReport { read, loaded })
}
