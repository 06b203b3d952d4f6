//! reco's format for a user's own data: JSON lines, one object per line, kind given by `"type"`.
//!
//! ```text
//! {"type": "user",   "id": "u1", "age": 31, "gender": "f", "occupation": "nurse", "location": "fr"}
//! {"type": "item",   "id": "i1", "title": "Heat", "categories": ["crime"], "tags": ["heist", "la"]}
//! {"type": "event",  "user": "u1", "item": "i1", "weight": 4.5, "timestamp_ms": 1700000000000}
//! {"type": "follow", "user": "u1", "followee": "u2"}
//! ```
//!
//! Only `id`, `user`, `item` and `followee` are required; `weight` defaults to 1 and `timestamp_ms` to 0 (no time).
//! Users and items an event names need no line of their own. Unknown fields are errors (a typo is not silently
//! dropped). Blank lines are skipped.

use std::path::Path;

use serde::Deserialize;

use super::{Encoding, ReadError, ReadOptions, ReadReport, Rows, id, lines};
use crate::{Dataset, DatasetBuilder};

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    User {
        id: String,
        age: Option<u32>,
        gender: Option<String>,
        occupation: Option<String>,
        location: Option<String>,
    },
    Item {
        id: String,
        title: Option<String>,
        #[serde(default)]
        categories: Vec<String>,
        #[serde(default)]
        tags: Vec<String>,
    },
    Event {
        user: String,
        item: String,
        weight: Option<f32>,
        timestamp_ms: Option<i64>,
    },
    Follow {
        user: String,
        followee: String,
    },
}

fn name(field: &str, s: &str) -> Result<String, String> {
    reco_types::Name::parse(field, s)
        .map(String::from)
        .map_err(|e| e.to_string())
}

/// Reads the JSON-lines file at `path`.
pub fn read(path: &Path, opts: ReadOptions) -> Result<(Dataset, ReadReport), ReadError> {
    let mut report = ReadReport::default();
    let mut b = DatasetBuilder::new(&format!("jsonl({})", path.display()));
    let mut rows = Rows::new(path, &mut report, opts);
    for (line, text) in lines(path, "JSON lines", Encoding::Utf8)? {
        if text.trim().is_empty() {
            continue;
        }
        let outcome = serde_json::from_str::<Line>(&text)
            .map_err(|e| format!("not a reco JSON line: {e}"))
            .and_then(|l| match l {
                Line::User {
                    id: u,
                    age,
                    gender,
                    occupation,
                    location,
                } => {
                    let i = b.user(&id("id", &u)?);
                    let rec = &mut b.data.users[i];
                    (rec.age, rec.gender, rec.occupation, rec.location) =
                        (age, gender, occupation, location);
                    Ok(())
                }
                Line::Item {
                    id: item,
                    title,
                    categories,
                    tags,
                } => {
                    let categories = categories
                        .iter()
                        .map(|c| name("categories", c))
                        .collect::<Result<_, _>>()?;
                    let tags = tags
                        .iter()
                        .map(|t| name("tags", t))
                        .collect::<Result<_, _>>()?;
                    let i = b.item(&id("id", &item)?);
                    let rec = &mut b.data.items[i];
                    (rec.title, rec.categories, rec.tags) = (title, categories, tags);
                    Ok(())
                }
                Line::Event {
                    user,
                    item,
                    weight,
                    timestamp_ms,
                } => {
                    let weight = weight.unwrap_or(1.0);
                    if !weight.is_finite() || weight <= 0.0 {
                        return Err(format!("weight {weight} must be a positive number"));
                    }
                    let timestamp_ms = timestamp_ms.unwrap_or(0);
                    if timestamp_ms < 0 {
                        return Err(format!("timestamp_ms {timestamp_ms} is negative"));
                    }
                    let (user, item) = (id("user", &user)?, id("item", &item)?);
                    b.interaction(&user, &item, weight, timestamp_ms);
                    Ok(())
                }
                Line::Follow { user, followee } => {
                    let (a, c) = (id("user", &user)?, id("followee", &followee)?);
                    let (a, c) = (b.user(&a), b.user(&c));
                    b.data.follows.push((a, c));
                    Ok(())
                }
            });
        rows.row(line, outcome)?;
    }
    Ok((b.finish(), report))
}
