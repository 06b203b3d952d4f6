//! A stub of the OpenSearch REST API for the vector-recall OpenSearch backend (no OpenSearch runs on these
//! machines). It checks what it receives against OpenSearch's documented formats (the k-NN index mapping, `_bulk`
//! NDJSON, the `knn` query with its filter, `_aliases` actions), panicking on anything else, and answers as
//! OpenSearch does, scoring exactly with OpenSearch's cosinesimil score (1 + cos), so a backend's whole behaviour
//! can run against it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};

use crate::http::Reply;

#[derive(Default)]
struct State {
    /// index -> (mapping, docs by id)
    indices: HashMap<String, (Value, BTreeMap<String, Value>)>,
    aliases: HashMap<String, String>,
    /// (method, path, authorization) of every request.
    log: Vec<(String, String, String)>,
}

/// A stub of the OpenSearch REST API on a free port of 127.0.0.1, serving until dropped with the process.
pub struct OpenSearchStub {
    url: String,
    state: Arc<Mutex<State>>,
}

impl OpenSearchStub {
    /// Starts the stub.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let url = crate::http::serve(move |r| {
            let mut st = s.lock().unwrap();
            st.log.push((
                r.method.clone(),
                r.path.clone(),
                r.header("authorization").to_string(),
            ));
            let (status, body) = answer(
                &mut st,
                &r.method,
                &r.path,
                r.header("content-type"),
                &r.body,
            );
            Reply::json(status, body)
        });
        Self { url, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Index -> alias, as the alias actions left them.
    pub fn aliases(&self) -> HashMap<String, String> {
        self.state.lock().unwrap().aliases.clone()
    }

    /// (method, path, Authorization header) of every request so far.
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().log.clone()
    }

    /// The settings and mapping an index was created with.
    pub fn mapping(&self, index: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .indices
            .get(index)
            .map(|(m, _)| m.clone())
    }

    /// Documents in an index.
    pub fn count(&self, index: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .indices
            .get(index)
            .map_or(0, |(_, d)| d.len())
    }
}

fn error(status: u16, reason: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"type": "stub_error", "reason": reason}, "status": status}),
    )
}

