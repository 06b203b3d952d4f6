//! Approximate k-NN quality and speed: our HNSW index (usearch, m = 16, ef_construction = 256) against exact
//! search, and against faiss's IndexHNSWFlat built in the same run on the same vectors with the same parameters.
//!
//! Two data sets: the 64-dimensional item embeddings the platform trains from MovieLens ml-latest-small (queries:
//! the users' embeddings), and 200,000 synthetic clustered 64-d vectors (5,000 overlapping Gaussian clusters;
//! queries drawn the same way). For each ef_search: recall@100 against exact search, queries per second on one
//! core (one query at a time, through the VectorIndex trait as the service calls it) and p99 latency. Then each
//! side's QPS at recall exactly 0.95 ([`qps_at_target`]), and ours as a ratio to faiss's. Our graph is sealed first
//! (`promote`), as the service seals a bulk load when it starts serving it.
//!
//! How speed is measured on a shared machine whose speed swings by 2x within seconds: both sides search on the same
//! core (the first the process may use); the queries are cut into slices of [`SLICE`], and the two sides take
//! turns slice by slice (ours, then faiss's, on the same queries); the efs are swept [`SWEEPS`] times. A side's
//! time at an ef is the sum over slices of its fastest pass over each slice: a slow spell spoils a few tens of
//! milliseconds of one sweep, not an ef. Latency percentiles count every query of every sweep.
//!
//! Run: `cargo bench -p reco-vector-index --bench ann`. faiss comes from PyPI (`faiss-cpu`, `numpy`): the bench
//! uses `.tools/venv/bin/python` (scripts/test.sh makes it) or `RECO_PYTHON`, and installs the two packages into
//! that venv when missing. `RECO_BENCH_VECTORS` sizes the synthetic set (default 200000).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Normal};
use reco_types::{Embedding, ItemFilter, ItemId};
use reco_vector_index::{HnswIndex, HnswParams, IndexedItem, Metric, Precision, VectorIndex};

const K: usize = 100;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 256;
const EFS: [usize; 9] = [64, 100, 128, 144, 160, 200, 256, 320, 400];
const TARGET_RECALL: f64 = 0.95;
/// Sweeps over the efs; at each ef, each slice's fastest pass counts, on both sides.
const SWEEPS: usize = 5;
/// Queries per slice: the two sides take turns at this grain.
const SLICE: usize = 50;
/// Synthetic clusters and their spread (unit-variance centres): enough overlap that a query's 100 nearest span
/// several clusters, as real embeddings do; tight, separate clusters make every index look perfect.
const CLUSTERS: usize = 5_000;
const SPREAD: f32 = 0.5;

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn exact(base: &[Vec<f32>], q: &[f32]) -> Vec<u32> {
    let mut s: Vec<(f32, u32)> = base
        .iter()
        .enumerate()
        .map(|(i, v)| (dot(v, q), i as u32))
        .collect();
    s.select_nth_unstable_by(K - 1, |a, b| b.0.total_cmp(&a.0));
    s.truncate(K);
    s.into_iter().map(|x| x.1).collect()
}

/// Base vectors and queries.
type Set = (Vec<Vec<f32>>, Vec<Vec<f32>>);

fn clustered(n: usize, queries: usize) -> Set {
    let mut rng = SmallRng::seed_from_u64(1);
    let g = Normal::new(0.0f32, 1.0).unwrap();
    let centers: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|_| (0..64).map(|_| g.sample(&mut rng)).collect())
        .collect();
    let point = |rng: &mut SmallRng| {
        let c = &centers[rng.random_range(0..centers.len())];
        let mut v: Vec<f32> = c.iter().map(|x| x + SPREAD * g.sample(rng)).collect();
        normalise(&mut v);
        v
    };
    let base = (0..n).map(|_| point(&mut rng)).collect();
    let qs = (0..queries).map(|_| point(&mut rng)).collect();
    (base, qs)
}

fn datasets_dir() -> PathBuf {
    std::env::var_os("RECO_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/datasets"
            ))
        })
}

