//! Users, items, candidates with provenance, behaviour events and filters.

use serde::{Deserialize, Serialize};

use crate::{
    Embedding, EventId, Features, ItemId, MAX_BATCH, MAX_CANDIDATES, MAX_CATEGORIES, Name, UserId,
    ValidationError, error::each,
};

/// One recall source's opinion of a candidate: which source, at which rank (0-based) and with which score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceHit {
    pub source: Name,
    pub rank: u32,
    pub score: f32,
}

impl SourceHit {
    pub fn parse(source: &str, rank: u32, score: f32) -> Result<Self, ValidationError> {
        Ok(Self {
            source: Name::parse("source", source)?,
            rank,
            score: finite_score(score)?,
        })
    }
}

fn finite_score(score: f32) -> Result<f32, ValidationError> {
    if score.is_finite() {
        Ok(score)
    } else {
        Err(ValidationError::new(
            "score",
            format!("is {score}, not a finite number"),
        ))
    }
}

/// An item proposed for a user, with every source that found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub item_id: ItemId,
    pub score: f32,
    pub sources: Vec<SourceHit>,
}

impl Candidate {
    pub fn parse(
        item_id: &str,
        score: f32,
        sources: Vec<SourceHit>,
    ) -> Result<Self, ValidationError> {
        Ok(Self {
            item_id: ItemId::parse("item_id", item_id)?,
            score: finite_score(score)?,
            sources,
        })
    }

    /// A candidate found by one source at `rank` with `score`.
    pub fn from_source(item_id: ItemId, source: &Name, rank: u32, score: f32) -> Self {
        Self {
            item_id,
            score,
            sources: vec![SourceHit {
                source: source.clone(),
                rank,
                score,
            }],
        }
    }
}

/// Checks a list of candidates is not over [`MAX_CANDIDATES`].
pub fn check_candidates(field: &str, n: usize) -> Result<(), ValidationError> {
    if n > MAX_CANDIDATES {
        return Err(ValidationError::new(
            field,
            format!("has {n} candidates, the limit is {MAX_CANDIDATES}"),
        ));
    }
    Ok(())
}

/// Checks a batch is not over [`MAX_BATCH`] and not empty.
pub fn check_batch(field: &str, n: usize) -> Result<(), ValidationError> {
    if n == 0 {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if n > MAX_BATCH {
        return Err(ValidationError::new(
            field,
            format!("has {n} entries, the limit is {MAX_BATCH} per call"),
        ));
    }
    Ok(())
}

/// One behaviour event: a user did `kind` to an item at a time, with a weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub item_id: ItemId,
    pub kind: Name,
    pub timestamp_ms: i64,
    pub weight: f32,
    /// The event's id when its producer gave one: a store that already holds an event with this id does not add
    /// it again.
    #[serde(default)]
    pub id: Option<EventId>,
}

impl Event {
    /// Reads an event from a request: an empty kind is "click", a zero timestamp is now, a zero weight is 1.
    pub fn parse(
        item_id: &str,
        kind: &str,
        timestamp_ms: i64,
        weight: f32,
    ) -> Result<Self, ValidationError> {
        if timestamp_ms < 0 {
            return Err(ValidationError::new("timestamp_ms", "must not be negative"));
        }
        if !weight.is_finite() {
            return Err(ValidationError::new(
                "weight",
                format!("is {weight}, not a finite number"),
            ));
        }
        Ok(Self {
            item_id: ItemId::parse("item_id", item_id)?,
            kind: Name::parse("kind", if kind.is_empty() { "click" } else { kind })?,
            timestamp_ms: if timestamp_ms == 0 {
                crate::now_ms()
            } else {
                timestamp_ms
            },
            weight: if weight == 0.0 { 1.0 } else { weight },
            id: None,
        })
    }

    /// The event with an id.
    pub fn with_id(self, id: Option<EventId>) -> Self {
        Self { id, ..self }
    }
}

