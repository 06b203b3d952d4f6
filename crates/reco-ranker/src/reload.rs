//! A model file watched for changes: a new file is loaded and validated beside the serving model, then swapped
//! in with one pointer store, so no request waits and none sees half a model. A bad new file is refused (logged
//! by the caller) and the serving model stays.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::{LinearModel, RankInput, Ranker, Result, Scores};

/// What identifies one version of the file on disk.
type Stamp = (SystemTime, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A linear model loaded from a file and reloaded when the file changes.
pub struct ReloadingModel {
    path: PathBuf,
    current: RwLock<Arc<LinearModel>>,
    loaded: Mutex<Option<Stamp>>,
}

impl ReloadingModel {
    /// Loads `path`; a missing or invalid file is an error here, at start-up.
    pub fn open(path: &Path) -> Result<Self> {
        let loaded = stamp(path);
        let model = LinearModel::load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(model)),
            loaded: Mutex::new(loaded),
        })
    }

    /// Reloads when the file changed since the last load. Ok(true) when a new model now serves; an error when the
    /// changed file is not a valid model (the old one keeps serving, and the same file is not retried).
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = stamp(&self.path);
        {
            let mut loaded = self.loaded.lock();
            if now.is_none() || now == *loaded {
                return Ok(false);
            }
            *loaded = now;
        }
        let model = LinearModel::load(&self.path)?;
        *self.current.write() = Arc::new(model);
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn model(&self) -> Arc<LinearModel> {
        self.current.read().clone()
    }
}

#[async_trait]
impl Ranker for ReloadingModel {
    async fn score(&self, input: &RankInput) -> Result<Scores> {
        self.model().score(input).await
    }

    fn model_version(&self) -> String {
        self.model().model_version()
    }

    fn feature_names(&self) -> Vec<String> {
        self.model().feature_names()
    }

    fn backend(&self) -> &'static str {
        "linear"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelFile;

    fn model(version: &str) -> LinearModel {
        LinearModel::from_file(ModelFile {
            version: version.into(),
            kind: "linear".into(),
            bias: 0.0,
            features: vec!["cf_score".into()],
            weights: vec![1.0],
        })
        .unwrap()
    }

    #[test]
    fn a_changed_file_swaps_in_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        model("a").save(&path).unwrap();
        let r = ReloadingModel::open(&path).unwrap();
        assert_eq!(r.model_version(), "a");
        assert!(!r.reload_if_changed().unwrap(), "unchanged");

        // A different length guarantees a different stamp even within one mtime tick.
        model("bee").save(&path).unwrap();
        assert!(r.reload_if_changed().unwrap());
        assert_eq!(r.model_version(), "bee");

        std::fs::write(&path, "{\"version\": \"broken\"").unwrap();
        assert!(r.reload_if_changed().is_err());
        assert_eq!(r.model_version(), "bee", "the serving model stays");
        assert!(
            !r.reload_if_changed().unwrap(),
            "the same bad file is not retried"
        );
    }
}
