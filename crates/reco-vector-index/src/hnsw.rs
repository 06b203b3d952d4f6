//! Approximate k-NN on an HNSW graph from `usearch` (its C++ core through cxx).
//!
//! Why usearch: measured against hnsw_rs and instant-distance on our 64-d embeddings (README of this crate's bench,
//! BENCHMARKS.md), it answered ~4x the queries per second of hnsw_rs at equal recall and built ~4x faster, has a
//! true inner-product metric (hnsw_rs's dot-product distance asserts normalised input and panics on rounding), and
//! brings what serving needs: removal, predicate-filtered search, save and load.
//!
//! ```text
//!   key (u64, never reused) ──▶ usearch graph (vectors, M links per node)
//!   key ──▶ Meta { item id, categories }          item id ──▶ live key
//! ```
//!
//! A replaced item gets a new key (the old one is removed from the graph), so a search never sees a half-written
//! node. Filters: a selective one (few items pass) is answered exactly over the items that pass, since a graph walk
//! would visit most of the graph to find k of them; any other runs usearch's filtered search, which keeps walking
//! until k items pass.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use parking_lot::RwLock;
use reco_types::{Embedding, ItemFilter, ItemId, Name};
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::{Hit, IndexStats, IndexedItem, Metric, Result, VectorIndex, VectorIndexError};

/// How the graph stores vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// Full precision.
    F32,
    /// IEEE half precision: half the memory of f32; components must stay within ±65,504.
    F16,
    /// bfloat16: half the memory, with f32's range (8 bits of mantissa against f16's 11). The fastest at equal
    /// recall on our 64-d data (BENCHMARKS.md): CPUs with AVX-512 BF16 take its dot products in one instruction
    /// per 32 components, where f16 is converted first.
    #[default]
    BF16,
    /// One byte per component, scaled from the unit vector (cosine only: inner-product vectors are not bounded).
    I8,
}

/// Graph parameters (docs/architecture.md: m = 16, ef_construction = 256, as the OpenSearch index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Links per node.
    pub m: usize,
    /// Candidates kept while inserting.
    pub ef_construction: usize,
    /// Candidates kept while searching (at least k).
    pub ef_search: usize,
    /// How vectors are stored.
    pub precision: Precision,
    /// With a precision below f32: also keep each vector in f32 (4 bytes a component more), and re-score the
    /// graph's `ef_search` candidates with it before taking the top k, so the answer's order and scores are
    /// exact. Off by default: on our data it leaves recall at a given ef where it was (the walk's candidate list
    /// limits recall, not the order within it) and costs a random read per candidate (BENCHMARKS.md).
    #[serde(default)]
    pub rescore: bool,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 256,
            ef_search: 128,
            precision: Precision::default(),
            rescore: false,
        }
    }
}

/// The largest component an f16 holds.
const F16_MAX: f32 = 65_504.0;

/// Batches at least this large are inserted from several threads.
const PARALLEL_FROM: usize = 256;

/// A filter that fewer items than this pass is answered by exact search over them.
const EXACT_BELOW: usize = 2_000;

#[derive(Clone, Serialize, Deserialize)]
struct Meta {
    id: ItemId,
    categories: Vec<Name>,
}

struct Inner {
    /// Declared before `sealed`, so a view is dropped before the memory it reads.
    index: Index,
    /// The memory `index` views once sealed ([`HnswIndex::seal`]); None while usearch owns the graph's memory.
    sealed: Option<memmap2::Mmap>,
    /// By key; None once removed.
    meta: Vec<Option<Meta>>,
    /// Every key's vector in f32, `dimension` components from `key * dimension` (a removed key's stay until a
    /// rebuild), when the graph's precision is below f32 and re-scoring is on; empty otherwise.
    full: Vec<f32>,
    key_of: HashMap<ItemId, u64>,
    per_category: HashMap<Name, usize>,
    version: u64,
}

/// What is saved beside usearch's own file.
#[derive(Serialize, Deserialize)]
struct Saved {
    dimension: usize,
    metric: String,
    params: HnswParams,
    meta: Vec<Option<Meta>>,
    version: u64,
}

/// An HNSW index (usearch). Searches share a read lock; writes take the write lock.
pub struct HnswIndex {
    dimension: usize,
    metric: Metric,
    params: HnswParams,
    inner: RwLock<Inner>,
}

fn backend(what: &str, e: impl std::fmt::Display) -> VectorIndexError {
    VectorIndexError::Backend(format!("hnsw {what}: {e}"))
}

