//! The production feature store, on DynamoDB (aws-sdk-dynamodb).
//!
//! ```text
//!   table (prefix + name)  partition key   sort key   attributes
//!   user_features          user_id S       version S  f_<name> per feature (typed), embedding B (f32 LE)
//!   recall_u2u_cf          user_id S       version S  candidates S (JSON, best first)
//!   user_realtime          user_id S       -          events L of M {item_id, kind, ts, weight, id}, oldest first;
//!                                                    rev N (bumped by every append)
//!   item_features          item_id S       version S  categories L, f_<name> per feature, embedding B
//!   meta                   pk S            -          "active": version S, versions SS; "popular#<v>": candidates S
//! ```
//!
//! Features are top-level attributes, the table's own schema-free form: a merge is one UpdateItem that sets the
//! given ones and leaves the rest. Values keep their type: Int and Float are both numbers (a Float always written
//! with a point or an exponent), Str is S, Bool is BOOL, StringList is L of S, FloatList is B (f32 LE), so an empty
//! list still reads back as the list it was.
//!
//! Reads are eventually consistent unless configured strong. The user-context stage is three GetItems in parallel;
//! item features are BatchGetItem, 100 keys a call, the calls in parallel, unprocessed keys retried with jittered
//! backoff. An append to the sequence reads it (strongly consistent), leaves out the events whose id it holds (a
//! retry or a replayed stream changes nothing), trims it to N and writes it back in one UpdateItem conditional on
//! the row's `rev` counter, so concurrent appends never lose one: the loser reads again. Throttling is retried by the SDK's adaptive mode (reco-aws).
//! Every call asks for its consumed capacity, which becomes the counters `reco.dynamodb.read_units` and
//! `reco.dynamodb.write_units` per table, and running totals ([`DynamoFeatureStore::consumed`]).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::{DisplayErrorContext, SdkError},
    operation::update_item::UpdateItemError,
    types::{
        AttributeDefinition, AttributeValue, BillingMode, ConsumedCapacity, KeySchemaElement,
        KeyType, KeysAndAttributes, PutRequest, ReturnConsumedCapacity, ReturnValue,
        ScalarAttributeType, WriteRequest,
    },
};
use futures::{StreamExt, TryStreamExt, stream};
use opentelemetry::{KeyValue, metrics::Counter};
use parking_lot::Mutex;
use reco_aws::AwsSettings;
use reco_types::{
    Candidate, Embedding, Event, EventId, FeatureValue, FeatureVersion, Features, Item, ItemId,
    Name, User, UserId,
};

use crate::{FeatureStore, FeatureStoreError, INITIAL_VERSION, Result, UserContext, VersionSel};

/// Keys per BatchGetItem call: DynamoDB's limit.
pub const BATCH_GET_KEYS: usize = 100;
/// Rows per BatchWriteItem call: DynamoDB's limit.
pub const BATCH_WRITE_ROWS: usize = 25;
/// Batch calls of one request in flight at once.
const BATCH_CONCURRENCY: usize = 8;
/// Attempts at a batch's unprocessed keys before the request fails.
const UNPROCESSED_ATTEMPTS: u32 = 8;
/// Features set per UpdateItem of a merge (keeps the expression well under DynamoDB's 4 KB).
const MERGE_CHUNK: usize = 100;
/// How many times an append reads the sequence again after losing a race to another writer.
const APPEND_ATTEMPTS: u32 = 8;
/// Users' appends in flight at once within one batch.
const APPEND_CONCURRENCY: usize = 16;
const FEATURE_PREFIX: &str = "f_";

/// How the store reaches its tables.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    pub aws: AwsSettings,
    /// Prefix of every table name ("reco_" gives "reco_user_features", ...).
    pub table_prefix: String,
    /// Strongly consistent reads instead of eventually consistent ones (twice the read units).
    pub consistent_reads: bool,
    /// Create missing tables at start (on-demand billing): for development and tests, not production.
    pub create_tables: bool,
    /// How long the active version is trusted before it is read again: another process's switch shows within it.
    pub version_refresh: Duration,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        Self {
            aws: AwsSettings::default(),
            table_prefix: "reco_".into(),
            consistent_reads: false,
            create_tables: false,
            version_refresh: Duration::from_secs(1),
        }
    }
}

/// Table names, resolved once from the prefix.
#[derive(Clone, Debug)]
pub struct Tables {
    pub users: String,
    pub pools: String,
    pub realtime: String,
    pub items: String,
    pub meta: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Self {
        Self {
            users: format!("{prefix}user_features"),
            pools: format!("{prefix}recall_u2u_cf"),
            realtime: format!("{prefix}user_realtime"),
            items: format!("{prefix}item_features"),
            meta: format!("{prefix}meta"),
        }
    }
}

/// Read and write capacity units consumed, per table, since the store opened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Consumed {
    pub read_units: HashMap<String, f64>,
    pub write_units: HashMap<String, f64>,
}

struct Capacity {
    read: Counter<f64>,
    write: Counter<f64>,
    totals: Mutex<Consumed>,
}

