use std::fmt;

/// An input that is not well-formed: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Path of the offending field, as a caller would write it: `candidates[3].item_id`.
    pub field: String,
    /// What is wrong, in a few words.
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Puts this error under a parent field: `item_id` under `candidates[3]` gives `candidates[3].item_id`.
    pub fn within(mut self, parent: impl fmt::Display) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// Puts this error under element `index` of a list field.
    pub fn at(self, list: &str, index: usize) -> Self {
        self.within(format!("{list}[{index}]"))
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

/// Validates every element of a list, naming the failing one.
pub fn each<T, U>(
    list: &str,
    items: impl IntoIterator<Item = T>,
    f: impl Fn(T) -> Result<U, ValidationError>,
) -> Result<Vec<U>, ValidationError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, x)| f(x).map_err(|e| e.at(list, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_read_like_the_request() {
        let e = ValidationError::new("item_id", "is empty").at("candidates", 3);
        assert_eq!(e.to_string(), "invalid candidates[3].item_id: is empty");
        let e = ValidationError::new("", "is NaN")
            .at("embedding", 2)
            .within("user");
        assert_eq!(e.field, "user.embedding[2]");
    }
}