fn options(dimension: usize, metric: Metric, p: HnswParams) -> IndexOptions {
    IndexOptions {
        dimensions: dimension,
        metric: match metric {
            Metric::Cosine => MetricKind::Cos,
            Metric::InnerProduct => MetricKind::IP,
        },
        quantization: match p.precision {
            Precision::F32 => ScalarKind::F32,
            Precision::F16 => ScalarKind::F16,
            Precision::BF16 => ScalarKind::BF16,
            Precision::I8 => ScalarKind::I8,
        },
        connectivity: p.m,
        expansion_add: p.ef_construction,
        expansion_search: p.ef_search,
        multi: false,
    }
}

/// Threads that may search or insert at once (usearch keeps a context per thread).
fn threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get()) * 4 + 16
}

/// An empty usearch index, ready for every search thread.
fn empty_index(dimension: usize, metric: Metric, params: HnswParams) -> Result<Index> {
    let index =
        Index::new(&options(dimension, metric, params)).map_err(|e| backend("create", e))?;
    index
        .reserve_capacity_and_threads(1024, threads())
        .map_err(|e| backend("reserve", e))?;
    Ok(index)
}

impl HnswIndex {
    pub fn new(dimension: usize, metric: Metric, params: HnswParams) -> Result<Self> {
        if params.precision == Precision::I8 && metric != Metric::Cosine {
            return Err(VectorIndexError::Backend(
                "hnsw: i8 precision scales unit vectors and needs the cosine metric".into(),
            ));
        }
        let index = empty_index(dimension, metric, params)?;
        Ok(Self {
            dimension,
            metric,
            params,
            inner: RwLock::new(Inner {
                index,
                sealed: None,
                meta: Vec::new(),
                full: Vec::new(),
                key_of: HashMap::new(),
                per_category: HashMap::new(),
                version: 0,
            }),
        })
    }

    /// Changes how many candidates a search keeps (recall against speed). Taken under the write lock, so no
    /// search is under way while the setting changes.
    pub fn set_ef_search(&self, ef: usize) {
        self.inner.write().index.change_expansion_search(ef.max(1));
    }

