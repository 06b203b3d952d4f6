//! Loads a snapshot into running services through their public write APIs, in batches, several in flight.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use reco_data::Snapshot;
use reco_proto::{
    common::v1 as common,
    feature::v1::{
        AppendEventsRequest, PutItemFeaturesRequest, PutPopularItemsRequest, PutRecallPoolsRequest,
        PutUserFeaturesRequest, RecallPool, feature_service_client::FeatureServiceClient,
    },
    graph_recall::v1::{AddEdgesRequest, Edge, EdgeKind, graph_recall_client::GraphRecallClient},
    vector_recall::v1::{ItemVector, UpsertRequest, vector_recall_client::VectorRecallClient},
};
use reco_server::channel;
use tracing::info;

use crate::platform::Addrs;

/// Rows per write call.
const BATCH: usize = 500;
/// Calls in flight per table.
const IN_FLIGHT: usize = 8;

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub users: usize,
    pub items: usize,
    pub pools: usize,
    pub sequences: usize,
    pub vectors: usize,
    pub edges: usize,
}

/// Sends `rows` in batches of [`BATCH`], [`IN_FLIGHT`] at a time, through `send`; returns the rows sent.
async fn batched<T, F, Fut>(rows: Vec<T>, send: F) -> anyhow::Result<usize>
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
    let sizes: Vec<usize> = stream::iter(chunks)
        .map(|c| {
            let n = c.len();
            let fut = send(c);
            async move { fut.await.map(|()| n) }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(sizes.into_iter().sum())
}

/// Writes every part of `snap` to the services at `addrs`.
pub async fn load(snap: Snapshot, addrs: &Addrs) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let feature = FeatureServiceClient::new(channel(&addrs.feature.to_string())?);
    let vector = VectorRecallClient::new(channel(&addrs.vector.to_string())?);
    let graph = GraphRecallClient::new(channel(&addrs.graph.to_string())?);
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
    report.items = batched(snap.items, |b| {
        let mut c = feature.clone();
        async move {
            c.put_item_features(PutItemFeaturesRequest {
                items: b.into_iter().map(Into::into).collect(),
                feature_version: String::new(),
            })
            .await
            .map(drop)
        }
    })
    .await?;
    report.vectors = batched(vectors, |b| {
        let mut c = vector.clone();
        async move { c.upsert(UpsertRequest { items: b }).await.map(drop) }
    })
    .await?;
    report.users = batched(snap.users, |b| {
        let mut c = feature.clone();
        async move {
            c.put_user_features(PutUserFeaturesRequest {
                users: b.into_iter().map(Into::into).collect(),
                feature_version: String::new(),
                merge: false,
            })
            .await
            .map(drop)
        }
    })
    .await?;
    report.pools = batched(snap.pools, |b| {
        let mut c = feature.clone();
        async move {
            c.put_recall_pools(PutRecallPoolsRequest {
                pools: b
                    .into_iter()
                    .map(|(u, list)| RecallPool {
                        user_id: u.into(),
                        candidates: list.into_iter().map(Into::into).collect(),
                    })
                    .collect(),
                feature_version: String::new(),
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
            feature_version: String::new(),
        })
        .await?;
    report.sequences = stream::iter(snap.sequences)
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
        .try_collect::<Vec<()>>()
        .await?
        .len();

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
    report.edges = batched(edges, |b| {
        let mut c = graph.clone();
        async move { c.add_edges(AddEdgesRequest { edges: b }).await.map(drop) }
    })
    .await?;
    info!(
        ?report,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot loaded"
    );
    Ok(report)
}
