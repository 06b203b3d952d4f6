//! Where `reco up`, `reco eval` and `reco sync` get their data: a dataset on disk, or the generator.

use std::path::PathBuf;

use anyhow::Context;
use reco_data::{
    Dataset,
    read::{Format, ReadOptions},
};

/// Flags choosing the data.
#[derive(Clone, Debug, clap::Args)]
pub struct DataArgs {
    /// A dataset to load instead of generated data: a MovieLens directory (ml-latest-small CSV, ml-100k, ml-1m),
    /// a Last.fm HetRec 2011 directory, or a reco JSON-lines file.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// The dataset's format (auto detects it from the files).
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Fail on the first malformed row instead of skipping and counting it.
    #[arg(long)]
    pub strict: bool,
    /// Generated users, without --dataset.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Generated items, without --dataset.
    #[arg(long, default_value_t = 1500)]
    pub items: usize,
    /// Seed of the generated data and of every random choice (same seed, same result).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl DataArgs {
    /// Reads or generates the data, printing what was read and rejected.
    pub fn load(&self) -> anyhow::Result<Dataset> {
        let Some(path) = &self.dataset else {
            let cfg = reco_data::GenConfig {
                seed: self.seed,
                users: self.users,
                items: self.items,
                ..Default::default()
            };
            println!(
                "generating {} users and {} items (seed {})...",
                cfg.users, cfg.items, cfg.seed
            );
            return Ok(reco_data::generate(&cfg));
        };
        let (data, report) = reco_data::read::read(
            path,
            self.format,
            ReadOptions {
                strict: self.strict,
            },
        )
        .with_context(|| format!("reading {}", path.display()))?;
        println!(
            "read {}: {} users, {} items, {} interactions, {} follows ({} rows read, {} rejected)",
            data.name,
            data.users.len(),
            data.items.len(),
            data.events.len(),
            data.follows.len(),
            report.total_read(),
            report.total_rejected()
        );
        for r in report.rejected.iter().take(10) {
            println!("  rejected {r}");
        }
        if report.total_rejected() > 10 {
            println!("  ... and {} more", report.total_rejected() - 10);
        }
        Ok(data)
    }
}