    fn files(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("index.usearch"), dir.join("index.meta.json"))
    }

    /// The f32 copies of the vectors (see [`HnswParams::rescore`]): little-endian, by key.
    fn full_file(dir: &Path) -> PathBuf {
        dir.join("index.vectors.f32")
    }

    /// Whether f32 copies are kept for re-scoring.
    fn keeps_full(params: &HnswParams) -> bool {
        params.rescore && params.precision != Precision::F32
    }

    /// Writes the index into `dir` (created if missing): each file to a temporary name, then renamed, so a crash
    /// mid-save leaves the previous save whole.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| backend("save", e))?;
        let (graph, meta) = Self::files(dir);
        let inner = self.inner.read();
        let tmp_graph = dir.join("index.usearch.tmp");
        inner
            .index
            .save(
                tmp_graph
                    .to_str()
                    .ok_or_else(|| backend("save", "path is not UTF-8"))?,
            )
            .map_err(|e| backend("save", e))?;
        if Self::keeps_full(&self.params) {
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| backend("save", e))?;
            let mut out = std::io::BufWriter::new(tmp.as_file_mut());
            for x in &inner.full {
                std::io::Write::write_all(&mut out, &x.to_le_bytes())
                    .map_err(|e| backend("save", e))?;
            }
            std::io::Write::flush(&mut out).map_err(|e| backend("save", e))?;
            drop(out);
            tmp.as_file().sync_all().map_err(|e| backend("save", e))?;
            tmp.persist(Self::full_file(dir))
                .map_err(|e| backend("save", e))?;
        }
        let saved = Saved {
            dimension: self.dimension,
            metric: self.metric.as_str().to_string(),
            params: self.params,
            meta: inner.meta.clone(),
            version: inner.version,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| backend("save", e))?;
        serde_json::to_writer(std::io::BufWriter::new(tmp.as_file_mut()), &saved)
            .map_err(|e| backend("save", e))?;
        tmp.as_file().sync_all().map_err(|e| backend("save", e))?;
        std::fs::rename(&tmp_graph, &graph).map_err(|e| backend("save", e))?;
        tmp.persist(&meta).map_err(|e| backend("save", e))?;
        Ok(())
    }

    /// Loads what [`HnswIndex::save`] wrote, or None when `dir` holds no saved index. A save of another dimension
    /// or metric is an error, not a silent mismatch.
    pub fn load(dir: &Path, dimension: usize, metric: Metric) -> Result<Option<Self>> {
        let (graph, meta) = Self::files(dir);
        if !graph.exists() || !meta.exists() {
            return Ok(None);
        }
        let file = std::fs::File::open(&meta).map_err(|e| backend("load", e))?;
        let saved: Saved = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| backend("load", format!("{}: {e}", meta.display())))?;
        if saved.dimension != dimension || saved.metric != metric.as_str() {
            return Err(backend(
                "load",
                format!(
                    "{} holds a {}-dimensional {} index, the service is configured for {dimension} dimensions, {}",
                    dir.display(),
                    saved.dimension,
                    saved.metric,
                    metric.as_str()
                ),
            ));
        }
        let index = Index::new(&options(dimension, metric, saved.params))
            .map_err(|e| backend("load", e))?;
        index
            .load(
                graph
                    .to_str()
                    .ok_or_else(|| backend("load", "path is not UTF-8"))?,
            )
            .map_err(|e| backend("load", e))?;
        index
            .reserve_capacity_and_threads(index.size().max(1024), threads())
            .map_err(|e| backend("reserve", e))?;
        let mut key_of = HashMap::new();
        let mut per_category: HashMap<Name, usize> = HashMap::new();
        for (key, m) in saved.meta.iter().enumerate() {
            if let Some(m) = m {
                key_of.insert(m.id.clone(), key as u64);
                for c in &m.categories {
                    *per_category.entry(c.clone()).or_default() += 1;
                }
            }
        }
        if key_of.len() != index.size() {
            return Err(backend(
                "load",
                format!(
                    "{} lists {} items but its graph holds {}",
                    dir.display(),
                    key_of.len(),
                    index.size()
                ),
            ));
        }
        let full = if Self::keeps_full(&saved.params) {
            Self::load_full(dir, &index, saved.meta.len(), dimension)?
        } else {
            Vec::new()
        };
        let loaded = Self {
            dimension,
            metric,
            params: saved.params,
            inner: RwLock::new(Inner {
                index,
                sealed: None,
                full,
                meta: saved.meta,
                key_of,
                per_category,
                version: saved.version,
            }),
        };
        loaded.seal()?;
        Ok(Some(loaded))
    }

    /// The f32 copies saved beside the graph; when they are missing or do not match the graph's keys (a save from
    /// before re-scoring, or cut short), the graph's own vectors stand in for them.
    fn load_full(dir: &Path, index: &Index, keys: usize, dimension: usize) -> Result<Vec<f32>> {
        if let Ok(bytes) = std::fs::read(Self::full_file(dir))
            && bytes.len() == keys * dimension * 4
        {
            return Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
        let mut full = vec![0f32; keys * dimension];
        for (key, v) in full.chunks_exact_mut(dimension.max(1)).enumerate() {
            // A removed key is not in the graph any more: its slot stays zero and is never read.
            let _ = index.get(key as u64, v);
        }
        Ok(full)
    }

    /// A fresh graph of the live items: after many replacements and removals a graph carries dead links, and a
    /// rebuild restores its recall. Runs while this index keeps serving (it only reads).
    pub fn rebuilt(&self) -> Result<Self> {
        let fresh = Self::new(self.dimension, self.metric, self.params)?;
        let inner = self.inner.read();
        let mut items = Vec::with_capacity(inner.key_of.len());
        let mut buf = vec![0f32; self.dimension];
        for (key, m) in inner.meta.iter().enumerate() {
            let Some(m) = m else { continue };
            let v = inner.vector(key as u64, self.dimension, &mut buf)?;
            items.push(IndexedItem {
                item_id: m.id.clone(),
                vector: Embedding::parse("vector", v.to_vec()).map_err(|e| backend("read", e))?,
                categories: m.categories.clone(),
            });
        }
        drop(inner);
        fresh.insert(items)?;
        fresh.seal()?;
        Ok(fresh)
    }

    /// Moves the graph (vectors and links) into one block of anonymous memory that the kernel is asked to back
    /// with 2 MB pages, and serves it from there. A search reads a few thousand vectors and link lists at random
    /// places, and over 4 KB pages many of them also miss the TLB (the ann bench measures the sealed graph against
    /// the same graph unsealed: BENCHMARKS.md). Called when an index starts serving: on activation, after a
    /// background rebuild and after a load. usearch can only read a graph held in memory it does not own, so the
    /// next write first copies the graph back into usearch's own memory ([`HnswIndex::unseal`]); the next
    /// activation or rebuild seals it again.
    #[allow(unsafe_code)]
    pub fn seal(&self) -> Result<()> {
        let mut inner = self.inner.write();
        if inner.sealed.is_some() || inner.index.size() == 0 {
            return Ok(());
        }
        let mut block = memmap2::MmapOptions::new()
            .len(inner.index.serialized_length())
            .map_anon()
            .map_err(|e| backend("seal", e))?;
        // Before the first touch, so the pages are huge from the start. Best effort: a kernel with transparent
        // huge pages off refuses, and the block works the same on 4 KB pages.
        #[cfg(target_os = "linux")]
        let _ = block.advise(memmap2::Advice::HugePage);
        inner
            .index
            .save_to_buffer(&mut block)
            .map_err(|e| backend("seal", e))?;
        let block = block.make_read_only().map_err(|e| backend("seal", e))?;
        let index = self.empty_like(&inner.index)?;
        // SAFETY: `block` lives in `inner.sealed` for as long as `index` views it: the two are replaced together,
        // and `Inner` drops `index` first.
        unsafe { index.view_from_buffer(&block) }.map_err(|e| backend("seal", e))?;
        inner.index = index;
        inner.sealed = Some(block);
        Ok(())
    }

    /// Copies a sealed graph back into usearch's own memory, so it can be written again.
    fn unseal(&self, inner: &mut Inner) -> Result<()> {
        let Some(block) = &inner.sealed else {
            return Ok(());
        };
        let index = self.empty_like(&inner.index)?;
        index
            .load_from_buffer(block)
            .map_err(|e| backend("unseal", e))?;
        index
            .reserve_capacity_and_threads(index.size().max(1024), threads())
            .map_err(|e| backend("reserve", e))?;
        inner.index = index;
        inner.sealed = None;
        Ok(())
    }

    /// An empty usearch index with this one's options and `like`'s search width.
    fn empty_like(&self, like: &Index) -> Result<Index> {
        let params = HnswParams {
            ef_search: like.expansion_search(),
            ..self.params
        };
        empty_index(self.dimension, self.metric, params)
    }

    fn check(&self, field: &str, v: &Embedding) -> Result<()> {
        crate::check_dimension(field, v, self.dimension)?;
        if self.params.precision == Precision::F16
            && let Some(x) = v.as_slice().iter().find(|x| x.abs() > F16_MAX)
        {
            return Err(VectorIndexError::Range {
                field: field.to_string(),
                value: *x,
                limit: F16_MAX,
            });
        }
        Ok(())
    }

    /// How many items at most pass the filter's category part (None: no category filter).
    fn passing_at_most(inner: &Inner, filter: &ItemFilter) -> Option<usize> {
        (!filter.include_categories.is_empty()).then(|| {
            filter
                .include_categories
                .iter()
                .map(|c| inner.per_category.get(c).copied().unwrap_or(0))
                .sum()
        })
    }

    fn insert(&self, items: Vec<IndexedItem>) -> Result<usize> {
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        self.unseal(inner)?;
        let needed = inner.index.size() + items.len();
        if needed > inner.index.capacity() {
            inner
                .index
                .reserve_capacity_and_threads(needed.max(inner.index.capacity() * 2), threads())
                .map_err(|e| backend("reserve", e))?;
        }
        // All or nothing: the new vectors go in under new keys first; only once every one is in do the items
        // point at them (and replaced ones leave). A failure takes the new keys out again, and the index is as it
        // was. No search sees the steps: they run under the write lock.
        let n = items.len();
        let first = inner.meta.len();
        let mut vectors: Vec<(u64, Embedding)> = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let keep = Self::keeps_full(&self.params);
        for item in items {
            let key = inner.meta.len() as u64;
            if keep {
                inner.full.extend_from_slice(item.vector.as_slice());
            }
            inner.meta.push(Some(Meta {
                id: item.item_id.clone(),
                categories: item.categories,
            }));
            ids.push(item.item_id);
            vectors.push((key, item.vector));
        }
        if let Err(e) = Self::add_all(&inner.index, &vectors) {
            for (key, _) in &vectors {
                let _ = inner.index.remove(*key);
            }
            inner.meta.truncate(first);
            if keep {
                inner.full.truncate(first * self.dimension);
            }
            return Err(e);
        }
        for (id, (key, _)) in ids.into_iter().zip(&vectors) {
            if let Some(old) = inner.key_of.insert(id, *key) {
                inner.index.remove(old).map_err(|e| backend("remove", e))?;
                if let Some(m) = inner.meta[old as usize].take() {
                    forget(&mut inner.per_category, &m.categories);
                }
            }
            if let Some(m) = &inner.meta[*key as usize] {
                for c in &m.categories {
                    *inner.per_category.entry(c.clone()).or_default() += 1;
                }
            }
        }
        inner.version += 1;
        Ok(n)
    }

    /// Adds the vectors to the graph: graph insertion is the cost of a load, and usearch inserts from several
    /// threads at once, so a large batch is spread over the cores.
    fn add_all(index: &Index, vectors: &[(u64, Embedding)]) -> Result<()> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let add = |part: &[(u64, Embedding)]| -> Result<()> {
            for (key, v) in part {
                index
                    .add(*key, v.as_slice())
                    .map_err(|e| backend("add", e))?;
            }
            Ok(())
        };
        if workers > 1 && vectors.len() >= PARALLEL_FROM {
            std::thread::scope(|s| {
                let parts: Vec<_> = vectors
                    .chunks(vectors.len().div_ceil(workers))
                    .map(|part| s.spawn(move || add(part)))
                    .collect();
                parts.into_iter().try_for_each(|p| {
                    p.join()
                        .map_err(|_| backend("add", "an insert thread panicked"))?
                })
            })
        } else {
            add(vectors)
        }
    }
}

