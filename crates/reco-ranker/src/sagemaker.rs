//! A model served by a SageMaker endpoint (aws-sdk-sagemakerruntime InvokeEndpoint).
//!
//! The platform computes the model's input rows itself ([`features::matrix`], the same numbers the in-process
//! model reads), one row per candidate in the configured feature order, and sends them in one call:
//!
//! ```text
//!   json: {"instances": [[f1, f2, ...], ...]}          (TensorFlow Serving, scikit-learn, PyTorch containers)
//!   csv:  "f1,f2,...\n..." one line per candidate       (XGBoost and the built-in algorithms)
//! ```
//!
//! Answers read: a JSON array of numbers; `{"predictions": [...]}` or `{"scores": [...]}` whose elements are
//! numbers, one-element arrays or objects with a `score`; or CSV / newline-separated numbers. Exactly one finite
//! score per candidate, or the call fails. Timeouts and retries are the SDK's (reco-aws: adaptive retry, attempt
//! and operation timeouts); a timeout is [`RankerError::Timeout`], anything else [`RankerError::Backend`].

use async_trait::async_trait;
use aws_sdk_sagemakerruntime::{
    Client,
    error::{DisplayErrorContext, SdkError},
    primitives::Blob,
};
use reco_aws::AwsSettings;

use crate::{RankInput, Ranker, RankerError, Result, Scores, features};

/// How rows travel to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadFormat {
    /// `{"instances": [[...], ...]}`, `application/json`.
    Json,
    /// One comma-separated line per candidate, `text/csv`.
    Csv,
}

impl PayloadFormat {
    fn content_type(self) -> &'static str {
        match self {
            PayloadFormat::Json => "application/json",
            PayloadFormat::Csv => "text/csv",
        }
    }
}

/// Where and how the model is called.
#[derive(Clone, Debug)]
pub struct SageMakerConfig {
    pub aws: AwsSettings,
    /// The endpoint's name.
    pub endpoint_name: String,
    /// The model's inputs, in order: platform features ([`features::FEATURES`]).
    pub features: Vec<String>,
    pub format: PayloadFormat,
    /// Overrides the format's content type (e.g. `application/x-npy` wrappers keep the same body).
    pub content_type: Option<String>,
    /// The `Accept` header; None lets the container choose.
    pub accept: Option<String>,
    /// A production variant to call instead of the endpoint's traffic split.
    pub target_variant: Option<String>,
    /// The version answers name; default `sagemaker:<endpoint>`.
    pub model_version: Option<String>,
}

/// A ranker that calls a SageMaker endpoint.
pub struct SageMakerRanker {
    client: Client,
    config: SageMakerConfig,
}

impl SageMakerRanker {
    /// Checks the configuration (a model whose features the platform cannot supply is refused here) and builds the
    /// client; no call is made until the first request.
    pub async fn connect(config: SageMakerConfig) -> Result<Self> {
        if config.endpoint_name.is_empty() {
            return Err(RankerError::Load {
                path: "sagemaker".into(),
                reason: "the endpoint name is empty".into(),
            });
        }
        if config.features.is_empty() {
            return Err(RankerError::Load {
                path: format!("sagemaker:{}", config.endpoint_name),
                reason: "no input features are configured".into(),
            });
        }
        let known = features::known();
        let missing: Vec<String> = config
            .features
            .iter()
            .filter(|f| !known.contains(&f.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(RankerError::UnsupportedFeatures {
                version: format!("sagemaker:{}", config.endpoint_name),
                missing,
                known,
            });
        }
        let sdk = config.aws.sdk_config().await;
        Ok(Self {
            client: Client::new(&sdk),
            config,
        })
    }
}

/// The request body for `rows` in `format`.
pub fn encode(format: PayloadFormat, rows: &[Vec<f64>]) -> Vec<u8> {
    match format {
        PayloadFormat::Json => serde_json::to_vec(&serde_json::json!({ "instances": rows }))
            .expect("finite numbers serialise"),
        PayloadFormat::Csv => {
            let mut out = String::new();
            for row in rows {
                let line: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out.into_bytes()
        }
    }
}

/// The scores in an answer body (see the module doc for the shapes read).
pub fn decode(body: &[u8]) -> Result<Vec<f32>> {
    let bad = |why: String| RankerError::Backend(format!("unreadable model answer: {why}"));
    let text = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
    let trimmed = text.trim();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| bad(e.to_string()))?;
        let list = match &v {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(o) => o
                .get("predictions")
                .or_else(|| o.get("scores"))
                .and_then(|p| p.as_array())
                .ok_or_else(|| bad("an object without a `predictions` or `scores` array".into()))?,
            _ => unreachable!("starts with [ or {{"),
        };
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                let n = match p {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::Array(a) if a.len() == 1 => a[0].as_f64(),
                    serde_json::Value::Object(o) => o.get("score").and_then(|s| s.as_f64()),
                    _ => None,
                };
                n.map(|n| n as f32)
                    .ok_or_else(|| bad(format!("prediction {i} is not a score: {p}")))
            })
            .collect()
    } else {
        trimmed
            .split([',', '\n', '\r'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<f32>()
                    .map_err(|e| bad(format!("{s:?} is not a number: {e}")))
            })
            .collect()
    }
}