fn passes(doc: &Value, filter: &Value) -> bool {
    let cats: Vec<&str> = doc["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let id = doc["item_id"].as_str().unwrap();
    let clause_ok = |c: &Value| -> bool {
        if let Some(t) = c.get("terms") {
            let want: Vec<&str> = t["categories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            cats.iter().any(|c| want.contains(c))
        } else if let Some(i) = c.get("ids") {
            i["values"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v.as_str() == Some(id))
        } else {
            panic!("unexpected filter clause {c}")
        }
    };
    let b = &filter["bool"];
    b["filter"].as_array().unwrap().iter().all(clause_ok)
        && !b["must_not"].as_array().unwrap().iter().any(clause_ok)
}

fn answer(st: &mut State, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Value) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let json_body = || serde_json::from_slice::<Value>(body).unwrap();
    match (method, segs.as_slice()) {
        ("HEAD", [index]) => (
            if st.indices.contains_key(*index) {
                200
            } else {
                404
            },
            Value::Null,
        ),
        ("PUT", [index]) => {
            let m = json_body();
            assert_eq!(m["settings"]["index"]["knn"], true, "{m}");
            let e = &m["mappings"]["properties"]["embedding"];
            assert_eq!(e["type"], "knn_vector");
            assert_eq!(e["method"]["name"], "hnsw");
            assert!(e["dimension"].as_u64().unwrap() > 0);
            assert_eq!(m["mappings"]["properties"]["categories"]["type"], "keyword");
            st.indices.insert(index.to_string(), (m, BTreeMap::new()));
            (200, json!({"acknowledged": true, "index": index}))
        }
        ("POST" | "PUT", [index, "_bulk"]) => {
            // OpenSearch takes a bulk body as application/x-ndjson or application/json (what the crate sends).
            assert!(
                ctype.starts_with("application/x-ndjson") || ctype.starts_with("application/json"),
                "{ctype}"
            );
            let Some((_, docs)) = st.indices.get_mut(*index) else {
                return error(404, "no such index");
            };
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.ends_with('\n'), "NDJSON ends with a newline");
            let mut lines = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap());
            let mut items = Vec::new();
            let mut errors = false;
            while let Some(action) = lines.next() {
                if let Some(a) = action.get("index") {
                    let id = a["_id"].as_str().unwrap().to_string();
                    let doc = lines.next().expect("a document after an index action");
                    if doc["embedding"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| !x.is_number())
                    {
                        errors = true;
                        items.push(json!({"index": {"_id": id, "status": 400, "error": {"type": "mapper_parsing_exception"}}}));
                        continue;
                    }
                    docs.insert(id.clone(), doc);
                    items.push(json!({"index": {"_id": id, "status": 201, "result": "created"}}));
                } else if let Some(a) = action.get("delete") {
                    let id = a["_id"].as_str().unwrap();
                    let result = if docs.remove(id).is_some() {
                        "deleted"
                    } else {
                        "not_found"
                    };
                    items.push(json!({"delete": {"_id": id, "result": result}}));
                } else {
                    panic!("unexpected bulk action {action}");
                }
            }
            (200, json!({"took": 1, "errors": errors, "items": items}))
        }
        ("POST" | "GET", [index, "_search"]) => {
            let Some((_, docs)) = st.indices.get(*index) else {
                return error(404, "no such index");
            };
            let q = json_body();
            let knn = &q["query"]["knn"]["embedding"];
            let k = knn["k"].as_u64().expect("k in the knn query") as usize;
            assert_eq!(q["size"].as_u64(), Some(k as u64));
            let v: Vec<f64> = serde_json::from_value(knn["vector"].clone()).unwrap();
            let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            let mut hits: Vec<(f64, String)> = docs
                .iter()
                .filter(|(_, d)| knn.get("filter").is_none_or(|f| passes(d, f)))
                .map(|(id, d)| {
                    let e: Vec<f64> = serde_json::from_value(d["embedding"].clone()).unwrap();
                    let cos =
                        v.iter().zip(&e).map(|(a, b)| a * b).sum::<f64>() / (norm(&v) * norm(&e));
                    (1.0 + cos, id.clone())
                })
                .collect();
            hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            hits.truncate(k);
            let hits: Vec<Value> = hits
                .into_iter()
                .map(|(s, id)| json!({"_index": index, "_id": id, "_score": s}))
                .collect();
            (
                200,
                json!({"hits": {"total": {"value": hits.len()}, "hits": hits}}),
            )
        }
        ("GET" | "POST", [index, "_count"]) => match st.indices.get(*index) {
            Some((_, docs)) => (200, json!({"count": docs.len()})),
            None => error(404, "no such index"),
        },
        ("GET" | "POST", [index, "_mget"]) => {
            let Some((_, docs)) = st.indices.get(*index) else {
                return error(404, "no such index");
            };
            let ids = json_body()["ids"].clone();
            let out: Vec<Value> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|id| match docs.get(id.as_str().unwrap()) {
                    Some(d) => {
                        json!({"_id": id, "found": true, "_source": {"embedding": d["embedding"]}})
                    }
                    None => json!({"_id": id, "found": false}),
                })
                .collect();
            (200, json!({"docs": out}))
        }
        ("POST" | "GET", [_index, "_refresh"]) => (200, json!({"_shards": {"failed": 0}})),
        ("GET", ["_alias", alias]) => {
            let on: Vec<&String> = st
                .aliases
                .iter()
                .filter(|(_, a)| a == alias)
                .map(|(i, _)| i)
                .collect();
            if on.is_empty() {
                return error(404, "alias missing");
            }
            let map: serde_json::Map<String, Value> = on
                .into_iter()
                .map(|i| (i.clone(), json!({"aliases": {alias.to_string(): {}}})))
                .collect();
            (200, Value::Object(map))
        }
        ("POST", ["_aliases"]) => {
            for a in json_body()["actions"].as_array().unwrap() {
                if let Some(r) = a.get("remove") {
                    st.aliases.remove(r["index"].as_str().unwrap());
                } else if let Some(add) = a.get("add") {
                    let index = add["index"].as_str().unwrap();
                    if !st.indices.contains_key(index) {
                        return error(404, "no such index");
                    }
                    st.aliases.insert(
                        index.to_string(),
                        add["alias"].as_str().unwrap().to_string(),
                    );
                }
            }
            (200, json!({"acknowledged": true}))
        }
        _ => error(400, &format!("the stub does not know {method} {path}")),
    }
}
