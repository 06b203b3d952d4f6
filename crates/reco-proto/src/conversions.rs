//! Proto <-> domain conversions. `TryFrom<proto>` validates and names the failing field; every proto message is
//! destructured in full, so a field added to a proto breaks the build here until it is handled.

use reco_types as domain;
use reco_types::ValidationError;
pub use reco_types::each;

use crate::common::v1 as pb;

impl TryFrom<pb::FeatureValue> for domain::FeatureValue {
    type Error = ValidationError;

    fn try_from(v: pb::FeatureValue) -> Result<Self, ValidationError> {
        use pb::feature_value::Kind;
        let pb::FeatureValue { kind } = v;
        let value = match kind {
            None => return Err(ValidationError::new("", "has no value set")),
            Some(Kind::IntValue(i)) => domain::FeatureValue::Int(i),
            Some(Kind::FloatValue(f)) => domain::FeatureValue::Float(f),
            Some(Kind::StringValue(s)) => domain::FeatureValue::Str(s),
            Some(Kind::BoolValue(b)) => domain::FeatureValue::Bool(b),
            Some(Kind::FloatList(pb::FloatList { values })) => {
                domain::FeatureValue::FloatList(values)
            }
            Some(Kind::StringList(pb::StringList { values })) => {
                domain::FeatureValue::StringList(values)
            }
        };
        value.validate()?;
        Ok(value)
    }
}

impl From<domain::FeatureValue> for pb::FeatureValue {
    fn from(v: domain::FeatureValue) -> Self {
        use pb::feature_value::Kind;
        let kind = match v {
            domain::FeatureValue::Int(i) => Kind::IntValue(i),
            domain::FeatureValue::Float(f) => Kind::FloatValue(f),
            domain::FeatureValue::Str(s) => Kind::StringValue(s),
            domain::FeatureValue::Bool(b) => Kind::BoolValue(b),
            domain::FeatureValue::FloatList(values) => Kind::FloatList(pb::FloatList { values }),
            domain::FeatureValue::StringList(values) => Kind::StringList(pb::StringList { values }),
        };
        pb::FeatureValue { kind: Some(kind) }
    }
}

impl TryFrom<pb::Features> for domain::Features {
    type Error = ValidationError;

    fn try_from(f: pb::Features) -> Result<Self, ValidationError> {
        let pb::Features { values } = f;
        let mut converted = Vec::with_capacity(values.len());
        for (name, value) in values {
            let value = domain::FeatureValue::try_from(value)
                .map_err(|e| e.within(format!("values[{name:.64}]")))?;
            converted.push((name, value));
        }
        domain::Features::try_from_iter(converted)
    }
}

impl From<domain::Features> for pb::Features {
    fn from(f: domain::Features) -> Self {
        pb::Features {
            values: f.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }
    }
}

/// Reads optional features: an absent message is an empty bag.
pub fn features(field: &str, f: Option<pb::Features>) -> Result<domain::Features, ValidationError> {
    f.map(domain::Features::try_from)
        .transpose()
        .map_err(|e| e.within(field))
        .map(Option::unwrap_or_default)
}

impl TryFrom<pb::SourceHit> for domain::SourceHit {
    type Error = ValidationError;

    fn try_from(h: pb::SourceHit) -> Result<Self, ValidationError> {
        let pb::SourceHit {
            source,
            rank,
            score,
        } = h;
        domain::SourceHit::parse(&source, rank, score)
    }
}

impl From<domain::SourceHit> for pb::SourceHit {
    fn from(h: domain::SourceHit) -> Self {
        pb::SourceHit {
            source: h.source.into(),
            rank: h.rank,
            score: h.score,
        }
    }
}

impl TryFrom<pb::Candidate> for domain::Candidate {
    type Error = ValidationError;

    fn try_from(c: pb::Candidate) -> Result<Self, ValidationError> {
        let pb::Candidate {
            item_id,
            score,
            sources,
        } = c;
        let sources = each("sources", sources, domain::SourceHit::try_from)?;
        domain::Candidate::parse(&item_id, score, sources)
    }
}

impl From<domain::Candidate> for pb::Candidate {
    fn from(c: domain::Candidate) -> Self {
        pb::Candidate {
            item_id: c.item_id.into(),
            score: c.score,
            sources: c.sources.into_iter().map(Into::into).collect(),
        }
    }
}

/// Reads a candidate list, bounded by [`domain::MAX_CANDIDATES`].
pub fn candidates(
    field: &str,
    list: Vec<pb::Candidate>,
) -> Result<Vec<domain::Candidate>, ValidationError> {
    domain::check_candidates(field, list.len())?;
    each(field, list, domain::Candidate::try_from)
}

impl TryFrom<pb::Event> for domain::Event {
    type Error = ValidationError;

    fn try_from(e: pb::Event) -> Result<Self, ValidationError> {
        let pb::Event {
            item_id,
            kind,
            timestamp_ms,
            weight,
            event_id,
        } = e;
        let id = if event_id.is_empty() {
            None
        } else {
            Some(domain::EventId::parse("event_id", &event_id)?)
        };
        Ok(domain::Event::parse(&item_id, &kind, timestamp_ms, weight)?.with_id(id))
    }
}

