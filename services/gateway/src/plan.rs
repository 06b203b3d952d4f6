//! The plan: how the pipeline runs a request. Which recall sources run, when (always, on demand, or as fallbacks in
//! order), with which budget, k and share of the merged list; the other stages' budgets, quotas and filters;
//! which stages are hedged; the breakers. [`Plan`] is the checked whole, built from the gateway's flags
//! (`Config::plan`) overlaid with `--pipeline FILE` ([`RawPlan`], TOML as written), which replaces any part:
//!
//! ```toml
//! total_ms = 200            # whole-request budget; a caller's grpc-timeout shrinks it
//! max_candidates = 500      # merged candidates passed to ranking
//! min_candidates = 10       # fallbacks run while the merged list is shorter than this
//! hedge = ["recall.vector"] # stages whose calls are hedged after their observed p95
//!
//! [[recall]]
//! name = "cf"               # provenance tag; the stage is `recall.cf`
//! kind = "cf"               # cf | vector | graph | popular
//! k = 200
//! min_share = 0.3           # at least 30% of the merged list when it has that many
//!
//! [[recall]]
//! name = "graph"
//! kind = "graph"
//! mode = "on_demand"        # always | on_demand | fallback | off
//! scenes = ["friends"]      # on demand: runs for these scenes, or when a request names it
//! budget_ms = 50
//!
//! [[recall]]
//! name = "popular"
//! kind = "popular"
//! mode = "fallback"         # runs only when the sources before it left too few candidates
//! ```

use std::{collections::HashSet, path::Path, time::Duration};

use crate::resilience::{BreakerPolicy, HedgePolicy};

use reco_types::{ItemId, Name};
use serde::Deserialize;

/// When a recall source runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// On every request.
    #[default]
    Always,
    /// When the request's scene is one of the source's scenes, or the request names the source
    /// (`include_sources`; `include_graph` names every graph source).
    OnDemand,
    /// After the other sources, in the order listed, while the merged list is shorter than `min_candidates`.
    Fallback,
    /// Never (kept in the file, switched off).
    Off,
}

/// What a recall source asks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The user's precomputed collaborative-filtering pool, read with the user context (no call of its own).
    Cf,
    /// Vector-recall k-NN by the user's embedding, or by their recent items.
    Vector,
    /// Graph-recall strategies.
    Graph,
    /// The feature service's popular items.
    Popular,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Cf => "cf",
            SourceKind::Vector => "vector",
            SourceKind::Graph => "graph",
            SourceKind::Popular => "popular",
        }
    }
}

/// One recall source as configured.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSourcePlan {
    pub name: String,
    pub kind: SourceKind,
    #[serde(default)]
    pub mode: Mode,
    /// Candidates asked for (1 to 1000).
    pub k: u32,
    /// The stage's budget; the default is the kind's (`--budget-vector-ms`, ...).
    #[serde(default)]
    pub budget_ms: Option<u64>,
    /// On demand: the scenes that run it.
    #[serde(default)]
    pub scenes: Vec<String>,
    /// Least share of the merged list kept for this source's best candidates (0 to 1).
    #[serde(default)]
    pub min_share: f32,
    /// Largest share of the merged list this source may fill while other sources have candidates (0 to 1).
    #[serde(default = "one")]
    pub max_share: f32,
}

fn one() -> f32 {
    1.0
}

/// A `--pipeline` file: every field optional; what it leaves out keeps the value of the flags.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub total_ms: Option<u64>,
    pub features_ms: Option<u64>,
    pub cache_ms: Option<u64>,
    pub ranking_ms: Option<u64>,
    pub rank: Option<bool>,
    pub max_candidates: Option<u32>,
    pub min_candidates: Option<u32>,
    pub per_category: Option<u32>,
    pub blocklist: Option<Vec<String>>,
    pub hedge: Option<Vec<String>>,
    /// When present, the whole list of recall sources, in order.
    pub recall: Option<Vec<RawSourcePlan>>,
}

impl RawPlan {
    /// Reads and parses a file; errors name the file and, for TOML errors, the line.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--pipeline {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("--pipeline {}: {e}", path.display()))
    }
}

