//! Where an event goes: each sink turns a batch of events into one call to its service.
//!
//! | sink | service call | what of each event |
//! |---|---|---|
//! | `feature` | AppendEventsBatch | an item event joins the user's real-time sequence |
//! | `cache` | PushEvents | an item event joins the user's recent clicks; every event drops the user's cached answers |
//! | `graph` | AddEdges | a positive item event is an engagement edge (its weight); a follow, a follows edge |
//!
//! Each is idempotent: the sequence and the recent clicks leave out an event id they hold, an edge added again
//! only has its weight set again, and dropping a cached answer twice drops nothing more.

use std::time::Duration;

use reco_client::{Downstreams, EventAppend, EventPush, GraphEdge};
use reco_types::{EventTarget, UserEvent, UserId};
use tonic::Status;

/// The sinks, in the order their cursors are kept.
pub const SINKS: &[&str] = &["feature", "cache", "graph"];

/// Each user's events in the order they came, users in the order of their first event.
fn per_user(events: &[UserEvent], keep: impl Fn(&UserEvent) -> bool) -> Vec<EventAppend> {
    let mut out: Vec<EventAppend> = Vec::new();
    let mut at: foldhash::HashMap<&UserId, usize> = Default::default();
    for e in events {
        let slot = *at.entry(&e.user_id).or_insert_with(|| {
            out.push(EventAppend {
                user_id: e.user_id.clone(),
                events: Vec::new(),
            });
            out.len() - 1
        });
        if keep(e)
            && let Some(s) = e.sequence_event()
        {
            out[slot].events.push(s);
        }
    }
    out
}

/// Applies `events` to the sink at `index` of [`SINKS`].
pub async fn apply(
    index: usize,
    d: &Downstreams,
    events: &[UserEvent],
    budget: Duration,
) -> Result<(), Status> {
    match SINKS[index] {
        "feature" => {
            let appends: Vec<EventAppend> = per_user(events, |_| true)
                .into_iter()
                .filter(|a| !a.events.is_empty())
                .collect();
            if appends.is_empty() {
                return Ok(());
            }
            d.feature.append_events(appends, budget).await
        }
        "cache" => {
            let push = EventPush {
                users: per_user(events, |_| true),
                invalidate_results: true,
            };
            d.cache.push_events(push, budget).await
        }
        "graph" => {
            let edges: Vec<GraphEdge> = events
                .iter()
                .filter_map(|e| match &e.target {
                    EventTarget::User(followee) => Some(GraphEdge::Follows {
                        user: e.user_id.clone(),
                        followee: followee.clone(),
                    }),
                    EventTarget::Item(item) if e.kind.is_positive() => Some(GraphEdge::Engaged {
                        user: e.user_id.clone(),
                        item: item.clone(),
                        weight: e.weight,
                    }),
                    EventTarget::Item(_) => None,
                })
                .collect();
            if edges.is_empty() {
                return Ok(());
            }
            d.graph.add_edges(edges, budget).await
        }
        other => unreachable!("no sink {other}"),
    }
}

#[cfg(test)]
mod tests {
    use reco_types::RawEvent;

    use super::*;

    fn ev(user: &str, item: &str, id: &str) -> UserEvent {
        let raw = RawEvent {
            user_id: user.into(),
            item_id: item.into(),
            kind: "click".into(),
            event_id: id.into(),
            ..Default::default()
        };
        UserEvent::parse(raw, || unreachable!(), reco_types::now_ms()).unwrap()
    }

    #[test]
    fn events_group_by_user_in_order() {
        let events = [ev("a", "i1", "1"), ev("b", "i2", "2"), ev("a", "i3", "3")];
        let got = per_user(&events, |_| true);
        let shape: Vec<(String, Vec<String>)> = got
            .iter()
            .map(|a| {
                (
                    a.user_id.to_string(),
                    a.events.iter().map(|e| e.item_id.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a".to_string(), vec!["i1".to_string(), "i3".to_string()]),
                ("b".to_string(), vec!["i2".to_string()]),
            ]
        );
    }
}
