//! The event outbox: every accepted event, on disk before RecordEvents answers, until each sink has applied it.
//!
//! ```text
//!   events   seq -> UserEvent (postcard)     kept until every sink's cursor has passed it
//!   ids      event_id -> seq                 the last `dedupe` ids accepted: a second event with one is a duplicate
//!   id_log   seq -> event_id                 the same ids in arrival order, to forget the oldest
//!   meta     "next" -> seq; "cursor:<sink>" -> the last seq the sink applied
//! ```
//!
//! A redb file (the embedded feature store's engine): every commit is durable (fsync) before it returns, so an
//! acknowledged event survives `kill -9`, and a cursor moves only after its sink answered, so a crash between the
//! two applies a batch again, which the sinks absorb (each is idempotent by event id). Bounded: when `capacity`
//! events wait for some sink, new ones are refused ([`Full`]) rather than growing the file without end.

use std::{path::Path, sync::Arc};

use reco_types::UserEvent;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
const ID_LOG: TableDefinition<u64, &str> = TableDefinition::new("id_log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The outbox failed to read or write its file.
#[derive(Debug, thiserror::Error)]
#[error("event outbox {path}: {message}")]
pub struct OutboxError {
    path: String,
    message: String,
}

/// The outbox holds as many events as it may: they wait for `sink`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the event outbox is full: {pending} events wait to be applied (the limit is {capacity}), the oldest for the {sink} service"
)]
pub struct Full {
    pub pending: u64,
    pub capacity: u64,
    pub sink: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Full(#[from] Full),
    #[error(transparent)]
    Io(#[from] OutboxError),
}

/// What an append did with each event, in order: its sequence number, or None for a duplicate.
#[derive(Debug)]
pub struct Appended {
    pub seqs: Vec<Option<u64>>,
}

pub struct Outbox {
    db: Arc<Database>,
    path: String,
    sinks: &'static [&'static str],
    capacity: u64,
    dedupe: u64,
}

fn cursor_key(sink: &str) -> String {
    format!("cursor:{sink}")
}

impl Outbox {
    /// Opens (or creates) the outbox at `path` for these sinks.
    pub fn open(
        path: &Path,
        sinks: &'static [&'static str],
        capacity: u64,
        dedupe: u64,
    ) -> Result<Self, OutboxError> {
        let shown = path.display().to_string();
        let err = |e: &dyn std::fmt::Display| OutboxError {
            path: shown.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = Database::create(path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        {
            tx.open_table(EVENTS).map_err(|e| err(&e))?;
            tx.open_table(IDS).map_err(|e| err(&e))?;
            tx.open_table(ID_LOG).map_err(|e| err(&e))?;
            let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
            if meta.get("next").map_err(|e| err(&e))?.is_none() {
                meta.insert("next", 1).map_err(|e| err(&e))?;
            }
            let next = meta
                .get("next")
                .map_err(|e| err(&e))?
                .map_or(1, |v| v.value());
            for sink in sinks {
                // A sink new to this file starts at what is in it now, not at the beginning of time.
                let key = cursor_key(sink);
                if meta.get(key.as_str()).map_err(|e| err(&e))?.is_none() {
                    meta.insert(key.as_str(), next - 1).map_err(|e| err(&e))?;
                }
            }
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db: Arc::new(db),
            path: shown,
            sinks,
            capacity,
            dedupe,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Every sink's cursor, in the order of `sinks`, and the next sequence number.
    pub fn positions(&self) -> Result<(Vec<u64>, u64), OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        let get = |k: &str| -> Result<u64, OutboxError> {
            Ok(meta
                .get(k)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value()))
        };
        let cursors = self
            .sinks
            .iter()
            .map(|s| get(&cursor_key(s)))
            .collect::<Result<_, _>>()?;
        Ok((cursors, get("next")?))
    }

    /// Writes the new events in one durable commit, leaving out those whose id was accepted before (or earlier
    /// in the batch). Refuses all of them when they would take the events waiting past the capacity.
    pub fn append(&self, events: &[UserEvent]) -> Result<Appended, AppendError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut seqs = Vec::with_capacity(events.len());
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut table = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
            let mut ids = tx.open_table(IDS).map_err(|e| self.err(e))?;
            let mut log = tx.open_table(ID_LOG).map_err(|e| self.err(e))?;
            let mut next = meta
                .get("next")
                .map_err(|e| self.err(e))?
                .map_or(1, |v| v.value());
            let (slowest, cursor) = self
                .sinks
                .iter()
                .map(|s| {
                    let c = meta
                        .get(cursor_key(s).as_str())
                        .ok()
                        .flatten()
                        .map_or(0, |v| v.value());
                    (*s, c)
                })
                .min_by_key(|(_, c)| *c)
                .unwrap_or(("none", next - 1));
            let mut fresh = 0u64;
            for e in events {
                if ids.get(e.id.as_str()).map_err(|e| self.err(e))?.is_some() {
                    seqs.push(None);
                    continue;
                }
                let bytes = postcard::to_stdvec(e).map_err(|e| self.err(e))?;
                table
                    .insert(next, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                ids.insert(e.id.as_str(), next).map_err(|e| self.err(e))?;
                log.insert(next, e.id.as_str()).map_err(|e| self.err(e))?;
                seqs.push(Some(next));
                next += 1;
                fresh += 1;
            }
            let pending = next - 1 - cursor;
            if fresh > 0 && pending > self.capacity {
                // Dropping the transaction uncommitted writes nothing.
                return Err(Full {
                    pending: pending - fresh,
                    capacity: self.capacity,
                    sink: slowest,
                }
                .into());
            }
            meta.insert("next", next).map_err(|e| self.err(e))?;
            // Forget the oldest ids past the dedupe window.
            let keep_from = next.saturating_sub(self.dedupe);
            let old: Vec<String> = log
                .extract_from_if(..keep_from, |_, _| true)
                .map_err(|e| self.err(e))?
                .map(|r| r.map(|(_, id)| id.value().to_string()))
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            for id in old {
                ids.remove(id.as_str()).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Appended { seqs })
    }

    /// Up to `max` events after `after`, in order.
    pub fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, UserEvent)>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.range(after + 1..).map_err(|e| self.err(e))?.take(max) {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((
                k.value(),
                postcard::from_bytes(v.value()).map_err(|e| self.err(e))?,
            ));
        }
        Ok(out)
    }

