"""Shared test setup: offline hub, quiet TensorFlow, paths to the shared GLUE files."""

import collections
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # see adapter_bert/__init__.py

import pytest  # noqa: E402

# Files holding the minute-long tests (real checkpoint runs, subprocess pipelines), longest first.
# Two workers take whole files (--dist loadfile) in collection order; a long file taken last leaves
# one core idle for minutes at the end, so these are collected before everything else.
LONG_FILES = (
    "test_minilm_mrpc.py", "test_minilm_methods.py", "test_techniques.py", "test_export.py",
    "test_training.py", "test_reliability.py", "test_sweep.py", "test_multi_worker.py",
    "test_language_modeling.py",
)

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"


def pytest_collection_modifyitems(config, items):
    """Collect the long files first, then the others with the most tests first.

    The second key is what xdist's own reordering does; pytest.ini turns that off because it
    would put a file of two long tests at the very end.
    """
    counts = collections.Counter(item.path for item in items)

    def key(item):
        name = item.path.name
        rank = LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)
        return rank, -counts[item.path], str(item.path)

    items.sort(key=key)  # stable: tests keep their order inside a file


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "MRPC" / "dev.tsv").is_file():
        pytest.fail(f"GLUE files not found under {GLUE_DIR}; ../shared must sit beside the checkout")
    return GLUE_DIR


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random BERT in Hugging Face layout, dropout off (the command-line tests' base)."""
    from adapter_bert.testing import write_tiny_hf_checkpoint

    directory = tmp_path_factory.mktemp("tiny_bert")
    write_tiny_hf_checkpoint(directory, seed=0, dropout=0.0)
    return directory
