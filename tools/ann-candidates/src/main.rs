//! Compares HNSW crates on our vectors: see Cargo.toml.
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Normal};
use std::time::Instant;

fn norm(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn exact(base: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let mut s: Vec<(f32, usize)> = base
        .iter()
        .enumerate()
        .map(|(i, v)| (dot(v, q), i))
        .collect();
    s.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    s.truncate(k);
    s.into_iter().map(|x| x.1).collect()
}

fn clustered(n: usize, nq: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = SmallRng::seed_from_u64(1);
    let g = Normal::new(0.0f32, 1.0).unwrap();
    let centers: Vec<Vec<f32>> = (0..5000)
        .map(|_| (0..64).map(|_| g.sample(&mut rng)).collect())
        .collect();
    let mut point = |rng: &mut SmallRng| {
        let c = &centers[rng.random_range(0..centers.len())];
        let mut v: Vec<f32> = c.iter().map(|x| x + 0.5 * g.sample(rng)).collect();
        norm(&mut v);
        v
    };
    let base = (0..n).map(|_| point(&mut rng)).collect();
    let qs = (0..nq).map(|_| point(&mut rng)).collect();
    (base, qs)
}

fn movielens() -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let root = std::env::var("RECO_DATASETS").unwrap_or_else(|_| "../../../shared/datasets".into());
    let dir = std::path::Path::new(&root).join("ml-latest-small");
    let dir = dir.as_path();
    let (data, _) = reco_data::read::movielens::read(dir, Default::default()).unwrap();
    let snap = reco_data::derive(&data, 7);
    let mut base: Vec<Vec<f32>> = snap
        .items
        .iter()
        .filter_map(|i| i.embedding.as_ref().map(|e| e.as_slice().to_vec()))
        .collect();
    base.iter_mut().for_each(|v| norm(v));
    let mut qs: Vec<Vec<f32>> = snap
        .users
        .iter()
        .filter_map(|u| u.embedding.as_ref().map(|e| e.as_slice().to_vec()))
        .collect();
    qs.iter_mut().for_each(|v| norm(v));
    (base, qs)
}

fn report(name: &str, ef: usize, truth: &[Vec<usize>], got: &[Vec<usize>], secs: f64) {
    let mut hit = 0usize;
    let mut tot = 0usize;
    for (t, g) in truth.iter().zip(got) {
        let ts: std::collections::HashSet<_> = t.iter().collect();
        hit += g.iter().filter(|x| ts.contains(x)).count();
        tot += t.len();
    }
    println!(
        "  {name:<18} ef={ef:<4} recall@100 {:.4}  QPS/core {:.0}",
        hit as f64 / tot as f64,
        got.len() as f64 / secs
    );
}

#[derive(Clone, Copy)]
struct P<'a>(&'a [f32]);
impl instant_distance::Point for P<'_> {
    fn distance(&self, o: &Self) -> f32 {
        1.0 - dot(self.0, o.0)
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let (base, qs) = if which == "ml" {
        movielens()
    } else {
        clustered(200_000, 1000)
    };
    let k = 100;
    println!(
        "{which}: {} base x {}d, {} queries",
        base.len(),
        base[0].len(),
        qs.len()
    );
    let truth: Vec<Vec<usize>> = qs.iter().map(|q| exact(&base, q, k)).collect();
    let efs = [100usize, 128, 200, 300];

    // usearch
    let opts = usearch::IndexOptions {
        dimensions: 64,
        metric: usearch::MetricKind::IP,
        quantization: usearch::ScalarKind::F32,
        connectivity: 16,
        expansion_add: 256,
        expansion_search: 64,
        multi: false,
    };
    let idx = usearch::Index::new(&opts).unwrap();
    idx.reserve(base.len()).unwrap();
    let t = Instant::now();
    for (i, v) in base.iter().enumerate() {
        idx.add(i as u64, v).unwrap();
    }
    println!(
        "  usearch build (1 thread) {:.2} s; {}",
        t.elapsed().as_secs_f64(),
        idx.hardware_acceleration()
    );
    for ef in efs {
        idx.change_expansion_search(ef);
        let t = Instant::now();
        let got: Vec<Vec<usize>> = qs
            .iter()
            .map(|q| {
                idx.search(q, k)
                    .unwrap()
                    .keys
                    .iter()
                    .map(|&x| x as usize)
                    .collect()
            })
            .collect();
        report("usearch", ef, &truth, &got, t.elapsed().as_secs_f64());
    }

    // hnsw_rs
    let h = hnsw_rs::hnsw::Hnsw::<f32, hnsw_rs::prelude::DistCosine>::new(
        16,
        base.len(),
        16,
        256,
        hnsw_rs::prelude::DistCosine {},
    );
    let t = Instant::now();
    for (i, v) in base.iter().enumerate() {
        h.insert_slice((v, i));
    }
    println!(
        "  hnsw_rs build (1 thread) {:.2} s",
        t.elapsed().as_secs_f64()
    );
    for ef in efs {
        let t = Instant::now();
        let got: Vec<Vec<usize>> = qs
            .iter()
            .map(|q| h.search(q, k, ef).iter().map(|n| n.d_id).collect())
            .collect();
        report("hnsw_rs", ef, &truth, &got, t.elapsed().as_secs_f64());
    }

    // instant-distance (builds with rayon on all cores; ef_search fixed at build)
    for ef in [100usize, 200] {
        let pts: Vec<P> = base.iter().map(|v| P(v)).collect();
        let vals: Vec<usize> = (0..base.len()).collect();
        let t = Instant::now();
        let map = instant_distance::Builder::default()
            .ef_construction(256)
            .ef_search(ef)
            .build(pts, vals);
        let bt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut s = instant_distance::Search::default();
        let got: Vec<Vec<usize>> = qs
            .iter()
            .map(|q| {
                map.search(&P(q), &mut s)
                    .take(k)
                    .map(|x| *x.value)
                    .collect()
            })
            .collect();
        println!("  instant-distance build (all cores) {bt:.2} s");
        report(
            "instant-distance",
            ef,
            &truth,
            &got,
            t.elapsed().as_secs_f64(),
        );
    }
}
