"""The training command never loses a finished run, refuses a second writer, and keeps stderr
for its own lines."""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapter_bert.io_utils import DirectoryBusyError, DirectoryLock, atomic_directory
from adapter_bert.training import TrainingArgs, run
from test_training import SCRIPT, REPO, _cli, _cli_in_process, assert_refused_in_one_line, write_glue_task



def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _base(tmp_path, checkpoint):
    return ["--casing", str(checkpoint), "--task", "mrpc", "--data_dir", str(tmp_path / "glue"),
            "--adapter_config", "seq_bn[reduction_factor=4]", "--batch_size", "4", "--epochs", "1",
            "--max_seq_length", "32", "--saved_models_dir", str(tmp_path / "out"),
            "--predict_test=false", "--export=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_checkpoint):
    """A finished run of the command, beside a checkpoint without TensorFlow-readable weights and
    GLUE files without training rows: the bad inputs the overwrite cases name."""
    root = tmp_path_factory.mktemp("finished")
    write_glue_task(root / "glue", "mrpc")
    pytorch_only = root / "pytorch_only"
    pytorch_only.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        (pytorch_only / name).write_bytes((tiny_checkpoint / name).read_bytes())
    (pytorch_only / "pytorch_model.bin").write_bytes(b"not for us")
    header_only = root / "header_only" / "MRPC"
    header_only.mkdir(parents=True)
    for split in ("train", "dev"):
        lines = (root / "glue" / "MRPC" / f"{split}.tsv").read_text().splitlines()
        (header_only / f"{split}.tsv").write_text(lines[0] + "\n" + ("\n".join(lines[1:]) + "\n" if split == "dev" else ""))
    finished = _cli(*_base(root, tiny_checkpoint))
    assert finished.returncode == 0, finished.stderr[-2000:]
    return root, _digests(root / "out")


@pytest.mark.parametrize("bad, message", [
    # Each is found only once the checkpoint or the data has been read, long after flag parsing.
    (["--adapter_config", "seq_bn[reduction_factor=64]"], "leaves no bottleneck on a 32-wide model"),
    (["--max_seq_length", "2"], "max_seq_length 2 leaves no room for text"),
    (["--casing", "{tmp}/pytorch_only"], "holds only pytorch_model.bin"),
    (["--data_dir", "{tmp}/header_only"], "no training examples in mrpc train"),
], ids=["reduction_past_the_width", "no_room_for_tokens", "no_tensorflow_weights", "no_train_rows"])
def test_overwrite_with_a_problem_found_late_keeps_the_previous_run(finished_run, tiny_checkpoint, bad,
                                                                    message):
    # Every case refuses to overwrite the same finished run and compares it with its files as
    # first written, so each also checks that the cases before it left it alone.
    root, written = finished_run
    result = _cli_in_process(*_base(root, tiny_checkpoint), "--overwrite",
                             *[b.format(tmp=root) for b in bad])
    assert_refused_in_one_line(result, message)
    assert _digests(root / "out") == written


def test_overwrite_replaces_the_previous_run_once_the_new_one_checkpoints(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    args = TrainingArgs(task="mrpc", casing=str(tiny_checkpoint), data_dir=str(tmp_path / "glue"),
                        adapter_config="seq_bn[reduction_factor=4]", batch_size=4, epochs=1,
                        max_seq_length=32, saved_models_dir=str(tmp_path / "out"),
                        predict_test=False, export=False)
    run(args)
    first = (tmp_path / "out" / "mrpc" / "adapter" / "adapter.safetensors").read_bytes()
    import dataclasses

    run(dataclasses.replace(args, learning_rate=0.05, overwrite=True))
    assert (tmp_path / "out" / "mrpc" / "adapter" / "adapter.safetensors").read_bytes() != first
    # Nothing left beside it: no moved-aside copy, no lock.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mrpc"]


def test_failed_validation_writes_nothing_so_the_fixed_rerun_is_not_refused(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    bad = _cli_in_process(*_base(tmp_path, tiny_checkpoint), "--bucket_boundaries", "64,32")
    assert bad.returncode == 2 and not (tmp_path / "out").exists(), bad.stderr[-2000:]
    good = _cli(*_base(tmp_path, tiny_checkpoint))
    assert good.returncode == 0, good.stderr[-2000:]


def test_task_spellings_are_one_run(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    base = [f for f in _base(tmp_path, tiny_checkpoint)]
    assert _cli(*base).returncode == 0
    base[base.index("mrpc")] = "MRPC"
    again = _cli(*base)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "holds a run with other arguments" not in again.stderr


def test_header_only_train_file_is_one_line(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    train = tmp_path / "glue" / "MRPC" / "train.tsv"
    train.write_text(train.read_text().splitlines()[0] + "\n")
    result = _cli(*_base(tmp_path, tiny_checkpoint))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no training examples in mrpc train ({tmp_path / 'glue'})"]
    assert not (tmp_path / "out").exists()


def test_a_second_run_into_the_same_directory_is_refused_and_a_stale_lock_taken_over(
        tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    lock = tmp_path / "out" / ".mrpc.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(str(holder.pid))
        refused = _cli(*_base(tmp_path, tiny_checkpoint))
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"error: another run (pid {holder.pid}) is writing to {tmp_path / 'out' / 'mrpc'}; wait for it "
            "or use another directory"]
        assert not (tmp_path / "out" / "mrpc").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale, and the run goes ahead (and releases it).
    done = _cli(*_base(tmp_path, tiny_checkpoint))
    assert done.returncode == 0, done.stderr[-2000:]
    assert not lock.exists()


def test_directory_lock_in_process(tmp_path):
    with DirectoryLock(tmp_path / "x.lock"):
        other = DirectoryLock(tmp_path / "x.lock")
        other.path.write_text("1")  # pid 1 is alive (init): a live holder
        with pytest.raises(DirectoryBusyError, match=r"another run \(pid 1\)"):
            other.acquire()


def test_atomic_directory_never_replaces_a_file(tmp_path):
    target = tmp_path / "adapter"
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        with atomic_directory(target):
            pass
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


# --- stderr ---------------------------------------------------------------------------------------

OWN_LINES = re.compile(r"^(epoch \d+ step \d+/\d+ loss|dev at step \d+:|SavedModel: |resuming from )")


def test_stderr_holds_only_the_command_s_own_lines(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    result = _cli(*_base(tmp_path, tiny_checkpoint)[:-1], "--log_every", "1")  # with export
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines and all(OWN_LINES.match(line) for line in lines), "\n".join(lines)
    verbose = _cli(*_base(tmp_path, tiny_checkpoint), "--overwrite", "--verbose")
    assert verbose.returncode == 0
    assert any(not OWN_LINES.match(line) for line in verbose.stderr.splitlines())


def test_unknown_task_is_exactly_one_stderr_line(tmp_path, tiny_checkpoint):
    result = _cli("--casing", str(tiny_checkpoint), "--task", "nope")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: unknown task 'nope'; known: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, mlm"]


def test_ctrl_c_says_where_to_resume(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc", n=400)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *_base(tmp_path, tiny_checkpoint), "--log_every", "1",
         "--checkpoint_every", "5"], stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=REPO)
    deadline = time.time() + 240
    for line in process.stderr:
        if line.startswith("epoch 1 step 12/") or time.time() > deadline:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130, rest[-2000:]
    message = rest.strip().splitlines()[-1]
    found = re.fullmatch(r"interrupted at step (\d+); rerun the same command to resume \(from step "
                         r"(\d+), the last checkpoint\)", message)
    assert found, message
    stopped, checkpointed = int(found[1]), int(found[2])
    assert checkpointed % 5 == 0 and 10 <= checkpointed <= stopped
    assert not (tmp_path / "out" / ".mrpc.lock").exists()


# --- values that cannot be meant -------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--method", "lora", "--bottleneck_size", "32"],
     "--bottleneck_size do nothing with --method lora; they resize houlsby, pfeiffer"),
    (["--method", "full", "--non_linearity", "relu"], "--non_linearity do nothing with --method full"),
    (["--adapter_config", "lora", "--bottleneck_size", "8"],
     "with --adapter_config, set the sizes in the config string"),
    (["--bucket_boundaries", "16,64"], "--bucket_boundaries 64 above --max_seq_length 32"),
    (["--adapter_config", "seq_bn[reduction_factor=64]"], "reduction_factor 64 leaves no bottleneck on a 32-wide model"),
    (["--adapter_config", "seq_bn[leave_out=[99]]"], "leave_out [99] names layers a 2-layer model does not have"),
    (["--adapter_config", "lora[r=4, r=8]"], "'r' is given twice in lora[...]"),
])
def test_flags_and_values_that_would_do_nothing_are_refused(tmp_path, tiny_checkpoint, flags, message):
    write_glue_task(tmp_path / "glue", "mrpc")
    base = [f for f in _base(tmp_path, tiny_checkpoint) if True]
    i = base.index("--adapter_config")
    del base[i:i + 2]
    result = _cli_in_process(*base, *flags)
    assert_refused_in_one_line(result, message)
    assert not (tmp_path / "out").exists()


def test_a_long_config_string_is_quoted_short():
    from adapter_bert.configuration import AdapterConfig

    text = "seq_bn[reduction_factor=" + "1" * 10_000
    with pytest.raises(ValueError) as info:
        AdapterConfig.load(text)
    assert len(str(info.value)) < 400


def test_export_only_refuses_a_head_of_another_task(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mnli")
    write_glue_task(tmp_path / "glue", "mrpc")
    base = _base(tmp_path, tiny_checkpoint)
    base[base.index("mrpc")] = "mnli"
    trained = _cli(*base, "--adapter_name", "mrpc")  # a 3-label head in saved_models/mrpc
    assert trained.returncode == 0, trained.stderr[-2000:]
    before = _digests(tmp_path / "out")
    result = _cli_in_process(*_base(tmp_path, tiny_checkpoint), "--export_only")
    assert result.returncode == 2
    assert "has 3 outputs; task mrpc has 2" in result.stderr.strip().splitlines()[-1]
    assert _digests(tmp_path / "out") == before


def test_tfds_failure_is_one_line_pointing_to_data_dir(monkeypatch):
    import tensorflow_datasets as tfds

    from adapter_bert.glue.data import read_tfds_examples

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.microsoft.com'\nmore lines")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(FileNotFoundError) as info:
        read_tfds_examples("mrpc", "train")
    message = str(info.value)
    assert "\n" not in message and message.startswith("GLUE mrpc is not in the TFDS cache")
    assert "ConnectionError: Failed to resolve" in message and message.endswith("pass --data_dir with the GLUE TSV files")


@pytest.mark.parametrize("tpu", [[], ["--tpu", "local"]])
def test_tpu_strategy_without_a_tpu_is_one_line(tmp_path, tiny_checkpoint, tpu):
    write_glue_task(tmp_path / "glue", "mrpc")
    result = _cli(*_base(tmp_path, tiny_checkpoint), "--strategy", "tpu", *tpu)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no TPU found at "), result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda data: data.replace(b"\n", b"\n\xff", 3), "is not UTF-8 text (line 2, byte"),
    (lambda data: "\ufeff\ufeff".encode() + data, "starts with two byte-order marks"),
])
def test_unreadable_glue_files_name_the_file_and_line(tmp_path, damage, message):
    from adapter_bert.glue.data import read_glue_tsv

    write_glue_task(tmp_path / "glue", "rte")
    path = tmp_path / "glue" / "RTE" / "train.tsv"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError) as info:
        read_glue_tsv("rte", tmp_path / "glue", "train")
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\ufeff" not in str(info.value)


def test_a_field_over_csv_s_default_limit_is_read(tmp_path):
    from adapter_bert.glue.data import read_glue_tsv

    write_glue_task(tmp_path / "glue", "sst2")
    path = tmp_path / "glue" / "SST-2" / "train.tsv"
    lines = path.read_text().splitlines()
    long_text = "word " * 40_000  # 200,000 characters
    lines[1] = long_text.strip() + "\t" + lines[1].split("\t")[1]
    path.write_text("\n".join(lines) + "\n")
    examples = read_glue_tsv("sst2", tmp_path / "glue", "train")
    assert len(examples[0].text_a) == len(long_text.strip())


@pytest.mark.parametrize("argv, message", [
    (["stray"], "error: unexpected arguments: stray (every option is a --flag; --helpfull lists them)"),
    (["--batch_size", "many"], "error: flag --batch_size=many: invalid literal for int() with base 10: 'many'"),
    (["--no_such_flag"], "error: Unknown command line flag 'no_such_flag'"),
])
def test_usage_errors_are_one_line_and_status_2(argv, message):
    result = _cli(*argv)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message], result.stderr[-2000:]