impl HnswIndex {
    /// The exact score against `q` of each key, from its f32 copy when one is kept.
    fn exact_scores(
        &self,
        inner: &Inner,
        q: &[f32],
        keys: impl Iterator<Item = u64>,
    ) -> Result<Vec<(f32, u64)>> {
        let cosine = self.metric == Metric::Cosine;
        let qn = if cosine {
            reco_types::dot(q, q).sqrt().max(f32::MIN_POSITIVE)
        } else {
            1.0
        };
        let mut buf = vec![0f32; self.dimension];
        keys.map(|key| {
            let v = inner.vector(key, self.dimension, &mut buf)?;
            let s = reco_types::dot(q, v);
            let s = if cosine {
                s / (qn * reco_types::dot(v, v).sqrt().max(f32::MIN_POSITIVE))
            } else {
                s
            };
            Ok((s, key))
        })
        .collect()
    }
}

impl Inner {
    /// A key's vector: its f32 copy when one is kept, else read back from the graph into `buf`.
    fn vector<'a>(&'a self, key: u64, dimension: usize, buf: &'a mut [f32]) -> Result<&'a [f32]> {
        let at = key as usize * dimension;
        if let Some(v) = self.full.get(at..at + dimension) {
            return Ok(v);
        }
        self.index.get(key, buf).map_err(|e| backend("read", e))?;
        Ok(buf)
    }
}

