//! What a user did, as a caller reports it (`Gateway.RecordEvents`, a stream): on an item (a click, a purchase) or
//! on another user (a follow). Each is applied to every place it belongs: the user's real-time sequence, their
//! recent clicks, the graph and their cached answers.

use serde::{Deserialize, Serialize};

use crate::{Event, EventId, ItemId, Name, Scene, UserId, ValidationError};

/// How far in the future an event's time may be (clocks differ): 5 minutes.
pub const MAX_EVENT_SKEW_MS: i64 = 5 * 60 * 1000;
/// How old an event may be: 30 days. Older ones are history for a batch load (`reco sync`), not real time.
pub const MAX_EVENT_AGE_MS: i64 = 30 * 24 * 3600 * 1000;

/// The kinds of event, a closed set: each kind says where the event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Click,
    View,
    Like,
    Dislike,
    Share,
    AddToCart,
    Purchase,
    Rate,
    Listen,
    Skip,
    /// On a user: the user follows them.
    Follow,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        Self::Click,
        Self::View,
        Self::Like,
        Self::Dislike,
        Self::Share,
        Self::AddToCart,
        Self::Purchase,
        Self::Rate,
        Self::Listen,
        Self::Skip,
        Self::Follow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Click => "click",
            Self::View => "view",
            Self::Like => "like",
            Self::Dislike => "dislike",
            Self::Share => "share",
            Self::AddToCart => "add_to_cart",
            Self::Purchase => "purchase",
            Self::Rate => "rate",
            Self::Listen => "listen",
            Self::Skip => "skip",
            Self::Follow => "follow",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                ValidationError::new(
                    field,
                    format!(
                        "is {:?}, not a known kind (one of {})",
                        truncated(s),
                        known.join(", ")
                    ),
                )
            })
    }

    /// Whether the event is on a user (a follow) rather than an item.
    pub fn targets_user(self) -> bool {
        self == Self::Follow
    }

    /// Whether the event says the user wants the item (an engagement edge in the graph). A skip or a dislike is
    /// kept in the sequence, so the item is not shown again, but is no reason to recommend what is near it.
    pub fn is_positive(self) -> bool {
        !matches!(self, Self::Skip | Self::Dislike)
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(40).collect()
}

/// What an event acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventTarget {
    Item(ItemId),
    User(UserId),
}

/// One reported event, checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserEvent {
    pub id: EventId,
    pub user_id: UserId,
    pub target: EventTarget,
    pub kind: EventKind,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub weight: f32,
    /// The answer the event reacts to, when the caller said.
    pub request_id: Option<EventId>,
    pub scene: Option<Scene>,
}

/// The fields of an event as they come (a request, a JSON record), before checking.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEvent {
    pub user_id: String,
    pub item_id: String,
    pub target_user_id: String,
    pub kind: String,
    pub weight: f32,
    pub timestamp_ms: i64,
    pub request_id: String,
    pub scene: String,
    pub event_id: String,
}

impl UserEvent {
    /// Checks one event. `default_id` names an event that came without an id (a stream gives its record's
    /// position, the gateway a fresh one); `now` is the time "0" means and the future is measured from.
    pub fn parse(
        raw: RawEvent,
        default_id: impl FnOnce() -> String,
        now: i64,
    ) -> Result<Self, ValidationError> {
        let RawEvent {
            user_id,
            item_id,
            target_user_id,
            kind,
            weight,
            timestamp_ms,
            request_id,
            scene,
            event_id,
        } = raw;
        let kind = EventKind::parse("kind", &kind)?;
        let user_id = UserId::parse("user_id", &user_id)?;
        let target = if kind.targets_user() {
            if !item_id.is_empty() {
                return Err(ValidationError::new(
                    "item_id",
                    format!(
                        "must be empty for a {} event (it names target_user_id)",
                        kind.as_str()
                    ),
                ));
            }
            let target = UserId::parse("target_user_id", &target_user_id)?;
            if target == user_id {
                return Err(ValidationError::new(
                    "target_user_id",
                    "is the user themself",
                ));
            }
            EventTarget::User(target)
        } else {
            if !target_user_id.is_empty() {
                return Err(ValidationError::new(
                    "target_user_id",
                    format!(
                        "must be empty for a {} event (it names item_id)",
                        kind.as_str()
                    ),
                ));
            }
            EventTarget::Item(ItemId::parse("item_id", &item_id)?)
        };
        if !weight.is_finite() || weight < 0.0 {
            return Err(ValidationError::new(
                "weight",
                format!("is {weight}, expected a finite number >= 0"),
            ));
        }
        let timestamp_ms = match timestamp_ms {
            0 => now,
            t if t > now + MAX_EVENT_SKEW_MS => {
                return Err(ValidationError::new(
                    "timestamp_ms",
                    format!(
                        "is {} s in the future, the limit is {} s",
                        (t - now) / 1000,
                        MAX_EVENT_SKEW_MS / 1000
                    ),
                ));
            }
            t if t < now - MAX_EVENT_AGE_MS => {
                return Err(ValidationError::new(
                    "timestamp_ms",
                    format!(
                        "is {} days old, the limit is {} days",
                        (now - t) / 86_400_000,
                        MAX_EVENT_AGE_MS / 86_400_000
                    ),
                ));
            }
            t => t,
        };
        Ok(Self {
            id: if event_id.is_empty() {
                EventId::parse("event_id", default_id())?
            } else {
                EventId::parse("event_id", &event_id)?
            },
            user_id,
            target,
            kind,
            timestamp_ms,
            weight: if weight == 0.0 { 1.0 } else { weight },
            request_id: if request_id.is_empty() {
                None
            } else {
                Some(EventId::parse("request_id", &request_id)?)
            },
            scene: if scene.is_empty() {
                None
            } else {
                Some(Scene::parse("scene", &scene)?)
            },
        })
    }

