//! Last.fm HetRec 2011 (hetrec2011-lastfm-2k): tab-separated with a header row; CRLF line ends except
//! artists.dat; tags.dat latin-1. Listens have play counts but no time: an artist's listen takes the time of the
//! user's first tag on it when there is one (day precision), else 0. Friends are listed in both directions.
//! Artist ids missing from artists.dat are tolerated (the item has no title).

use std::{collections::HashMap, path::Path};

use super::{
    Encoding, ReadError, ReadOptions, ReadReport, Rows, expect_header, fields, id, lines, num,
    ranked_tags,
};
use crate::{Dataset, DatasetBuilder};

const FORMAT: &str = "Last.fm HetRec 2011";

/// Categories an artist gets: its most used tags.
const CATEGORIES_FROM_TAGS: usize = 3;

/// Play counts onto the 1 to 5 scale ratings use: 1 play is 1, 10 is 2, 10,000 and more is 5.
pub fn plays_to_weight(plays: u64) -> f32 {
    (1.0 + (plays.max(1) as f64).log10()).min(5.0) as f32
}

/// Days since the epoch of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads the lines of a tab-separated file after checking its header.
fn table(
    path: &Path,
    header: &[&str],
    encoding: Encoding,
) -> Result<Vec<(usize, String)>, ReadError> {
    let mut all = lines(path, FORMAT, encoding)?;
    let (_, first) = all.remove(0);
    expect_header(path, &first.split('\t').collect::<Vec<_>>(), header)?;
    if all.is_empty() {
        return Err(ReadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(all)
}

/// Reads the dataset in `dir`.
pub fn read(dir: &Path, opts: ReadOptions) -> Result<(Dataset, ReadReport), ReadError> {
    let mut report = ReadReport::default();
    let mut b = DatasetBuilder::new(&format!("lastfm({})", dir.display()));

    let artists = dir.join("artists.dat");
    let mut rows = Rows::new(&artists, &mut report, opts);
    for (line, text) in table(
        &artists,
        &["id", "name", "url", "pictureURL"],
        Encoding::Utf8,
    )? {
        // Some rows lack the picture URL.
        let f: Vec<&str> = text.split('\t').collect();
        let outcome = if f.len() < 2 || f.len() > 4 {
            Err(format!(
                "expected 3 or 4 tab-separated fields, found {}",
                f.len()
            ))
        } else {
            id("id", f[0]).map(|a| {
                let i = b.item(&a);
                b.data.items[i].title = Some(f[1].to_string());
            })
        };
        rows.row(line, outcome)?;
    }

    let tags_path = dir.join("tags.dat");
    let mut tag_names: HashMap<String, String> = HashMap::new();
    let mut rows = Rows::new(&tags_path, &mut report, opts);
    for (line, text) in table(&tags_path, &["tagID", "tagValue"], Encoding::Latin1)? {
        let outcome = fields(&text, "\t", 2).and_then(|f| {
            let tag = f[1].trim().to_lowercase();
            if tag.is_empty() || tag.len() > reco_types::MAX_NAME_BYTES {
                return Err(format!(
                    "tag {tag:?} is empty or longer than {} bytes",
                    reco_types::MAX_NAME_BYTES
                ));
            }
            tag_names.insert(id("tagID", f[0])?, tag);
            Ok(())
        });
        rows.row(line, outcome)?;
    }

    // Tag assignments: item tags, and the first time each user tagged each artist.
    let tagged = dir.join("user_taggedartists.dat");
    let mut first_tagged: HashMap<(String, String), i64> = HashMap::new();
    let mut tag_counts: HashMap<String, HashMap<String, usize>> = HashMap::new();
    let mut rows = Rows::new(&tagged, &mut report, opts);
    let header = ["userID", "artistID", "tagID", "day", "month", "year"];
    for (line, text) in table(&tagged, &header, Encoding::Utf8)? {
        let outcome = fields(&text, "\t", 6).and_then(|f| {
            let (user, artist, tag) = (
                id("userID", f[0])?,
                id("artistID", f[1])?,
                id("tagID", f[2])?,
            );
            let (d, m, y): (i64, i64, i64) =
                (num("day", f[3])?, num("month", f[4])?, num("year", f[5])?);
            if !(1..=31).contains(&d) || !(1..=12).contains(&m) || !(1900..=2100).contains(&y) {
                return Err(format!("date {y}-{m}-{d} is not a date"));
            }
            let tag = tag_names
                .get(&tag)
                .ok_or_else(|| format!("tagID {tag} is not in tags.dat"))?;
            let ms = days_from_civil(y, m, d) * 86_400_000;
            let t = first_tagged.entry((user, artist.clone())).or_insert(ms);
            *t = (*t).min(ms);
            *tag_counts
                .entry(artist)
                .or_default()
                .entry(tag.clone())
                .or_default() += 1;
            Ok(())
        });
        rows.row(line, outcome)?;
    }
    for (artist, counts) in tag_counts {
        let i = b.item(&artist);
        let tags = ranked_tags(counts);
        b.data.items[i].categories = tags.iter().take(CATEGORIES_FROM_TAGS).cloned().collect();
        b.data.items[i].tags = tags;
    }

    let listens = dir.join("user_artists.dat");
    let mut rows = Rows::new(&listens, &mut report, opts);
    for (line, text) in table(&listens, &["userID", "artistID", "weight"], Encoding::Utf8)? {
        let outcome = fields(&text, "\t", 3).and_then(|f| {
            let (user, artist) = (id("userID", f[0])?, id("artistID", f[1])?);
            let plays: u64 = num("weight", f[2])?;
            if plays == 0 {
                return Err("weight (play count) is 0".into());
            }
            let timestamp_ms = first_tagged
                .get(&(user.clone(), artist.clone()))
                .copied()
                .unwrap_or(0);
            b.interaction(&user, &artist, plays_to_weight(plays), timestamp_ms);
            Ok(())
        });
        rows.row(line, outcome)?;
    }

    let friends = dir.join("user_friends.dat");
    let mut rows = Rows::new(&friends, &mut report, opts);
    for (line, text) in table(&friends, &["userID", "friendID"], Encoding::Utf8)? {
        let outcome = fields(&text, "\t", 2).and_then(|f| {
            let (a, c) = (id("userID", f[0])?, id("friendID", f[1])?);
            let (a, c) = (b.user(&a), b.user(&c));
            b.data.follows.push((a, c));
            Ok(())
        });
        rows.row(line, outcome)?;
    }
    Ok((b.finish(), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_play_weights() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2009, 4, 1), 14_335);
        assert_eq!(plays_to_weight(1), 1.0);
        assert_eq!(plays_to_weight(10), 2.0);
        assert_eq!(plays_to_weight(1_000_000), 5.0);
    }
}
