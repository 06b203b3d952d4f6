//! Readers for real interaction data: MovieLens (ml-latest-small and later CSV releases, ml-100k, ml-1m), Last.fm
//! HetRec 2011, and reco's own JSON-lines format for a user's own data ([`jsonl`]).
//!
//! Every row is validated. A malformed row is reported with its file and line number; by default it is skipped
//! and counted, and with `strict` the read fails on the first one. A missing or empty file, or a directory in no
//! known layout, is an error that says which.

pub mod jsonl;
pub mod lastfm;
pub mod movielens;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use crate::Dataset;

/// The formats [`read`] understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Decide from the files present.
    Auto,
    MovieLens,
    LastFm,
    JsonLines,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Format::Auto),
            "movielens" => Ok(Format::MovieLens),
            "lastfm" => Ok(Format::LastFm),
            "jsonl" => Ok(Format::JsonLines),
            other => Err(format!(
                "unknown format {other:?}: expected auto, movielens, lastfm or jsonl"
            )),
        }
    }
}

/// How to read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Fail on the first malformed row instead of skipping it.
    pub strict: bool,
}

/// A row that was not read, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub file: PathBuf,
    /// 1-based, counting the header.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Rejected rows kept as examples in a report; the rest are only counted.
pub const MAX_REJECTED_EXAMPLES: usize = 100;

/// What a read did, file by file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Rows read per file.
    pub read: BTreeMap<PathBuf, usize>,
    /// Rows rejected per file.
    pub rejected_count: BTreeMap<PathBuf, usize>,
    /// The first [`MAX_REJECTED_EXAMPLES`] rejected rows.
    pub rejected: Vec<Rejected>,
}

impl ReadReport {
    pub fn total_read(&self) -> usize {
        self.read.values().sum()
    }

    pub fn total_rejected(&self) -> usize {
        self.rejected_count.values().sum()
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file the format needs is not there.
    #[error("{path}: no such file (the {format} layout needs it)")]
    Missing { path: PathBuf, format: &'static str },
    /// A file has no rows at all.
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    /// A file is not in the expected format (wrong header, wrong separator).
    #[error("{path}: not in the expected format: {reason}")]
    Format { path: PathBuf, reason: String },
    /// The directory matches no known layout.
    #[error(
        "{path}: no known dataset layout (expected MovieLens ratings.csv, u.data or ratings.dat; Last.fm user_artists.dat; or a .jsonl file)"
    )]
    Unknown { path: PathBuf },
    /// A malformed row, in strict mode.
    #[error("{0} (strict mode stops at the first malformed row)")]
    Malformed(Rejected),
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every row was rejected or there were no interactions.
    #[error("{path}: no interactions could be read")]
    NoInteractions { path: PathBuf },
}

/// Reads a dataset at `path` (a directory, or a `.jsonl` file).
pub fn read(
    path: &Path,
    format: Format,
    opts: ReadOptions,
) -> Result<(Dataset, ReadReport), ReadError> {
    let format = match format {
        Format::Auto => detect(path)?,
        f => f,
    };
    let (data, report) = match format {
        Format::MovieLens => movielens::read(path, opts)?,
        Format::LastFm => lastfm::read(path, opts)?,
        Format::JsonLines => jsonl::read(path, opts)?,
        Format::Auto => unreachable!("resolved above"),
    };
    if data.events.is_empty() {
        return Err(ReadError::NoInteractions {
            path: path.to_path_buf(),
        });
    }
    Ok((data, report))
}

/// The format of the data at `path`, from the files present.
pub fn detect(path: &Path) -> Result<Format, ReadError> {
    if path.is_file() {
        return Ok(Format::JsonLines);
    }
    if !path.is_dir() {
        return Err(ReadError::Missing {
            path: path.to_path_buf(),
            format: "any",
        });
    }
    if ["ratings.csv", "u.data", "ratings.dat"]
        .iter()
        .any(|f| path.join(f).is_file())
    {
        Ok(Format::MovieLens)
    } else if path.join("user_artists.dat").is_file() {
        Ok(Format::LastFm)
    } else {
        Err(ReadError::Unknown {
            path: path.to_path_buf(),
        })
    }
}

