"""The arithmetic rate this CPU reaches on bare TensorFlow matmuls, the ceiling of a training step.

    python bench/matmul_peak.py [--tokens 1536] [--repeats 30] [--out /tmp/adapter_bert_bench]

A BERT training step is mostly the dense layers' matmuls. On a CPU every system (ours, the PyTorch
peers) is bound by the same arithmetic units, so once a step's matmuls run near this rate, a
faster step needs less arithmetic, not faster kernels. This times, with oneDNN on as adapter_bert
sets it (`common` does so before TensorFlow loads), the three matmul shapes of a MiniLM layer on
`--tokens` token rows (1536 = 32 rows of 48 tokens, a bucketed MRPC batch's real tokens) and a
square 2048 matmul for reference. A figure is the median over `--repeats` calls, each synchronised
by reading one element of the result. Writes `<out>/matmul_peak.json`.

To compare a training run with it: a MiniLM layer does 4·384² + 2·384·1536 = 1.77M multiply-adds
per token (Houlsby-32 adds 49k), forward; an adapter step repeats them once for the input
gradients, full fine-tuning twice (input and weight gradients).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common


def time_matmul(m: int, k: int, n: int, repeats: int) -> dict:
    """Median GFLOP/s of a `[m, k] @ [k, n]` float32 matmul over `repeats` synchronised calls."""
    import tensorflow as tf

    a = tf.random.stateless_normal([m, k], seed=[0, 1])
    b = tf.random.stateless_normal([k, n], seed=[0, 2])
    matmul = tf.function(lambda x, y: tf.matmul(x, y)[0, 0])
    float(matmul(a, b))  # trace and let oneDNN build its kernel for this shape
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(matmul(a, b))
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"shape": f"[{m}, {k}] @ [{k}, {n}]", "median_ms": round(1e3 * median, 3),
            "gflops": round(2 * m * k * n / median / 1e9, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be positive")
    shapes = {"attention projection": (args.tokens, 384, 384),
              "FFN in": (args.tokens, 384, 1536), "FFN out": (args.tokens, 1536, 384),
              "square 2048": (2048, 2048, 2048)}
    results = {name: time_matmul(*shape, args.repeats) for name, shape in shapes.items()}
    for name, figure in results.items():
        print(f"{name:<22}{figure['shape']:<26}{figure['gflops']:>8.1f} GFLOP/s", file=sys.stderr)
    report = {"benchmark": "matmul_peak", "machine": common.machine(), "tokens": args.tokens,
              "repeats": args.repeats, "command": " ".join([sys.executable] + sys.argv),
              "matmuls": results}
    common.write_report(args.out, "matmul_peak", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
