//! How a stage's call is made: a method of its downstream's client ([`Downstreams`], over gRPC or in process)
//! behind that downstream's breaker, hedged when the plan names one of the stages it serves. This is the seam
//! the pipeline's tests fake: the same stacks over clients that answer, fail or hang as a test says.

use std::sync::Arc;

use reco_client::Downstreams;

use crate::{
    plan::Plan,
    resilience::{Breaker, HedgePolicy},
};

/// One breaker per downstream service, shared by every stage that calls it.
pub struct Breakers {
    pub feature: Arc<Breaker>,
    pub cache: Arc<Breaker>,
    pub vector: Arc<Breaker>,
    pub graph: Arc<Breaker>,
    pub ranking: Arc<Breaker>,
}

/// What the stages' calls are built from.
pub struct Links<'a> {
    pub plan: &'a Plan,
    pub downstreams: &'a Downstreams,
    pub breakers: Breakers,
}

impl<'a> Links<'a> {
    pub fn new(plan: &'a Plan, downstreams: &'a Downstreams) -> Self {
        let breaker = |name| Breaker::new(name, plan.breaker);
        Self {
            plan,
            downstreams,
            breakers: Breakers {
                feature: breaker("feature"),
                cache: breaker("cache"),
                vector: breaker("vector-recall"),
                graph: breaker("graph-recall"),
                ranking: breaker("ranking"),
            },
        }
    }

    /// The hedging of a call that serves `stages`: on when the plan hedges any of them.
    pub fn hedge(&self, stages: &[&str]) -> Option<HedgePolicy> {
        stages
            .iter()
            .any(|s| self.plan.hedged.contains(*s))
            .then_some(self.plan.hedge)
    }
}

/// The stage service of `$method` of downstream `$downstream` (a field of both [`Downstreams`] and [`Breakers`])
/// for the stages listed.
macro_rules! stage_call {
    ($links:expr, $downstream:ident, [$($stage:expr),+], $method:ident) => {{
        let links = &$links;
        let client = links.downstreams.$downstream.clone();
        $crate::resilience::stage_service(
            &links.breakers.$downstream,
            links.hedge(&[$($stage),+]),
            move |c: $crate::resilience::Call<_>| {
                let client = client.clone();
                async move { client.$method(c.message, c.budget).await }
            },
        )
    }};
}
pub(crate) use stage_call;
