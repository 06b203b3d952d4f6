//! The consumer: a task per readable partition, each reading in order, checking each record, recording the
//! batch through the gateway, then checkpointing past it.
//!
//! ```text
//!   coordinator ── lists partitions (every --list-interval-ms, and when one ends)
//!       │           a partition is readable once its parents are finished
//!       └─ partition task: read ─▶ parse + check ─▶ bad: dead-letter file
//!                                              └─▶ good: Gateway.RecordEvents (retried until taken) ─▶ checkpoint
//! ```
//!
//! Delivery is at least once from the stream, exactly once in effect: an event without an id gets
//! `<stream>:<partition>:<position>`, so a record read again after a crash has the id the gateway already holds.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use reco_proto::gateway::v1 as pb;
use reco_types::{RawEvent, UserEvent};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, warn};

use crate::{
    checkpoint::{Checkpoints, Position},
    dead_letter::DeadLetters,
    metrics,
    sink::EventSink,
    source::{From, Partition, Record, Source},
};

/// Most events in one RecordEvents call (the gateway's limit).
pub const MAX_BATCH: usize = 1_000;
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How the consumer reads.
#[derive(Clone, Debug)]
pub struct ConsumerPlan {
    /// Least time between two reads of one partition (Kinesis allows five a second per shard).
    pub poll: Duration,
    /// Most records per read.
    pub max_records: usize,
    /// How often the partitions are listed again (new ones after a reshard).
    pub list_interval: Duration,
    /// With no checkpoint at all, start at the newest records rather than the oldest kept.
    pub start_at_newest: bool,
}

/// Running totals, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
}

pub struct Consumer {
    source: Arc<dyn Source>,
    checkpoints: Arc<dyn Checkpoints>,
    sink: Arc<dyn EventSink>,
    dead: Arc<DeadLetters>,
    plan: ConsumerPlan,
    pub stats: Arc<Stats>,
}

/// The default id of a record's event: where it is in the stream.
pub fn record_event_id(stream: &str, partition: &str, position: &str) -> String {
    format!("{stream}:{partition}:{position}")
}

