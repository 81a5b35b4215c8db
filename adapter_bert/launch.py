"""Starts N local workers of a multi-worker run on 127.0.0.1, each with its own TF_CONFIG.

    python -m adapter_bert.launch --num_workers 2 -- \
        python run_tf_adapter_bert.py --strategy multi_worker_mirrored --task mrpc ...

Each worker's output lines are prefixed with `[worker i]`. If one worker fails, the others are
stopped and the launcher exits with that worker's status. On real clusters, set TF_CONFIG on each
machine yourself (or pass --worker_hosts / --task_index to the training command).

Example:
>>> env = worker_env(["127.0.0.1:1", "127.0.0.1:2"], 1)
>>> json.loads(env["TF_CONFIG"])["task"]
{'type': 'worker', 'index': 1}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(hosts: list[str], index: int, base=None) -> dict:
    env = dict(os.environ if base is None else base)
    env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
    return env


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"{prefix}{line}")
        out.flush()


def launch(command: list[str], num_workers: int, timeout: float | None = None) -> int:
    """Runs `command` as `num_workers` local workers; returns the first non-zero status, else 0."""
    if num_workers < 1:
        raise ValueError(f"--num_workers must be at least 1, got {num_workers}")
    if not command:
        raise ValueError("give the command to run after --")
    hosts = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    processes, pumps = [], []
    for index in range(num_workers):
        process = subprocess.Popen(command, env=worker_env(hosts, index), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        pump = threading.Thread(target=_pump, args=(process.stdout, f"[worker {index}] ", sys.stdout),
                                daemon=True)
        pump.start()
        processes.append(process)
        pumps.append(pump)
    status = 0
    try:
        for process in processes:
            code = process.wait(timeout=timeout)
            if code and not status:
                status = code
                for other in processes:
                    if other.poll() is None:
                        other.terminate()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for pump in pumps:
            pump.join(timeout=5)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        return launch(command, args.num_workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
