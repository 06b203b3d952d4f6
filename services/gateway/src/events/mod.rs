//! RecordEvents: what users did, taken in one place and applied everywhere it belongs.
//!
//! ```text
//!   RecordEvents ─▶ check every event ─▶ outbox (redb file, durable) ─▶ answer once applied (or the wait is up)
//!                                            │
//!                                            ├─ feature worker ─▶ AppendEventsBatch   (real-time sequence)
//!                                            ├─ cache worker   ─▶ PushEvents          (recent clicks, cached answers)
//!                                            └─ graph worker   ─▶ AddEdges            (engagement, follows)
//! ```
//!
//! Each sink has its own worker and its own cursor in the outbox, so a service that is down holds back only its
//! own part: its worker retries with backoff while the others go on, and the events wait on disk until it is back
//! (or until the outbox is full, when new events are refused with RESOURCE_EXHAUSTED). The call waits for the
//! sinks that are up to apply its events, so the caller's next Recommend sees them, and says how many are still
//! pending for one that is not. Every sink is idempotent by event id, so a batch applied twice (a crash between a
//! sink's answer and its cursor's write) changes nothing.

mod outbox;
mod sinks;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use reco_client::Downstreams;
use reco_types::{EventId, UserEvent};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, warn};

pub use self::outbox::AppendError;
use self::{outbox::Outbox, sinks::SINKS};

/// Most events one worker applies in one call to its service.
const APPLY_BATCH: usize = 1_000;
/// How long one apply call may take before it counts as failed and is tried again.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the workers go on applying the backlog once the gateway stops (inside Kubernetes' 30 s grace).
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// Retry backoff after a failed apply: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// How events are kept and waited for.
#[derive(Clone, Debug)]
pub struct EventsPlan {
    pub outbox: PathBuf,
    /// Most events waiting for some sink.
    pub capacity: u64,
    /// How many of the latest event ids are remembered to refuse duplicates.
    pub dedupe: u64,
    /// Longest a RecordEvents call waits for its events to be applied.
    pub wait: Duration,
}

/// What a RecordEvents call did.
#[derive(Debug)]
pub struct Recorded {
    pub accepted: u32,
    pub duplicates: u32,
    /// Accepted events some sink had not applied when the call answered.
    pub pending: u32,
}

/// Where each sink is: its cursor, and whether its last call failed (then nobody waits for it).
#[derive(Clone, Debug, PartialEq)]
struct SinkState {
    cursor: u64,
    failing: bool,
}

pub struct Recorder {
    outbox: Arc<Outbox>,
    /// The newest sequence number written; workers wake on its change.
    head: watch::Sender<u64>,
    sinks: watch::Sender<Vec<SinkState>>,
    wait: Duration,
    tasks: TaskTracker,
    closing: CancellationToken,
}

impl Recorder {
    /// Opens the outbox and starts a worker per sink, which first applies what an earlier run left in it.
    pub fn start(plan: &EventsPlan, downstreams: Downstreams) -> anyhow::Result<Arc<Self>> {
        let outbox = Arc::new(Outbox::open(
            &plan.outbox,
            SINKS,
            plan.capacity,
            plan.dedupe,
        )?);
        let (cursors, next) = outbox.positions()?;
        let left: u64 = cursors.iter().map(|c| next - 1 - c).max().unwrap_or(0);
        if left > 0 {
            info!(
                outbox = %plan.outbox.display(),
                events = left,
                "applying events an earlier run left in the outbox"
            );
        }
        let recorder = Arc::new(Self {
            outbox,
            head: watch::Sender::new(next - 1),
            sinks: watch::Sender::new(
                cursors
                    .into_iter()
                    .map(|cursor| SinkState {
                        cursor,
                        failing: false,
                    })
                    .collect(),
            ),
            wait: plan.wait,
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
        });
        for (index, sink) in SINKS.iter().enumerate() {
            let r = recorder.clone();
            let d = downstreams.clone();
            recorder.tasks.spawn(
                async move { r.work(index, d).await }
                    .instrument(tracing::info_span!("event_sink", sink = *sink)),
            );
        }
        Ok(recorder)
    }

