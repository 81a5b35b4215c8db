"""Shared test setup: offline hub, quiet TensorFlow, paths to the shared GLUE files."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # see adapter_bert/__init__.py

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"


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