/// How the pipeline runs, checked: every part of it comes from the flags or the `--pipeline` file.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The whole request's budget; a caller's smaller deadline shrinks it.
    pub total: Duration,
    pub features_budget: Duration,
    pub cache_budget: Duration,
    pub ranking_budget: Duration,
    /// Score candidates with the ranking service; off serves the merged recall order (for comparisons).
    pub rank: bool,
    pub max_candidates: usize,
    /// Fallback sources run while the merged list is shorter than this (or than the request's count).
    pub min_candidates: usize,
    /// How long hydrated items are kept in the gateway (zero: not kept, every hydration asks the feature service).
    pub item_cache_ttl: Duration,
    /// How long the popular list is kept (zero: asked for on every request that runs the source).
    pub popular_ttl: Duration,
    pub per_category: usize,
    pub blocklist: HashSet<ItemId>,
    /// Requests per window per user; None turns admission off.
    pub rate_limit: Option<(u32, Duration)>,
    /// Serve when the rate limiter cannot be asked.
    pub rate_limit_fail_open: bool,
    /// Impressions within the window that cap an item; None turns frequency control off.
    pub frequency_cap: Option<(u32, Duration)>,
    pub result_ttl: Duration,
    /// The recall sources, in order.
    pub sources: Vec<SourcePlan>,
    /// Stages whose calls are hedged.
    pub hedged: HashSet<String>,
    pub hedge: HedgePolicy,
    pub breaker: BreakerPolicy,
}

/// A recall source, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcePlan {
    pub name: Name,
    pub kind: SourceKind,
    pub mode: Mode,
    pub k: u32,
    pub budget: Duration,
    pub scenes: HashSet<String>,
    pub min_share: f32,
    pub max_share: f32,
    /// The stage this source reports as: `recall.<name>`.
    stage: String,
}

impl SourcePlan {
    /// The stage this source reports as.
    pub fn stage(&self) -> &str {
        &self.stage
    }
}

/// Stages whose calls can be hedged.
pub const HEDGEABLE: &[&str] = &[
    "admission",
    "result_cache",
    "user_context.features",
    "user_context.recent_clicks",
    "frequency_cap",
    "hydrate",
    "rank",
];

/// Checks the recall sources: unique valid names, k in range, shares that add up.
pub fn validate_sources(
    specs: &[RawSourcePlan],
    default_budget: impl Fn(SourceKind) -> Duration,
) -> anyhow::Result<Vec<SourcePlan>> {
    anyhow::ensure!(
        !specs.is_empty(),
        "the pipeline needs at least one recall source"
    );
    let mut names = HashSet::new();
    let mut plans = Vec::with_capacity(specs.len());
    let mut min_total = 0.0;
    for s in specs {
        let what = format!("recall source {:?}", s.name);
        let name =
            Name::parse("recall.name", &s.name).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        anyhow::ensure!(names.insert(s.name.clone()), "{what} is listed twice");
        anyhow::ensure!(
            (1..=reco_types::MAX_CANDIDATES as u32).contains(&s.k),
            "{what}: k must be between 1 and {}, got {}",
            reco_types::MAX_CANDIDATES,
            s.k
        );
        for (field, v) in [("min_share", s.min_share), ("max_share", s.max_share)] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{what}: {field} must be between 0 and 1, got {v}"
            );
        }
        anyhow::ensure!(
            s.min_share <= s.max_share,
            "{what}: min_share {} is above max_share {}",
            s.min_share,
            s.max_share
        );
        anyhow::ensure!(
            s.scenes.is_empty() || s.mode == Mode::OnDemand,
            "{what}: scenes only apply to mode = \"on_demand\""
        );
        anyhow::ensure!(
            !(s.kind == SourceKind::Cf && s.budget_ms.is_some()),
            "{what}: a cf source reads the pool fetched with the user context and has no budget of its own"
        );
        if s.mode != Mode::Off {
            min_total += s.min_share;
        }
        plans.push(SourcePlan {
            stage: format!("recall.{name}"),
            name,
            kind: s.kind,
            mode: s.mode,
            k: s.k,
            budget: s
                .budget_ms
                .map(Duration::from_millis)
                .unwrap_or_else(|| default_budget(s.kind)),
            scenes: s.scenes.iter().cloned().collect(),
            min_share: s.min_share,
            max_share: s.max_share,
        });
    }
    anyhow::ensure!(
        min_total <= 1.0 + 1e-6,
        "the recall sources' min_share values add up to {min_total}, more than the whole list"
    );
    anyhow::ensure!(
        plans
            .iter()
            .any(|p| matches!(p.mode, Mode::Always | Mode::OnDemand)),
        "every recall source is a fallback or off: at least one must run first"
    );
    Ok(plans)
}