/// Appends `new` (oldest first) to a sequence (oldest first) that keeps its last `max_len`, leaving out every event
/// whose id the sequence already holds (or that comes twice in `new`). Returns how many were added. Every feature
/// store appends with it, so a retried or replayed event changes nothing.
pub fn append_unique(
    seq: &mut std::collections::VecDeque<Event>,
    new: Vec<Event>,
    max_len: usize,
) -> usize {
    let mut added = 0;
    for e in new {
        if let Some(id) = &e.id
            && seq.iter().any(|old| old.id.as_ref() == Some(id))
        {
            continue;
        }
        seq.push_back(e);
        added += 1;
    }
    while seq.len() > max_len.max(1) {
        seq.pop_front();
    }
    added
}

/// An item and what is known of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub item_id: ItemId,
    pub categories: Vec<Name>,
    pub features: Features,
    pub embedding: Option<Embedding>,
}

impl Item {
    pub fn parse(
        item_id: &str,
        categories: Vec<String>,
        features: Features,
        embedding: Vec<f32>,
    ) -> Result<Self, ValidationError> {
        if categories.len() > MAX_CATEGORIES {
            return Err(ValidationError::new(
                "categories",
                format!(
                    "has {} entries, the limit is {MAX_CATEGORIES}",
                    categories.len()
                ),
            ));
        }
        Ok(Self {
            item_id: ItemId::parse("item_id", item_id)?,
            categories: each("categories", categories, |c| Name::parse("", c))?,
            features,
            embedding: Embedding::parse_optional("embedding", embedding)?,
        })
    }

    /// The first category, which diversity re-ranking caps on.
    pub fn primary_category(&self) -> Option<&Name> {
        self.categories.first()
    }
}

/// A user and what is known of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub user_id: UserId,
    pub features: Features,
    pub embedding: Option<Embedding>,
}

/// Which items a recall may return.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemFilter {
    pub include_categories: Vec<Name>,
    pub exclude_categories: Vec<Name>,
    pub exclude_item_ids: Vec<ItemId>,
}

impl ItemFilter {
    pub fn parse(
        include_categories: Vec<String>,
        exclude_categories: Vec<String>,
        exclude_item_ids: Vec<String>,
    ) -> Result<Self, ValidationError> {
        if exclude_item_ids.len() > MAX_CANDIDATES {
            return Err(ValidationError::new(
                "exclude_item_ids",
                format!(
                    "has {} entries, the limit is {MAX_CANDIDATES}",
                    exclude_item_ids.len()
                ),
            ));
        }
        Ok(Self {
            include_categories: each("include_categories", include_categories, |c| {
                Name::parse("", c)
            })?,
            exclude_categories: each("exclude_categories", exclude_categories, |c| {
                Name::parse("", c)
            })?,
            exclude_item_ids: each("exclude_item_ids", exclude_item_ids, |c| {
                ItemId::parse("", c)
            })?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.include_categories.is_empty()
            && self.exclude_categories.is_empty()
            && self.exclude_item_ids.is_empty()
    }

    /// Whether an item with these categories passes the category part of the filter.
    pub fn allows_categories<'a>(
        &self,
        categories: impl IntoIterator<Item = &'a Name> + Clone,
    ) -> bool {
        let included = self.include_categories.is_empty()
            || categories
                .clone()
                .into_iter()
                .any(|c| self.include_categories.contains(c));
        included
            && !categories
                .into_iter()
                .any(|c| self.exclude_categories.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_defaults() {
        let e = Event::parse("i1", "", 0, 0.0).unwrap();
        assert_eq!(e.kind.as_str(), "click");
        assert_eq!(e.weight, 1.0);
        assert!(e.timestamp_ms > 0);
        assert_eq!(
            Event::parse("i1", "x", -5, 1.0).unwrap_err().field,
            "timestamp_ms"
        );
    }

    #[test]
    fn item_names_bad_category() {
        let err =
            Item::parse("i1", vec!["a".into(), "".into()], Features::new(), vec![]).unwrap_err();
        assert_eq!(err.field, "categories[1]");
    }

    #[test]
    fn filter_categories() {
        let f = ItemFilter::parse(vec!["rock".into()], vec!["pop".into()], vec![]).unwrap();
        let rock = Name::parse("c", "rock").unwrap();
        let pop = Name::parse("c", "pop").unwrap();
        assert!(f.allows_categories([&rock]));
        assert!(!f.allows_categories([&rock, &pop]));
        assert!(!f.allows_categories([&pop]));
    }
}
