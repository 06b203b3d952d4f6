# Builds faiss IndexHNSWFlat for benches/ann.rs: see that file.
"""Builds faiss IndexHNSWFlat on the same vectors with the same parameters, prints the build time, then for each
efSearch read from stdin runs one pass over the queries and prints recall@k against the given ground truth and
single-thread queries per second (one query per call), one JSON line each."""
import json, sys, time
import numpy as np
import faiss

base_path, query_path, truth_path, dim, k, m, efc = sys.argv[1:8]
dim, k, m, efc = int(dim), int(k), int(m), int(efc)
base = np.fromfile(base_path, dtype="<f4").reshape(-1, dim)
queries = np.fromfile(query_path, dtype="<f4").reshape(-1, dim)
truth = np.fromfile(truth_path, dtype="<u4").reshape(-1, k)
index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = efc
t = time.perf_counter()
index.add(base)  # on every core, as ours
build = time.perf_counter() - t
faiss.omp_set_num_threads(1)  # searches: one core, one query per call


def one_pass():
    found = np.empty((len(queries), k), dtype=np.int64)
    lat = np.empty(len(queries))
    t = time.perf_counter()
    for i in range(len(queries)):
        s = time.perf_counter()
        _, ids = index.search(queries[i : i + 1], k)
        lat[i] = time.perf_counter() - s
        found[i] = ids[0]
    return time.perf_counter() - t, found, lat


print(json.dumps({"build_s": build}), flush=True)
# One pass per ef read from stdin (ann.rs sends them, taking turns with its own passes).
for line in sys.stdin:
    index.hnsw.efSearch = int(line)
    secs, found, lat = one_pass()
    hits = sum(len(set(found[i]) & set(truth[i])) for i in range(len(queries)))
    print(json.dumps({"recall": hits / truth.size, "qps": len(queries) / secs,
                      "p99_us": float(np.percentile(lat, 99)) * 1e6}), flush=True)