/// Checks hedged stage names against the stages that exist.
pub fn validate_hedge(
    stages: &[String],
    sources: &[SourcePlan],
) -> anyhow::Result<HashSet<String>> {
    let known: Vec<String> = HEDGEABLE
        .iter()
        .map(|s| s.to_string())
        .chain(
            sources
                .iter()
                .filter(|s| s.kind != SourceKind::Cf)
                .map(|p| p.stage().to_string()),
        )
        .collect();
    let mut out = HashSet::new();
    for s in stages.iter().filter(|s| !s.is_empty()) {
        anyhow::ensure!(
            known.contains(s),
            "cannot hedge {s:?}: the stages with calls to hedge are {}",
            known.join(", ")
        );
        out.insert(s.clone());
    }
    Ok(out)
}

/// Parses blocklist ids.
pub fn blocklist(ids: &[String]) -> anyhow::Result<HashSet<ItemId>> {
    Ok(ids
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| ItemId::parse("blocklist", s))
        .collect::<Result<HashSet<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(_: SourceKind) -> Duration {
        Duration::from_millis(20)
    }

    fn parse(text: &str) -> anyhow::Result<Vec<SourcePlan>> {
        let f: RawPlan = toml::from_str(text)?;
        validate_sources(&f.recall.unwrap_or_default(), budget)
    }

    #[test]
    fn a_file_gives_modes_scenes_quotas_and_budgets() {
        let plans = parse(
            r#"
            [[recall]]
            name = "cf"
            kind = "cf"
            k = 200
            min_share = 0.3
            [[recall]]
            name = "friends"
            kind = "graph"
            mode = "on_demand"
            scenes = ["social"]
            k = 50
            budget_ms = 40
            [[recall]]
            name = "popular"
            kind = "popular"
            mode = "fallback"
            k = 100
            max_share = 0.2
            "#,
        )
        .unwrap();
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[0].budget, Duration::from_millis(20), "kind default");
        assert_eq!(plans[0].min_share, 0.3);
        assert_eq!(plans[1].stage(), "recall.friends");
        assert_eq!(plans[1].mode, Mode::OnDemand);
        assert!(plans[1].scenes.contains("social"));
        assert_eq!(plans[1].budget, Duration::from_millis(40));
        assert_eq!(plans[2].mode, Mode::Fallback);
        assert_eq!(plans[2].max_share, 0.2);
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"cf\"\nk = 0")
                .contains("k must be between 1 and")
        );
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"vector\"\nk = 5\n[[recall]]\nname = \"a\"\nkind = \"graph\"\nk = 5")
                .contains("listed twice")
        );
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"cf\"\nk = 5\nmin_share = 0.7\n[[recall]]\nname = \"b\"\nkind = \"vector\"\nk = 5\nmin_share = 0.6")
                .contains("add up to")
        );
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"cf\"\nk = 5\nmin_share = 0.5\nmax_share = 0.2")
                .contains("above max_share")
        );
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"cf\"\nk = 5\nscenes = [\"x\"]")
                .contains("on_demand")
        );
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"popular\"\nmode = \"fallback\"\nk = 5")
                .contains("at least one must run first")
        );
        assert!(err("[[recall]]\nname = \"a\"\nkind = \"knn\"\nk = 5").contains("unknown variant"));
        assert!(
            err("[[recall]]\nname = \"a\"\nkind = \"cf\"\nk = 5\nweight = 2")
                .contains("unknown field")
        );
        assert!(
            err("[[recall]]\nname = \"\"\nkind = \"cf\"\nk = 5").contains("recall source \"\"")
        );
    }

    #[test]
    fn only_stages_with_calls_can_be_hedged() {
        let plans = parse("[[recall]]\nname = \"ann\"\nkind = \"vector\"\nk = 5\n[[recall]]\nname = \"cf\"\nkind = \"cf\"\nk = 5").unwrap();
        let ok = validate_hedge(&["recall.ann".into(), "hydrate".into()], &plans).unwrap();
        assert_eq!(ok.len(), 2);
        let e = validate_hedge(&["recall.cf".into()], &plans)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot hedge \"recall.cf\""), "{e}");
        assert!(e.contains("recall.ann"), "{e}");
    }
}
