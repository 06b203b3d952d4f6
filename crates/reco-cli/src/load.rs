//! Loads a snapshot into running services through their public write APIs, in batches, several in flight.
//!
//! The switch from the old snapshot to the new is atomic for what readers see: feature tables are written into a
//! new feature-set version and item vectors into a new index version, and only once both are complete are they
//! activated (a version pointer in the feature store, an index swap in vector recall). A load that fails or is
//! interrupted before then leaves the previous snapshot serving, untouched.
//!
//! ```text
//!   items, users, pools, popular ──▶ feature version V ─┐
//!   item vectors ────────────────▶ index version V ────┴─ ActivateVersion(V), ActivateIndex(V) ─▶ serving
//!   then: graph edges (add), recent sequences (append)
//! ```
//!
//! Graph edges and sequences are not versioned: they are added after the switch, so a load that fails there
//! leaves the new snapshot serving with those parts partly updated (the graph's snapshot rebuild comes with the
//! graph issue; sequences are real-time data that only grow).

use std::{
    io::IsTerminal,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, TryStreamExt, stream};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reco_data::Snapshot;
use reco_proto::{
    common::v1 as common,
    feature::v1::{
        ActivateVersionRequest, AppendEventsRequest, PutItemFeaturesRequest,
        PutPopularItemsRequest, PutRecallPoolsRequest, PutUserFeaturesRequest, RecallPool,
        feature_service_client::FeatureServiceClient,
    },
    graph_recall::v1::{AddEdgesRequest, Edge, EdgeKind, graph_recall_client::GraphRecallClient},
    vector_recall::v1::{
        ActivateIndexRequest, ItemVector, UpsertRequest, vector_recall_client::VectorRecallClient,
    },
};
use reco_server::channel;
use tracing::info;

use crate::platform::Addrs;

/// Rows per write call.
const BATCH: usize = 500;
/// Calls in flight per table.
const IN_FLIGHT: usize = 8;

/// The services a load writes to.
#[derive(Clone, Debug)]
pub struct Targets {
    pub feature: String,
    pub vector: String,
    pub graph: String,
}

impl From<&Addrs> for Targets {
    fn from(a: &Addrs) -> Self {
        Self {
            feature: a.feature.to_string(),
            vector: a.vector.to_string(),
            graph: a.graph.to_string(),
        }
    }
}

/// Told after every batch: the table and the rows written to it so far.
pub type Progress = Arc<dyn Fn(&str, usize) + Send + Sync>;

/// How to load.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Write features into this new version and activate it at the end. None writes into the active version
    /// directly (an empty platform being filled, as `reco up` does).
    pub version: Option<String>,
    /// Progress bars on a terminal, plain lines otherwise.
    pub show_progress: bool,
    /// Called after every batch.
    pub on_batch: Option<Progress>,
}

/// A version name for a load started now.
pub fn version_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("snapshot-{secs}")
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub users: usize,
    pub items: usize,
    pub pools: usize,
    pub sequences: usize,
    pub vectors: usize,
    pub edges: usize,
    /// The version activated, when the load was versioned.
    pub activated: Option<String>,
    /// The version it replaced.
    pub previous: Option<String>,
}

struct Tables {
    multi: MultiProgress,
    terminal: bool,
    show: bool,
    on_batch: Option<Progress>,
}

impl Tables {
    fn new(opts: &LoadOptions) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if opts.show_progress && terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Self {
            multi,
            terminal,
            show: opts.show_progress,
            on_batch: opts.on_batch.clone(),
        }
    }

    fn bar(&self, table: &'static str, len: usize) -> Table {
        let bar = self.multi.add(ProgressBar::new(len as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(table);
        Table {
            table,
            bar,
            plain: self.show && !self.terminal,
            on_batch: self.on_batch.clone(),
            started: Instant::now(),
        }
    }
}

struct Table {
    table: &'static str,
    bar: ProgressBar,
    plain: bool,
    on_batch: Option<Progress>,
    started: Instant,
}

impl Table {
    fn advance(&self, n: usize) {
        self.bar.inc(n as u64);
        if let Some(f) = &self.on_batch {
            f(self.table, self.bar.position() as usize);
        }
    }

    fn done(&self) -> usize {
        let n = self.bar.position() as usize;
        self.bar.finish();
        if self.plain {
            println!(
                "{:>10}: {n} rows in {:.1?}",
                self.table,
                self.started.elapsed()
            );
        }
        n
    }
}

/// Sends `rows` in batches of [`BATCH`], [`IN_FLIGHT`] at a time, through `send`; returns the rows sent.
async fn batched<T, F, Fut>(table: Table, rows: Vec<T>, send: F) -> anyhow::Result<usize>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut chunks = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        chunks.push(rows.by_ref().take(BATCH).collect::<Vec<T>>());
    }
    stream::iter(chunks)
        .map(|c| {
            let n = c.len();
            let fut = send(c);
            async move { fut.await.map(|()| n) }
        })
        .buffer_unordered(IN_FLIGHT)
        .map_err(|status| anyhow::anyhow!("{} load failed: {}", table.table, status.message()))
        .try_for_each(|n| {
            table.advance(n);
            async { Ok(()) }
        })
        .await?;
    Ok(table.done())
}

