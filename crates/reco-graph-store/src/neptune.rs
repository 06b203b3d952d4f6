//! Amazon Neptune through its data API: `ExecuteOpenCypherQuery` (POST /opencypher) with the query text and its
//! parameters as JSON, answered by `{"results": [{column: value, ...}, ...]}`.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_neptunedata::error::DisplayErrorContext;
use aws_smithy_types::{Document, Number};
use reco_aws::AwsSettings;
use serde_json::Value;

use crate::{GraphStoreError, Result, cypher::CypherRunner, cypher::Row};

/// Sends openCypher to a Neptune cluster (its endpoint, `https://CLUSTER:8182`, as the endpoint override).
pub struct NeptuneRunner {
    client: aws_sdk_neptunedata::Client,
}

impl NeptuneRunner {
    pub async fn connect(settings: &AwsSettings) -> Self {
        Self {
            client: aws_sdk_neptunedata::Client::new(&settings.sdk_config().await),
        }
    }
}

/// Neptune answers with a JSON document; the SDK hands it over as a smithy Document.
fn to_json(d: &Document) -> Value {
    match d {
        Document::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        Document::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Document::Number(Number::PosInt(n)) => Value::from(*n),
        Document::Number(Number::NegInt(n)) => Value::from(*n),
        Document::Number(Number::Float(f)) => Value::from(*f),
        Document::String(s) => Value::String(s.clone()),
        Document::Bool(b) => Value::Bool(*b),
        Document::Null => Value::Null,
    }
}

/// The rows of a `results` document.
pub(crate) fn rows(results: Value) -> Result<Vec<Row>> {
    let Value::Array(list) = results else {
        return Err(GraphStoreError::Backend(format!(
            "Neptune results are not a list: {results}"
        )));
    };
    list.into_iter()
        .map(|r| match r {
            Value::Object(m) => Ok(m),
            other => Err(GraphStoreError::Backend(format!(
                "a Neptune result row is not an object: {other}"
            ))),
        })
        .collect()
}

#[async_trait]
impl CypherRunner for NeptuneRunner {
    async fn run(&self, query: &'static str, params: Row, timeout: Duration) -> Result<Vec<Row>> {
        let call = self
            .client
            .execute_open_cypher_query()
            .open_cypher_query(query)
            .parameters(Value::Object(params).to_string())
            .send();
        let out = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| GraphStoreError::Timeout(timeout))?
            .map_err(|e| {
                GraphStoreError::Backend(format!("Neptune: {}", DisplayErrorContext(e)))
            })?;
        rows(to_json(out.results()))
    }

    fn name(&self) -> &'static str {
        "neptune"
    }
}
