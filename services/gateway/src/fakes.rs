//! Every downstream faked behind the same client traits the real ones implement, each method answering, failing
//! (UNAVAILABLE) or hanging as a test says, and keeping what it was given. For the pipeline's and the event
//! workers' tests, which need no server.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use reco_client::{
    BeginQuery, Begun, Cache, CapQuery, Downstreams, EventAppend, EventPush, Feature, GraphEdge,
    GraphQuery, GraphRecall, Hit, ItemsQuery, PopularQuery, RankAnswer, Ranking, RateDecision,
    Readiness, SearchQuery, UserContextQuery, VectorRecall, Writes,
};
use reco_ranker::RankInput;
use reco_types::{
    Candidate, Embedding, Event, FeatureValue, Features, Item, ItemId, Name, User, UserContext,
    UserId,
};
use tonic::Status;

/// How a faked call behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Answer,
    Fail,
    Hang,
}

/// Per method name, how it behaves (answers unless told otherwise), and how often it was called.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) modes: Mutex<HashMap<&'static str, Mode>>,
    pub(crate) calls: Mutex<HashMap<&'static str, usize>>,
}

impl Script {
    pub(crate) fn set(&self, method: &'static str, mode: Mode) {
        self.modes.lock().unwrap().insert(method, mode);
    }

    pub(crate) fn calls(&self, method: &str) -> usize {
        self.calls.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    pub(crate) async fn act<T>(
        &self,
        method: &'static str,
        answer: impl FnOnce() -> T,
    ) -> reco_client::Result<T> {
        *self.calls.lock().unwrap().entry(method).or_default() += 1;
        let mode = self.modes.lock().unwrap().get(method).copied();
        match mode.unwrap_or(Mode::Answer) {
            Mode::Answer => Ok(answer()),
            Mode::Fail => Err(Status::unavailable(format!("fake {method} is down"))),
            Mode::Hang => std::future::pending().await,
        }
    }
}

pub(crate) fn id(s: &str) -> ItemId {
    ItemId::parse("item_id", s).unwrap()
}

pub(crate) fn user(s: &str) -> UserId {
    UserId::parse("user_id", s).unwrap()
}

pub(crate) fn embedding(seed: usize) -> Embedding {
    Embedding::parse(
        "e",
        (0..4).map(|d| ((seed * 7 + d) % 5) as f32 + 1.0).collect(),
    )
    .unwrap()
}

/// 40 items in 8 categories, item `iN` with popularity 40 - N.
pub(crate) fn catalogue() -> Vec<Item> {
    (0..40)
        .map(|n| {
            let mut features = Features::new();
            features.insert("popularity", FeatureValue::Float((40 - n) as f64));
            Item {
                item_id: id(&format!("i{n}")),
                categories: vec![Name::parse("c", format!("c{}", n % 8)).unwrap()],
                features,
                embedding: Some(embedding(n)),
            }
        })
        .collect()
}

/// The feature service: user `u1` has features, an embedding, a pool (i0..i29) and clicked i1; `bare` is known
/// but has nothing to recall from; anyone else is unknown.
#[derive(Default)]
pub(crate) struct FakeFeature {
    pub(crate) script: Script,
    /// Every append it took, in order.
    pub(crate) appended: Mutex<Vec<EventAppend>>,
}

#[async_trait]
impl Feature for FakeFeature {
    async fn user_context(
        &self,
        q: UserContextQuery,
        _: Duration,
    ) -> reco_client::Result<UserContext> {
        self.script
            .act("user_context", || match q.user_id.as_str() {
                "u1" => UserContext {
                    user: Some(User {
                        user_id: q.user_id.clone(),
                        features: Features::new(),
                        embedding: Some(embedding(1)),
                    }),
                    recall_pool: (0..30)
                        .map(|n| {
                            Candidate::parse(&format!("i{n}"), 1.0 / (n as f32 + 1.0), Vec::new())
                                .unwrap()
                        })
                        .collect(),
                    recent_events: vec![Event::parse("i1", "click", 1, 1.0).unwrap()],
                    version: None,
                },
                "bare" => UserContext {
                    user: Some(User {
                        user_id: q.user_id.clone(),
                        features: Features::new(),
                        embedding: None,
                    }),
                    ..Default::default()
                },
                _ => UserContext::default(),
            })
            .await
    }

    async fn items(&self, q: ItemsQuery, _: Duration) -> reco_client::Result<Vec<Item>> {
        self.script
            .act("items", || {
                let asked: HashSet<&ItemId> = q.item_ids.iter().collect();
                catalogue()
                    .into_iter()
                    .filter(|i| asked.contains(&i.item_id))
                    .collect()
            })
            .await
    }

    async fn popular(&self, q: PopularQuery, _: Duration) -> reco_client::Result<Vec<Hit>> {
        self.script
            .act("popular", || {
                (0..q.k.min(20))
                    .map(|n| Hit {
                        item_id: id(&format!("i{n}")),
                        score: (40 - n) as f32,
                    })
                    .collect()
            })
            .await
    }