impl Capacity {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("reco-feature-store");
        Self {
            read: meter
                .f64_counter("reco.dynamodb.read_units")
                .with_description("DynamoDB read capacity units consumed, by table")
                .build(),
            write: meter
                .f64_counter("reco.dynamodb.write_units")
                .with_description("DynamoDB write capacity units consumed, by table")
                .build(),
            totals: Mutex::new(Consumed::default()),
        }
    }

    fn record<'a>(&self, write: bool, consumed: impl IntoIterator<Item = &'a ConsumedCapacity>) {
        for c in consumed {
            let table = c.table_name().unwrap_or("unknown");
            let units = if write {
                c.write_capacity_units().or(c.capacity_units())
            } else {
                c.read_capacity_units().or(c.capacity_units())
            }
            .unwrap_or(0.0);
            let attrs = [KeyValue::new("table", table.to_string())];
            let mut totals = self.totals.lock();
            if write {
                self.write.add(units, &attrs);
                *totals.write_units.entry(table.to_string()).or_default() += units;
            } else {
                self.read.add(units, &attrs);
                *totals.read_units.entry(table.to_string()).or_default() += units;
            }
        }
    }
}

/// What the store knows of the version pointer, refreshed every `version_refresh`.
#[derive(Default)]
struct VersionCache {
    active: Option<(String, Instant)>,
    known: HashSet<String>,
}

/// A feature store on DynamoDB.
pub struct DynamoFeatureStore {
    client: Client,
    tables: Tables,
    config: DynamoConfig,
    capacity: Capacity,
    versions: Mutex<VersionCache>,
}

fn backend<E>(e: SdkError<E>) -> FeatureStoreError
where
    E: std::error::Error + 'static,
{
    FeatureStoreError::Backend(DisplayErrorContext(e).to_string())
}

