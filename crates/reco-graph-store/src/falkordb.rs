//! FalkorDB (a Redis module speaking openCypher): `GRAPH.QUERY graph "CYPHER name=value ... query" --compact`.
//! The tests run the Neptune backend's query texts on it; it also serves as a self-hosted graph backend.
//!
//! Parameters travel in FalkorDB's own parameter header, which it parses as values, not query text: strings are
//! quoted and escaped here, and the query proper is still the constant.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::{Map, Value as Json};

use crate::{GraphStoreError, Result, cypher::CypherRunner, cypher::Row};

/// Sends openCypher to one graph of a FalkorDB server.
pub struct FalkorRunner {
    client: Client,
    graph: String,
}

fn backend(e: impl std::fmt::Display) -> GraphStoreError {
    GraphStoreError::Backend(format!("FalkorDB: {e}"))
}

impl FalkorRunner {
    /// Connects to `url` (`redis://HOST:PORT`) and uses the graph named `graph`.
    pub async fn connect(url: &str, graph: &str) -> Result<Self> {
        let config = Config::from_url(url).map_err(backend)?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()
            .map_err(backend)?;
        client.init().await.map_err(backend)?;
        let this = Self {
            client,
            graph: graph.to_string(),
        };
        // Neptune indexes ids by itself; FalkorDB needs one per label, or every MERGE and lookup scans the label.
        for index in INDEXES {
            match this.run(index, Row::new(), Duration::from_secs(30)).await {
                Ok(_) => {}
                Err(GraphStoreError::Backend(e)) if e.contains("already indexed") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(this)
    }
}

const INDEXES: [&str; 3] = [
    "CREATE INDEX FOR (n:User) ON (n.id)",
    "CREATE INDEX FOR (n:Item) ON (n.id)",
    "CREATE INDEX FOR (n:Tag) ON (n.id)",
];

/// A parameter value in FalkorDB's literal syntax.
fn literal(v: &Json, out: &mut String) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => match n.as_i64() {
            Some(i) => out.push_str(&i.to_string()),
            // Debug keeps the point (1.0, not 1), so a float stays a float.
            None => out.push_str(&format!("{:?}", n.as_f64().unwrap_or(0.0))),
        },
        Json::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Json::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                literal(x, out);
            }
            out.push(']');
        }
        Json::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                // Keys are our own column names (src, dst, weight, ...), never request data.
                out.push_str(k);
                out.push_str(": ");
                literal(x, out);
            }
            out.push('}');
        }
    }
}

fn text(v: &Value) -> Result<String> {
    v.as_string()
        .ok_or_else(|| backend(format!("expected a string in the answer, got {v:?}")))
}

/// One value of a `--compact` answer: `[type, value]`.
fn compact(v: &Value) -> Result<Json> {
    let Value::Array(pair) = v else {
        return Err(backend(format!("expected [type, value], got {v:?}")));
    };
    let (Some(kind), Some(val)) = (pair.first().and_then(Value::as_i64), pair.get(1)) else {
        return Err(backend(format!("expected [type, value], got {v:?}")));
    };
    Ok(match kind {
        1 => Json::Null,
        2 => Json::String(text(val)?),
        3 => Json::from(val.as_i64().ok_or_else(|| backend("bad integer"))?),
        4 => Json::Bool(text(val)? == "true"),
        5 => Json::from(
            text(val)?
                .parse::<f64>()
                .map_err(|e| backend(format!("bad double: {e}")))?,
        ),
        6 => match val {
            Value::Array(items) => Json::Array(items.iter().map(compact).collect::<Result<_>>()?),
            _ => return Err(backend("bad array")),
        },
        other => {
            return Err(backend(format!(
                "unsupported value type {other} in an answer"
            )));
        }
    })
}

/// The rows of a compact answer: `[header, rows, statistics]`, or `[statistics]` for a query without RETURN.
fn rows(answer: Value) -> Result<Vec<Row>> {
    let Value::Array(parts) = answer else {
        return Err(backend(format!("unexpected answer {answer:?}")));
    };
    if parts.len() < 3 {
        return Ok(Vec::new());
    }
    let columns: Vec<String> = match &parts[0] {
        Value::Array(h) => h
            .iter()
            .map(|c| match c {
                Value::Array(p) if p.len() == 2 => text(&p[1]),
                other => text(other),
            })
            .collect::<Result<_>>()?,
        other => return Err(backend(format!("unexpected header {other:?}"))),
    };
    let Value::Array(list) = &parts[1] else {
        return Err(backend("unexpected rows"));
    };
    list.iter()
        .map(|r| {
            let Value::Array(cells) = r else {
                return Err(backend("unexpected row"));
            };
            let mut row = Map::new();
            for (c, v) in columns.iter().zip(cells) {
                row.insert(c.clone(), compact(v)?);
            }
            Ok(row)
        })
        .collect()
}

#[async_trait]
impl CypherRunner for FalkorRunner {
    async fn run(&self, query: &'static str, params: Row, timeout: Duration) -> Result<Vec<Row>> {
        let mut q = String::new();
        if !params.is_empty() {
            q.push_str("CYPHER ");
        }
        for (k, v) in &params {
            q.push_str(k);
            q.push('=');
            literal(v, &mut q);
            q.push(' ');
        }
        q.push_str(query);
        let ms = timeout.as_millis().max(1) as u64;
        let cmd = CustomCommand::new_static("GRAPH.QUERY", ClusterHash::FirstKey, false);
        let call = self.client.custom::<Value, Value>(
            cmd,
            vec![
                self.graph.as_str().into(),
                q.into(),
                "--compact".into(),
                "--timeout".into(),
                (ms as i64).into(),
            ],
        );
        let answer = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| GraphStoreError::Timeout(timeout))?
            .map_err(|e| {
                if e.details().contains("timed out") {
                    GraphStoreError::Timeout(timeout)
                } else {
                    backend(e)
                }
            })?;
        rows(answer)
    }

    fn name(&self) -> &'static str {
        "falkordb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_escaped_literals() {
        let mut s = String::new();
        literal(
            &serde_json::json!({"a": "x\"y\\z", "b": [1, 2.5, null, true]}),
            &mut s,
        );
        assert_eq!(s, r#"{a: "x\"y\\z", b: [1, 2.5, null, true]}"#);
        let mut s = String::new();
        literal(&serde_json::json!(1.0), &mut s);
        assert_eq!(s, "1.0", "a float stays a float");
    }
}
