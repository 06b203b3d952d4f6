//! Schema-free features and dense embeddings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    MAX_DIMENSION, MAX_FEATURES, MAX_LIST_LEN, MAX_NAME_BYTES, MAX_STRING_VALUE_BYTES, Name,
    ValidationError,
};

/// One feature value. Floats are finite; strings and lists are bounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureValue {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    FloatList(Vec<f32>),
    StringList(Vec<String>),
}

impl FeatureValue {
    /// Checks bounds and finiteness; `field` names the value in errors.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            FeatureValue::Int(_) | FeatureValue::Bool(_) => Ok(()),
            FeatureValue::Float(f) if !f.is_finite() => Err(ValidationError::new(
                "",
                format!("is {f}, not a finite number"),
            )),
            FeatureValue::Float(_) => Ok(()),
            FeatureValue::Str(s) => check_str(s),
            FeatureValue::FloatList(v) => {
                check_len(v.len())?;
                finite("", v)
            }
            FeatureValue::StringList(v) => {
                check_len(v.len())?;
                for (i, s) in v.iter().enumerate() {
                    check_str(s).map_err(|e| e.at("", i))?;
                }
                Ok(())
            }
        }
    }

    /// The value as a number, where it has one: ints, floats and bools (1 or 0).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FeatureValue::Int(i) => Some(*i as f64),
            FeatureValue::Float(f) => Some(*f),
            FeatureValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            FeatureValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_string_list(&self) -> Option<&[String]> {
        match self {
            FeatureValue::StringList(v) => Some(v),
            _ => None,
        }
    }
}

fn check_str(s: &str) -> Result<(), ValidationError> {
    if s.len() > MAX_STRING_VALUE_BYTES {
        return Err(ValidationError::new(
            "",
            format!(
                "is {} bytes long, the limit is {MAX_STRING_VALUE_BYTES}",
                s.len()
            ),
        ));
    }
    Ok(())
}

fn check_len(n: usize) -> Result<(), ValidationError> {
    if n > MAX_LIST_LEN {
        return Err(ValidationError::new(
            "",
            format!("has {n} elements, the limit is {MAX_LIST_LEN}"),
        ));
    }
    Ok(())
}

/// Fails on the first NaN or infinite value, naming its index.
pub(crate) fn finite(field: &str, v: &[f32]) -> Result<(), ValidationError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(ValidationError::new(
            format!("{field}[{i}]"),
            format!("is {}, not a finite number", v[i]),
        )),
        None => Ok(()),
    }
}

/// A bag of named features, sorted by name. At most [`MAX_FEATURES`] of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Features(BTreeMap<String, FeatureValue>);

impl Features {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a validated bag: names are short non-empty strings, values are well-formed.
    pub fn try_from_iter(
        values: impl IntoIterator<Item = (String, FeatureValue)>,
    ) -> Result<Self, ValidationError> {
        let mut map = BTreeMap::new();
        for (name, value) in values {
            Name::parse("", &name)
                .map_err(|e| ValidationError::new(format!("values[{name:.32}]"), e.reason))?;
            value
                .validate()
                .map_err(|e| e.within(format!("values[{name}]")))?;
            map.insert(name, value);
            if map.len() > MAX_FEATURES {
                return Err(ValidationError::new(
                    "values",
                    format!("has more than {MAX_FEATURES} features"),
                ));
            }
        }
        Ok(Self(map))
    }

