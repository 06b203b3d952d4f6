//! MovieLens, in its three layouts:
//!
//! - CSV (ml-latest-small, ml-20m, ml-25m, ...): `ratings.csv`, `movies.csv` (quoted titles), optional `tags.csv`;
//! - ml-100k: `u.data` (tab-separated), `u.item` and `u.user` (`|`-separated, latin-1), `u.genre`;
//! - ml-1m: `ratings.dat`, `movies.dat` (latin-1), `users.dat`, `::`-separated.

use std::{collections::HashMap, path::Path};

use super::{
    Encoding, ReadError, ReadOptions, ReadReport, Rows, expect_header, fields, id, lines, num,
    ranked_tags,
};
use crate::{Dataset, DatasetBuilder};

const FORMAT: &str = "MovieLens";

/// Reads whichever MovieLens layout `dir` holds.
pub fn read(dir: &Path, opts: ReadOptions) -> Result<(Dataset, ReadReport), ReadError> {
    if dir.join("ratings.csv").is_file() {
        read_csv(dir, opts)
    } else if dir.join("u.data").is_file() {
        read_100k(dir, opts)
    } else if dir.join("ratings.dat").is_file() {
        read_1m(dir, opts)
    } else {
        Err(ReadError::Missing {
            path: dir.join("ratings.csv"),
            format: FORMAT,
        })
    }
}

fn rating(s: &str) -> Result<f32, String> {
    let r: f32 = num("rating", s)?;
    if !(0.5..=5.0).contains(&r) {
        return Err(format!("rating {r} is outside 0.5..=5"));
    }
    Ok(r)
}

fn seconds(s: &str) -> Result<i64, String> {
    let t: i64 = num("timestamp", s)?;
    if t < 0 {
        return Err(format!("timestamp {t} is negative"));
    }
    Ok(t.saturating_mul(1000))
}

fn genres(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|g| !g.is_empty() && *g != "(no genres listed)")
        .map(String::from)
        .collect()
}

/// Opens a CSV file with a header, failing clearly on a missing or empty one.
fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, ReadError> {
    let file = std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
            format: FORMAT,
        },
        _ => ReadError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
        return Err(ReadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file))
}