#[async_trait]
impl Ranker for SageMakerRanker {
    async fn score(&self, input: &RankInput) -> Result<Scores> {
        let names = &self.config.features;
        let (rows, missing) = features::matrix(names, input);
        if rows.is_empty() {
            return Ok(Scores::new(Vec::new(), names, &missing));
        }
        let c = &self.config;
        let out = self
            .client
            .invoke_endpoint()
            .endpoint_name(&c.endpoint_name)
            .content_type(
                c.content_type
                    .clone()
                    .unwrap_or_else(|| c.format.content_type().to_string()),
            )
            .set_accept(c.accept.clone())
            .set_target_variant(c.target_variant.clone())
            .body(Blob::new(encode(c.format, &rows)))
            .send()
            .await
            .map_err(|e| match e {
                SdkError::TimeoutError(_) => RankerError::Timeout(format!(
                    "endpoint {} did not answer in time",
                    c.endpoint_name
                )),
                e => RankerError::Backend(format!(
                    "endpoint {}: {}",
                    c.endpoint_name,
                    DisplayErrorContext(e)
                )),
            })?;
        let scores = decode(out.body().map(|b| b.as_ref()).unwrap_or_default())?;
        if scores.len() != rows.len() {
            return Err(RankerError::Backend(format!(
                "endpoint {} answered {} scores for {} candidates",
                c.endpoint_name,
                scores.len(),
                rows.len()
            )));
        }
        Ok(Scores::new(scores, names, &missing))
    }

    fn model_version(&self) -> String {
        self.config
            .model_version
            .clone()
            .unwrap_or_else(|| format!("sagemaker:{}", self.config.endpoint_name))
    }

    fn feature_names(&self) -> Vec<String> {
        self.config.features.clone()
    }