fn movielens() -> Option<Set> {
    let dir = datasets_dir().join("ml-latest-small");
    if !dir.is_dir() {
        eprintln!("MovieLens not found at {}: skipping it", dir.display());
        return None;
    }
    let (data, _) = reco_data::read::movielens::read(&dir, Default::default()).unwrap();
    let snap = reco_data::derive(&data, 7);
    let mut base: Vec<Vec<f32>> = snap
        .items
        .iter()
        .filter_map(|i| i.embedding.as_ref().map(|e| e.as_slice().to_vec()))
        .collect();
    let mut qs: Vec<Vec<f32>> = snap
        .users
        .iter()
        .filter_map(|u| u.embedding.as_ref().map(|e| e.as_slice().to_vec()))
        .collect();
    base.iter_mut().for_each(|v| normalise(v));
    qs.iter_mut().for_each(|v| normalise(v));
    Some((base, qs))
}

struct Point {
    ef: usize,
    recall: f64,
    qps: f64,
    p99_us: f64,
}

/// One pass over a slice of the queries.
struct SlicePass {
    secs: f64,
    /// Of the slice's answers, how many are among the exact top K.
    hits: usize,
    latencies_us: Vec<f64>,
}

/// A side's passes at one ef, slice by slice, over the sweeps.
struct Tally {
    ef: usize,
    fastest: Vec<f64>,
    hits: Vec<usize>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new(ef: usize, slices: usize) -> Self {
        Self {
            ef,
            fastest: vec![f64::INFINITY; slices],
            hits: vec![0; slices],
            latency: Histogram::new(3).unwrap(),
        }
    }

    fn add(&mut self, slice: usize, p: SlicePass) {
        self.fastest[slice] = self.fastest[slice].min(p.secs);
        // Deterministic: every sweep finds the same items.
        self.hits[slice] = p.hits;
        for us in p.latencies_us {
            self.latency.record((us * 1000.0) as u64).unwrap();
        }
    }

    fn point(&self, queries: usize) -> Point {
        Point {
            ef: self.ef,
            recall: self.hits.iter().sum::<usize>() as f64 / (queries * K) as f64,
            qps: queries as f64 / self.fastest.iter().sum::<f64>(),
            p99_us: self.latency.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }
}

fn hits(truth: &[Vec<u32>], found: &[Vec<u32>]) -> usize {
    truth
        .iter()
        .zip(found)
        .map(|(t, f)| f.iter().filter(|x| t.contains(x)).count())
        .sum()
}

/// How our index stores vectors: `RECO_BENCH_PRECISION` (f32, f16, bf16, i8), else the index's default.
/// `RECO_BENCH_RESCORE=1` re-scores the candidates with f32 copies (`HnswParams::rescore`).
fn precision() -> Precision {
    match std::env::var("RECO_BENCH_PRECISION").as_deref() {
        Ok("f32") => Precision::F32,
        Ok("f16") => Precision::F16,
        Ok("bf16") => Precision::BF16,
        Ok("i8") => Precision::I8,
        Ok(other) => panic!("RECO_BENCH_PRECISION: unknown precision {other}"),
        Err(_) => Precision::default(),
    }
}

/// The metric our index is built with, and loaded back with: cosine for i8 storage, inner product otherwise (the
/// vectors are unit length).
fn metric() -> Metric {
    if precision() == Precision::I8 {
        Metric::Cosine
    } else {
        Metric::InnerProduct
    }
}

/// Our index over `base`, built and sealed as the service builds a bulk load; the build's seconds.
fn build_ours(base: &[Vec<f32>], rt: &tokio::runtime::Runtime) -> (f64, HnswIndex) {
    let params = HnswParams {
        m: M,
        ef_construction: EF_CONSTRUCTION,
        ef_search: EFS[0],
        precision: precision(),
        rescore: std::env::var("RECO_BENCH_RESCORE").as_deref() == Ok("1"),
    };
    let index = HnswIndex::new(64, metric(), params).unwrap();
    let items: Vec<IndexedItem> = base
        .iter()
        .enumerate()
        .map(|(i, v)| IndexedItem {
            item_id: ItemId::parse("i", i.to_string()).unwrap(),
            vector: Embedding::parse("v", v.clone()).unwrap(),
            categories: vec![],
        })
        .collect();
    let started = Instant::now();
    for chunk in items.chunks(10_000) {
        rt.block_on(index.upsert(chunk.to_vec())).unwrap();
    }
    // What the service does when a bulk load becomes the serving version (it seals the graph: HnswIndex::seal).
    rt.block_on(index.promote()).unwrap();
    (started.elapsed().as_secs_f64(), index)
}

/// One pass of our index over `queries[range]` at `ef`, one query at a time through the VectorIndex trait.
fn pass_ours(
    index: &HnswIndex,
    queries: &[Embedding],
    truth: &[Vec<u32>],
    ef: usize,
    range: std::ops::Range<usize>,
    rt: &tokio::runtime::Runtime,
) -> SlicePass {
    index.set_ef_search(ef);
    let none = ItemFilter::default();
    let mut latencies_us = Vec::with_capacity(range.len());
    let started = Instant::now();
    let found: Vec<Vec<u32>> = queries[range.clone()]
        .iter()
        .map(|q| {
            let t = Instant::now();
            let hits = rt.block_on(index.search(q, K, &none)).unwrap();
            latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
            hits.iter()
                .map(|h| h.item_id.as_str().parse().unwrap())
                .collect()
        })
        .collect();
    let secs = started.elapsed().as_secs_f64();
    SlicePass {
        secs,
        hits: hits(&truth[range], &found),
        latencies_us,
    }
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RECO_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.tools/venv/bin/python"
    ));
    venv.exists().then_some(venv)
}