# --- serving --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    import tensorflow as tf

    from adapter_bert import AdapterBertModel, load_tokenizer
    from adapter_bert.export import export_saved_model

    model = AdapterBertModel.from_pretrained(tiny_checkpoint)
    for task in ("sst2", "mrpc"):
        model.add_adapter(task, config="seq_bn")
        model.add_classification_head(task, num_labels=2)
    path = export_saved_model(model, tmp_path_factory.mktemp("export"), ["sst2", "mrpc"],
                              load_tokenizer(tiny_checkpoint), max_seq_length=16)
    return tf.saved_model.load(str(path))


@pytest.mark.parametrize("change, message", [
    (lambda x: {**x, "input_ids": x["input_ids"] - 20}, "input_ids must be >= 0"),
    (lambda x: {**x, "input_ids": x["input_ids"] + 1000}, "input_ids must be below the vocabulary size 32"),
    (lambda x: {**x, "attention_mask": x["attention_mask"][:, :1]}, "attention_mask must have the shape of input_ids"),
    (lambda x: {**x, "token_type_ids": x["token_type_ids"][:1]}, "token_type_ids must have the shape of input_ids"),
    (lambda x: {**x, "token_type_ids": x["token_type_ids"] + 2}, "token_type_ids must be below 2"),
])
def test_serving_refuses_inputs_that_would_be_silently_wrong(served, change, message):
    import tensorflow as tf

    inputs = {"input_ids": tf.constant([[6, 9, 11, 7], [6, 12, 7, 0]]),
              "attention_mask": tf.constant([[1, 1, 1, 1], [1, 1, 1, 0]]),
              "token_type_ids": tf.zeros((2, 4), tf.int32)}
    assert served.signatures["serving_default"](**inputs)["logits"].shape == (2, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        served.signatures["serving_default"](**change(inputs))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        served.signatures["mixed"](**change(inputs), task=tf.constant(["sst2", "mrpc"]))


def test_text_signatures_answer_an_empty_batch_with_empty_outputs(served):
    import tensorflow as tf

    empty = tf.constant([], tf.string)
    for name, args in (("sst2_text", {"text_a": empty}),
                       ("mrpc_text", {"text_a": empty, "text_b": empty}),
                       ("mixed_text", {"text_a": empty, "text_b": empty, "task": empty})):
        out = served.signatures[name](**args)
        assert out["logits"].shape == (0, 2) and out["label"].shape == (0,), name
    one = served.signatures["sst2_text"](text_a=tf.constant(["the cat sat ."]))
    assert one["logits"].shape == (1, 2)


def test_progress_draws_a_live_bar_on_a_terminal_and_plain_lines_in_a_file():
    import io

    from adapter_bert.training import _Progress

    terminal = io.StringIO()
    progress = _Progress(total_steps=6, every=3, stream=terminal, live=True)
    progress.begin(0)
    for step in range(1, 7):
        progress.update(step, 1, 0.25, 4)
    progress.note("dev at step 6: f1 0.5000")
    text = terminal.getvalue()
    assert text.count("\r") == 5 and "[" + "=" * 4 in text  # a bar per step but the last
    lines = [line.split("\033[K")[-1] for line in text.split("\n") if line]
    assert lines[-3].startswith("epoch 1 step 3/6") and lines[-2].startswith("epoch 1 step 6/6")
    assert lines[-1] == "dev at step 6: f1 0.5000"
    plain = io.StringIO()
    progress = _Progress(total_steps=6, every=3, stream=plain)
    progress.begin(0)
    for step in range(1, 7):
        progress.update(step, 1, 0.25, 4)
    assert "\r" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 2