    /// Sets one feature. Only for values built in-process, which are valid by construction; `name` must be a
    /// valid feature name.
    pub fn insert(&mut self, name: impl Into<String>, value: FeatureValue) {
        let name = name.into();
        debug_assert!(!name.is_empty() && name.len() <= MAX_NAME_BYTES);
        debug_assert!(value.validate().is_ok());
        self.0.insert(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&FeatureValue> {
        self.0.get(name)
    }

    pub fn number(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(FeatureValue::as_f64)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &FeatureValue)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Overwrites this bag's fields with `other`'s, keeping fields `other` does not have.
    pub fn merge(&mut self, other: Features) {
        self.0.extend(other.0);
    }
}

impl IntoIterator for Features {
    type Item = (String, FeatureValue);
    type IntoIter = std::collections::btree_map::IntoIter<String, FeatureValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A dense vector: 1 to [`MAX_DIMENSION`] finite values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f32>", into = "Vec<f32>")]
pub struct Embedding(Vec<f32>);

impl Embedding {
    pub fn parse(field: &str, v: Vec<f32>) -> Result<Self, ValidationError> {
        if v.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if v.len() > MAX_DIMENSION {
            return Err(ValidationError::new(
                field,
                format!("has {} dimensions, the limit is {MAX_DIMENSION}", v.len()),
            ));
        }
        finite(field, &v)?;
        Ok(Self(v))
    }

    /// Reads an optional embedding from a request, where an empty list means none.
    pub fn parse_optional(field: &str, v: Vec<f32>) -> Result<Option<Self>, ValidationError> {
        if v.is_empty() {
            Ok(None)
        } else {
            Self::parse(field, v).map(Some)
        }
    }

    /// Checks the dimension a store or index expects.
    pub fn expect_dimension(&self, field: &str, dimension: usize) -> Result<(), ValidationError> {
        if self.0.len() != dimension {
            return Err(ValidationError::new(
                field,
                format!("has {} dimensions, expected {dimension}", self.0.len()),
            ));
        }
        Ok(())
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn dimension(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }

    pub fn dot(&self, other: &Embedding) -> f32 {
        dot(&self.0, &other.0)
    }

    pub fn norm(&self) -> f32 {
        dot(&self.0, &self.0).sqrt()
    }

    /// Cosine similarity; 0 when either vector is zero.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        let n = self.norm() * other.norm();
        if n == 0.0 { 0.0 } else { self.dot(other) / n }
    }

    /// The element-wise mean of several embeddings of one dimension; None when there are none or they differ.
    pub fn mean<'a>(items: impl IntoIterator<Item = &'a Embedding>) -> Option<Embedding> {
        let mut it = items.into_iter();
        let first = it.next()?;
        let mut sum = first.0.clone();
        let mut n = 1.0f32;
        for e in it {
            if e.0.len() != sum.len() {
                return None;
            }
            sum.iter_mut().zip(&e.0).for_each(|(s, x)| *s += x);
            n += 1.0;
        }
        sum.iter_mut().for_each(|s| *s /= n);
        Some(Embedding(sum))
    }
}

impl TryFrom<Vec<f32>> for Embedding {
    type Error = ValidationError;
    fn try_from(v: Vec<f32>) -> Result<Self, ValidationError> {
        Self::parse("embedding", v)
    }
}

impl From<Embedding> for Vec<f32> {
    fn from(e: Embedding) -> Vec<f32> {
        e.0
    }
}

/// Dot product of two equal-length slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_reject_nan_infinite_and_empty() {
        let e = Embedding::parse("vector", vec![1.0, f32::NAN]).unwrap_err();
        assert_eq!(e.field, "vector[1]");
        assert!(Embedding::parse("vector", vec![f32::INFINITY]).is_err());
        assert!(Embedding::parse("vector", vec![]).is_err());
        let ok = Embedding::parse("vector", vec![3.0, 4.0]).unwrap();
        assert_eq!(ok.norm(), 5.0);
        assert!(
            ok.expect_dimension("vector", 3)
                .unwrap_err()
                .reason
                .contains("expected 3")
        );
    }

    #[test]
    fn features_validate_names_and_values() {
        let err = Features::try_from_iter([("".to_string(), FeatureValue::Int(1))]).unwrap_err();
        assert!(err.reason.contains("empty"), "{err}");
        let err = Features::try_from_iter([("age".to_string(), FeatureValue::Float(f64::NAN))])
            .unwrap_err();
        assert_eq!(err.field, "values[age]");
        let f = Features::try_from_iter([("age".to_string(), FeatureValue::Int(30))]).unwrap();
        assert_eq!(f.number("age"), Some(30.0));
    }

    #[test]
    fn mean_of_embeddings() {
        let a = Embedding::parse("a", vec![1.0, 0.0]).unwrap();
        let b = Embedding::parse("b", vec![0.0, 1.0]).unwrap();
        assert_eq!(Embedding::mean([&a, &b]).unwrap().as_slice(), &[0.5, 0.5]);
        assert!(Embedding::mean(std::iter::empty()).is_none());
    }
}