    /// Writes checked events to the outbox, then waits (at most `wait`, or the plan's) for the sinks that are up
    /// to apply them.
    pub async fn record(
        &self,
        events: Vec<UserEvent>,
        wait: Option<Duration>,
    ) -> Result<Recorded, AppendError> {
        let outbox = self.outbox.clone();
        let appended = tokio::task::spawn_blocking(move || outbox.append(&events))
            .await
            .expect("the outbox append does not panic")?;
        let seqs: Vec<u64> = appended.seqs.iter().flatten().copied().collect();
        let duplicates = (appended.seqs.len() - seqs.len()) as u32;
        crate::metrics::events_recorded(seqs.len() as u64, duplicates as u64);
        let Some(&last) = seqs.last() else {
            return Ok(Recorded {
                accepted: 0,
                duplicates,
                pending: 0,
            });
        };
        self.head.send_if_modified(|h| {
            let newer = last > *h;
            *h = (*h).max(last);
            newer
        });
        let wait = wait.map_or(self.wait, |w| w.min(self.wait));
        let mut rx = self.sinks.subscribe();
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|s| s.iter().all(|s| s.failing || s.cursor >= last)),
        )
        .await;
        let slowest = self
            .sinks
            .borrow()
            .iter()
            .map(|s| s.cursor)
            .min()
            .unwrap_or(0);
        Ok(Recorded {
            accepted: seqs.len() as u32,
            duplicates,
            pending: seqs.iter().filter(|&&s| s > slowest).count() as u32,
        })
    }

    /// Stops the workers once each has applied what waits for it (a sink that fails stops at once), for at most
    /// [`DRAIN_LIMIT`]; what is left stays in the outbox for the next start.
    pub fn finish(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.closing.cancel();
        self.tasks.close();
        let tasks = self.tasks.clone();
        async move {
            if tokio::time::timeout(DRAIN_LIMIT, tasks.wait())
                .await
                .is_err()
            {
                warn!(
                    "events still wait in the outbox after {DRAIN_LIMIT:?}: the next start applies them"
                );
            }
        }
    }

    /// One sink's worker: applies what is after its cursor, in batches, until closing.
    async fn work(&self, index: usize, d: Downstreams) {
        let sink = SINKS[index];
        let mut head = self.head.subscribe();
        let mut backoff = BACKOFF.0;
        loop {
            let cursor = self.sinks.borrow()[index].cursor;
            let outbox = self.outbox.clone();
            let batch = match tokio::task::spawn_blocking(move || outbox.read(cursor, APPLY_BATCH))
                .await
                .expect("the outbox read does not panic")
            {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot read the outbox");
                    if self.closing.is_cancelled() {
                        return;
                    }
                    self.pause(&mut backoff).await;
                    continue;
                }
            };
            let Some(&(last, _)) = batch.last() else {
                if self.closing.is_cancelled() {
                    return; // drained
                }
                // Nothing to do until new events come (or, as a safeguard, a second passes).
                head.mark_unchanged();
                tokio::select! {
                    _ = head.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.closing.cancelled() => return,
                }
                continue;
            };
            let events: Vec<UserEvent> = batch.into_iter().map(|(_, e)| e).collect();
            let started = Instant::now();
            let result = match tokio::time::timeout(
                APPLY_TIMEOUT,
                sinks::apply(index, &d, &events, APPLY_TIMEOUT),
            )
            .await
            {
                Ok(Ok(())) => Ok(events.len()),
                Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
                    // The service refuses something the gateway's checks let through: apply one by one, so only
                    // what it refuses is dropped (and counted), not the batch with it.
                    self.one_by_one(index, &d, &events).await
                }
                Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
                Err(_) => Err(format!("no answer within {APPLY_TIMEOUT:?}")),
            };
            match result {
                Ok(applied) => {
                    let outbox = self.outbox.clone();
                    let advanced = tokio::task::spawn_blocking(move || outbox.advance(sink, last))
                        .await
                        .expect("the outbox advance does not panic");
                    if let Err(e) = advanced {
                        warn!(error = %e, "cannot move the sink's cursor");
                        if self.closing.is_cancelled() {
                            return;
                        }
                        self.pause(&mut backoff).await;
                        continue;
                    }
                    let was_failing = self.sinks.borrow()[index].failing;
                    if was_failing {
                        info!("the {sink} service takes events again");
                    }
                    self.sinks.send_modify(|s| {
                        s[index] = SinkState {
                            cursor: last,
                            failing: false,
                        }
                    });
                    backoff = BACKOFF.0;
                    crate::metrics::events_applied(sink, applied as u64, started.elapsed());
                }
                Err(why) => {
                    let was_failing = self.sinks.borrow()[index].failing;
                    if !was_failing {
                        warn!(
                            events = events.len(),
                            error = %why,
                            "the {sink} service did not take events: they wait in the outbox"
                        );
                    }
                    self.sinks.send_modify(|s| s[index].failing = true);
                    crate::metrics::events_failed(sink);
                    if self.closing.is_cancelled() {
                        return; // what is left waits for the next start
                    }
                    self.pause(&mut backoff).await;
                }
            }
            let head = *self.head.borrow();
            crate::metrics::events_pending(
                sink,
                head.saturating_sub(self.sinks.borrow()[index].cursor),
            );
        }
    }

    /// Applies each event alone; those the service refuses are dropped with a warning. Fails on any other error.
    async fn one_by_one(
        &self,
        index: usize,
        d: &Downstreams,
        events: &[UserEvent],
    ) -> Result<usize, String> {
        let mut applied = 0;
        for e in events {
            match sinks::apply(index, d, std::slice::from_ref(e), APPLY_TIMEOUT).await {
                Ok(()) => applied += 1,
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    warn!(event_id = %e.id, error = s.message(), "the {} service refused an event: dropped", SINKS[index]);
                    crate::metrics::events_refused(SINKS[index]);
                }
                Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
            }
        }
        Ok(applied)
    }

    /// Waits out the backoff (returning at once when closing, where the caller's loop ends at its next check).
    async fn pause(&self, backoff: &mut Duration) {
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = self.closing.cancelled() => {}
        }
        *backoff = (*backoff * 2).min(BACKOFF.1);
    }
}