/// faiss's IndexHNSWFlat over the same vectors, in a Python process (faiss_hnsw.py) that runs one pass over each
/// slice of the queries it is sent, at the ef sent with it.
struct Faiss {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    build_s: f64,
    /// Holds the vector files the process reads.
    _dir: tempfile::TempDir,
}

impl Faiss {
    fn start(
        base: &[Vec<f32>],
        qs: &[Vec<f32>],
        truth: &[Vec<u32>],
        search_cpu: usize,
    ) -> Option<Self> {
        let Some(py) = python() else {
            eprintln!(
                "NOT RUN: faiss comparison (no .tools/venv; scripts/test.sh makes it, or set RECO_PYTHON)"
            );
            return None;
        };
        let has = |py: &Path| {
            Command::new(py)
                .args(["-c", "import faiss, numpy"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !has(&py) {
            eprintln!("installing faiss-cpu and numpy into {}", py.display());
            let ok = Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "faiss-cpu>=1.8,<2",
                    "numpy",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if !ok || !has(&py) {
                eprintln!("NOT RUN: faiss comparison (faiss-cpu did not install)");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::File::create(&p)
                .unwrap()
                .write_all(&bytes)
                .unwrap();
            p
        };
        let f32s = |vs: &[Vec<f32>]| {
            vs.iter()
                .flatten()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let b = write("base.f32", f32s(base));
        let q = write("queries.f32", f32s(qs));
        let t = write(
            "truth.u32",
            truth
                .iter()
                .flatten()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        );
        let mut child = Command::new(&py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/faiss_hnsw.py"
            ))
            .args([
                b.to_str().unwrap(),
                q.to_str().unwrap(),
                t.to_str().unwrap(),
                "64",
                &K.to_string(),
                &M.to_string(),
                &EF_CONSTRUCTION.to_string(),
                &search_cpu.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Owned from here, so the process is stopped (Drop) also when it fails to build.
        let mut faiss = Self {
            child,
            stdin,
            stdout,
            build_s: 0.0,
            _dir: dir,
        };
        faiss.build_s = read_json(&mut faiss.stdout)?["build_s"].as_f64().unwrap();
        Some(faiss)
    }

    fn pass(&mut self, ef: usize, range: std::ops::Range<usize>) -> Option<SlicePass> {
        writeln!(self.stdin, "{ef} {} {}", range.start, range.end).ok()?;
        self.stdin.flush().ok()?;
        let v = read_json(&mut self.stdout)?;
        Some(SlicePass {
            secs: v["secs"].as_f64().unwrap(),
            hits: v["hits"].as_u64().unwrap() as usize,
            latencies_us: v["lat_us"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
        })
    }
}

impl Drop for Faiss {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line of the faiss process as JSON; None (said on stderr) when it ended instead.
fn read_json(out: &mut impl BufRead) -> Option<serde_json::Value> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(n) if n > 0 => Some(serde_json::from_str(&line).unwrap()),
        _ => {
            eprintln!("faiss run failed: see its output above");
            None
        }
    }
}

/// The ef at which a side reaches exactly the target recall, and its QPS there; None when no ef reaches it.
///
/// Recall at an ef is the same in every run, so that ef is interpolated from recall (between the two efs around
/// the crossing; the first ef when it already passes). Speed is what this machine's noise moves, and time per query
/// grows close to linearly with ef, so time per query is fitted by least squares over the efs around the crossing
/// (up to three on each side, from ef = k up: a search never keeps fewer than k candidates) and read at that ef.
/// One slow ef then moves the answer by a fraction of its error, not all of it.
fn qps_at_target(points: &[Point]) -> Option<(f64, f64)> {
    let i = points.iter().position(|p| p.recall >= TARGET_RECALL)?;
    let ef = if i == 0 {
        points[0].ef as f64
    } else {
        let (a, b) = (&points[i - 1], &points[i]);
        let t = (TARGET_RECALL - a.recall) / (b.recall - a.recall);
        a.ef as f64 + t * (b.ef as f64 - a.ef as f64)
    };
    let near: Vec<(f64, f64)> = points[i.saturating_sub(3)..(i + 3).min(points.len())]
        .iter()
        .filter(|p| p.ef >= K)
        .map(|p| (p.ef as f64, 1.0 / p.qps))
        .collect();
    if near.len() < 2 {
        return Some((ef, points[i].qps));
    }
    let n = near.len() as f64;
    let (mx, my) = (
        near.iter().map(|p| p.0).sum::<f64>() / n,
        near.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let slope = near.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
        / near.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    Some((ef, 1.0 / (my + slope * (ef - mx))))
}

fn run(name: &str, base: Vec<Vec<f32>>, qs: Vec<Vec<f32>>, rt: &tokio::runtime::Runtime) {
    println!(
        "{name}: {} vectors x 64d, {} queries, k={K}, m={M}, ef_construction={EF_CONSTRUCTION}",
        base.len(),
        qs.len()
    );
    let truth: Vec<Vec<u32>> = qs.iter().map(|q| exact(&base, q)).collect();
    let (build, index) = build_ours(&base, rt);
    // Whether the sealed graph got the 2 MB pages it asked for: the kernel may not have them to give, and a walk
    // over 4 KB pages is slower (see HnswIndex::seal).
    let huge_mb = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    // The core both sides search on: the first this process may use. The two cores of a virtual machine are not
    // equally fast at a given moment (what else their physical cores run differs), and the scheduler may put the two
    // processes on different ones.
    let all = rustix::thread::sched_getaffinity(None).expect("this thread's cores");
    let search_cpu = (0..rustix::thread::CpuSet::MAX_CPU)
        .find(|&c| all.is_set(c))
        .expect("some core");
    let mut faiss = Faiss::start(&base, &qs, &truth, search_cpu);
    // Builds use every core; searches, ours and faiss's, run on the same one (faiss_hnsw.py pins itself too).
    let mut one = rustix::thread::CpuSet::new();
    one.set(search_cpu);
    rustix::thread::sched_setaffinity(None, &one).expect("pin the searching thread");
    let queries: Vec<Embedding> = qs
        .iter()
        .map(|q| Embedding::parse("q", q.clone()).unwrap())
        .collect();
    // Turns slice by slice, SWEEPS sweeps over the efs (see the top of this file).
    let slices: Vec<std::ops::Range<usize>> = (0..queries.len())
        .step_by(SLICE)
        .map(|s| s..(s + SLICE).min(queries.len()))
        .collect();
    let mut mine: Vec<Tally> = EFS.iter().map(|&ef| Tally::new(ef, slices.len())).collect();
    let mut theirs: Vec<Tally> = EFS.iter().map(|&ef| Tally::new(ef, slices.len())).collect();
    for _ in 0..SWEEPS {
        for (i, &ef) in EFS.iter().enumerate() {
            for (s, range) in slices.iter().enumerate() {
                mine[i].add(
                    s,
                    pass_ours(&index, &queries, &truth, ef, range.clone(), rt),
                );
                if let Some(f) = faiss.as_mut() {
                    match f.pass(ef, range.clone()) {
                        Some(p) => theirs[i].add(s, p),
                        None => faiss = None,
                    }
                }
            }
        }
    }
    let sealing = seal_gain(&index, &queries, &truth, &slices, rt);
    // The next build's threads inherit this thread's cores.
    rustix::thread::sched_setaffinity(None, &all).expect("unpin");
    let mine: Vec<Point> = mine.iter().map(|t| t.point(queries.len())).collect();
    let theirs: Vec<Point> = theirs.iter().map(|t| t.point(queries.len())).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  reco hnsw (usearch, vectors stored as {:?}, sealed; {huge_mb} MB of this process on 2 MB pages): built in \
         {build:.1} s ({cores} threads)",
        precision()
    );
    for p in &mine {
        println!(
            "    ef {:>3}: recall@100 {:.4}  {:>6.0} QPS/core  p99 {:>6.0} us",
            p.ef, p.recall, p.qps, p.p99_us
        );
    }
    let theirs = faiss.map(|f| (f.build_s, theirs));
    if let Some((build, theirs)) = &theirs {
        println!("  faiss IndexHNSWFlat: built in {build:.1} s (all threads)");
        for p in theirs {
            println!(
                "    ef {:>3}: recall@100 {:.4}  {:>6.0} QPS/core  p99 {:>6.0} us",
                p.ef, p.recall, p.qps, p.p99_us
            );
        }
    }
    let (sealed, unsealed) = sealing;
    println!(
        "  sealed graph against the same graph unsealed (saved and loaded back, in usearch's own memory), ef \
         {SEAL_EF}, in turns on one core: {sealed:.0} / {unsealed:.0} QPS/core: ratio {:.2}",
        sealed / unsealed
    );
    match (
        qps_at_target(&mine),
        theirs.as_ref().and_then(|(_, t)| qps_at_target(t)),
    ) {
        (Some((ef_a, a)), Some((ef_b, b))) => println!(
            "  QPS/core at recall@100 = {TARGET_RECALL} (reco at ef {ef_a:.0}, faiss at ef {ef_b:.0}; time per query \
             fitted over the efs around): reco {a:.0}, faiss {b:.0}: ratio {:.2}",
            a / b
        ),
        (a, b) => println!(
            "  recall {TARGET_RECALL} reached: reco {}, faiss {}",
            a.is_some(),
            b.is_some()
        ),
    }
}

/// The ef at which sealing is measured.
const SEAL_EF: usize = 128;

/// What sealing buys: QPS of `sealed` and of the same graph loaded back from disk (which leaves it in usearch's own
/// memory, on 4 KB pages unless the kernel gives huge pages to every allocation), slice by slice in turns, each
/// slice's fastest of SWEEPS passes.
fn seal_gain(
    sealed: &HnswIndex,
    queries: &[Embedding],
    truth: &[Vec<u32>],
    slices: &[std::ops::Range<usize>],
    rt: &tokio::runtime::Runtime,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    sealed.save(dir.path()).unwrap();
    let unsealed = HnswIndex::load(dir.path(), 64, metric())
        .unwrap()
        .expect("the index just saved");
    let mut a = Tally::new(SEAL_EF, slices.len());
    let mut b = Tally::new(SEAL_EF, slices.len());
    for sweep in 0..SWEEPS {
        for (s, range) in slices.iter().enumerate() {
            // Which goes first alternates, so neither always runs on a warmer cache.
            let first_sealed = (sweep + s) % 2 == 0;
            for turn in [first_sealed, !first_sealed] {
                let (index, tally) = if turn {
                    (sealed, &mut a)
                } else {
                    (&unsealed, &mut b)
                };
                tally.add(
                    s,
                    pass_ours(index, queries, truth, SEAL_EF, range.clone(), rt),
                );
            }
        }
    }
    let (a, b) = (a.point(queries.len()), b.point(queries.len()));
    assert_eq!(a.recall, b.recall, "one graph, two homes: the same answers");
    (a.qps, b.qps)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    if let Some((base, qs)) = movielens() {
        run("MovieLens item embeddings", base, qs, &rt);
    }
    let n = std::env::var("RECO_BENCH_VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let (base, qs) = clustered(n, 1000);
    run("synthetic clustered", base, qs, &rt);
}
