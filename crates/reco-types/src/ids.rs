//! Identifiers. All are cheap to clone (`Arc<str>`) because they are copied into many candidate lists per request.

use std::{fmt, sync::Arc};

use crate::{MAX_ID_BYTES, MAX_NAME_BYTES, ValidationError};

/// Checks the rules every identifier shares: not empty, at most `max` bytes, no control characters. For opaque
/// keys (session ids, rate-limit keys) that have no type of their own.
pub fn check_id(field: &str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes long, the limit is {max}", s.len()),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!("contains the control character {:?}", c),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`, reporting an error against `field`.
            pub fn parse(field: &str, s: impl AsRef<str>) -> Result<Self, ValidationError> {
                let s = s.as_ref();
                check_id(field, s, $max)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, ValidationError> {
                Self::parse($field, s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValidationError;
            fn try_from(s: &str) -> Result<Self, ValidationError> {
                Self::parse($field, s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}

id_type!(
    /// A user: 1 to 256 bytes, no control characters.
    UserId, "user_id", MAX_ID_BYTES
);
id_type!(
    /// An item: 1 to 256 bytes, no control characters.
    ItemId, "item_id", MAX_ID_BYTES
);
id_type!(
    /// A short name: feature, category, recall source, event kind, rate-limit key part. 1 to 128 bytes.
    Name, "name", MAX_NAME_BYTES
);
id_type!(
    /// A behaviour event, as its producer names it: 1 to 256 bytes. Two events with one id are one event (a
    /// retry, a replay of a stream), applied once.
    EventId, "event_id", MAX_ID_BYTES
);
id_type!(
    /// A feature-set version ("v20261126", "exp-b"). 1 to 128 bytes.
    FeatureVersion, "feature_version", MAX_NAME_BYTES
);

/// The surface that asks for recommendations. Empty in a request means [`Scene::default`].
#[derive(Clone, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Scene(Name);

impl Scene {
    /// Reads a scene from a request, where the empty string means the default scene.
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() {
            Ok(Self::default())
        } else {
            Name::parse(field, s).map(Scene)
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for Scene {
    fn default() -> Self {
        Scene(Name(Arc::from("default")))
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_empty_long_and_control_characters() {
        assert_eq!(
            UserId::try_from("").unwrap_err().to_string(),
            "invalid user_id: must not be empty"
        );
        let long = "x".repeat(10 * 1024);
        let err = UserId::try_from(long.as_str()).unwrap_err();
        assert_eq!(err.field, "user_id");
        assert!(err.reason.contains("10240 bytes"), "{err}");
        assert!(
            ItemId::try_from("a\nb")
                .unwrap_err()
                .reason
                .contains("control")
        );
        assert_eq!(UserId::try_from("u-1").unwrap().as_str(), "u-1");
        // Quotes, spaces and non-ASCII are fine: ids are opaque.
        assert!(UserId::try_from("o'brien \"x\" MATCH (n) 名前").is_ok());
        assert!(UserId::try_from("x".repeat(MAX_ID_BYTES).as_str()).is_ok());
    }

    #[test]
    fn empty_scene_is_default() {
        assert_eq!(Scene::parse("scene", "").unwrap().as_str(), "default");
        assert_eq!(Scene::parse("scene", "home").unwrap().as_str(), "home");
    }

    #[test]
    fn ids_round_trip_through_serde_and_validate() {
        let id: ItemId = serde_json::from_str("\"i9\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"i9\"");
        assert!(serde_json::from_str::<ItemId>("\"\"").is_err());
    }
}