/// A fresh event id, for an event that came without one.
pub fn fresh_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The ids of checked events, in order.
pub fn ids(events: &[UserEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use reco_types::{RawEvent, now_ms};

    use super::*;
    use crate::fakes::{Fixture, Mode};

    fn plan(dir: &tempfile::TempDir, wait: Duration) -> EventsPlan {
        EventsPlan {
            outbox: dir.path().join("events.redb"),
            capacity: 1_000,
            dedupe: 10_000,
            wait,
        }
    }

    fn ev(user: &str, kind: &str, target: &str, id: &str) -> UserEvent {
        let mut raw = RawEvent {
            user_id: user.into(),
            kind: kind.into(),
            event_id: id.into(),
            ..Default::default()
        };
        if kind == "follow" {
            raw.target_user_id = target.into();
        } else {
            raw.item_id = target.into();
        }
        UserEvent::parse(raw, || unreachable!(), now_ms()).unwrap()
    }

    fn appended_ids(f: &Fixture) -> Vec<String> {
        f.feature
            .appended
            .lock()
            .unwrap()
            .iter()
            .flat_map(|a| a.events.iter().map(|e| e.id.clone().unwrap().to_string()))
            .collect()
    }

    fn pushed_ids(f: &Fixture) -> Vec<String> {
        f.cache
            .pushed
            .lock()
            .unwrap()
            .iter()
            .flat_map(|p| p.users.iter())
            .flat_map(|a| a.events.iter().map(|e| e.id.clone().unwrap().to_string()))
            .collect()
    }

    /// Waits (a long while at most: this is not a timing) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..1_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen");
    }

    #[tokio::test]
    async fn each_event_goes_where_it_belongs() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::new();
        let r = Recorder::start(&plan(&dir, Duration::from_secs(30)), f.downstreams()).unwrap();
        let events = vec![
            ev("u1", "click", "i1", "e1"),
            ev("u1", "follow", "u2", "e2"),
            ev("u2", "skip", "i3", "e3"),
        ];
        let rec = r.record(events, None).await.unwrap();
        assert_eq!((rec.accepted, rec.duplicates, rec.pending), (3, 0, 0));
        // The sequence and the recent clicks take item events, a skip too (it is not shown again).
        assert_eq!(appended_ids(&f), ["e1", "e3"]);
        assert_eq!(pushed_ids(&f), ["e1", "e3"]);
        let pushes = f.cache.pushed.lock().unwrap().clone();
        assert!(pushes.iter().all(|p| p.invalidate_results));
        let users: Vec<&str> = pushes[0].users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(
            users,
            ["u1", "u2"],
            "every user's cached answers are dropped, a follower's too"
        );
        // The graph: an engagement for the click, a follows edge, nothing for the skip.
        let edges = f.graph.edges.lock().unwrap().clone();
        assert_eq!(edges.len(), 2, "{edges:?}");
        assert!(
            matches!(&edges[0], reco_client::GraphEdge::Engaged { item, .. } if item.as_str() == "i1")
        );
        assert!(
            matches!(&edges[1], reco_client::GraphEdge::Follows { followee, .. } if followee.as_str() == "u2")
        );
        r.finish().await;
    }

    #[tokio::test]
    async fn an_event_sent_again_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::new();
        let r = Recorder::start(&plan(&dir, Duration::from_secs(30)), f.downstreams()).unwrap();
        r.record(vec![ev("u1", "click", "i1", "e1")], None)
            .await
            .unwrap();
        let again = r
            .record(
                vec![ev("u1", "click", "i1", "e1"), ev("u1", "click", "i2", "e2")],
                None,
            )
            .await
            .unwrap();
        assert_eq!((again.accepted, again.duplicates), (1, 1));
        assert_eq!(appended_ids(&f), ["e1", "e2"]);
        r.finish().await;
    }

    #[tokio::test]
    async fn a_service_that_is_down_gets_its_events_when_it_is_back_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::new();
        f.cache.script.set("push_events", Mode::Fail);
        let r = Recorder::start(&plan(&dir, Duration::from_secs(30)), f.downstreams()).unwrap();
        // The first call waits for the cache worker's first failure; the others do not wait for it at all.
        let first = r
            .record(vec![ev("u1", "click", "i1", "e1")], None)
            .await
            .unwrap();
        assert_eq!((first.accepted, first.pending), (1, 1));
        let second = r
            .record(vec![ev("u1", "click", "i2", "e2")], None)
            .await
            .unwrap();
        assert_eq!(second.pending, 1, "the cache has not taken it");
        assert_eq!(
            appended_ids(&f),
            ["e1", "e2"],
            "the feature service took both"
        );
        assert!(pushed_ids(&f).is_empty());
        // Stopped while the cache is down: the events stay in the outbox.
        r.finish().await;
        drop(r);

        let f2 = Fixture::new();
        let r = Recorder::start(&plan(&dir, Duration::from_secs(30)), f2.downstreams()).unwrap();
        until("the cache takes what waited", || pushed_ids(&f2).len() == 2).await;
        assert_eq!(pushed_ids(&f2), ["e1", "e2"], "in order");
        assert!(
            appended_ids(&f2).is_empty(),
            "what the feature service took is not sent again"
        );
        let third = r
            .record(vec![ev("u1", "click", "i3", "e3")], None)
            .await
            .unwrap();
        assert_eq!(third.pending, 0);
        r.finish().await;
    }

    #[tokio::test]
    async fn stopping_applies_what_waits_first() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::new();
        let mut p = plan(&dir, Duration::ZERO);
        p.capacity = 10_000;
        let r = Recorder::start(&p, f.downstreams()).unwrap();
        // More than one apply batch, answered as soon as it is on disk.
        let events: Vec<UserEvent> = (0..2_500)
            .map(|i| ev("u1", "click", &format!("i{i}"), &format!("e{i}")))
            .collect();
        r.record(events, None).await.unwrap();
        r.finish().await;
        assert_eq!(pushed_ids(&f).len(), 2_500);
        assert_eq!(appended_ids(&f).len(), 2_500);
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_new_events() {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture::new();
        f.graph.script.set("add_edges", Mode::Fail);
        let mut p = plan(&dir, Duration::ZERO);
        p.capacity = 2;
        let r = Recorder::start(&p, f.downstreams()).unwrap();
        r.record(
            vec![ev("u1", "click", "i1", "e1"), ev("u1", "click", "i2", "e2")],
            None,
        )
        .await
        .unwrap();
        // The others take them; the graph holds them back.
        until("the feature and cache services take both", || {
            appended_ids(&f).len() == 2 && pushed_ids(&f).len() == 2
        })
        .await;
        let err = r
            .record(vec![ev("u1", "click", "i3", "e3")], None)
            .await
            .unwrap_err();
        let AppendError::Full(full) = err else {
            panic!("{err}")
        };
        assert_eq!(full.sink, "graph", "{full}");
        assert!(full.to_string().contains("the limit is 2"), "{full}");
        r.finish().await;
    }
}