fn forget(per_category: &mut HashMap<Name, usize>, categories: &[Name]) {
    for c in categories {
        if let Some(n) = per_category.get_mut(c) {
            *n -= 1;
            if *n == 0 {
                per_category.remove(c);
            }
        }
    }
}

/// Whether the item at `key` passes the filter; `excluded` holds the keys of the filter's excluded ids, sorted.
fn passes(key: u64, m: &Meta, filter: &ItemFilter, excluded: &[u64]) -> bool {
    excluded.binary_search(&key).is_err() && filter.allows_categories(&m.categories)
}

#[async_trait]
impl VectorIndex for HnswIndex {
    async fn search(&self, query: &Embedding, k: usize, filter: &ItemFilter) -> Result<Vec<Hit>> {
        self.check("vector", query)?;
        let inner = self.inner.read();
        if inner.key_of.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let q = query.as_slice();
        // The excluded ids as index keys, looked up once per query: the walk then tests a key against a short
        // sorted list instead of comparing an item's id with every excluded id at each node it visits.
        let mut excluded: Vec<u64> = filter
            .exclude_item_ids
            .iter()
            .filter_map(|id| inner.key_of.get(id).copied())
            .collect();
        excluded.sort_unstable();
        excluded.dedup();
        let by_category =
            !filter.include_categories.is_empty() || !filter.exclude_categories.is_empty();
        let hit = |key: u64, score: f32| {
            inner.meta[key as usize].as_ref().map(|m| Hit {
                item_id: m.id.clone(),
                score,
            })
        };
        let best_k = |mut scored: Vec<(f32, u64)>| {
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.truncate(k);
            scored
                .into_iter()
                .filter_map(|(s, key)| hit(key, s))
                .collect::<Vec<_>>()
        };
        if Self::passing_at_most(&inner, filter).is_some_and(|n| n < EXACT_BELOW) {
            // Few pass: score exactly every item that does.
            let passing = inner.meta.iter().enumerate().filter_map(|(key, m)| {
                m.as_ref()
                    .is_some_and(|m| passes(key as u64, m, filter, &excluded))
                    .then_some(key as u64)
            });
            return Ok(best_k(self.exact_scores(&inner, q, passing)?));
        }
        // With f32 copies kept, the whole candidate list of the walk (ef_search long) is re-scored exactly and
        // the best k kept; usearch widens the walk to the count asked for when that is over ef_search.
        let rescore = !inner.full.is_empty();
        let count = if rescore {
            k.max(inner.index.expansion_search())
        } else {
            k
        };
        let mut found = if by_category {
            inner.index.filtered_search(q, count, |key| {
                inner
                    .meta
                    .get(key as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|m| passes(key, m, filter, &excluded))
            })
        } else {
            // Only ids excluded (a user's recent items): a plain walk for as many more as are excluded, and the
            // excluded dropped after. The walk is the one an unfiltered query takes, with no call per node visited.
            inner.index.search(q, count + excluded.len())
        }
        .map_err(|e| backend("search", e))?;
        if !by_category && !excluded.is_empty() {
            (found.keys, found.distances) = found
                .keys
                .iter()
                .zip(&found.distances)
                .filter(|(k, _)| excluded.binary_search(k).is_err())
                .take(count)
                .map(|(&k, &d)| (k, d))
                .unzip();
        }
        if rescore {
            let scored = self.exact_scores(&inner, q, found.keys.iter().copied())?;
            return Ok(best_k(scored));
        }
        Ok(found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(&key, &d)| hit(key, 1.0 - d))
            .collect())
    }

    async fn vectors(&self, items: &[ItemId]) -> Result<Vec<Embedding>> {
        let inner = self.inner.read();
        let mut buf = vec![0f32; self.dimension];
        let mut out = Vec::new();
        for id in items {
            let Some(&key) = inner.key_of.get(id) else {
                continue;
            };
            let v = inner.vector(key, self.dimension, &mut buf)?;
            out.push(Embedding::parse("vector", v.to_vec()).map_err(|e| backend("read", e))?);
        }
        Ok(out)
    }

    async fn upsert(&self, items: Vec<IndexedItem>) -> Result<usize> {
        for (i, item) in items.iter().enumerate() {
            self.check(&format!("items[{i}].vector"), &item.vector)?;
        }
        self.insert(items)
    }

    async fn delete(&self, items: &[ItemId]) -> Result<usize> {
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        self.unseal(inner)?;
        let mut deleted = 0;
        for id in items {
            let Some(key) = inner.key_of.remove(id) else {
                continue;
            };
            inner.index.remove(key).map_err(|e| backend("remove", e))?;
            if let Some(m) = inner.meta[key as usize].take() {
                forget(&mut inner.per_category, &m.categories);
            }
            deleted += 1;
        }
        inner.version += 1;
        Ok(deleted)
    }

    async fn stats(&self) -> Result<IndexStats> {
        let inner = self.inner.read();
        Ok(IndexStats {
            count: inner.key_of.len() as u64,
            dimension: self.dimension,
            metric: self.metric,
            version: format!("hnsw-{}", inner.version),
        })
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn backend(&self) -> &'static str {
        "hnsw"
    }

    fn save(&self, dir: &Path) -> Result<bool> {
        HnswIndex::save(self, dir).map(|()| true)
    }

    fn rebuilt(&self) -> Result<Option<std::sync::Arc<dyn VectorIndex>>> {
        Ok(Some(std::sync::Arc::new(HnswIndex::rebuilt(self)?)))
    }

    async fn promote(&self) -> Result<()> {
        self.seal()
    }

    fn garbage(&self) -> f64 {
        let inner = self.inner.read();
        let keys = inner.meta.len();
        if keys == 0 {
            0.0
        } else {
            1.0 - inner.key_of.len() as f64 / keys as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hnsw_index_passes_the_shared_suite() {
        let index = HnswIndex::new(4, Metric::Cosine, HnswParams::default()).unwrap();
        crate::suite::run_all(&index).await;
    }

    #[tokio::test]
    async fn every_precision_passes_the_shared_suite() {
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            for rescore in [false, true] {
                let params = HnswParams {
                    precision,
                    rescore,
                    ..HnswParams::default()
                };
                let index = HnswIndex::new(4, Metric::Cosine, params).unwrap();
                crate::suite::run_all(&index).await;
            }
        }
    }

    #[test]
    fn i8_needs_the_cosine_metric() {
        let params = HnswParams {
            precision: Precision::I8,
            ..HnswParams::default()
        };
        let err = HnswIndex::new(4, Metric::InnerProduct, params)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("cosine"), "{err}");
    }

    #[tokio::test]
    async fn a_component_beyond_f16_is_refused_naming_it() {
        let f16 = HnswParams {
            precision: Precision::F16,
            ..HnswParams::default()
        };
        let index = HnswIndex::new(2, Metric::InnerProduct, f16).unwrap();
        let err = index
            .upsert(vec![IndexedItem {
                item_id: ItemId::parse("i", "big").unwrap(),
                vector: Embedding::parse("v", vec![1.0, 1e6]).unwrap(),
                categories: vec![],
            }])
            .await
            .unwrap_err();
        assert!(matches!(err, VectorIndexError::Range { .. }), "{err}");
        assert!(err.to_string().contains("1000000"), "{err}");
        let exact = HnswIndex::new(
            2,
            Metric::InnerProduct,
            HnswParams {
                precision: Precision::F32,
                ..HnswParams::default()
            },
        )
        .unwrap();
        assert_eq!(
            exact
                .upsert(vec![IndexedItem {
                    item_id: ItemId::parse("i", "big").unwrap(),
                    vector: Embedding::parse("v", vec![1.0, 1e6]).unwrap(),
                    categories: vec![],
                }])
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_saved_index_loads_with_its_items_and_refuses_another_shape() {
        let dir = tempfile::tempdir().unwrap();
        let index = HnswIndex::new(4, Metric::InnerProduct, HnswParams::default()).unwrap();
        let item = |id: &str, v: [f32; 4]| IndexedItem {
            item_id: ItemId::parse("i", id).unwrap(),
            vector: Embedding::parse("v", v.to_vec()).unwrap(),
            categories: vec![Name::parse("c", "x").unwrap()],
        };
        index
            .upsert(vec![
                item("a", [1.0, 0.0, 0.0, 0.0]),
                item("b", [0.0, 2.0, 0.0, 0.0]),
            ])
            .await
            .unwrap();
        index
            .upsert(vec![item("a", [3.0, 0.0, 0.0, 0.0])])
            .await
            .unwrap();
        index
            .delete(&[ItemId::parse("i", "b").unwrap()])
            .await
            .unwrap();
        index.save(dir.path()).unwrap();

        assert!(
            HnswIndex::load(&dir.path().join("none"), 4, Metric::InnerProduct)
                .unwrap()
                .is_none()
        );
        let loaded = HnswIndex::load(dir.path(), 4, Metric::InnerProduct)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.stats().await.unwrap().count, 1);
        let q = Embedding::parse("q", vec![1.0, 0.0, 0.0, 0.0]).unwrap();
        let hits = loaded.search(&q, 5, &ItemFilter::default()).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].item_id.as_str(), "a");
        assert!(
            (hits[0].score - 3.0).abs() < 1e-5,
            "inner product kept: {}",
            hits[0].score
        );
        let only_x = ItemFilter::parse(vec!["x".into()], vec![], vec![]).unwrap();
        assert_eq!(loaded.search(&q, 5, &only_x).await.unwrap().len(), 1);

        let err = HnswIndex::load(dir.path(), 8, Metric::InnerProduct)
            .err()
            .unwrap();
        assert!(err.to_string().contains("4-dimensional"), "{err}");
    }

    /// Sealing moves the graph, not the answers: the same hits before and after, writes still land (the first
    /// one unseals), and a loaded index starts sealed.
    #[tokio::test]
    async fn a_sealed_index_answers_the_same_and_takes_writes() {
        use rand::{Rng, SeedableRng, rngs::SmallRng};
        let mut rng = SmallRng::seed_from_u64(7);
        let mut vector = || {
            Embedding::parse("v", (0..16).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap()
        };
        let item = |id: String, vector| IndexedItem {
            item_id: ItemId::parse("i", id).unwrap(),
            vector,
            categories: vec![],
        };
        let index = HnswIndex::new(16, Metric::InnerProduct, HnswParams::default()).unwrap();
        let items: Vec<_> = (0..3_000)
            .map(|i| item(format!("i{i}"), vector()))
            .collect();
        index.upsert(items).await.unwrap();
        let queries: Vec<Embedding> = (0..30).map(|_| vector()).collect();
        let none = ItemFilter::default();
        let not_i0 = ItemFilter::parse(vec![], vec![], vec!["i0".into(), "i1".into()]).unwrap();
        let mut before = Vec::new();
        for q in &queries {
            before.push(index.search(q, 20, &none).await.unwrap());
            before.push(index.search(q, 20, &not_i0).await.unwrap());
        }
        let sealed = |index: &HnswIndex| index.inner.read().sealed.is_some();
        assert!(!sealed(&index));

        index.promote().await.unwrap();
        assert!(sealed(&index), "promoting a built index seals it");
        let mut after = Vec::new();
        for q in &queries {
            after.push(index.search(q, 20, &none).await.unwrap());
            after.push(index.search(q, 20, &not_i0).await.unwrap());
        }
        assert_eq!(before, after);
        assert_eq!(index.stats().await.unwrap().count, 3_000);
        assert_eq!(
            index
                .vectors(&[ItemId::parse("i", "i5").unwrap()])
                .await
                .unwrap()
                .len(),
            1
        );

        // A write unseals, and lands.
        let q = queries[0].clone();
        index
            .upsert(vec![item("new".into(), q.clone())])
            .await
            .unwrap();
        assert!(!sealed(&index));
        let top = index.search(&q, 1, &none).await.unwrap();
        assert_eq!(top[0].item_id.as_str(), "new");
        index.promote().await.unwrap();
        index
            .delete(&[ItemId::parse("i", "new").unwrap()])
            .await
            .unwrap();
        assert!(!sealed(&index));
        let hits = index.search(&q, 20, &none).await.unwrap();
        assert_eq!(hits.len(), 20);
        assert!(hits.iter().all(|h| h.item_id.as_str() != "new"));

        // Saved while sealed, loaded sealed, same answers; a rebuild comes back sealed too.
        index.promote().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        index.save(dir.path()).unwrap();
        let loaded = HnswIndex::load(dir.path(), 16, Metric::InnerProduct)
            .unwrap()
            .unwrap();
        assert!(sealed(&loaded));
        assert_eq!(loaded.search(&q, 20, &none).await.unwrap(), hits);
        let rebuilt = loaded.rebuilt().unwrap();
        assert!(sealed(&rebuilt));
        assert_eq!(rebuilt.stats().await.unwrap().count, 3_000);
    }

    /// Items whose vectors differ only below bfloat16's 8-bit mantissa: the graph cannot tell them apart, the
    /// f32 copies can. Rescoring survives a save, a load and a rebuild; off (the default), the scores are bf16's.
    #[tokio::test]
    async fn rescoring_orders_by_the_exact_vectors_also_after_a_reload() {
        let items = || {
            (0..20)
                .map(|i| IndexedItem {
                    item_id: ItemId::parse("i", format!("i{i}")).unwrap(),
                    // 1 + i/10000 rounds to 1.0 in bf16 (a step of 1/128 there) for every i here.
                    vector: Embedding::parse("v", vec![1.0 + i as f32 / 10_000.0, 0.5]).unwrap(),
                    categories: vec![
                        Name::parse("c", if i % 2 == 0 { "even" } else { "odd" }).unwrap(),
                    ],
                })
                .collect::<Vec<_>>()
        };
        let q = Embedding::parse("q", vec![1.0, 0.0]).unwrap();
        let top = |hits: &[Hit]| {
            hits.iter()
                .map(|h| h.item_id.as_str().to_string())
                .collect::<Vec<_>>()
        };
        let rescoring = HnswParams {
            rescore: true,
            ..HnswParams::default()
        };
        let index = HnswIndex::new(2, Metric::InnerProduct, rescoring).unwrap();
        index.upsert(items()).await.unwrap();
        let hits = index.search(&q, 3, &ItemFilter::default()).await.unwrap();
        assert_eq!(top(&hits), ["i19", "i18", "i17"]);
        assert!((hits[0].score - 1.0019).abs() < 1e-6, "{}", hits[0].score);
        // A filtered search (not selective: half pass) is re-scored too; so is one answered exactly.
        let odd = ItemFilter::parse(vec!["odd".into()], vec![], vec![]).unwrap();
        assert_eq!(
            top(&index.search(&q, 2, &odd).await.unwrap()),
            ["i19", "i17"]
        );
        let v = index
            .vectors(&[ItemId::parse("i", "i19").unwrap()])
            .await
            .unwrap();
        assert_eq!(v[0].as_slice(), &[1.0019, 0.5]);

        let dir = tempfile::tempdir().unwrap();
        index.save(dir.path()).unwrap();
        let loaded = HnswIndex::load(dir.path(), 2, Metric::InnerProduct)
            .unwrap()
            .unwrap();
        let hits = loaded.search(&q, 3, &ItemFilter::default()).await.unwrap();
        assert_eq!(top(&hits), ["i19", "i18", "i17"]);
        let rebuilt = loaded.rebuilt().unwrap();
        assert_eq!(
            top(&rebuilt.search(&q, 3, &ItemFilter::default()).await.unwrap()),
            ["i19", "i18", "i17"]
        );

        let off = HnswIndex::new(2, Metric::InnerProduct, HnswParams::default()).unwrap();
        off.upsert(items()).await.unwrap();
        let hits = off.search(&q, 3, &ItemFilter::default()).await.unwrap();
        assert!(
            hits.iter().all(|h| (h.score - 1.0).abs() < 1e-6),
            "bf16 scores: {hits:?}"
        );
    }
}