/// Writes every part of `snap` to the services at `addrs`, into the active feature version.
pub async fn load(snap: Snapshot, addrs: &Addrs) -> anyhow::Result<LoadReport> {
    load_with(snap, &Targets::from(addrs), LoadOptions::default()).await
}

/// Writes every part of `snap` as `opts` says.
pub async fn load_with(
    snap: Snapshot,
    to: &Targets,
    opts: LoadOptions,
) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let feature = FeatureServiceClient::new(channel(&to.feature)?);
    let vector = VectorRecallClient::new(channel(&to.vector)?);
    let graph = GraphRecallClient::new(channel(&to.graph)?);
    let version = opts.version.clone().unwrap_or_default();
    let tables = Tables::new(&opts);
    let mut report = LoadReport::default();

    let vectors: Vec<ItemVector> = snap
        .items
        .iter()
        .filter_map(|i| {
            i.embedding.as_ref().map(|e| ItemVector {
                item_id: i.item_id.to_string(),
                vector: e.as_slice().to_vec(),
                categories: i.categories.iter().map(ToString::to_string).collect(),
            })
        })
        .collect();
    let edge = |src: String, dst: String, kind: EdgeKind, weight: f32| Edge {
        src,
        dst,
        kind: kind as i32,
        weight,
    };
    let edges: Vec<Edge> = snap
        .follows
        .into_iter()
        .map(|(a, b)| edge(a.into(), b.into(), EdgeKind::Follows, 1.0))
        .chain(
            snap.engagements
                .into_iter()
                .map(|(u, i, w)| edge(u.into(), i.into(), EdgeKind::Engaged, w)),
        )
        .chain(
            snap.item_tags
                .into_iter()
                .map(|(i, t)| edge(i.into(), t.into(), EdgeKind::HasTag, 1.0)),
        )
        .collect();

    // Versioned: nothing here is visible until the version is activated.
    let bar = tables.bar("items", snap.items.len());
    report.items = batched(bar, snap.items, |b| {
        let (mut c, v) = (feature.clone(), version.clone());
        async move {
            let items = b.into_iter().map(Into::into).collect();
            c.put_item_features(PutItemFeaturesRequest {
                items,
                feature_version: v,
            })
            .await
            .map(drop)
        }
    })
    .await?;
    let bar = tables.bar("users", snap.users.len());
    report.users = batched(bar, snap.users, |b| {
        let (mut c, v) = (feature.clone(), version.clone());
        async move {
            let users = b.into_iter().map(Into::into).collect();
            c.put_user_features(PutUserFeaturesRequest {
                users,
                feature_version: v,
                merge: false,
            })
            .await
            .map(drop)
        }
    })
    .await?;
    let bar = tables.bar("pools", snap.pools.len());
    report.pools = batched(bar, snap.pools, |b| {
        let (mut c, v) = (feature.clone(), version.clone());
        async move {
            let pools = b
                .into_iter()
                .map(|(u, list)| RecallPool {
                    user_id: u.into(),
                    candidates: list.into_iter().map(Into::into).collect(),
                })
                .collect();
            c.put_recall_pools(PutRecallPoolsRequest {
                pools,
                feature_version: v,
            })
            .await
            .map(drop)
        }
    })
    .await?;
    feature
        .clone()
        .put_popular_items(PutPopularItemsRequest {
            items: snap.popular.into_iter().map(Into::into).collect(),
            feature_version: version.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("popular load failed: {}", s.message()))?;

    let bar = tables.bar("vectors", vectors.len());
    report.vectors = batched(bar, vectors, |b| {
        let (mut c, v) = (vector.clone(), version.clone());
        async move {
            c.upsert(UpsertRequest {
                items: b,
                index_version: v,
            })
            .await
            .map(drop)
        }
    })
    .await?;

    // The switch: features, then the vector index, one right after the other.
    if let Some(v) = &opts.version {
        let previous = feature
            .clone()
            .activate_version(ActivateVersionRequest {
                feature_version: v.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("activating {v} failed: {}", s.message()))?
            .into_inner()
            .previous_version;
        info!(version = %v, %previous, "feature version activated");
        vector
            .clone()
            .activate_index(ActivateIndexRequest {
                index_version: v.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("activating vector index {v} failed: {}", s.message()))?;
        report.activated = Some(v.clone());
        report.previous = Some(previous);
    }

    // Not versioned yet (see the module doc).
    let bar = tables.bar("edges", edges.len());
    report.edges = batched(bar, edges, |b| {
        let mut c = graph.clone();
        async move { c.add_edges(AddEdgesRequest { edges: b }).await.map(drop) }
    })
    .await?;
    let bar = tables.bar("sequences", snap.sequences.len());
    stream::iter(snap.sequences)
        .map(|(user, events)| {
            let mut c = feature.clone();
            async move {
                c.append_events(AppendEventsRequest {
                    user_id: user.into(),
                    events: events.into_iter().map(common::Event::from).collect(),
                })
                .await
                .map(drop)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .map_err(|s| anyhow::anyhow!("sequences load failed: {}", s.message()))
        .try_for_each(|()| {
            bar.advance(1);
            async { Ok(()) }
        })
        .await?;
    report.sequences = bar.done();
    info!(
        ?report,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot loaded"
    );
    Ok(report)
}
