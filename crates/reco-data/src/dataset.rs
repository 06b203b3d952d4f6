//! The in-memory form of interaction data, whatever it was read from: users, items, interactions and follows,
//! with string ids interned to indexes.

use std::collections::HashMap;

/// A user and what a dataset says of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub age: Option<u32>,
    pub gender: Option<String>,
    pub occupation: Option<String>,
    /// Country, zip code or region, as the dataset gives it.
    pub location: Option<String>,
}

/// An item and what a dataset says of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemRecord {
    pub id: String,
    pub title: Option<String>,
    /// Genres or editorial categories; the first is the primary one.
    pub categories: Vec<String>,
    /// Free-form tags, most used first.
    pub tags: Vec<String>,
}

/// One user acting on one item.
#[derive(Clone, Debug, PartialEq)]
pub struct Interaction {
    pub user: usize,
    pub item: usize,
    /// Strength: a rating (0.5 to 5), or a play count mapped onto 1 to 5.
    pub weight: f32,
    /// Milliseconds since the epoch; 0 when the dataset has no time.
    pub timestamp_ms: i64,
}

/// A whole dataset.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub name: String,
    pub users: Vec<UserRecord>,
    pub items: Vec<ItemRecord>,
    /// In time order (ties in input order).
    pub events: Vec<Interaction>,
    /// (follower, followee), each direction listed once.
    pub follows: Vec<(usize, usize)>,
}

/// Builds a [`Dataset`], interning ids as they come.
#[derive(Default)]
pub struct DatasetBuilder {
    pub data: Dataset,
    users: HashMap<String, usize>,
    items: HashMap<String, usize>,
}

impl DatasetBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            data: Dataset {
                name: name.to_string(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The index of user `id`, added if new.
    pub fn user(&mut self, id: &str) -> usize {
        if let Some(&i) = self.users.get(id) {
            return i;
        }
        let i = self.data.users.len();
        self.data.users.push(UserRecord {
            id: id.to_string(),
            ..Default::default()
        });
        self.users.insert(id.to_string(), i);
        i
    }

    /// The index of item `id`, added if new.
    pub fn item(&mut self, id: &str) -> usize {
        if let Some(&i) = self.items.get(id) {
            return i;
        }
        let i = self.data.items.len();
        self.data.items.push(ItemRecord {
            id: id.to_string(),
            ..Default::default()
        });
        self.items.insert(id.to_string(), i);
        i
    }

    /// Records that user `user` acted on item `item` (both added if new).
    pub fn interaction(&mut self, user: &str, item: &str, weight: f32, timestamp_ms: i64) {
        let (user, item) = (self.user(user), self.item(item));
        self.data.events.push(Interaction {
            user,
            item,
            weight,
            timestamp_ms,
        });
    }

    pub fn has_user(&self, id: &str) -> bool {
        self.users.contains_key(id)
    }

    pub fn has_item(&self, id: &str) -> bool {
        self.items.contains_key(id)
    }

    /// The dataset, events sorted by time (stable, so ties keep input order) and follows deduplicated.
    pub fn finish(mut self) -> Dataset {
        self.data.events.sort_by_key(|e| e.timestamp_ms);
        let mut seen = std::collections::HashSet::new();
        self.data.follows.retain(|f| f.0 != f.1 && seen.insert(*f));
        self.data
    }
}
