"""Workload 1, vector variant, for Chroma: one memory per collection.add() on a PersistentClient,
from 1, 4, 16 and 64 writer threads; the same text, metadata and 384-dim vector as the Rust peers
(bench/peers/src/workload.rs). Each writer count gets a fresh client directory.

Chroma's client exposes no durability setting: add() returns after Chroma's embedded SQLite write-ahead
log has the record, with whatever synchronous mode Chroma's Rust core sets; the report says so.
"""

import argparse
import json
import os
import shutil
import statistics
import threading
import time

import numpy as np

TEXT_BYTES = 300
DIM = 384
# 64 Python threads are left out by default: one 0.4 s point at 64 writers took 168 s to drain
# (18.8 adds/s, p99 8.4 s) on the 2-core machine, which would triple the suite's run time.
WRITERS = [1, 4, 16]


CLUSTERS = 100
SPREAD = np.float32(0.5)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix_outputs(seed, count):
    """Outputs 1..count of splitmix64 started at `seed` (workload.rs `splitmix`), vectorised: the
    k-th state is seed + k * GOLDEN, wrapping."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + GOLDEN * np.arange(1, count + 1, dtype=np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def roughly_normal(outputs):
    """workload.rs `roughly_normal` over consecutive groups of four outputs, in float32 and in the
    same order of operations, so the values are bit for bit the Rust peers'."""
    u = (outputs >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    u = u.reshape(-1, 4)
    total = ((u[:, 0] + u[:, 1]) + u[:, 2]) + u[:, 3]
    return (total - np.float32(2.0)) * np.sqrt(np.float32(3.0))


CENTRES = roughly_normal(splitmix_outputs(20_261_127, CLUSTERS * DIM * 4)).reshape(CLUSTERS, DIM)


def clustered_embedding(writer, seq):
    """workload.rs `clustered_embedding`: the same vector for the same (writer, seq)."""
    outputs = splitmix_outputs((writer << 40) ^ seq, 1 + DIM * 4)
    centre = CENTRES[int(outputs[0] % np.uint64(CLUSTERS))]
    return centre + SPREAD * roughly_normal(outputs[1:])


def memory(writer, seq):
    text = f"writer {writer} memory {seq}: "
    while len(text) < TEXT_BYTES:
        text += "the agent noted something worth remembering. "
    text = text[:TEXT_BYTES]
    embedding = clustered_embedding(writer, seq).tolist()
    return f"w{writer:03}-{seq:012}", text, {"writer": writer, "kind": "note", "seq": seq}, embedding


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def percentile_us(sorted_s, q):
    if not sorted_s:
        return float("nan")
    return sorted_s[round((len(sorted_s) - 1) * q)] * 1e6


def drive(collection, writers, warm_up_s, window_s):
    state = {"measuring": False, "stop": False}
    latencies = [[] for _ in range(writers)]
    errors = []

    def writer(w):
        seq = 0
        while not state["stop"]:
            counted = state["measuring"]
            ident, text, metadata, embedding = memory(w, seq)
            started = time.perf_counter()
            try:
                collection.add(ids=[ident], documents=[text], metadatas=[metadata], embeddings=[embedding])
            except Exception as e:  # a failed add is counted, never retried silently
                errors.append(repr(e))
            else:
                took = time.perf_counter() - started
                if counted and not state["stop"]:
                    latencies[w].append(took)
            seq += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    time.sleep(warm_up_s)
    state["measuring"] = True
    started = time.perf_counter()
    time.sleep(window_s)
    state["stop"] = True
    window = time.perf_counter() - started
    for t in threads:
        t.join()
    all_latencies = sorted(x for mine in latencies for x in mine)
    return {
        "ops": len(all_latencies),
        "per_second": len(all_latencies) / window,
        "p50_us": percentile_us(all_latencies, 0.5),
        "p99_us": percentile_us(all_latencies, 0.99),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--writers", default=",".join(map(str, WRITERS)), help="comma-separated writer counts")
    args = parser.parse_args()
    import chromadb

    warm_up_s, window_s = (0.1, 0.3) if args.quick else (0.3, 2.0)
    load_before = load_average()
    points = []
    writer_counts = [int(w) for w in args.writers.split(",")]
    for writers in writer_counts:
        path = os.path.join(args.scratch, f"chroma-round-{args.round}-{writers}")
        shutil.rmtree(path, ignore_errors=True)
        client = chromadb.PersistentClient(path=path)
        collection = client.create_collection("memories", metadata={"hnsw:space": "l2"})
        figures = drive(collection, writers, warm_up_s, window_s)
        print(f"round {args.round} vector {writers:>2} writers chroma          {figures['per_second']:>9.0f} commits/s  p50 {figures['p50_us']:>8.1f} us  p99 {figures['p99_us']:>9.1f} us", flush=True)
        points.append({"peer": "chroma", "variant": "vector", "writers": writers, "figures": figures})
        del collection, client
    for writers in writer_counts:
        shutil.rmtree(os.path.join(args.scratch, f"chroma-round-{args.round}-{writers}"), ignore_errors=True)
    result = {
        "workload": "commit-chroma",
        "round": args.round,
        "warm_up_ms": int(warm_up_s * 1000),
        "window_ms": int(window_s * 1000),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": {
            "chroma": f"chromadb {chromadb.__version__} PersistentClient(path) on the same disk, one collection (hnsw:space=l2), one add(ids, documents, metadatas, embeddings) of one memory per commit from Python threads (one process: the GIL serialises Python work); no durability setting is exposed by the client, so the sync mode is Chroma's default"
        },
        "points": points,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