impl From<domain::Event> for pb::Event {
    fn from(e: domain::Event) -> Self {
        pb::Event {
            item_id: e.item_id.into(),
            kind: e.kind.into(),
            timestamp_ms: e.timestamp_ms,
            weight: e.weight,
            event_id: e.id.map(String::from).unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ItemFilter> for domain::ItemFilter {
    type Error = ValidationError;

    fn try_from(f: pb::ItemFilter) -> Result<Self, ValidationError> {
        let pb::ItemFilter {
            include_categories,
            exclude_categories,
            exclude_item_ids,
        } = f;
        domain::ItemFilter::parse(include_categories, exclude_categories, exclude_item_ids)
    }
}

impl From<domain::ItemFilter> for pb::ItemFilter {
    fn from(f: domain::ItemFilter) -> Self {
        pb::ItemFilter {
            include_categories: f.include_categories.into_iter().map(Into::into).collect(),
            exclude_categories: f.exclude_categories.into_iter().map(Into::into).collect(),
            exclude_item_ids: f.exclude_item_ids.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<crate::feature::v1::Item> for domain::Item {
    type Error = ValidationError;

    fn try_from(i: crate::feature::v1::Item) -> Result<Self, ValidationError> {
        let crate::feature::v1::Item {
            item_id,
            categories,
            features: f,
            embedding,
        } = i;
        domain::Item::parse(&item_id, categories, features("features", f)?, embedding)
    }
}

impl From<domain::Item> for crate::feature::v1::Item {
    fn from(i: domain::Item) -> Self {
        crate::feature::v1::Item {
            item_id: i.item_id.into(),
            categories: i.categories.into_iter().map(Into::into).collect(),
            features: Some(i.features.into()),
            embedding: i.embedding.map(Into::into).unwrap_or_default(),
        }
    }
}

impl TryFrom<crate::feature::v1::User> for domain::User {
    type Error = ValidationError;

    fn try_from(u: crate::feature::v1::User) -> Result<Self, ValidationError> {
        let crate::feature::v1::User {
            user_id,
            features: f,
            embedding,
        } = u;
        Ok(domain::User {
            user_id: domain::UserId::parse("user_id", &user_id)?,
            features: features("features", f)?,
            embedding: domain::Embedding::parse_optional("embedding", embedding)?,
        })
    }
}

impl From<domain::User> for crate::feature::v1::User {
    fn from(u: domain::User) -> Self {
        crate::feature::v1::User {
            user_id: u.user_id.into(),
            features: Some(u.features.into()),
            embedding: u.embedding.map(Into::into).unwrap_or_default(),
        }
    }
}

impl From<domain::StageStatus> for crate::gateway::v1::StageStatus {
    fn from(s: domain::StageStatus) -> Self {
        use crate::gateway::v1::StageStatus as P;
        match s {
            domain::StageStatus::Ok => P::Ok,
            domain::StageStatus::Timeout => P::Timeout,
            domain::StageStatus::Error => P::Error,
            domain::StageStatus::Skipped => P::Skipped,
            domain::StageStatus::Cached => P::Cached,
        }
    }
}

impl From<domain::StageReport> for crate::gateway::v1::StageReport {
    fn from(r: domain::StageReport) -> Self {
        crate::gateway::v1::StageReport {
            stage: r.stage,
            status: crate::gateway::v1::StageStatus::from(r.status) as i32,
            budget_us: r.budget.as_micros() as u64,
            elapsed_us: r.elapsed.as_micros() as u64,
            candidates_in: r.candidates_in,
            candidates_out: r.candidates_out,
            detail: r.detail,
        }
    }
}

/// Reads a list of ids of one kind.
pub fn ids<T>(
    list: &str,
    ids: Vec<String>,
    parse: fn(&str, &str) -> Result<T, ValidationError>,
) -> Result<Vec<T>, ValidationError> {
    each(list, ids, |s| parse("", &s))
}

/// An event as RecordEvents takes it: the same fields as a stream's JSON record, before checking.
impl From<crate::gateway::v1::UserEvent> for domain::RawEvent {
    fn from(e: crate::gateway::v1::UserEvent) -> Self {
        let crate::gateway::v1::UserEvent {
            user_id,
            item_id,
            target_user_id,
            kind,
            weight,
            timestamp_ms,
            request_id,
            scene,
            event_id,
        } = e;
        Self {
            user_id,
            item_id,
            target_user_id,
            kind,
            weight,
            timestamp_ms,
            request_id,
            scene,
            event_id,
        }
    }
}

impl From<domain::RawEvent> for crate::gateway::v1::UserEvent {
    fn from(e: domain::RawEvent) -> Self {
        let domain::RawEvent {
            user_id,
            item_id,
            target_user_id,
            kind,
            weight,
            timestamp_ms,
            request_id,
            scene,
            event_id,
        } = e;
        Self {
            user_id,
            item_id,
            target_user_id,
            kind,
            weight,
            timestamp_ms,
            request_id,
            scene,
            event_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_errors_name_the_nested_field() {
        let bad = vec![
            pb::Candidate {
                item_id: "ok".into(),
                score: 1.0,
                sources: vec![],
            },
            pb::Candidate {
                item_id: "x".into(),
                score: 1.0,
                sources: vec![pb::SourceHit {
                    source: "".into(),
                    rank: 0,
                    score: 0.0,
                }],
            },
        ];
        let err = candidates("candidates", bad).unwrap_err();
        assert_eq!(err.field, "candidates[1].sources[0].source");
    }

    #[test]
    fn feature_value_round_trip() {
        let v = domain::FeatureValue::StringList(vec!["a".into()]);
        let p: pb::FeatureValue = v.clone().into();
        assert_eq!(domain::FeatureValue::try_from(p).unwrap(), v);
        let err = domain::Features::try_from(pb::Features {
            values: [("x".to_string(), pb::FeatureValue { kind: None })].into(),
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "invalid values[x]: has no value set");
    }
}