    fn backend(&self) -> &'static str {
        "sagemaker"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_both_formats() {
        let rows = vec![vec![1.0, 0.5], vec![0.0, -2.25]];
        let json: serde_json::Value =
            serde_json::from_slice(&encode(PayloadFormat::Json, &rows)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"instances": [[1.0, 0.5], [0.0, -2.25]]})
        );
        assert_eq!(
            String::from_utf8(encode(PayloadFormat::Csv, &rows)).unwrap(),
            "1,0.5\n0,-2.25\n"
        );
    }

    #[test]
    fn answers_in_every_documented_shape() {
        for body in [
            "[0.9, 0.1]",
            r#"{"predictions": [0.9, 0.1]}"#,
            r#"{"predictions": [[0.9], [0.1]]}"#,
            r#"{"predictions": [{"score": 0.9}, {"score": 0.1}]}"#,
            r#"{"scores": [0.9, 0.1]}"#,
            "0.9\n0.1\n",
            "0.9,0.1",
        ] {
            assert_eq!(decode(body.as_bytes()).unwrap(), [0.9, 0.1], "{body}");
        }
        for bad in ["{\"result\": 1}", "[\"high\"]", "0.9,abc", "\u{0}"] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    use reco_test_support::MotoServer;
    use reco_types::{Features, ItemId, SourceHit, UserId};

    use crate::{RankCandidate, rank};

    fn input(ids: &[&str]) -> RankInput {
        RankInput {
            user_id: UserId::parse("u", "u1").unwrap(),
            user_features: Features::new(),
            user_embedding: None,
            candidates: ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    RankCandidate::new(
                        ItemId::parse("i", *id).unwrap(),
                        Features::new(),
                        Vec::new(),
                        vec![SourceHit::parse("cf", i as u32, 1.0 - i as f32 / 10.0).unwrap()],
                        None,
                    )
                })
                .collect(),
            context: Default::default(),
        }
    }

    fn config(aws: AwsSettings, format: PayloadFormat) -> SageMakerConfig {
        SageMakerConfig {
            aws,
            endpoint_name: "ranker-prod".into(),
            features: vec!["cf_score".into(), "avg_rating".into()],
            format,
            content_type: None,
            accept: None,
            target_variant: None,
            model_version: None,
        }
    }

    /// Queues moto's canned answers for the next distinct InvokeEndpoint calls.
    fn queue(moto: &MotoServer, bodies: &[(&str, &str)]) {
        let results: Vec<_> = bodies
            .iter()
            .map(|(body, ct)| serde_json::json!({"Body": body, "ContentType": ct}))
            .collect();
        let status = moto.post_json(
            "/moto-api/static/sagemaker/endpoint-results",
            &serde_json::json!({"results": results, "region": "us-east-1"}).to_string(),
        );
        assert_eq!(status, 201, "moto takes the canned results");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scores_come_from_the_endpoint_on_moto() {
        let Some(moto) = MotoServer::start() else {
            return;
        };
        queue(
            &moto,
            &[
                (r#"{"predictions": [0.1, 0.9, 0.5]}"#, "application/json"),
                ("0.3\n0.7\n", "text/csv"),
                ("[0.5]", "application/json"),
            ],
        );
        let ranker = SageMakerRanker::connect(config(
            AwsSettings::local(moto.endpoint()),
            PayloadFormat::Json,
        ))
        .await
        .unwrap();
        let ranked = rank(&ranker, &input(&["a", "b", "c"]), 0).await.unwrap();
        let ids: Vec<_> = ranked.items.iter().map(|s| s.item_id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"], "ordered by the endpoint's scores");
        assert_eq!(
            ranked.missing.get("avg_rating"),
            Some(&3),
            "defaulted and counted"
        );
        assert_eq!(ranker.model_version(), "sagemaker:ranker-prod");

        let csv = SageMakerRanker::connect(config(
            AwsSettings::local(moto.endpoint()),
            PayloadFormat::Csv,
        ))
        .await
        .unwrap();
        let ranked = rank(&csv, &input(&["x", "y"]), 1).await.unwrap();
        assert_eq!(ranked.items.len(), 1);
        assert_eq!(ranked.items[0].item_id.as_str(), "y");

        // One score for two candidates: refused, never padded.
        let err = rank(&ranker, &input(&["p", "q"]), 0).await.unwrap_err();
        assert!(matches!(err, RankerError::Backend(_)), "{err}");
        assert!(
            err.to_string().contains("1 scores for 2 candidates"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_model_reading_features_the_platform_lacks_is_refused_before_any_call() {
        let mut c = config(
            AwsSettings::local("http://127.0.0.1:9"),
            PayloadFormat::Json,
        );
        c.features.push("user_shoe_size".into());
        let err = SageMakerRanker::connect(c).await.err().unwrap();
        assert!(
            matches!(err, RankerError::UnsupportedFeatures { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("user_shoe_size"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endpoint_that_does_not_answer_times_out() {
        // A listener that accepts and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut aws = AwsSettings::local(format!("http://{}", silent.local_addr().unwrap()));
        aws.attempt_timeout = std::time::Duration::from_millis(100);
        aws.operation_timeout = std::time::Duration::from_millis(300);
        aws.max_attempts = 2;
        let ranker = SageMakerRanker::connect(config(aws, PayloadFormat::Json))
            .await
            .unwrap();
        let err = rank(&ranker, &input(&["a"]), 0).await.unwrap_err();
        assert!(matches!(err, RankerError::Timeout(_)), "{err}");
        drop(silent);
    }
}
