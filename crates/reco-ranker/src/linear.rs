//! A linear model over named features: score = bias + Σ weight_i · feature_i. The default until a trained model
//! file is given; the file format names its features so a model trained elsewhere cannot silently misalign.

use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{RankInput, Ranker, RankerError, Result, Scores, features};

/// A model file (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Shown in every response that this model scored.
    pub version: String,
    /// Always "linear" for this backend.
    pub kind: String,
    pub bias: f64,
    /// Feature names, each one of [`features::FEATURES`].
    pub features: Vec<String>,
    pub weights: Vec<f64>,
}

/// The in-process linear model.
#[derive(Clone, Debug)]
pub struct LinearModel {
    model: ModelFile,
}

impl LinearModel {
    /// A hand-set model that prefers items found by several sources, close to the user's taste and popular.
    pub fn default_model() -> Self {
        let pairs = [
            ("embedding_similarity", 1.0),
            ("cf_score", 0.8),
            ("cf_rank_reciprocal", 0.5),
            ("vector_score", 0.6),
            ("graph_score", 0.4),
            ("source_count", 0.3),
            ("log_popularity", 0.15),
            ("avg_rating", 0.05),
            ("category_affinity", 0.5),
            ("is_popular_fallback", -0.2),
        ];
        Self::from_file(ModelFile {
            version: "linear-default-1".into(),
            kind: "linear".into(),
            bias: 0.0,
            features: pairs.iter().map(|(n, _)| n.to_string()).collect(),
            weights: pairs.iter().map(|(_, w)| *w).collect(),
        })
        .expect("the default model reads only known features")
    }

    /// Validates a model: kind, lengths, finite weights, and only features the platform supplies.
    pub fn from_file(model: ModelFile) -> Result<Self> {
        let bad = |reason: String| RankerError::Load {
            path: model.version.clone(),
            reason,
        };
        if model.kind != "linear" {
            return Err(bad(format!(
                "kind is {:?}, this backend serves \"linear\"",
                model.kind
            )));
        }
        if model.features.len() != model.weights.len() {
            return Err(bad(format!(
                "{} features but {} weights",
                model.features.len(),
                model.weights.len()
            )));
        }
        if !model.bias.is_finite() || model.weights.iter().any(|w| !w.is_finite()) {
            return Err(bad("a weight is not a finite number".into()));
        }
        let known = features::known();
        let missing: Vec<String> = model
            .features
            .iter()
            .filter(|f| !known.contains(&f.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(RankerError::UnsupportedFeatures {
                version: model.version,
                missing,
                known,
            });
        }
        Ok(Self { model })
    }

    /// The model as its file holds it.
    pub fn file(&self) -> &ModelFile {
        &self.model
    }

    /// Writes the model as JSON to `path`, through a temporary file renamed into place, so a reader watching the
    /// file never sees half of it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| RankerError::Load {
            path: path.display().to_string(),
            reason,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.model).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Loads a JSON model file.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| RankerError::Load {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let model: ModelFile = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        Self::from_file(model)
    }
}

#[async_trait]
impl Ranker for LinearModel {
    async fn score(&self, input: &RankInput) -> Result<Scores> {
        let m = &self.model;
        let (rows, missing) = features::matrix(&m.features, input);
        let scores = rows
            .iter()
            .map(|row| {
                (m.bias + row.iter().zip(&m.weights).map(|(v, w)| v * w).sum::<f64>()) as f32
            })
            .collect();
        Ok(Scores::new(scores, &m.features, &missing))
    }

    fn model_version(&self) -> String {
        self.model.version.clone()
    }

    fn feature_names(&self) -> Vec<String> {
        self.model.features.clone()
    }

    fn backend(&self) -> &'static str {
        "linear"
    }
}

#[cfg(test)]
mod tests {
    use reco_types::{Features, ItemId, Name, SourceHit, UserId};

    use super::*;
    use crate::{RankCandidate, rank};

    fn cand(id: &str, sources: &[(&str, f32)]) -> RankCandidate {
        RankCandidate::new(
            ItemId::parse("i", id).unwrap(),
            Features::new(),
            vec![Name::parse("c", "rock").unwrap()],
            sources
                .iter()
                .enumerate()
                .map(|(r, (s, sc))| SourceHit::parse(s, r as u32, *sc).unwrap())
                .collect(),
            None,
        )
    }

    #[tokio::test]
    async fn more_evidence_ranks_higher() {
        let input = RankInput {
            user_id: UserId::parse("u", "u1").unwrap(),
            user_features: Features::new(),
            user_embedding: None,
            candidates: vec![
                cand("popular-only", &[("popular", 0.5)]),
                cand("cf-and-vector", &[("cf", 0.9), ("vector", 0.8)]),
                cand("cf", &[("cf", 0.9)]),
            ],
            context: Default::default(),
        };
        let ranked = rank(&LinearModel::default_model(), &input, 2)
            .await
            .unwrap();
        let ids: Vec<_> = ranked.items.iter().map(|s| s.item_id.as_str()).collect();
        assert_eq!(ids, ["cf-and-vector", "cf"]);
    }

    #[tokio::test]
    async fn a_missing_feature_takes_its_default_and_is_counted() {
        let model = LinearModel::from_file(
            serde_json::from_str(
                r#"{"version":"m","kind":"linear","bias":0,"features":["cf_score","avg_rating","embedding_similarity"],"weights":[1,1,1]}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let mut features = Features::new();
        features.insert("avg_rating", reco_types::FeatureValue::Float(4.0));
        let plain = cand("rated", &[("cf", 0.5)]);
        let rated = RankCandidate::new(
            plain.item_id().clone(),
            features,
            plain.item.categories().to_vec(),
            plain.sources,
            plain.item.embedding().cloned(),
        );
        let input = RankInput {
            user_id: UserId::parse("u", "u1").unwrap(),
            user_features: Features::new(),
            user_embedding: None,
            candidates: vec![rated, cand("unrated", &[("cf", 0.5)])],
            context: Default::default(),
        };
        let ranked = rank(&model, &input, 0).await.unwrap();
        assert_eq!(ranked.items[0].item_id.as_str(), "rated");
        assert_eq!(
            ranked.items[1].score, 0.5,
            "avg_rating defaulted to 0, not an error"
        );
        let missing: Vec<_> = ranked
            .missing
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            missing,
            [("avg_rating", 1), ("embedding_similarity", 2)],
            "not being found by a source is a value, not a miss"
        );
    }

    #[test]
    fn a_model_reading_unknown_features_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(
            &path,
            r#"{"version":"m1","kind":"linear","bias":0,"features":["cf_score","user_shoe_size"],"weights":[1,2]}"#,
        )
        .unwrap();
        let err = LinearModel::load(&path).unwrap_err();
        assert!(err.to_string().contains("user_shoe_size"), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            LinearModel::load(&path).unwrap_err(),
            RankerError::Load { .. }
        ));
    }
}