    /// Records that `sink` applied everything up to `to`, and drops the events every sink has applied.
    pub fn advance(&self, sink: &str, to: u64) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(cursor_key(sink).as_str(), to)
                .map_err(|e| self.err(e))?;
            let mut slowest = u64::MAX;
            for s in self.sinks {
                let c = meta
                    .get(cursor_key(s).as_str())
                    .map_err(|e| self.err(e))?
                    .map_or(0, |v| v.value());
                slowest = slowest.min(c);
            }
            let mut table = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
            table
                .retain_in(..=slowest, |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use reco_types::{RawEvent, UserEvent};

    use super::*;

    const SINKS: &[&str] = &["a", "b"];

    fn ev(id: &str) -> UserEvent {
        let raw = RawEvent {
            user_id: "u1".into(),
            item_id: "i1".into(),
            kind: "click".into(),
            event_id: id.into(),
            ..Default::default()
        };
        UserEvent::parse(raw, || unreachable!(), reco_types::now_ms()).unwrap()
    }

    #[test]
    fn duplicates_are_left_out_and_every_sink_reads_until_it_advances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        let o = Outbox::open(&path, SINKS, 100, 1000).unwrap();
        let a = o.append(&[ev("e1"), ev("e2"), ev("e1")]).unwrap();
        assert_eq!(a.seqs, [Some(1), Some(2), None]);
        assert_eq!(
            o.append(&[ev("e2"), ev("e3")]).unwrap().seqs,
            [None, Some(3)]
        );
        o.advance("a", 3).unwrap();
        assert!(o.read(3, 10).unwrap().is_empty());
        let for_b: Vec<u64> = o.read(0, 10).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(for_b, [1, 2, 3], "b has applied nothing yet");
        o.advance("b", 2).unwrap();
        assert_eq!(o.read(0, 10).unwrap().len(), 1, "what both applied is gone");
        drop(o);
        let o = Outbox::open(&path, SINKS, 100, 1000).unwrap();
        assert_eq!(
            o.positions().unwrap(),
            (vec![3, 2], 4),
            "reopened where it was"
        );
        assert_eq!(
            o.append(&[ev("e3")]).unwrap().seqs,
            [None],
            "ids outlive a reopen"
        );
    }

    #[test]
    fn a_full_outbox_refuses_the_batch_and_writes_none_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&dir.path().join("o.redb"), SINKS, 3, 1000).unwrap();
        o.append(&[ev("e1"), ev("e2")]).unwrap();
        o.advance("a", 2).unwrap();
        let err = o.append(&[ev("e3"), ev("e4")]).unwrap_err();
        let AppendError::Full(full) = err else {
            panic!("{err}")
        };
        assert_eq!((full.pending, full.capacity, full.sink), (2, 3, "b"));
        assert_eq!(
            o.positions().unwrap().1,
            3,
            "nothing of the refused batch was written"
        );
        assert_eq!(
            o.append(&[ev("e3")]).unwrap().seqs,
            [Some(3)],
            "e3 was not taken as seen"
        );
        o.advance("b", 3).unwrap();
        assert_eq!(o.append(&[ev("e4"), ev("e5")]).unwrap().seqs.len(), 2);
    }

    #[test]
    fn the_oldest_ids_are_forgotten_past_the_dedupe_window() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(&dir.path().join("o.redb"), SINKS, 100, 2).unwrap();
        for id in ["e1", "e2", "e3"] {
            o.append(&[ev(id)]).unwrap();
        }
        assert_eq!(o.append(&[ev("e3")]).unwrap().seqs, [None]);
        assert_eq!(
            o.append(&[ev("e1")]).unwrap().seqs,
            [Some(4)],
            "e1 is past the window"
        );
    }
}
