"""Where an OpenVINO model's time goes: per-node times from OpenVINO's own profiler (PERF_COUNT), one thread.

Usage: python docs/scripts/ov_profile.py RUN_DIR MODEL.xml [MODEL.xml ...]   (e.g. pruned_int8.xml dense_int8.xml)
Compiles each IR for this CPU at batch 64 (1 intra-op thread, 1 stream, latency hint, as the bench runs it), runs
10 warm-up and 30 timed inferences on random input (timing does not depend on the values), and prints the mean time
per (node type, kernel) and the slowest nodes. The per-node sum is OpenVINO's own count, not the bench's p50.
"""

import collections
import sys

import numpy as np
import openvino as ov

BATCH, CALLS = 64, 30
core = ov.Core()
for name in sys.argv[2:]:
    model = core.read_model(f"{sys.argv[1]}/{name}")
    dims = list(model.inputs[0].get_partial_shape())  # the batch dimension is dynamic in our IR
    shape = [BATCH, *(d.get_length() for d in dims[1:])]
    model.reshape({model.inputs[0].get_any_name(): shape})
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(10):
        request.infer({0: x})
    by_kernel: collections.Counter[tuple[str, str]] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for _ in range(CALLS):
        request.infer({0: x})
        for p in request.get_profiling_info():
            ms = p.real_time.total_seconds() * 1e3 / CALLS
            by_kernel[(p.node_type, p.exec_type)] += ms
            by_node[p.node_name] += ms
    total = sum(by_kernel.values())
    print(f"== {name}: {total:.2f} ms a call (sum over nodes), batch {BATCH}")
    for (node_type, kernel), ms in by_kernel.most_common(6):
        print(f"  {ms:7.3f} ms {100 * ms / total:5.1f} %  {node_type} ({kernel})")
    for node, ms in by_node.most_common(10):
        print(f"  {ms:7.3f} ms  {node}")
