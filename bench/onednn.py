"""TensorFlow's oneDNN kernels on and off: training throughput of Houlsby adapters and full FT.

    python bench/onednn.py [--steps 8] [--out /tmp/adapter_bert_bench]

TensorFlow enables oneDNN by default only on some x86 processors; adapter_bert sets
`TF_ENABLE_ONEDNN_OPTS=1` unless the user set it. This runs `bench/train_throughput.py` twice in
child processes (the variable is read when TensorFlow loads), bucketed padding, and writes
`<out>/onednn.json` with both figures and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import common


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--methods", default="houlsby,full")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    figures = {}
    for setting in ("0", "1"):
        out = args.out / f"onednn_{setting}"
        subprocess.run([sys.executable, str(Path(__file__).with_name("train_throughput.py")),
                        "--methods", args.methods, "--paddings", "bucketed", "--steps", str(args.steps),
                        "--out", str(out)], check=True, capture_output=True,
                       env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting))
        report = json.loads((out / "train_throughput.json").read_text())
        figures[setting] = {m: r["bucketed"]["examples_per_second"] for m, r in report["methods"].items()}
    report = {"benchmark": "onednn", "machine": common.machine(), "padding": "bucketed",
              "steps": args.steps, "command": " ".join([sys.executable] + sys.argv),
              "examples_per_second": {"TF_ENABLE_ONEDNN_OPTS=0": figures["0"],
                                      "TF_ENABLE_ONEDNN_OPTS=1": figures["1"]},
              "speedup": {m: round(figures["1"][m] / figures["0"][m], 3) for m in figures["1"]}}
    common.write_report(args.out, "onednn", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