/// Runs `row` on every record of a CSV file whose header must be `header`.
fn each_csv(
    path: &Path,
    header: &[&str],
    report: &mut ReadReport,
    opts: ReadOptions,
    mut row: impl FnMut(&csv::StringRecord) -> Result<(), String>,
) -> Result<(), ReadError> {
    let mut reader = csv_reader(path)?;
    let got: Vec<String> = reader
        .headers()
        .map_err(|e| ReadError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .iter()
        .map(String::from)
        .collect();
    expect_header(
        path,
        &got.iter().map(String::as_str).collect::<Vec<_>>(),
        header,
    )?;
    let mut rows = Rows::new(path, report, opts);
    let mut any = false;
    for (n, record) in reader.records().enumerate() {
        any = true;
        // The csv crate knows the real line (quoted fields may span lines); fall back to the record count.
        let (line, outcome) = match record {
            Ok(r) => {
                let line = r.position().map_or(n + 2, |p| p.line() as usize);
                let outcome = if r.len() != header.len() {
                    Err(format!(
                        "expected {} fields, found {}",
                        header.len(),
                        r.len()
                    ))
                } else {
                    row(&r)
                };
                (line, outcome)
            }
            Err(e) => (
                e.position().map_or(n + 2, |p| p.line() as usize),
                Err(e.to_string()),
            ),
        };
        rows.row(line, outcome)?;
    }
    if !any {
        return Err(ReadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn read_csv(dir: &Path, opts: ReadOptions) -> Result<(Dataset, ReadReport), ReadError> {
    let mut report = ReadReport::default();
    let mut b = DatasetBuilder::new(&format!("movielens({})", dir.display()));

    each_csv(
        &dir.join("movies.csv"),
        &["movieId", "title", "genres"],
        &mut report,
        opts,
        |r| {
            let movie = id("movieId", &r[0])?;
            if b.has_item(&movie) {
                return Err(format!("movie {movie} is listed twice"));
            }
            let i = b.item(&movie);
            b.data.items[i].title = Some(r[1].to_string());
            b.data.items[i].categories = genres(&r[2]);
            Ok(())
        },
    )?;

    each_csv(
        &dir.join("ratings.csv"),
        &["userId", "movieId", "rating", "timestamp"],
        &mut report,
        opts,
        |r| {
            let (user, movie) = (id("userId", &r[0])?, id("movieId", &r[1])?);
            let (weight, timestamp_ms) = (rating(&r[2])?, seconds(&r[3])?);
            b.interaction(&user, &movie, weight, timestamp_ms);
            Ok(())
        },
    )?;

    let tags_path = dir.join("tags.csv");
    if tags_path.is_file() {
        let mut counts: HashMap<usize, HashMap<String, usize>> = HashMap::new();
        each_csv(
            &tags_path,
            &["userId", "movieId", "tag", "timestamp"],
            &mut report,
            opts,
            |r| {
                id("userId", &r[0])?;
                let movie = id("movieId", &r[1])?;
                seconds(&r[3])?;
                let tag = r[2].trim().to_lowercase();
                if tag.is_empty() || tag.len() > reco_types::MAX_NAME_BYTES {
                    return Err(format!(
                        "tag {tag:?} is empty or longer than {} bytes",
                        reco_types::MAX_NAME_BYTES
                    ));
                }
                *counts
                    .entry(b.item(&movie))
                    .or_default()
                    .entry(tag)
                    .or_default() += 1;
                Ok(())
            },
        )?;
        for (item, c) in counts {
            b.data.items[item].tags = ranked_tags(c);
        }
    }
    Ok((b.finish(), report))
}

fn read_100k(dir: &Path, opts: ReadOptions) -> Result<(Dataset, ReadReport), ReadError> {
    let mut report = ReadReport::default();
    let mut b = DatasetBuilder::new(&format!("movielens-100k({})", dir.display()));

    // u.genre: "name|index"
    let genre_path = dir.join("u.genre");
    let mut genre_names: Vec<String> = Vec::new();
    {
        let mut rows = Rows::new(&genre_path, &mut report, opts);
        for (line, text) in lines(&genre_path, FORMAT, Encoding::Latin1)? {
            rows.row(
                line,
                fields(&text, "|", 2).and_then(|f| {
                    let idx: usize = num("genre index", f[1])?;
                    if genre_names.len() <= idx {
                        genre_names.resize(idx + 1, String::new());
                    }
                    genre_names[idx] = f[0].to_string();
                    Ok(())
                }),
            )?;
        }
    }

    // u.item: id|title|release|video release|url|flag * genres
    let item_path = dir.join("u.item");
    let mut rows = Rows::new(&item_path, &mut report, opts);
    for (line, text) in lines(&item_path, FORMAT, Encoding::Latin1)? {
        let outcome = (|| {
            let f: Vec<&str> = text.split('|').collect();
            if f.len() != 5 + genre_names.len() {
                return Err(format!(
                    "expected {} fields separated by \"|\", found {}",
                    5 + genre_names.len(),
                    f.len()
                ));
            }
            let i = b.item(&id("movie id", f[0])?);
            b.data.items[i].title = Some(f[1].to_string());
            b.data.items[i].categories = f[5..]
                .iter()
                .zip(&genre_names)
                .filter(|(flag, name)| flag.trim() == "1" && name.as_str() != "unknown")
                .map(|(_, name)| name.clone())
                .collect();
            Ok(())
        })();
        rows.row(line, outcome)?;
    }

    // u.user: id|age|gender|occupation|zip
    let user_path = dir.join("u.user");
    let mut rows = Rows::new(&user_path, &mut report, opts);
    for (line, text) in lines(&user_path, FORMAT, Encoding::Latin1)? {
        let outcome = fields(&text, "|", 5).and_then(|f| {
            let age: u32 = num("age", f[1])?;
            let u = b.user(&id("user id", f[0])?);
            let rec = &mut b.data.users[u];
            rec.age = Some(age);
            rec.gender = Some(f[2].to_string());
            rec.occupation = Some(f[3].to_string());
            rec.location = Some(f[4].to_string());
            Ok(())
        });
        rows.row(line, outcome)?;
    }

    // u.data: user \t item \t rating \t timestamp
    let data_path = dir.join("u.data");
    let mut rows = Rows::new(&data_path, &mut report, opts);
    for (line, text) in lines(&data_path, FORMAT, Encoding::Latin1)? {
        let outcome = fields(&text, "\t", 4).and_then(|f| {
            let (user, movie) = (id("user id", f[0])?, id("item id", f[1])?);
            let (weight, timestamp_ms) = (rating(f[2])?, seconds(f[3])?);
            b.interaction(&user, &movie, weight, timestamp_ms);
            Ok(())
        });
        rows.row(line, outcome)?;
    }
    Ok((b.finish(), report))
}

fn read_1m(dir: &Path, opts: ReadOptions) -> Result<(Dataset, ReadReport), ReadError> {
    let mut report = ReadReport::default();
    let mut b = DatasetBuilder::new(&format!("movielens-1m({})", dir.display()));

    let movies = dir.join("movies.dat");
    let mut rows = Rows::new(&movies, &mut report, opts);
    for (line, text) in lines(&movies, FORMAT, Encoding::Latin1)? {
        let outcome = fields(&text, "::", 3).and_then(|f| {
            let i = b.item(&id("MovieID", f[0])?);
            b.data.items[i].title = Some(f[1].to_string());
            b.data.items[i].categories = genres(f[2]);
            Ok(())
        });
        rows.row(line, outcome)?;
    }

    let users = dir.join("users.dat");
    if users.is_file() {
        let mut rows = Rows::new(&users, &mut report, opts);
        for (line, text) in lines(&users, FORMAT, Encoding::Latin1)? {
            let outcome = fields(&text, "::", 5).and_then(|f| {
                let age: u32 = num("Age", f[2])?;
                let u = b.user(&id("UserID", f[0])?);
                let rec = &mut b.data.users[u];
                rec.gender = Some(f[1].to_string());
                rec.age = Some(age);
                rec.occupation = Some(f[3].to_string());
                rec.location = Some(f[4].to_string());
                Ok(())
            });
            rows.row(line, outcome)?;
        }
    }

    let ratings = dir.join("ratings.dat");
    let mut rows = Rows::new(&ratings, &mut report, opts);
    for (line, text) in lines(&ratings, FORMAT, Encoding::Latin1)? {
        let outcome = fields(&text, "::", 4).and_then(|f| {
            let (user, movie) = (id("UserID", f[0])?, id("MovieID", f[1])?);
            let (weight, timestamp_ms) = (rating(f[2])?, seconds(f[3])?);
            b.interaction(&user, &movie, weight, timestamp_ms);
            Ok(())
        });
        rows.row(line, outcome)?;
    }
    Ok((b.finish(), report))
}
