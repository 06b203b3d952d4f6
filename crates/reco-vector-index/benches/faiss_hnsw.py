# Builds faiss IndexHNSWFlat for benches/ann.rs: see that file.
"""Builds faiss IndexHNSWFlat on the same vectors with the same parameters, prints the build time, then for each
line read from stdin runs one pass over a slice of the queries at the efSearch it names, on one thread, one query
per call, and prints one JSON line."""
import json, os, sys, time
import numpy as np
import faiss

base_path, query_path, truth_path, dim, k, m, efc, cpu = sys.argv[1:9]
dim, k, m, efc, cpu = int(dim), int(k), int(m), int(efc), int(cpu)
base = np.fromfile(base_path, dtype="<f4").reshape(-1, dim)
queries = np.fromfile(query_path, dtype="<f4").reshape(-1, dim)
truth = np.fromfile(truth_path, dtype="<u4").reshape(-1, k)
index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = efc
t = time.perf_counter()
index.add(base)  # on every core, as ours
build = time.perf_counter() - t
faiss.omp_set_num_threads(1)  # searches: one core, one query per call
os.sched_setaffinity(0, {cpu})  # the core ann.rs searches on


print(json.dumps({"build_s": build}), flush=True)
# ann.rs sends "ef start end": one pass over queries[start:end] at that ef, in turns with its own (see ann.rs). The
# answer: the seconds the pass took, its hits against the ground truth, and each query's latency.
for line in sys.stdin:
    ef, start, end = map(int, line.split())
    index.hnsw.efSearch = ef
    found = np.empty((end - start, k), dtype=np.int64)
    lat = np.empty(end - start)
    t = time.perf_counter()
    for j, i in enumerate(range(start, end)):
        s = time.perf_counter()
        _, ids = index.search(queries[i : i + 1], k)
        lat[j] = time.perf_counter() - s
        found[j] = ids[0]
    secs = time.perf_counter() - t
    hits = sum(len(set(found[j]) & set(truth[start + j])) for j in range(end - start))
    print(json.dumps({"secs": secs, "hits": int(hits), "lat_us": (lat * 1e6).tolist()}), flush=True)