    async fn append_events(&self, a: Vec<EventAppend>, _: Duration) -> reco_client::Result<()> {
        self.script.act("append_events", || ()).await?;
        self.appended.lock().unwrap().extend(a);
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}

/// The cache service: admits everyone (or no one, with `refuse`), caches nothing it is not given, caps what
/// `capped` lists.
#[derive(Default)]
pub(crate) struct FakeCache {
    pub(crate) script: Script,
    pub(crate) refuse: Mutex<bool>,
    pub(crate) capped: Mutex<Vec<ItemId>>,
    pub(crate) written: Mutex<Vec<Writes>>,
    /// Every push of events it took, in order.
    pub(crate) pushed: Mutex<Vec<EventPush>>,
}

#[async_trait]
impl Cache for FakeCache {
    async fn begin(&self, q: BeginQuery, _: Duration) -> reco_client::Result<Begun> {
        let refuse = *self.refuse.lock().unwrap();
        self.script
            .act("begin", || Begun {
                rate: q.rate_limit.map(|_| RateDecision {
                    allowed: !refuse,
                    remaining: 0,
                    retry_after: Duration::from_millis(250),
                }),
                result: None,
                recent_events: Vec::new(),
            })
            .await
    }

    async fn filter_capped(&self, _: CapQuery, _: Duration) -> reco_client::Result<Vec<ItemId>> {
        let capped = self.capped.lock().unwrap().clone();
        self.script.act("filter_capped", || capped).await
    }

    async fn write(&self, w: Writes, _: Duration) -> reco_client::Result<()> {
        self.script.act("write", || ()).await?;
        self.written.lock().unwrap().push(w);
        Ok(())
    }

    async fn push_events(&self, p: EventPush, _: Duration) -> reco_client::Result<()> {
        self.script.act("push_events", || ()).await?;
        self.pushed.lock().unwrap().push(p);
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}

/// Vector recall: i10..i39, nearest first.
#[derive(Default)]
pub(crate) struct FakeVector {
    pub(crate) script: Script,
}

#[async_trait]
impl VectorRecall for FakeVector {
    async fn search(&self, q: SearchQuery, _: Duration) -> reco_client::Result<Vec<Hit>> {
        self.script
            .act("search", || {
                (10..40)
                    .map(|n| id(&format!("i{n}")))
                    .filter(|i| !q.filter.exclude_item_ids.contains(i))
                    .take(q.k as usize)
                    .enumerate()
                    .map(|(r, item_id)| Hit {
                        item_id,
                        score: 1.0 - r as f32 / 100.0,
                    })
                    .collect()
            })
            .await
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}

/// Graph recall: i35..i39.
#[derive(Default)]
pub(crate) struct FakeGraph {
    pub(crate) script: Script,
    /// Every edge it took, in order.
    pub(crate) edges: Mutex<Vec<GraphEdge>>,
}

#[async_trait]
impl GraphRecall for FakeGraph {
    async fn recall(&self, _: GraphQuery, _: Duration) -> reco_client::Result<Vec<Hit>> {
        self.script
            .act("recall", || {
                (35..40)
                    .map(|n| Hit {
                        item_id: id(&format!("i{n}")),
                        score: 1.0,
                    })
                    .collect()
            })
            .await
    }

    async fn add_edges(&self, e: Vec<GraphEdge>, _: Duration) -> reco_client::Result<()> {
        self.script.act("add_edges", || ()).await?;
        self.edges.lock().unwrap().extend(e);
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}

/// Ranking: scores by the item's popularity feature.
#[derive(Default)]
pub(crate) struct FakeRanking {
    pub(crate) script: Script,
}

pub(crate) fn by_popularity(input: &RankInput) -> Vec<reco_ranker::Scored> {
    let mut scores: Vec<reco_ranker::Scored> = input
        .candidates
        .iter()
        .map(|c| reco_ranker::Scored {
            item_id: c.item_id().clone(),
            score: c.item.features().number("popularity").unwrap_or(0.0) as f32,
        })
        .collect();
    scores.sort_by(|a, b| b.score.total_cmp(&a.score));
    scores
}

#[async_trait]
impl Ranking for FakeRanking {
    async fn rank(&self, input: Arc<RankInput>, _: Duration) -> reco_client::Result<RankAnswer> {
        self.script
            .act("rank", || RankAnswer {
                scores: by_popularity(&input),
                model_version: "fake-1".into(),
                ..Default::default()
            })
            .await
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}

/// Every fake, and a pipeline over them.
pub(crate) struct Fixture {
    pub(crate) feature: Arc<FakeFeature>,
    pub(crate) cache: Arc<FakeCache>,
    pub(crate) vector: Arc<FakeVector>,
    pub(crate) graph: Arc<FakeGraph>,
    pub(crate) ranking: Arc<FakeRanking>,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Self {
            feature: Default::default(),
            cache: Default::default(),
            vector: Default::default(),
            graph: Default::default(),
            ranking: Default::default(),
        }
    }

    pub(crate) fn downstreams(&self) -> Downstreams {
        Downstreams {
            feature: self.feature.clone(),
            cache: self.cache.clone(),
            vector: self.vector.clone(),
            graph: self.graph.clone(),
            ranking: self.ranking.clone(),
        }
    }
}