fn corrupt(table: &str, what: impl std::fmt::Display) -> FeatureStoreError {
    FeatureStoreError::Backend(format!("corrupt row in {table}: {what}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

type Row = HashMap<String, AttributeValue>;

impl DynamoFeatureStore {
    /// Connects (creating the tables when configured to) and makes sure the version pointer exists.
    pub async fn connect(config: DynamoConfig) -> Result<Self> {
        let sdk = config.aws.sdk_config().await;
        let store = Self {
            client: Client::new(&sdk),
            tables: Tables::new(&config.table_prefix),
            config,
            capacity: Capacity::new(),
            versions: Mutex::new(VersionCache::default()),
        };
        if store.config.create_tables {
            store.create_tables().await?;
        }
        // The first version, unless one is already active; losing this race to another process is fine.
        let init = store
            .client
            .put_item()
            .table_name(&store.tables.meta)
            .item("pk", s("active"))
            .item("version", s(INITIAL_VERSION))
            .item("versions", AttributeValue::Ss(vec![INITIAL_VERSION.into()]))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match init {
            Ok(out) => store.capacity.record(true, out.consumed_capacity()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(e) => return Err(backend(e)),
        }
        Ok(store)
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Capacity consumed since the store opened, per table.
    pub fn consumed(&self) -> Consumed {
        self.capacity.totals.lock().clone()
    }

    /// Creates every missing table with on-demand billing and waits until each is active.
    pub async fn create_tables(&self) -> Result<()> {
        let t = &self.tables;
        let specs: [(&str, &str, Option<&str>); 5] = [
            (&t.users, "user_id", Some("version")),
            (&t.pools, "user_id", Some("version")),
            (&t.realtime, "user_id", None),
            (&t.items, "item_id", Some("version")),
            (&t.meta, "pk", None),
        ];
        for (table, hash, range) in specs {
            let mut req = self
                .client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attr_def(hash))
                .key_schema(key(hash, KeyType::Hash));
            if let Some(range) = range {
                req = req
                    .attribute_definitions(attr_def(range))
                    .key_schema(key(range, KeyType::Range));
            }
            match req.send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_in_use_exception()) => {}
                Err(e) => return Err(backend(e)),
            }
        }
        for (table, _, _) in specs {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let out = self
                    .client
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(backend)?;
                let active = out
                    .table()
                    .and_then(|t| t.table_status())
                    .is_some_and(|s| s.as_str() == "ACTIVE");
                if active {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(FeatureStoreError::Backend(format!(
                        "table {table} did not become ACTIVE within 60 s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Reads the version pointer: the active version and every version written.
    async fn read_meta(&self) -> Result<(String, HashSet<String>)> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.meta)
            .key("pk", s("active"))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(backend)?;
        self.capacity.record(false, out.consumed_capacity());
        let row = out.item().cloned().unwrap_or_default();
        let active = match row.get("version") {
            Some(AttributeValue::S(v)) => v.clone(),
            _ => INITIAL_VERSION.to_string(),
        };
        let known = match row.get("versions") {
            Some(AttributeValue::Ss(vs)) => vs.iter().cloned().collect(),
            _ => HashSet::new(),
        };
        let mut cache = self.versions.lock();
        cache.active = Some((active.clone(), Instant::now()));
        cache.known.extend(known.iter().cloned());
        Ok((active, known))
    }

    /// The version a read names (which must exist) or the active one.
    async fn read_version(&self, version: VersionSel<'_>) -> Result<String> {
        match version {
            None => {
                if let Some((v, at)) = &self.versions.lock().active
                    && at.elapsed() < self.config.version_refresh
                {
                    return Ok(v.clone());
                }
                Ok(self.read_meta().await?.0)
            }
            Some(v) => {
                if self.versions.lock().known.contains(v.as_str()) {
                    return Ok(v.to_string());
                }
                if self.read_meta().await?.1.contains(v.as_str()) {
                    Ok(v.to_string())
                } else {
                    Err(FeatureStoreError::UnknownVersion(v.to_string()))
                }
            }
        }
    }

    /// The version a write goes to, registering a new one in the pointer's version set first.
    async fn write_version(&self, version: VersionSel<'_>) -> Result<String> {
        let Some(v) = version else {
            return self.read_version(None).await;
        };
        if self.versions.lock().known.contains(v.as_str()) {
            return Ok(v.to_string());
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.meta)
            .key("pk", s("active"))
            .update_expression("ADD versions :v")
            .expression_attribute_values(":v", AttributeValue::Ss(vec![v.to_string()]))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(backend)?;
        self.capacity.record(true, out.consumed_capacity());
        self.versions.lock().known.insert(v.to_string());
        Ok(v.to_string())
    }

    async fn get(&self, table: &str, key: Row) -> Result<Option<Row>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(self.config.consistent_reads)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(backend)?;
        self.capacity.record(false, out.consumed_capacity());
        Ok(out.item)
    }

    /// BatchGetItem over any number of keys: 100 a call, calls in parallel, unprocessed keys retried with
    /// backoff. Rows come back in no particular order.
    async fn batch_get(
        &self,
        table: &str,
        keys: Vec<Row>,
        projection: Option<&str>,
    ) -> Result<Vec<Row>> {
        let chunks: Vec<Vec<Row>> = keys.chunks(BATCH_GET_KEYS).map(<[Row]>::to_vec).collect();
        let rows: Vec<Vec<Row>> = stream::iter(chunks)
            .map(|chunk| self.batch_get_chunk(table, chunk, projection))
            .buffer_unordered(BATCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(rows.into_iter().flatten().collect())
    }

    async fn batch_get_chunk(
        &self,
        table: &str,
        keys: Vec<Row>,
        projection: Option<&str>,
    ) -> Result<Vec<Row>> {
        until_processed(table, "keys", keys, |keys| async move {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(self.config.consistent_reads)
                .set_projection_expression(projection.map(str::to_string))
                .build()
                .map_err(|e| FeatureStoreError::Backend(e.to_string()))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(table, request)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(backend)?;
            self.capacity.record(false, out.consumed_capacity());
            let rows = out
                .responses
                .and_then(|mut r| r.remove(table))
                .unwrap_or_default();
            let unprocessed = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(table))
                .map(|k| k.keys)
                .unwrap_or_default();
            Ok((rows, unprocessed))
        })
        .await
    }

    /// BatchWriteItem puts: 25 rows a call, calls in parallel, unprocessed rows retried with backoff.
    async fn batch_put(&self, table: &str, rows: Vec<Row>) -> Result<()> {
        let chunks: Vec<Vec<WriteRequest>> = rows
            .chunks(BATCH_WRITE_ROWS)
            .map(|c| {
                c.iter()
                    .map(|r| {
                        let put = PutRequest::builder().set_item(Some(r.clone())).build()?;
                        Ok(WriteRequest::builder().put_request(put).build())
                    })
                    .collect::<Result<Vec<_>, aws_sdk_dynamodb::error::BuildError>>()
            })
            .collect::<Result<_, _>>()
            .map_err(|e| FeatureStoreError::Backend(e.to_string()))?;
        stream::iter(chunks)
            .map(|chunk| self.batch_put_chunk(table, chunk))
            .buffer_unordered(BATCH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn batch_put_chunk(&self, table: &str, writes: Vec<WriteRequest>) -> Result<()> {
        until_processed(table, "rows", writes, |writes| async move {
            let out = self
                .client
                .batch_write_item()
                .request_items(table, writes)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(backend)?;
            self.capacity.record(true, out.consumed_capacity());
            let unprocessed = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
            Ok((Vec::<()>::new(), unprocessed))
        })
        .await
        .map(drop)
    }

    /// Sets the given features (and the embedding, when given) of one user, creating the row if needed.
    async fn merge_user(&self, version: &str, user: User) -> Result<()> {
        let key = versioned_key("user_id", user.user_id.as_str(), version);
        let mut sets: Vec<(String, AttributeValue)> = user
            .features
            .into_iter()
            .map(|(name, value)| (format!("{FEATURE_PREFIX}{name}"), encode_value(&value)))
            .collect();
        if let Some(e) = &user.embedding {
            sets.push(("embedding".into(), encode_embedding(e.as_slice())));
        }
        if sets.is_empty() {
            // Nothing to set still makes the user known, as the other backends do: an UpdateItem without an
            // expression creates the bare row.
            let out = self
                .client
                .update_item()
                .table_name(&self.tables.users)
                .set_key(Some(key))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(backend)?;
            self.capacity.record(true, out.consumed_capacity());
            return Ok(());
        }
        for chunk in sets.chunks(MERGE_CHUNK) {
            let mut req = self
                .client
                .update_item()
                .table_name(&self.tables.users)
                .set_key(Some(key.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let mut parts = Vec::with_capacity(chunk.len());
            for (i, (name, value)) in chunk.iter().enumerate() {
                parts.push(format!("#a{i} = :v{i}"));
                req = req
                    .expression_attribute_names(format!("#a{i}"), name)
                    .expression_attribute_values(format!(":v{i}"), value.clone());
            }
            let out = req
                .update_expression(format!("SET {}", parts.join(", ")))
                .send()
                .await
                .map_err(backend)?;
            self.capacity.record(true, out.consumed_capacity());
        }
        Ok(())
    }

    /// Removes the oldest events past `max_len`, only if the list is still `len` long.
    /// One user's append: read the sequence (strongly consistent), leave out the events it holds already
    /// ([`reco_types::append_unique`]), trim, and write it back on condition that nobody wrote between (the
    /// sequence's `rev` counter); a lost race reads again, at most [`APPEND_ATTEMPTS`] times.
    async fn append_user(
        &self,
        user_id: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize> {
        let table = &self.tables.realtime;
        for _ in 0..APPEND_ATTEMPTS {
            let out = self
                .client
                .get_item()
                .table_name(table)
                .key("user_id", s(user_id.as_str()))
                .consistent_read(true)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(backend)?;
            self.capacity.record(false, out.consumed_capacity());
            let row = out.item.unwrap_or_default();
            let mut seq: std::collections::VecDeque<Event> = match row.get("events") {
                None => Default::default(),
                Some(AttributeValue::L(l)) => l
                    .iter()
                    .map(|e| decode_event(table, e))
                    .collect::<Result<_>>()?,
                Some(_) => return Err(corrupt(table, "events")),
            };
            let rev = match row.get("rev") {
                None => None,
                Some(AttributeValue::N(n)) => {
                    Some(n.parse::<u64>().map_err(|e| corrupt(table, e))?)
                }
                Some(_) => return Err(corrupt(table, "rev")),
            };
            if reco_types::append_unique(&mut seq, events.clone(), max_len) == 0 {
                return Ok(seq.len());
            }
            let next = rev.unwrap_or(0) + 1;
            let mut put = self
                .client
                .update_item()
                .table_name(table)
                .key("user_id", s(user_id.as_str()))
                .update_expression("SET events = :seq, rev = :next")
                .expression_attribute_values(
                    ":seq",
                    AttributeValue::L(seq.iter().map(encode_event).collect()),
                )
                .expression_attribute_values(":next", AttributeValue::N(next.to_string()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            put = match rev {
                Some(rev) => put
                    .condition_expression("rev = :rev")
                    .expression_attribute_values(":rev", AttributeValue::N(rev.to_string())),
                // A row written before sequences had a counter: it must not have changed since it was read.
                None if row.contains_key("events") => put
                    .condition_expression("attribute_not_exists(rev) AND size(events) = :len")
                    .expression_attribute_values(
                        ":len",
                        AttributeValue::N(
                            row.get("events")
                                .and_then(|e| e.as_l().ok())
                                .map_or(0, Vec::len)
                                .to_string(),
                        ),
                    ),
                None => put.condition_expression("attribute_not_exists(user_id)"),
            };
            match put.send().await {
                Ok(out) => {
                    self.capacity.record(true, out.consumed_capacity());
                    return Ok(seq.len());
                }
                Err(SdkError::ServiceError(e))
                    if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
                {
                    continue;
                }
                Err(e) => return Err(backend(e)),
            }
        }
        Err(FeatureStoreError::Backend(format!(
            "{table}: the sequence of {user_id} changed under {APPEND_ATTEMPTS} appends in a row"
        )))
    }
}

/// Sends `pending` with `send` until DynamoDB has processed all of it: `send` answers what it got and what the
/// table left unprocessed (throttling), which is sent again after a jittered backoff, at most
/// [`UNPROCESSED_ATTEMPTS`] times in all.
async fn until_processed<T, R, F, Fut>(
    table: &str,
    what: &str,
    mut pending: Vec<T>,
    mut send: F,
) -> Result<Vec<R>>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<R>, Vec<T>)>>,
{
    let mut got = Vec::new();
    for attempt in 0..UNPROCESSED_ATTEMPTS {
        let (answered, left) = send(std::mem::take(&mut pending)).await?;
        got.extend(answered);
        pending = left;
        if pending.is_empty() {
            return Ok(got);
        }
        tokio::time::sleep(reco_aws::backoff(
            attempt,
            Duration::from_millis(25),
            Duration::from_secs(1),
        ))
        .await;
    }
    Err(FeatureStoreError::Backend(format!(
        "{} {what} of {table} still unprocessed after {UNPROCESSED_ATTEMPTS} attempts (throttled)",
        pending.len()
    )))
}

fn attr_def(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("name and type are set")
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("name and type are set")
}

fn versioned_key(id_name: &str, id: &str, version: &str) -> Row {
    HashMap::from([(id_name.to_string(), s(id)), ("version".into(), s(version))])
}

/// A feature value as an attribute value, keeping its type (see the module doc).
pub fn encode_value(v: &FeatureValue) -> AttributeValue {
    match v {
        FeatureValue::Int(i) => AttributeValue::N(i.to_string()),
        // Debug formatting always shows a point or an exponent, so the number reads back as a Float.
        FeatureValue::Float(f) => AttributeValue::N(format!("{f:?}")),
        FeatureValue::Str(x) => s(x.clone()),
        FeatureValue::Bool(b) => AttributeValue::Bool(*b),
        FeatureValue::FloatList(l) => encode_embedding(l),
        FeatureValue::StringList(l) => AttributeValue::L(l.iter().map(|x| s(x.clone())).collect()),
    }
}

/// The inverse of [`encode_value`]; None for an attribute of another shape.
pub fn decode_value(v: &AttributeValue) -> Option<FeatureValue> {
    Some(match v {
        AttributeValue::N(n) if n.contains(['.', 'e', 'E']) => FeatureValue::Float(n.parse().ok()?),
        AttributeValue::N(n) => match n.parse() {
            Ok(i) => FeatureValue::Int(i),
            Err(_) => FeatureValue::Float(n.parse().ok()?),
        },
        AttributeValue::S(x) => FeatureValue::Str(x.clone()),
        AttributeValue::Bool(b) => FeatureValue::Bool(*b),
        AttributeValue::B(_) => FeatureValue::FloatList(decode_floats(v)?),
        AttributeValue::L(l) => FeatureValue::StringList(
            l.iter()
                .map(|x| x.as_s().ok().cloned())
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

fn encode_embedding(v: &[f32]) -> AttributeValue {
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    AttributeValue::B(bytes.into())
}

fn decode_floats(v: &AttributeValue) -> Option<Vec<f32>> {
    let bytes = v.as_b().ok()?.as_ref();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn decode_features(table: &str, row: &Row) -> Result<Features> {
    let mut pairs = Vec::new();
    for (name, value) in row {
        if let Some(feature) = name.strip_prefix(FEATURE_PREFIX) {
            let v = decode_value(value)
                .ok_or_else(|| corrupt(table, format!("feature {feature} has an unknown shape")))?;
            pairs.push((feature.to_string(), v));
        }
    }
    Features::try_from_iter(pairs).map_err(|e| corrupt(table, e))
}

fn decode_embedding(table: &str, row: &Row) -> Result<Option<Embedding>> {
    row.get("embedding")
        .map(|v| {
            let floats = decode_floats(v).ok_or_else(|| corrupt(table, "embedding"))?;
            Embedding::parse("embedding", floats).map_err(|e| corrupt(table, e))
        })
        .transpose()
}

fn string_attr<'a>(table: &str, row: &'a Row, name: &str) -> Result<&'a str> {
    match row.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(table, format!("missing {name}"))),
    }
}

fn decode_user(table: &str, row: &Row) -> Result<User> {
    Ok(User {
        user_id: UserId::parse("user_id", string_attr(table, row, "user_id")?)
            .map_err(|e| corrupt(table, e))?,
        features: decode_features(table, row)?,
        embedding: decode_embedding(table, row)?,
    })
}

fn encode_item(item: &Item, version: &str) -> Row {
    let mut row = versioned_key("item_id", item.item_id.as_str(), version);
    row.insert(
        "categories".into(),
        AttributeValue::L(item.categories.iter().map(|c| s(c.as_str())).collect()),
    );
    for (name, value) in item.features.iter() {
        row.insert(format!("{FEATURE_PREFIX}{name}"), encode_value(value));
    }
    if let Some(e) = &item.embedding {
        row.insert("embedding".into(), encode_embedding(e.as_slice()));
    }
    row
}

fn decode_categories(table: &str, row: &Row) -> Result<Vec<Name>> {
    match row.get("categories") {
        None => Ok(Vec::new()),
        Some(AttributeValue::L(l)) => l
            .iter()
            .map(|c| {
                let c = c.as_s().map_err(|_| corrupt(table, "category"))?;
                Name::parse("categories", c).map_err(|e| corrupt(table, e))
            })
            .collect(),
        Some(_) => Err(corrupt(table, "categories")),
    }
}

fn decode_item(table: &str, row: &Row, include_embedding: bool) -> Result<Item> {
    Ok(Item {
        item_id: ItemId::parse("item_id", string_attr(table, row, "item_id")?)
            .map_err(|e| corrupt(table, e))?,
        categories: decode_categories(table, row)?,
        features: decode_features(table, row)?,
        embedding: if include_embedding {
            decode_embedding(table, row)?
        } else {
            None
        },
    })
}

fn encode_event(e: &Event) -> AttributeValue {
    let mut m = HashMap::from([
        ("item_id".to_string(), s(e.item_id.as_str())),
        ("kind".to_string(), s(e.kind.as_str())),
        (
            "ts".to_string(),
            AttributeValue::N(e.timestamp_ms.to_string()),
        ),
        (
            "weight".to_string(),
            AttributeValue::N(e.weight.to_string()),
        ),
    ]);
    if let Some(id) = &e.id {
        m.insert("id".to_string(), s(id.as_str()));
    }
    AttributeValue::M(m)
}

fn decode_event(table: &str, v: &AttributeValue) -> Result<Event> {
    let m = v.as_m().map_err(|_| corrupt(table, "event"))?;
    let num = |name: &str| -> Result<&str> {
        match m.get(name) {
            Some(AttributeValue::N(n)) => Ok(n),
            _ => Err(corrupt(table, format!("event without {name}"))),
        }
    };
    let text = |name: &str| -> Result<&str> {
        match m.get(name) {
            Some(AttributeValue::S(x)) => Ok(x),
            _ => Err(corrupt(table, format!("event without {name}"))),
        }
    };
    Ok(Event {
        item_id: ItemId::parse("item_id", text("item_id")?).map_err(|e| corrupt(table, e))?,
        kind: Name::parse("kind", text("kind")?).map_err(|e| corrupt(table, e))?,
        timestamp_ms: num("ts")?.parse().map_err(|e| corrupt(table, e))?,
        weight: num("weight")?.parse().map_err(|e| corrupt(table, e))?,
        id: match m.get("id") {
            None => None,
            Some(AttributeValue::S(id)) => {
                Some(EventId::parse("event_id", id).map_err(|e| corrupt(table, e))?)
            }
            Some(_) => return Err(corrupt(table, "event id")),
        },
    })
}

fn decode_candidates(table: &str, row: Option<&Row>) -> Result<Vec<Candidate>> {
    match row.and_then(|r| r.get("candidates")) {
        None => Ok(Vec::new()),
        Some(AttributeValue::S(json)) => serde_json::from_str(json).map_err(|e| corrupt(table, e)),
        Some(_) => Err(corrupt(table, "candidates")),
    }
}

fn encode_candidates(list: &[Candidate]) -> AttributeValue {
    s(serde_json::to_string(list).expect("candidates serialise"))
}

#[async_trait]
impl FeatureStore for DynamoFeatureStore {
    async fn user_context(
        &self,
        version: VersionSel<'_>,
        user_id: &UserId,
        max_events: usize,
        max_pool: usize,
    ) -> Result<UserContext> {
        let v = self.read_version(version).await?;
        let key = versioned_key("user_id", user_id.as_str(), &v);
        let (user, pool, events) = tokio::try_join!(
            self.get(&self.tables.users, key.clone()),
            self.get(&self.tables.pools, key),
            self.get(
                &self.tables.realtime,
                HashMap::from([("user_id".to_string(), s(user_id.as_str()))]),
            ),
        )?;
        let user = user
            .map(|row| decode_user(&self.tables.users, &row))
            .transpose()?;
        let recall_pool = decode_candidates(&self.tables.pools, pool.as_ref())?;
        let recent_events = match events.as_ref().and_then(|r| r.get("events")) {
            None => Vec::new(),
            Some(AttributeValue::L(l)) => l
                .iter()
                .rev()
                .map(|e| decode_event(&self.tables.realtime, e))
                .collect::<Result<_>>()?,
            Some(_) => return Err(corrupt(&self.tables.realtime, "events")),
        };
        Ok(UserContext {
            user,
            recall_pool,
            recent_events,
            version: FeatureVersion::parse("feature_version", &v).ok(),
        }
        .limited(max_events, max_pool))
    }

    async fn items(
        &self,
        version: VersionSel<'_>,
        item_ids: &[ItemId],
        include_embeddings: bool,
    ) -> Result<Vec<Item>> {
        let v = self.read_version(version).await?;
        // BatchGetItem refuses duplicate keys: ask each once, answer in the order asked.
        let mut seen = HashSet::new();
        let keys: Vec<Row> = item_ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .map(|id| versioned_key("item_id", id.as_str(), &v))
            .collect();
        let rows = self.batch_get(&self.tables.items, keys, None).await?;
        let mut by_id = HashMap::with_capacity(rows.len());
        for row in rows {
            let item = decode_item(&self.tables.items, &row, include_embeddings)?;
            by_id.insert(item.item_id.to_string(), item);
        }
        Ok(item_ids
            .iter()
            .filter_map(|id| by_id.get(id.as_str()).cloned())
            .collect())
    }

    async fn popular(
        &self,
        version: VersionSel<'_>,
        k: usize,
        category: Option<&str>,
    ) -> Result<Vec<Candidate>> {
        let v = self.read_version(version).await?;
        let row = self
            .get(
                &self.tables.meta,
                HashMap::from([("pk".to_string(), s(format!("popular#{v}")))]),
            )
            .await?;
        let list = decode_candidates(&self.tables.meta, row.as_ref())?;
        let Some(category) = category else {
            return Ok(list.into_iter().take(k).collect());
        };
        // Categories of the popular items, a batch at a time, until k are found.
        let mut out = Vec::new();
        for chunk in list.chunks(BATCH_GET_KEYS) {
            let keys = chunk
                .iter()
                .map(|c| versioned_key("item_id", c.item_id.as_str(), &v))
                .collect();
            let rows = self
                .batch_get(&self.tables.items, keys, Some("item_id, categories"))
                .await?;
            let mut in_category = HashSet::new();
            for row in &rows {
                if decode_categories(&self.tables.items, row)?
                    .iter()
                    .any(|c| c.as_str() == category)
                {
                    in_category.insert(string_attr(&self.tables.items, row, "item_id")?);
                }
            }
            for c in chunk {
                if out.len() < k && in_category.contains(c.item_id.as_str()) {
                    out.push(c.clone());
                }
            }
            if out.len() >= k {
                break;
            }
        }
        Ok(out)
    }

    async fn put_users(
        &self,
        version: VersionSel<'_>,
        users: Vec<User>,
        merge: bool,
    ) -> Result<usize> {
        let v = self.write_version(version).await?;
        let n = users.len();
        if merge {
            stream::iter(users)
                .map(|u| self.merge_user(&v, u))
                .buffer_unordered(BATCH_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            return Ok(n);
        }
        // A replace keeps the stored embedding of a user written without one, as every backend does.
        let without: HashSet<&str> = users
            .iter()
            .filter(|u| u.embedding.is_none())
            .map(|u| u.user_id.as_str())
            .collect();
        let keys: Vec<Row> = without
            .into_iter()
            .map(|id| versioned_key("user_id", id, &v))
            .collect();
        let mut stored = HashMap::new();
        if !keys.is_empty() {
            for row in self
                .batch_get(&self.tables.users, keys, Some("user_id, embedding"))
                .await?
            {
                if let (Ok(id), Some(e)) = (string_attr("", &row, "user_id"), row.get("embedding"))
                {
                    stored.insert(id.to_string(), e.clone());
                }
            }
        }
        let rows = users
            .into_iter()
            .map(|u| {
                let mut row = versioned_key("user_id", u.user_id.as_str(), &v);
                for (name, value) in u.features.iter() {
                    row.insert(format!("{FEATURE_PREFIX}{name}"), encode_value(value));
                }
                match &u.embedding {
                    Some(e) => {
                        row.insert("embedding".into(), encode_embedding(e.as_slice()));
                    }
                    None => {
                        if let Some(e) = stored.get(u.user_id.as_str()) {
                            row.insert("embedding".into(), e.clone());
                        }
                    }
                }
                row
            })
            .collect();
        self.batch_put(&self.tables.users, rows).await?;
        Ok(n)
    }

    async fn put_items(&self, version: VersionSel<'_>, items: Vec<Item>) -> Result<usize> {
        let v = self.write_version(version).await?;
        let rows = items.iter().map(|i| encode_item(i, &v)).collect();
        self.batch_put(&self.tables.items, rows).await?;
        Ok(items.len())
    }

    async fn put_recall_pools(
        &self,
        version: VersionSel<'_>,
        pools: Vec<(UserId, Vec<Candidate>)>,
    ) -> Result<usize> {
        let v = self.write_version(version).await?;
        let rows = pools
            .iter()
            .map(|(user, pool)| {
                let mut row = versioned_key("user_id", user.as_str(), &v);
                row.insert("candidates".into(), encode_candidates(pool));
                row
            })
            .collect();
        self.batch_put(&self.tables.pools, rows).await?;
        Ok(pools.len())
    }

    async fn put_popular(&self, version: VersionSel<'_>, items: Vec<Candidate>) -> Result<usize> {
        let v = self.write_version(version).await?;
        let out = self
            .client
            .put_item()
            .table_name(&self.tables.meta)
            .item("pk", s(format!("popular#{v}")))
            .item("candidates", encode_candidates(&items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(backend)?;
        self.capacity.record(true, out.consumed_capacity());
        Ok(items.len())
    }

    async fn append_events(
        &self,
        user_id: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize> {
        self.append_user(user_id, events, max_len).await
    }

    async fn append_events_batch(
        &self,
        appends: Vec<(UserId, Vec<Event>)>,
        max_len: usize,
    ) -> Result<Vec<usize>> {
        // One item per user: users' appends run side by side, one user's in the order given.
        let mut per_user: Vec<(UserId, Vec<(usize, Vec<Event>)>)> = Vec::new();
        let mut at: HashMap<UserId, usize> = HashMap::new();
        let n = appends.len();
        for (i, (user, events)) in appends.into_iter().enumerate() {
            let slot = *at.entry(user.clone()).or_insert_with(|| {
                per_user.push((user, Vec::new()));
                per_user.len() - 1
            });
            per_user[slot].1.push((i, events));
        }
        let done: Vec<Vec<(usize, usize)>> = stream::iter(per_user)
            .map(|(user, list)| async move {
                let mut out = Vec::with_capacity(list.len());
                for (i, events) in list {
                    out.push((i, self.append_user(&user, events, max_len).await?));
                }
                Ok::<_, FeatureStoreError>(out)
            })
            .buffer_unordered(APPEND_CONCURRENCY)
            .try_collect()
            .await?;
        let mut lengths = vec![0; n];
        for (i, len) in done.into_iter().flatten() {
            lengths[i] = len;
        }
        Ok(lengths)
    }

    async fn versions(&self) -> Result<(FeatureVersion, Vec<FeatureVersion>)> {
        let (active, known) = self.read_meta().await?;
        let parse = |v: &str| {
            FeatureVersion::parse("feature_version", v).map_err(|e| corrupt(&self.tables.meta, e))
        };
        let mut all = known.iter().map(|v| parse(v)).collect::<Result<Vec<_>>>()?;
        all.sort();
        Ok((parse(&active)?, all))
    }

    async fn active_version(&self) -> Result<FeatureVersion> {
        let v = self.read_version(None).await?;
        FeatureVersion::parse("feature_version", &v).map_err(|e| corrupt(&self.tables.meta, e))
    }

    async fn activate(&self, version: &FeatureVersion) -> Result<FeatureVersion> {
        // Only a version something was written to (its name is in the pointer's set), or the one already active.
        let (active, known) = self.read_meta().await?;
        if active != version.as_str() && !known.contains(version.as_str()) {
            return Err(FeatureStoreError::NotLoaded(version.to_string()));
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.tables.meta)
            .key("pk", s("active"))
            .update_expression("SET version = :v ADD versions :vs")
            .expression_attribute_values(":v", s(version.as_str()))
            .expression_attribute_values(":vs", AttributeValue::Ss(vec![version.to_string()]))
            .return_values(ReturnValue::UpdatedOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(backend)?;
        self.capacity.record(true, out.consumed_capacity());
        // UPDATED_OLD leaves out an attribute the update did not change (activating the active version again).
        let previous = match out.attributes().and_then(|a| a.get("version")) {
            Some(AttributeValue::S(v)) => v.clone(),
            _ if !active.is_empty() => active,
            _ => INITIAL_VERSION.to_string(),
        };
        {
            let mut cache = self.versions.lock();
            cache.active = Some((version.to_string(), Instant::now()));
            cache.known.insert(version.to_string());
        }
        FeatureVersion::parse("feature_version", &previous)
            .map_err(|e| corrupt(&self.tables.meta, e))
    }

    async fn ping(&self) -> Result<()> {
        self.read_meta().await.map(drop)
    }

    fn backend(&self) -> &'static str {
        "dynamodb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unprocessed_keys_are_sent_again_until_done_or_given_up() {
        // The table processes two keys a call and leaves the rest, as a throttled table does.
        let mut calls = 0;
        let got = until_processed("t", "keys", (0..5).collect(), |pending: Vec<i32>| {
            calls += 1;
            async move {
                let (done, left) = pending.split_at(pending.len().min(2));
                Ok((done.to_vec(), left.to_vec()))
            }
        })
        .await
        .unwrap();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert_eq!(calls, 3);

        let err = until_processed("t", "keys", vec![1], |pending: Vec<i32>| async move {
            Ok((Vec::<i32>::new(), pending))
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("1 keys of t still unprocessed after 8 attempts"),
            "{err}"
        );
    }

    #[test]
    fn feature_values_keep_their_type_through_attribute_values() {
        let values = [
            FeatureValue::Int(3),
            FeatureValue::Int(-7),
            FeatureValue::Float(3.0),
            FeatureValue::Float(1e300),
            FeatureValue::Float(-2.5e-7),
            FeatureValue::Str("fr".into()),
            FeatureValue::Bool(true),
            FeatureValue::FloatList(vec![]),
            FeatureValue::FloatList(vec![0.5, -1.0]),
            FeatureValue::StringList(vec![]),
            FeatureValue::StringList(vec!["a".into(), "b".into()]),
        ];
        for v in values {
            assert_eq!(decode_value(&encode_value(&v)), Some(v.clone()), "{v:?}");
        }
        assert_eq!(decode_value(&AttributeValue::Null(true)), None);
    }

    use reco_test_support::MotoServer;

    async fn store_on(moto: &MotoServer, prefix: &str) -> DynamoFeatureStore {
        DynamoFeatureStore::connect(DynamoConfig {
            aws: AwsSettings::local(moto.endpoint()),
            table_prefix: prefix.into(),
            create_tables: true,
            ..DynamoConfig::default()
        })
        .await
        .expect("connect to moto")
    }

    fn item(i: usize) -> Item {
        Item::parse(
            &format!("i{i}"),
            vec![format!("c{}", i % 3)],
            Features::try_from_iter([("n".to_string(), FeatureValue::Int(i as i64))]).unwrap(),
            vec![i as f32, 0.5],
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamodb_store_passes_the_shared_suite_on_moto() {
        let Some(moto) = MotoServer::start() else {
            return;
        };
        let store = store_on(&moto, "suite_").await;
        crate::suite::run_all(&store).await;
        // Strong reads answer the same.
        let strong = DynamoFeatureStore::connect(DynamoConfig {
            aws: AwsSettings::local(moto.endpoint()),
            table_prefix: "suite_".into(),
            consistent_reads: true,
            ..DynamoConfig::default()
        })
        .await
        .unwrap();
        let u = UserId::parse("u", "suite-u1").unwrap();
        assert_eq!(
            strong.user_context(None, &u, 0, 0).await.unwrap(),
            store.user_context(None, &u, 0, 0).await.unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn item_batches_split_into_calls_of_100_and_answer_in_the_order_asked() {
        let Some(moto) = MotoServer::start() else {
            return;
        };
        let store = store_on(&moto, "batch_").await;
        let items: Vec<Item> = (0..250).map(item).collect();
        assert_eq!(store.put_items(None, items.clone()).await.unwrap(), 250);
        // 250 distinct keys, one repeated, and unknown ones: three BatchGetItem calls, one answer per known key.
        let mut ask: Vec<ItemId> = (0..260)
            .rev()
            .map(|i| ItemId::parse("item_id", format!("i{i}")).unwrap())
            .collect();
        ask.push(ItemId::parse("item_id", "i7").unwrap());
        let got = store.items(None, &ask, true).await.unwrap();
        assert_eq!(got.len(), 251);
        assert_eq!(got[0], items[249]);
        assert_eq!(got[249], items[0]);
        assert_eq!(got[250], items[7]);
        let consumed = store.consumed();
        let reads = consumed.read_units.get("batch_item_features").copied();
        assert!(
            reads.is_some_and(|r| r > 0.0),
            "read units per table are recorded: {consumed:?}"
        );
        let writes = consumed.write_units.get("batch_item_features").copied();
        // DynamoDB charges a unit per row of up to 1 KB; moto reports one per BatchWriteItem call, so this counts
        // the ten calls of 25 rows.
        assert!(
            writes.is_some_and(|w| w >= 10.0),
            "write units per table are recorded: {consumed:?}"
        );
        let cat = store.popular(None, 5, Some("c1")).await.unwrap();
        assert!(cat.is_empty(), "no popular list yet");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_lose_nothing_and_the_sequence_keeps_the_last_n() {
        let Some(moto) = MotoServer::start() else {
            return;
        };
        let store = std::sync::Arc::new(store_on(&moto, "seq_").await);
        let u = UserId::parse("user_id", "racer").unwrap();
        let appends = (0..20).map(|i| {
            let store = store.clone();
            let u = u.clone();
            tokio::spawn(async move {
                let e = Event::parse(&format!("e{i}"), "click", 1_000 + i, 1.0).unwrap();
                store.append_events(&u, vec![e], 100).await.unwrap()
            })
        });
        for a in appends {
            a.await.unwrap();
        }
        let ctx = store.user_context(None, &u, 0, 0).await.unwrap();
        let mut ids: Vec<_> = ctx
            .recent_events
            .iter()
            .map(|e| e.item_id.to_string())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20, "every concurrent append is kept: {ids:?}");

        // Past N, the oldest go: the stored list itself is trimmed, not only the answer.
        let more: Vec<Event> = (0..7)
            .map(|i| Event::parse(&format!("late{i}"), "click", 5_000 + i, 1.0).unwrap())
            .collect();
        assert_eq!(store.append_events(&u, more, 10).await.unwrap(), 10);
        let row = store
            .get(
                &store.tables.realtime,
                HashMap::from([("user_id".to_string(), s("racer"))]),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row["events"].as_l().unwrap().len(), 10);
        let ctx = store.user_context(None, &u, 0, 0).await.unwrap();
        assert_eq!(ctx.recent_events[0].item_id.as_str(), "late6");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_table_is_a_backend_error_within_the_timeout() {
        let port = reco_test_support::free_port();
        let mut aws = AwsSettings::local(format!("http://127.0.0.1:{port}"));
        aws.attempt_timeout = Duration::from_millis(200);
        aws.operation_timeout = Duration::from_millis(600);
        let started = Instant::now();
        let err = DynamoFeatureStore::connect(DynamoConfig {
            aws,
            ..DynamoConfig::default()
        })
        .await
        .err()
        .expect("nothing listens there");
        assert!(matches!(err, FeatureStoreError::Backend(_)), "{err}");
        // A bound, not a timing: far above the configured 600 ms, far below the SDK's defaults.
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
