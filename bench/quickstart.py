"""Measures the README's quickstart: MRPC dev scores, training throughput, wall time, peak RSS.

    python bench/quickstart.py [--data_dir ../shared/data/glue/MRPC] [--out /tmp/quickstart]

Runs `run_tf_adapter_bert.py --flagfile flags/quickstart.flags` in a child process (so its peak
RSS is measured alone), then prints the machine, the versions and the figures, and writes them to
`<out>/quickstart_bench.json`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "glue" / "MRPC"))
    parser.add_argument("--out", default="/tmp/adapter_bert_quickstart_bench")
    args = parser.parse_args()
    command = [sys.executable, str(REPO / "run_tf_adapter_bert.py"), "--flagfile",
               str(REPO / "flags" / "quickstart.flags"), "--data_dir", args.data_dir,
               "--saved_models_dir", args.out, "--overwrite"]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    wall = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results = json.loads((Path(args.out) / "mrpc" / "results.json").read_text())
    figures = {"machine": machine(), "command": " ".join(command), "wall_seconds": round(wall, 1),
               "peak_rss_mb": round(peak_rss_mb), "best": results["best"],
               "final": results["final"],
               "train_examples_per_second": round(results["train_examples_per_second"], 1),
               "trainable_params": results["trainable_params"], "total_params": results["total_params"]}
    print(json.dumps(figures, indent=2))
    (Path(args.out) / "quickstart_bench.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
