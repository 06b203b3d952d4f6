//! The pipeline with no server: every downstream faked behind the same client traits the real ones implement
//! (`crate::fakes`), each method answering, failing (UNAVAILABLE) or hanging as a test says. The fakes go through the same stage
//! stacks (breakers, hedging, budgets) as real clients. Time is tokio's paused clock, so a hanging call is cut off
//! by its budget at once and the tests never wait.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use prost::bytes::Bytes;
use reco_client::{
    Readiness,
    grpc::{GrpcRanking, RankWire},
};
use reco_proto::ranking::v1 as rank_pb;
use reco_types::{Scene, StageReport, StageStatus};

use super::{Pipeline, Query, Refused};
use crate::{config::Config, fakes::*};

/// A pipeline over the fakes.
trait PipelineOver {
    fn pipeline(&self, config: &Config) -> Arc<Pipeline>;
}

impl PipelineOver for Fixture {
    fn pipeline(&self, config: &Config) -> Arc<Pipeline> {
        Arc::new(Pipeline::new(config.plan().unwrap(), &self.downstreams()))
    }
}

fn query(user_id: &str) -> Query {
    Query {
        user_id: user(user_id),
        count: 10,
        scene: Scene::parse("scene", "").unwrap(),
        context: BTreeMap::new(),
        explain: false,
        explain_items: Vec::new(),
        bypass_cache: false,
        include_graph: true,
        include_sources: HashSet::new(),
        feature_version: None,
        caller_timeout: None,
    }
}

fn report<'a>(stages: &'a [StageReport], name: &str) -> &'a StageReport {
    stages
        .iter()
        .find(|s| s.stage == name)
        .unwrap_or_else(|| panic!("no {name} stage in {stages:?}"))
}