impl Consumer {
    pub fn new(
        source: Arc<dyn Source>,
        checkpoints: Arc<dyn Checkpoints>,
        sink: Arc<dyn EventSink>,
        dead: Arc<DeadLetters>,
        plan: ConsumerPlan,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            checkpoints,
            sink,
            dead,
            plan,
            stats: Arc::default(),
        })
    }

    /// Reads until `stop`; each partition task finishes the batch it holds (recorded and checkpointed) first.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let positions = self.checkpoints.load().await?;
        let fresh = positions.is_empty();
        let mut finished: HashSet<String> = positions
            .iter()
            .filter(|(_, p)| p.finished)
            .map(|(k, _)| k.clone())
            .collect();
        let mut positions: BTreeMap<String, Position> = positions;
        let tasks = TaskTracker::new();
        let mut running: HashSet<String> = HashSet::new();
        // Partition tasks report here when they end: (partition, finished).
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Option<Position>)>();
        let mut backoff = BACKOFF.0;
        while !stop.is_cancelled() {
            match self.source.partitions().await {
                Ok(partitions) => {
                    backoff = BACKOFF.0;
                    let known: HashSet<&str> = partitions.iter().map(|p| p.id.as_str()).collect();
                    for p in &partitions {
                        if running.contains(&p.id) || finished.contains(&p.id) {
                            continue;
                        }
                        // Parents first: a parent the stream no longer keeps (past retention) does not hold its
                        // children back.
                        let waiting = p
                            .parents
                            .iter()
                            .any(|q| known.contains(q.as_str()) && !finished.contains(q));
                        if waiting {
                            continue;
                        }
                        let from = match positions.get(&p.id).and_then(|x| x.after.clone()) {
                            Some(seq) => From::After(seq),
                            // A shard born of a reshard starts at its beginning, whatever the flag says.
                            None if fresh && self.plan.start_at_newest && p.parents.is_empty() => {
                                From::Newest
                            }
                            None => From::Oldest,
                        };
                        running.insert(p.id.clone());
                        let me = self.clone();
                        let (p, stop, done) = (p.clone(), stop.clone(), done_tx.clone());
                        let span = tracing::info_span!("partition", partition = %p.id);
                        tasks.spawn(
                            async move {
                                let end = me.read_partition(&p, from, &stop).await;
                                let _ = done.send((p.id.clone(), end));
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot list the stream's partitions");
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
            let wait = if backoff > BACKOFF.0 {
                backoff
            } else {
                self.plan.list_interval
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                Some((id, end)) = done_rx.recv() => {
                    running.remove(&id);
                    if let Some(end) = end {
                        if end.finished {
                            info!(partition = %id, "read to its end: its children follow");
                            finished.insert(id.clone());
                        }
                        positions.insert(id, end);
                    }
                }
            }
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }

    /// Reads one partition until it ends (its final position) or `stop` (None).
    async fn read_partition(
        &self,
        p: &Partition,
        mut from: From,
        stop: &CancellationToken,
    ) -> Option<Position> {
        let mut reader = None;
        let mut backoff = BACKOFF.0;
        let mut last_read = Instant::now() - self.plan.poll;
        let mut at: Option<String> = match &from {
            From::After(s) => Some(s.clone()),
            _ => None,
        };
        loop {
            if stop.is_cancelled() {
                return None;
            }
            // No sooner than the poll interval after the previous read.
            let since = last_read.elapsed();
            if since < self.plan.poll {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(self.plan.poll - since) => {}
                }
            }
            let r = match &mut reader {
                Some(r) => r,
                None => match self.source.open(p, from.clone()).await {
                    Ok(r) => reader.insert(r),
                    Err(e) => {
                        warn!(error = %e, "cannot open the partition");
                        pause(stop, &mut backoff).await;
                        continue;
                    }
                },
            };
            last_read = Instant::now();
            let fetched = match r.next(self.plan.max_records).await {
                Ok(f) => f,
                Err(e) => {
                    // An expired iterator, throttling, a network error: open again where the checkpoint is.
                    warn!(error = %e, "cannot read the partition");
                    reader = None;
                    pause(stop, &mut backoff).await;
                    continue;
                }
            };
            backoff = BACKOFF.0;
            if let Some(ms) = fetched.behind_ms {
                metrics::lag(&p.id, ms);
            }
            if let Some(last) = fetched.records.last() {
                let last = last.position.clone();
                metrics::records(&p.id, fetched.records.len() as u64);
                self.stats
                    .records
                    .fetch_add(fetched.records.len() as u64, Ordering::Relaxed);
                if !self.take(&p.id, fetched.records, stop).await {
                    return None; // stopped before the gateway took them: read again next start
                }
                let position = Position {
                    after: Some(last.clone()),
                    finished: false,
                };
                if !self.save(&p.id, &position, stop).await {
                    return None;
                }
                at = Some(last.clone());
                from = From::After(last);
            }
            if fetched.ended {
                let end = Position {
                    after: at,
                    finished: true,
                };
                return self.save(&p.id, &end, stop).await.then_some(end);
            }
        }
    }

    /// Saves a checkpoint, retrying until it is written (false: stopped first).
    async fn save(&self, partition: &str, position: &Position, stop: &CancellationToken) -> bool {
        let mut backoff = BACKOFF.0;
        loop {
            match self.checkpoints.save(partition, position).await {
                Ok(()) => return true,
                Err(e) => {
                    warn!(error = %e, "cannot save the checkpoint");
                    if stop.is_cancelled() {
                        return false;
                    }
                    pause(stop, &mut backoff).await;
                }
            }
        }
    }

    /// Checks each record, dead-letters the bad ones and records the rest; true once the gateway has taken
    /// every good one (false: stopped first).
    async fn take(&self, partition: &str, records: Vec<Record>, stop: &CancellationToken) -> bool {
        let now = reco_types::now_ms();
        let mut good: Vec<(pb::UserEvent, &Record)> = Vec::with_capacity(records.len());
        for r in &records {
            match check(self.source.name(), partition, r, now) {
                Ok(e) => good.push((e, r)),
                Err(reason) => self.refuse(partition, r, &reason),
            }
        }
        for chunk in good.chunks(MAX_BATCH) {
            let events: Vec<pb::UserEvent> = chunk.iter().map(|(e, _)| e.clone()).collect();
            match self.send(events, stop).await {
                Sent::Taken => {}
                Sent::Stopped => return false,
                Sent::Refused => {
                    // The gateway refuses something these checks let through (another version?): one by one,
                    // so only what it refuses goes to the dead letters.
                    for (e, r) in chunk {
                        match self.send(vec![e.clone()], stop).await {
                            Sent::Taken => {}
                            Sent::Stopped => return false,
                            Sent::Refused => self.refuse(partition, r, "refused by the gateway"),
                        }
                    }
                }
            }
        }
        true
    }

    fn refuse(&self, partition: &str, r: &Record, reason: &str) {
        warn!(position = %r.position, %reason, "record dead-lettered");
        if let Err(e) = self.dead.put(partition, r, reason) {
            warn!(error = %e, "cannot write the dead-letter file");
        }
        metrics::events("refused", 1);
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// One RecordEvents call, retried while the gateway is down, slow or full.
    async fn send(&self, events: Vec<pb::UserEvent>, stop: &CancellationToken) -> Sent {
        let mut backoff = BACKOFF.0;
        let mut said = false;
        loop {
            match self.sink.record(events.clone()).await {
                Ok(t) => {
                    metrics::events("applied", t.accepted.into());
                    metrics::events("duplicate", t.duplicates.into());
                    self.stats
                        .applied
                        .fetch_add(t.accepted.into(), Ordering::Relaxed);
                    self.stats
                        .duplicates
                        .fetch_add(t.duplicates.into(), Ordering::Relaxed);
                    if said {
                        info!("the gateway takes events again");
                    }
                    return Sent::Taken;
                }
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    if events.len() == 1 {
                        warn!(error = s.message(), "the gateway refused an event");
                    }
                    return Sent::Refused;
                }
                Err(s) => {
                    metrics::gateway_failure();
                    if !said {
                        warn!(code = ?s.code(), error = s.message(), "the gateway did not take a batch: trying again");
                        said = true;
                    }
                    if stop.is_cancelled() {
                        return Sent::Stopped;
                    }
                    pause(stop, &mut backoff).await;
                }
            }
        }
    }
}

enum Sent {
    Taken,
    Refused,
    Stopped,
}

/// A record as an event for RecordEvents, checked as the gateway checks it; the error is the reason.
pub fn check(stream: &str, partition: &str, r: &Record, now: i64) -> Result<pb::UserEvent, String> {
    let mut raw: RawEvent = serde_json::from_slice(&r.data)
        .map_err(|e| format!("not an event (JSON with the fields of RecordEvents): {e}"))?;
    if raw.event_id.is_empty() {
        raw.event_id = record_event_id(stream, partition, &r.position);
    }
    if raw.timestamp_ms == 0 {
        // An event without a time happened when the stream took it.
        raw.timestamp_ms = r.arrived_ms.unwrap_or(now);
    }
    UserEvent::parse(raw.clone(), || unreachable!("the id is set"), now)
        .map_err(|e| e.to_string())?;
    Ok(raw.into())
}

async fn pause(stop: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF.1);
}