/// How a text file is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Utf8,
    /// ISO-8859-1: every byte is the code point of the same value.
    Latin1,
}

/// Reads `path` into lines (1-based numbers, CR stripped), failing on a missing or empty file.
pub(crate) fn lines(
    path: &Path,
    format: &'static str,
    encoding: Encoding,
) -> Result<Vec<(usize, String)>, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_path_buf(),
            format,
        },
        _ => ReadError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ReadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let text = match encoding {
        Encoding::Utf8 => String::from_utf8(bytes).map_err(|e| ReadError::Format {
            path: path.to_path_buf(),
            reason: format!("not UTF-8: {e}"),
        })?,
        Encoding::Latin1 => bytes.iter().map(|&b| b as char).collect(),
    };
    Ok(text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l).to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

/// Counts rows and rejections for one file, stopping at the first rejection when strict.
pub(crate) struct Rows<'a> {
    file: PathBuf,
    report: &'a mut ReadReport,
    strict: bool,
}

impl<'a> Rows<'a> {
    pub(crate) fn new(file: &Path, report: &'a mut ReadReport, opts: ReadOptions) -> Self {
        report.read.entry(file.to_path_buf()).or_default();
        report.rejected_count.entry(file.to_path_buf()).or_default();
        Self {
            file: file.to_path_buf(),
            report,
            strict: opts.strict,
        }
    }

    /// Records the outcome of one row.
    pub(crate) fn row(
        &mut self,
        line: usize,
        outcome: Result<(), String>,
    ) -> Result<(), ReadError> {
        match outcome {
            Ok(()) => {
                *self
                    .report
                    .read
                    .get_mut(&self.file)
                    .expect("entry made in new") += 1;
                Ok(())
            }
            Err(reason) => {
                let r = Rejected {
                    file: self.file.clone(),
                    line,
                    reason,
                };
                if self.strict {
                    return Err(ReadError::Malformed(r));
                }
                *self
                    .report
                    .rejected_count
                    .get_mut(&self.file)
                    .expect("entry made in new") += 1;
                if self.report.rejected.len() < MAX_REJECTED_EXAMPLES {
                    self.report.rejected.push(r);
                }
                Ok(())
            }
        }
    }
}

/// Checks the columns of a header row.
pub(crate) fn expect_header(path: &Path, got: &[&str], want: &[&str]) -> Result<(), ReadError> {
    if got.len() < want.len()
        || got
            .iter()
            .zip(want)
            .any(|(g, w)| !g.trim().eq_ignore_ascii_case(w))
    {
        return Err(ReadError::Format {
            path: path.to_path_buf(),
            reason: format!("header is {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}

/// Validates an id field of a row.
pub(crate) fn id(field: &str, s: &str) -> Result<String, String> {
    let s = s.trim();
    reco_types::check_id(field, s, reco_types::MAX_ID_BYTES).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// Parses a number field of a row.
pub(crate) fn num<T: std::str::FromStr>(field: &str, s: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    s.trim()
        .parse()
        .map_err(|e| format!("{field} {s:?} is not a number: {e}"))
}

/// Exactly `n` separated fields, or why not.
pub(crate) fn fields<'l>(line: &'l str, sep: &str, n: usize) -> Result<Vec<&'l str>, String> {
    let f: Vec<&str> = line.split(sep).collect();
    if f.len() != n {
        return Err(format!(
            "expected {n} fields separated by {sep:?}, found {}",
            f.len()
        ));
    }
    Ok(f)
}

/// Orders tags by how often they were given, most first, ties by name.
pub(crate) fn ranked_tags(counts: std::collections::HashMap<String, usize>) -> Vec<String> {
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(t, _)| t).collect()
}
