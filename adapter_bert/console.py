"""A quiet console for the command line: stderr holds the command's own lines.

TensorFlow, absl, CUDA and transformers print notices that say nothing about the run: the
oneDNN banner, "Could not find cuda drivers", `failed call to cuInit` on machines without a GPU,
"PyTorch was not found", absl INFO lines at every checkpoint and export. `quiet_stderr` passes
the process's stderr (file descriptor 2, so TensorFlow's C++ runtime is covered too) through a
filter that drops exactly those notices and keeps everything else, warnings and errors
included; it also turns TensorFlow's and absl's Python INFO logging down to warnings.
The command's `--verbose` leaves stderr as it is.

Example:
>>> [is_noise(line) for line in (
...     "I0000 00:00:1796189925.865609   12243 port.cc:153] oneDNN custom operations are on.",
...     "E0000 00:00:1796191036.287487   17599 cuda_platform.cc:52] failed call to cuInit: x",
...     "E0000 00:00:1796191036.287487   17599 loop.cc:10] Out of memory",
...     "epoch 1 step 20/115 loss 0.6000 40.1 ex/s eta 60s")]
[True, True, False, False]
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

_CPP_LOG = re.compile(r"^(?P<level>[IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] (?P<message>.*)")
_ABSL_INFO = re.compile(r"^I\d{4} [\d:.]+\s+\d+ \S+\.py:\d+\] ")
# Warnings and errors of TensorFlow's runtime that are notices, not faults of the run.
_BENIGN = tuple(re.compile(p) for p in (
    r"failed call to cuInit",
    r"oneDNN supports DT_\w+ only on platforms with",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"TF-TRT Warning",
))
_LINES = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler",
    r"^\[transformers\] PyTorch was not found",
))


def is_noise(line: str) -> bool:
    """Whether a stderr line is one of the start-up or INFO notices `quiet_stderr` drops."""
    if _ABSL_INFO.match(line) or any(p.search(line) for p in _LINES):
        return True
    match = _CPP_LOG.match(line)
    if match is None:
        return False
    return match["level"] == "I" or any(p.search(match["message"]) for p in _BENIGN)


class _Filter:
    def __init__(self):
        self.original = os.dup(2)
        # Behind the pipe, stderr is no terminal any more; the progress bar asks here.
        os.environ["ADAPTER_BERT_STDERR_TTY"] = "1" if os.isatty(self.original) else "0"
        read_end, write_end = os.pipe()
        sys.stderr.flush()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        self.thread.start()

    def _pump(self, read_end: int) -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                self._write(lines)
                if b"\r" in pending:  # a live progress bar: redrawn in place, never noise
                    drawn, _, pending = pending.rpartition(b"\r")
                    os.write(self.original, drawn + b"\r")
        if pending:
            self._write([pending])

    def _write(self, lines) -> None:
        kept = [line for line in lines if not is_noise(line.decode("utf-8", "replace"))]
        if kept:
            os.write(self.original, b"".join(line + b"\n" for line in kept))

    def stop(self) -> None:
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        os.dup2(self.original, 2)  # the pipe's last writer closes: the pump reads to the end
        self.thread.join(timeout=5)


_ACTIVE: list[_Filter] = []


def install_stderr_filter() -> None:
    """Filters this process's stderr from now until it exits; imports nothing heavy, so it can
    run before TensorFlow is first imported (whose import prints the first notices)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not _ACTIVE:
        _ACTIVE.append(_Filter())
        atexit.register(_ACTIVE[0].stop)


def quiet_python_logging() -> None:
    """TensorFlow's and absl's Python loggers at warnings (absl apps default to INFO)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")


def quiet_stderr() -> None:
    """`install_stderr_filter` and `quiet_python_logging` (see the module docstring)."""
    install_stderr_filter()
    quiet_python_logging()