fn ids(items: &[super::AnswerItem]) -> Vec<&str> {
    items.iter().map(|i| i.item_id.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_request_runs_every_stage_and_answers_ranked_without_seen_items() {
    let f = Fixture::new();
    let a = f
        .pipeline(&Config::default())
        .recommend(query("u1"))
        .await
        .unwrap();
    assert!(!a.degraded && !a.from_cache && !a.cold_start);
    assert_eq!(a.model_version, "fake-1");
    assert_eq!(a.items.len(), 10);
    assert!(!ids(&a.items).contains(&"i1"), "the user clicked i1");
    assert!(a.items.windows(2).all(|w| w[0].score >= w[1].score));
    for s in &a.stages {
        assert!(!s.status.is_degraded(), "{s:?}");
    }
    for name in [
        "user_context.features",
        "recall.cf",
        "recall.vector",
        "recall.graph",
        "hydrate",
        "rank",
    ] {
        assert_eq!(report(&a.stages, name).status, StageStatus::Ok, "{name}");
    }
    // Ranked by popularity (40 - n) with at most 3 items of a category (n mod 8).
    assert_eq!(ids(&a.items)[..3], ["i0", "i2", "i3"]);
}

/// Each downstream call failing or hanging: its stage says so, the request still answers, and the answer says it
/// is degraded.
#[tokio::test(start_paused = true)]
async fn each_downstream_failing_or_hanging_degrades_its_stage_and_the_answer_still_comes() {
    let config = Config {
        frequency_cap: 2,
        ..Config::default()
    };
    for mode in [Mode::Fail, Mode::Hang] {
        let expected = if mode == Mode::Fail {
            StageStatus::Error
        } else {
            StageStatus::Timeout
        };
        type Set = fn(&Fixture, Mode);
        let cases: [(&str, Set, &str); 8] = [
            (
                "user context",
                |f, m| f.feature.script.set("user_context", m),
                "user_context.features",
            ),
            ("items", |f, m| f.feature.script.set("items", m), "hydrate"),
            (
                "popular",
                |f, m| f.feature.script.set("popular", m),
                "recall.popular",
            ),
            (
                "begin",
                |f, m| f.cache.script.set("begin", m),
                "user_context.recent_clicks",
            ),
            (
                "frequency cap",
                |f, m| f.cache.script.set("filter_capped", m),
                "frequency_cap",
            ),
            (
                "vector",
                |f, m| f.vector.script.set("search", m),
                "recall.vector",
            ),
            (
                "graph",
                |f, m| f.graph.script.set("recall", m),
                "recall.graph",
            ),
            ("ranking", |f, m| f.ranking.script.set("rank", m), "rank"),
        ];
        for (what, set, stage) in cases {
            let f = Fixture::new();
            set(&f, mode);
            let a = f
                .pipeline(&config)
                .recommend(query("u1"))
                .await
                .unwrap_or_else(|e| panic!("{what} {mode:?}: refused: {e}"));
            let r = report(&a.stages, stage);
            assert_eq!(r.status, expected, "{what} {mode:?}: {r:?}");
            assert!(a.degraded, "{what} {mode:?}");
            assert_eq!(a.items.len(), 10, "{what} {mode:?}: still a full answer");
            let others_degraded: Vec<&str> = a
                .stages
                .iter()
                .filter(|s| s.status.is_degraded() && s.stage != stage)
                .map(|s| s.stage.as_str())
                .collect();
            if what == "begin" {
                // One call serves admission, the result cache and the recent clicks.
                assert_eq!(others_degraded, ["admission", "result_cache"], "{mode:?}");
                assert!(
                    report(&a.stages, "admission")
                        .detail
                        .ends_with("failed open")
                );
            } else {
                assert!(
                    others_degraded.is_empty(),
                    "{what} {mode:?}: {others_degraded:?}"
                );
            }
            if what == "ranking" {
                assert!(
                    r.detail.contains("fell back to recall order"),
                    "{}",
                    r.detail
                );
                assert!(a.model_version.is_empty());
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn admission_fails_open_by_default_and_closed_when_configured() {
    let f = Fixture::new();
    f.cache.script.set("begin", Mode::Fail);
    let a = f
        .pipeline(&Config::default())
        .recommend(query("u1"))
        .await
        .unwrap();
    assert_eq!(
        a.items.len(),
        10,
        "served although the rate limiter is down"
    );

    let closed = Config {
        rate_limit_fail_closed: true,
        ..Config::default()
    };
    for mode in [Mode::Fail, Mode::Hang] {
        let f = Fixture::new();
        f.cache.script.set("begin", mode);
        let e = f
            .pipeline(&closed)
            .recommend(query("u1"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Refused::AdmissionUnavailable(_)),
            "{mode:?}: {e}"
        );
        assert_eq!(
            f.feature.script.calls("user_context"),
            0,
            "refused before any other call"
        );
    }

    // Over the limit is refused whichever way admission fails.
    let f = Fixture::new();
    *f.cache.refuse.lock().unwrap() = true;
    let e = f
        .pipeline(&Config::default())
        .recommend(query("u1"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Refused::RateLimited { retry_after, .. } if retry_after == Duration::from_millis(250))
    );
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_user_gets_the_popular_items() {
    let f = Fixture::new();
    let a = f
        .pipeline(&Config::default())
        .recommend(query("stranger"))
        .await
        .unwrap();
    assert!(a.cold_start && !a.degraded);
    assert_eq!(a.items.len(), 10);
    assert!(
        a.items
            .iter()
            .all(|i| i.sources.iter().any(|s| s.source.as_str() == "popular"))
    );
    for name in ["recall.cf", "recall.vector"] {
        assert_eq!(
            report(&a.stages, name).status,
            StageStatus::Skipped,
            "{name}"
        );
    }
    assert_eq!(f.vector.script.calls("search"), 0, "nothing to search with");
}

#[tokio::test(start_paused = true)]
async fn an_empty_recall_falls_back_to_the_popular_items() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        "[[recall]]\nname = \"cf\"\nkind = \"cf\"\nk = 100\n\
         [[recall]]\nname = \"vector\"\nkind = \"vector\"\nk = 100\n\
         [[recall]]\nname = \"popular\"\nkind = \"popular\"\nmode = \"fallback\"\nk = 100\n",
    )
    .unwrap();
    let config = Config {
        pipeline: Some(file),
        ..Config::default()
    };
    let pipeline = Fixture::new().pipeline(&config);

    // A known user with no pool, no embedding and no history: neither first source has anything to go on.
    let a = pipeline.recommend(query("bare")).await.unwrap();
    assert!(!a.cold_start, "the user is known");
    assert_eq!(report(&a.stages, "recall.popular").status, StageStatus::Ok);
    assert_eq!(a.items.len(), 10);

    // A user the first sources find enough for does not need it.
    let a = pipeline.recommend(query("u1")).await.unwrap();
    let popular = report(&a.stages, "recall.popular");
    assert_eq!(popular.status, StageStatus::Skipped);
    assert!(
        popular.detail.starts_with("fallback not needed"),
        "{}",
        popular.detail
    );
}

/// A ranking service behind the gRPC client that loses what it held whenever `forget` is set.
#[derive(Default)]
struct ForgetfulWire {
    /// Item ids by the reference of their part.
    held: Mutex<HashMap<Bytes, String>>,
    forget: Mutex<bool>,
    calls: Mutex<usize>,
}

/// The wire the client owns, over the state the test reads.
struct Wire(Arc<ForgetfulWire>);

#[async_trait]
impl RankWire for Wire {
    async fn send(
        &self,
        r: rank_pb::RankRequest,
        _: Duration,
    ) -> reco_client::Result<rank_pb::RankResponse> {
        *self.0.calls.lock().unwrap() += 1;
        let mut held = self.0.held.lock().unwrap();
        if std::mem::take(&mut *self.0.forget.lock().unwrap()) {
            held.clear();
        }
        let unresolved: Vec<u32> = (0..r.encoded_candidates.len() as u32)
            .filter(|&i| {
                let c = &r.encoded_candidates[i as usize];
                !c.item_ref.is_empty() && !held.contains_key(&c.item_ref)
            })
            .collect();
        if !unresolved.is_empty() {
            return Ok(rank_pb::RankResponse {
                unresolved_item_refs: unresolved,
                ..Default::default()
            });
        }
        let mut scores = Vec::new();
        for c in &r.encoded_candidates {
            let item_id = if c.item_ref.is_empty() {
                let item_id = c.decode_item().unwrap().item_id;
                let reference = rank_pb::EncodedCandidate::digest(&c.item);
                held.insert(Bytes::copy_from_slice(&reference), item_id.clone());
                item_id
            } else {
                held[&c.item_ref].clone()
            };
            scores.push(rank_pb::ScoredItem {
                item_id,
                score: 1.0,
            });
        }
        Ok(rank_pb::RankResponse {
            scores,
            model_version: "wire-1".into(),
            ..Default::default()
        })
    }

    async fn ready(&self) -> Readiness {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn items_ranking_no_longer_holds_are_sent_again_in_full_within_the_stage() {
    let f = Fixture::new();
    let wire = Arc::new(ForgetfulWire::default());
    let mut d = f.downstreams();
    d.ranking = Arc::new(GrpcRanking::new(Wire(wire.clone()), true));
    let config = Config {
        // A fresh answer each time, so that ranking runs each time.
        result_ttl_ms: 1,
        ..Config::default()
    };
    let pipeline = Arc::new(Pipeline::new(config.plan().unwrap(), &d));
    let ask = || Query {
        bypass_cache: true,
        ..query("u1")
    };
    let first = pipeline.recommend(ask()).await.unwrap();
    assert_eq!(report(&first.stages, "rank").status, StageStatus::Ok);
    pipeline.recommend(ask()).await.unwrap();
    assert_eq!(
        *wire.calls.lock().unwrap(),
        2,
        "one call each while ranking holds the items"
    );

    // Ranking restarted: the references go unresolved and the items are sent again in full, within the stage.
    *wire.forget.lock().unwrap() = true;
    let again = pipeline.recommend(ask()).await.unwrap();
    let rank = report(&again.stages, "rank");
    assert_eq!(rank.status, StageStatus::Ok, "{rank:?}");
    assert!(
        rank.detail.contains("sent again in full"),
        "{}",
        rank.detail
    );
    assert_eq!(*wire.calls.lock().unwrap(), 4);
    assert_eq!(again.model_version, "wire-1");
}

#[tokio::test(start_paused = true)]
async fn capped_and_unknown_items_are_dropped_and_explained() {
    let f = Fixture::new();
    *f.cache.capped.lock().unwrap() = vec![id("i0")];
    let config = Config {
        frequency_cap: 1,
        ..Config::default()
    };
    let q = Query {
        explain_items: vec![id("i0"), id("i1"), id("nowhere")],
        ..query("u1")
    };
    let a = f.pipeline(&config).recommend(q).await.unwrap();
    let why: Vec<(&str, Option<crate::merge::DropReason>)> = a
        .explanations
        .iter()
        .map(|e| (e.item_id.as_str(), e.dropped))
        .collect();
    use crate::merge::DropReason::*;
    assert_eq!(
        why,
        [
            ("i0", Some(FrequencyCap)),
            ("i1", Some(Seen)),
            ("nowhere", Some(NotRecalled))
        ]
    );
    assert!(!ids(&a.items).contains(&"i0"));
}

#[tokio::test(start_paused = true)]
async fn the_answer_is_written_after_it_is_given_and_a_shutdown_waits_for_the_write() {
    let f = Fixture::new();
    let pipeline = f.pipeline(&Config::default());
    let a = pipeline.recommend(query("u1")).await.unwrap();
    pipeline.finish_background().await;
    let written = f.cache.written.lock().unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].results.len(), 1);
    let served: Vec<&str> = written[0].results[0]
        .items
        .iter()
        .map(|c| c.item_id.as_str())
        .collect();
    assert_eq!(served, ids(&a.items));
}