    /// The event as the user's sequence and recent clicks keep it; None for an event on a user.
    pub fn sequence_event(&self) -> Option<Event> {
        let EventTarget::Item(item) = &self.target else {
            return None;
        };
        Some(Event {
            item_id: item.clone(),
            kind: Name::parse("kind", self.kind.as_str()).expect("kind names are valid names"),
            timestamp_ms: self.timestamp_ms,
            weight: self.weight,
            id: Some(self.id.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: &str) -> RawEvent {
        RawEvent {
            user_id: "u1".into(),
            item_id: "i1".into(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn fills_defaults() {
        let e = UserEvent::parse(raw("click"), || "gen-1".into(), NOW).unwrap();
        assert_eq!(e.id.as_str(), "gen-1");
        assert_eq!(e.timestamp_ms, NOW);
        assert_eq!(e.weight, 1.0);
        assert_eq!(
            e.target,
            EventTarget::Item(ItemId::parse("i", "i1").unwrap())
        );
        let s = e.sequence_event().unwrap();
        assert_eq!(s.kind.as_str(), "click");
        assert_eq!(s.id.unwrap().as_str(), "gen-1");
    }

    #[test]
    fn names_what_is_wrong() {
        let field = |r: RawEvent| UserEvent::parse(r, || "g".into(), NOW).unwrap_err().field;
        assert_eq!(field(raw("clack")), "kind");
        assert_eq!(
            field(RawEvent {
                user_id: "".into(),
                ..raw("click")
            }),
            "user_id"
        );
        assert_eq!(
            field(RawEvent {
                item_id: "x".repeat(300),
                ..raw("click")
            }),
            "item_id"
        );
        assert_eq!(
            field(RawEvent {
                timestamp_ms: NOW + 3_600_000,
                ..raw("click")
            }),
            "timestamp_ms"
        );
        assert_eq!(
            field(RawEvent {
                timestamp_ms: 1,
                ..raw("click")
            }),
            "timestamp_ms"
        );
        assert_eq!(
            field(RawEvent {
                weight: f32::NAN,
                ..raw("click")
            }),
            "weight"
        );
        assert_eq!(field(raw("follow")), "item_id");
        assert_eq!(
            field(RawEvent {
                item_id: "".into(),
                target_user_id: "u1".into(),
                ..raw("follow")
            }),
            "target_user_id"
        );
        assert_eq!(
            field(RawEvent {
                target_user_id: "u2".into(),
                ..raw("click")
            }),
            "target_user_id"
        );
        assert_eq!(
            field(RawEvent {
                event_id: "\n".into(),
                ..raw("click")
            }),
            "event_id"
        );
    }

    #[test]
    fn a_follow_is_on_a_user() {
        let r = RawEvent {
            item_id: "".into(),
            target_user_id: "u2".into(),
            ..raw("follow")
        };
        let e = UserEvent::parse(r, || "g".into(), NOW).unwrap();
        assert_eq!(
            e.target,
            EventTarget::User(UserId::parse("u", "u2").unwrap())
        );
        assert!(e.sequence_event().is_none());
    }

    #[test]
    fn json_records_read_the_same_fields() {
        let r: RawEvent =
            serde_json::from_str(r#"{"user_id":"u1","item_id":"i9","kind":"like","weight":2}"#)
                .unwrap();
        let e = UserEvent::parse(r, || "shard-1:42".into(), NOW).unwrap();
        assert_eq!(e.kind, EventKind::Like);
        assert_eq!(e.weight, 2.0);
        assert!(serde_json::from_str::<RawEvent>(r#"{"user":"u1"}"#).is_err());
    }
}
