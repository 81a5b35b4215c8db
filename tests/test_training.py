"""The training command end to end on tiny BERTs and GLUE-format files written by the tests."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adapter_bert.glue import compute_metrics, get_task
from adapter_bert.testing import write_tiny_hf_checkpoint
from adapter_bert.training import TrainingArgs, make_schedule, run
from test_glue import DIRS, FORMATS, glue_rows, write_tsv

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run_tf_adapter_bert.py"


def write_glue_task(root: Path, task_name: str, n: int = 12) -> Path:
    """GLUE-format train/dev/test files of one task under root/<DIR>/."""
    for split, (file_name, header, *_rest) in FORMATS[task_name].items():
        _, _, rows, _ = glue_rows(task_name, split, n=n)
        write_tsv(root / DIRS[task_name] / file_name, header, rows)
    return root


def _args(tmp_path, checkpoint, **overrides):
    values = dict(task="mrpc", casing=str(checkpoint), data_dir=str(tmp_path / "glue"),
                  adapter_config="seq_bn[reduction_factor=4]", batch_size=4, epochs=2,
                  max_seq_length=32, learning_rate=1e-2, saved_models_dir=str(tmp_path / "out"),
                  log_every=100, export=False)
    values.update(overrides)
    return TrainingArgs(**values)


TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]


@pytest.mark.parametrize("task_name", TASKS)
def test_end_to_end_every_task_format(tmp_path, tiny_checkpoint, task_name):
    write_glue_task(tmp_path / "glue", task_name)
    if task_name == "mnli":
        write_glue_task(tmp_path / "glue", "ax")
    args = _args(tmp_path, tiny_checkpoint, task=task_name, data_dir=str(tmp_path / "glue"),
                 export=task_name in ("mrpc", "stsb"))
    results = run(args)
    out = tmp_path / "out" / task_name
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["task"] == task_name
    for key in ("method", "adapter_config", "epochs", "best", "trainable_params", "total_params",
                "train_examples_per_second", "wall_seconds", "versions"):
        assert key in on_disk, key
    assert [e["step"] for e in on_disk["epochs"]] == [3, 6]  # 12 examples / batch 4, 2 epochs
    task = get_task(task_name)
    assert set(on_disk["best"]["dev"]) == set(task.metrics)
    assert 0 < on_disk["trainable_params"] < on_disk["total_params"]
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head.safetensors", "head_config.json"]
    expected = {"mnli": ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"]}.get(
        task_name, [f"{ {'cola': 'CoLA', 'sst2': 'SST-2', 'stsb': 'STS-B'}.get(task_name, task_name.upper())}.tsv"])
    assert sorted(p.name for p in (out / "predictions").iterdir()) == expected
    lines = (out / "predictions" / expected[0]).read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    assert results["best"] == on_disk["best"]
    if args.export:
        assert on_disk["export"] == "export/1"
        assert (out / "export" / "1" / "saved_model.pb").is_file()
        again = run(dataclasses.replace(args, export_only=True))
        assert again["export"] == "export/2"
    # Nothing half-written: no temporary files anywhere in the output.
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


def test_dev_metrics_recomputed_from_the_saved_adapter(tmp_path, tiny_checkpoint):
    """results.json's best dev metrics equal scikit-learn on the saved adapter's predictions."""
    from adapter_bert import AdapterBertModel, load_tokenizer
    from adapter_bert.glue import encode_examples, make_dataset, read_glue_tsv, label_array

    write_glue_task(tmp_path / "glue", "mrpc", n=16)
    results = run(_args(tmp_path, tiny_checkpoint, epochs=1, predict_test=False))
    model = AdapterBertModel.from_pretrained(tiny_checkpoint)
    model.load_adapter(tmp_path / "out" / "mrpc" / "adapter", set_active=True)
    examples = read_glue_tsv("mrpc", tmp_path / "glue", "dev")
    encoded = encode_examples(load_tokenizer(tiny_checkpoint), examples, 32)
    logits = np.concatenate([model(x).numpy() for x, _ in make_dataset(encoded, None, 8)])
    labels = label_array("mrpc", examples)
    from sklearn.metrics import accuracy_score, f1_score

    assert results["best"]["dev"]["f1"] == pytest.approx(f1_score(labels, logits.argmax(-1)), abs=1e-6)
    assert results["best"]["dev"]["accuracy"] == pytest.approx(
        accuracy_score(labels, logits.argmax(-1)), abs=1e-6)
    assert compute_metrics("mrpc", logits.argmax(-1), labels) == pytest.approx(results["best"]["dev"])


def test_schedule_warms_up_and_decays():
    schedule = make_schedule(2e-3, total_steps=100, warmup_steps=10)
    values = [float(schedule(s)) for s in (0, 5, 10, 55, 100)]
    assert values == pytest.approx([0.0, 1e-3, 2e-3, 1e-3, 0.0])


def _cli(*flags, env=None, timeout=600):
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)


def _script_module():
    """run_tf_adapter_bert.py as a module, loaded once per process: loading it defines its
    flags, which absl allows once."""
    import importlib.util

    module = sys.modules.get("_run_tf_adapter_bert")
    if module is None:
        spec = importlib.util.spec_from_file_location("_run_tf_adapter_bert", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["_run_tf_adapter_bert"] = module
    return module


def _cli_in_process(*flags):
    """The command's `main` in this process, for inputs it must refuse: the same flag parsing,
    validation and `error:` line as `_cli`, without a TensorFlow start-up per case (the whole
    stderr of a real process is checked by the reliability tests).

    Returns a `CompletedProcess` like `_cli`'s (stdout is not captured)."""
    import contextlib
    import io

    from absl import flags as absl_flags

    module = _script_module()
    absl_flags.FLAGS.unparse_flags()
    stderr = io.StringIO()
    code = 0
    # --verbose: the stderr filter would take over this test process's stderr.
    with contextlib.redirect_stderr(stderr):
        try:
            module.main(module.parse_flags([str(SCRIPT), *flags, "--verbose"]))
        except SystemExit as e:
            code = e.code
        finally:
            absl_flags.FLAGS.unparse_flags()
    return subprocess.CompletedProcess([str(SCRIPT), *flags], code, None, stderr.getvalue())


def assert_refused_in_one_line(result, message: str) -> str:
    """The command exited 2 with exactly one `error:` line, and that line holds `message`.

    Returns the line, for tests that check more of it."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize("flags, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--adapter_config", "seq_bn[invalid_key=2]"], "bad --adapter_config"),
    (["--adapter_config", "lora[r=8]|invalid_name"], "unknown adapter config 'invalid_name'"),
    (["--batch_size", "-4"], "--batch_size must be a positive integer"),
    (["--bottleneck_size", "0"], "--bottleneck_size must be a positive integer"),
    (["--max_seq_length", "1000"], "max_seq_length 1000 is above"),
    (["--data_dir", "/nonexistent/glue"], "/nonexistent/glue"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio must be in [0, 1)"),
    (["--load_adapter", "/nonexistent/adapter"], "--load_adapter /nonexistent/adapter is not a directory"),
    (["--adapter_setup", "Stack(lang, mrpc)"], "names 'lang', which no --load_adapter provides"),
    (["--adapter_setup", "Stack(lang, mrpc"], "bad --adapter_setup: cannot parse"),
    (["--adapter_setup", "Stack(mrpc, Stack(a, b))"], "bad --adapter_setup: adapter setup is invalid"),
])
def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path, tiny_checkpoint, flags, message):
    write_glue_task(tmp_path / "glue", "mrpc")
    base = ["--casing", str(tiny_checkpoint), "--data_dir", str(tmp_path / "glue"),
            "--saved_models_dir", str(tmp_path / "out")]
    result = _cli_in_process(*base, *flags)
    assert_refused_in_one_line(result, message)
    assert not (tmp_path / "out").exists()


def train_on_two_logical_cpus(training_args: str, strategy: str) -> None:
    """`run(TrainingArgs(<training_args>))` in a fresh process whose CPU is split into two
    logical devices (TensorFlow fixes them at start-up), checking the replica count."""
    code = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from adapter_bert.training import TrainingArgs, run\n"
        f"r = run(TrainingArgs({training_args}))\n"
        "print('REPLICAS', r['replicas'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"REPLICAS {2 if strategy == 'mirrored' else 1}" in result.stdout


@pytest.mark.parametrize("clip", ["", ", max_grad_norm=1e-3"])
@pytest.mark.parametrize("trained", ["adapter_config='lora[r=4]'", "method='full'"])
def test_mirrored_two_cpus_matches_one_device(tmp_path, tiny_checkpoint, trained, clip):
    """Same global batch on 1 device and on 2 logical CPUs: same trained weights (full
    fine-tuning: the embeddings' rows, which both replicas update, included). Clipping every
    step (a tiny norm) too: the norm is that of the whole batch's gradient, not of each
    replica's part."""
    from safetensors.numpy import load_file

    write_glue_task(tmp_path / "glue", "sst2", n=16)
    weights = {}
    for strategy in ("default", "mirrored"):
        train_on_two_logical_cpus(
            f"task='sst2', casing={str(tiny_checkpoint)!r}, data_dir={str(tmp_path / 'glue')!r}, "
            f"{trained}{clip}, batch_size=8, epochs=2, max_seq_length=32, learning_rate=1e-2, "
            f"strategy={strategy!r}, saved_models_dir={str(tmp_path / strategy)!r}, "
            "eval_every=1000, predict_test=False", strategy)
        files = sorted((tmp_path / strategy / "sst2").rglob("*.safetensors"))
        assert files
        weights[strategy] = {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}
    assert weights["mirrored"].keys() == weights["default"].keys()
    for name, value in weights["default"].items():
        np.testing.assert_allclose(weights["mirrored"][name], value, atol=1e-5, err_msg=name)


def test_adam_steps_a_repeated_embedding_row_as_one_gradient():
    """Adam's first step moves each weight by at most the learning rate (by it where the gradient
    is far above epsilon), also an embedding row that several tokens of the batch read: its
    gradient's parts are added before Adam squares them, as in a dense (PyTorch) update."""
    import keras

    from adapter_bert import AdapterBertModel
    from adapter_bert.objectives import GlueObjective
    from adapter_bert.testing import random_inputs, tiny_encoder
    from adapter_bert.training import make_train_step

    model = AdapterBertModel(tiny_encoder(dropout=0.0))
    model.add_classification_head("t", num_labels=2)
    model.bert.trainable = True
    trainable = model.trainable_weights
    words = model.bert.embeddings.word_embeddings.embeddings
    before = np.array(words)
    inputs = random_inputs(batch=4, seq=10, seed=1)
    assert len(np.unique(inputs["input_ids"])) < inputs["input_ids"].size  # rows are repeated
    lr = 1e-2
    task_loss = GlueObjective(None, get_task("sst2")).loss(global_batch=4)

    def loss(labels, logits):  # scaled so that every gradient is far above Adam's epsilon
        return task_loss(labels, logits) * 1e4

    step = make_train_step(model, keras.optimizers.AdamW(lr, weight_decay=0.0), trainable, loss)
    step(inputs, np.array([0, 1, 1, 0], "int32"))
    moves = np.abs(np.array(words) - before)
    assert moves.max() <= lr * (1 + 1e-4)
    assert moves.max() >= lr * (1 - 1e-4)


@pytest.mark.parametrize("trained, loss_scaled", [("adapter", False), ("adapter", True),
                                                   ("everything", False)])
def test_max_grad_norm_clips_the_whole_gradient(trained, loss_scaled):
    """One SGD step (lr 1) moves the weights by minus the gradient: clipped, the move over all
    trained weights together has exactly the asked norm and each weight's share of the unclipped
    move (Keras' per-weight `clipnorm` would give every weight that norm). Under fp16's loss
    scaling, the same move; with the embeddings trained, their sparse gradients (rows repeated
    within the batch) count at their dense norm."""
    import keras

    from adapter_bert import AdapterBertModel
    from adapter_bert.objectives import GlueObjective
    from adapter_bert.testing import random_inputs, tiny_encoder
    from adapter_bert.training import make_train_step

    def move(max_grad_norm):
        keras.utils.set_random_seed(0)
        model = AdapterBertModel(tiny_encoder())
        model.add_adapter("t", config="seq_bn[reduction_factor=4]")
        model.add_classification_head("t", num_labels=2)
        model.train_adapter("t")
        if trained == "everything":
            model.bert.trainable = True
        optimizer = keras.optimizers.SGD(1.0)
        if loss_scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainable = model.trainable_weights
        before = [np.array(v) for v in trainable]
        step = make_train_step(model, optimizer, trainable,
                               GlueObjective(None, get_task("sst2")).loss(global_batch=4),
                               max_grad_norm=max_grad_norm)
        step(random_inputs(batch=4, seq=8, seed=1), np.array([0, 1, 1, 0], "int32"))
        return [np.array(v) - b for v, b in zip(trainable, before)]

    free = move(None)
    free_norm = np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in free))
    limit = free_norm / 10
    clipped = move(limit)
    clipped_norm = np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in clipped))
    # A move is read back as float32 weights minus their start, which rounds at about 1e-7 of a
    # weight near 1: hence 1e-4 on the norm (a wrong clip is off by 20% or more) and 1e-6 per
    # weight.
    np.testing.assert_allclose(clipped_norm, limit, rtol=1e-4)
    for c, f in zip(clipped, free):
        np.testing.assert_allclose(c, f / 10, atol=1e-6 * max(1.0, float(np.abs(f).max())))
    # A limit above the gradient's norm changes nothing (TensorFlow's factor may be 1 - 2**-24).
    for c, f in zip(move(free_norm * 2), free):
        np.testing.assert_allclose(c, f, atol=1e-6)


def test_max_grad_norm_leaves_a_non_finite_step_to_the_loss_scaling():
    """fp16 with clipping: a step whose gradient overflows moves no weight and halves the loss
    scale, as it does without clipping."""
    import keras
    import tensorflow as tf

    from adapter_bert import AdapterBertModel
    from adapter_bert.testing import random_inputs, tiny_encoder
    from adapter_bert.training import make_train_step

    model = AdapterBertModel(tiny_encoder())
    model.add_adapter("t", config="lora[r=4]")
    model.add_classification_head("t", num_labels=2)
    model.train_adapter("t")
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0))
    trainable = model.trainable_weights
    optimizer.build(trainable)
    before = [np.array(v) for v in trainable]
    scale = float(optimizer.dynamic_scale)

    def overflowing_loss(labels, logits):
        return tf.reduce_sum(logits) * np.float32(np.inf)

    step = make_train_step(model, optimizer, trainable, overflowing_loss, max_grad_norm=1.0)
    step(random_inputs(batch=2, seq=8), np.array([0, 1], "int32"))
    for v, b in zip(trainable, before):
        np.testing.assert_array_equal(np.array(v), b)
    assert float(optimizer.dynamic_scale) == scale / 2


def kill_and_resume(flags, checkpoints_dir: Path, checkpoints=range(2, 12), checkpoints_every=2):
    """Starts the command with `flags`, SIGKILLs it once `checkpoints_dir` holds the checkpoint
    of a random step (`checkpoints_every` times one of `checkpoints`), then reruns it and checks
    that it resumed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, str(SCRIPT), *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    choice = np.random.default_rng(int(time.time())).integers(checkpoints.start, checkpoints.stop)
    kill_after = int(choice) * checkpoints_every
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        steps = [int(p.name.split("-")[1].split(".")[0]) for p in checkpoints_dir.glob("ckpt-*.index")]
        if steps and max(steps) >= kill_after:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = _cli(*flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    return resumed


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL mid-training, rerun the same command: the adapter equals an uninterrupted run's."""
    from safetensors.numpy import load_file

    checkpoint = tmp_path / "ckpt"
    write_tiny_hf_checkpoint(checkpoint, seed=0, dropout=0.1)  # dropout on: its RNG must resume too
    write_glue_task(tmp_path / "glue", "rte", n=40)

    def flags(out):
        return ["--casing", str(checkpoint), "--task", "rte", "--data_dir", str(tmp_path / "glue"),
                "--adapter_config", "double_seq_bn[reduction_factor=4]", "--batch_size", "4",
                "--epochs", "3", "--max_seq_length", "32", "--learning_rate", "5e-3",
                "--checkpoint_every", "2", "--saved_models_dir", str(out), "--predict_test=false"]

    reference = _cli(*flags(tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr[-3000:]

    kill_and_resume(flags(tmp_path / "killed"), tmp_path / "killed" / "rte" / "checkpoints",
                    checkpoints=range(2, 12))
    a = load_file(str(tmp_path / "whole" / "rte" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "rte" / "adapter" / "adapter.safetensors"))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6, err_msg=name)
    whole = json.loads((tmp_path / "whole" / "rte" / "results.json").read_text())
    again = json.loads((tmp_path / "killed" / "rte" / "results.json").read_text())
    assert again["epochs"] == whole["epochs"] and again["best"] == whole["best"]


def test_rerun_with_other_flags_is_refused(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    run(_args(tmp_path, tiny_checkpoint, max_steps=2, predict_test=False))
    with pytest.raises(ValueError, match="holds a run with other arguments \\(learning_rate differ\\)"):
        run(_args(tmp_path, tiny_checkpoint, max_steps=2, predict_test=False, learning_rate=0.5))


def test_tfds_path_with_mock_data(tmp_path, tiny_checkpoint):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        results = run(_args(tmp_path, tiny_checkpoint, task="sst2", data_dir=None, epochs=1,
                            predict_test=False))
    assert results["epochs"][-1]["step"] == 3 and "accuracy" in results["best"]["dev"]


FLAGFILES = sorted((REPO / "flags").rglob("*.flags"))


def test_every_flagfile_parses_into_valid_arguments():
    """Each task and method flagfile names only real flags with valid values."""
    from absl import flags

    from adapter_bert.training import validate_args

    script = _script_module()
    assert len(FLAGFILES) >= 9 + 8 + 1
    for path in FLAGFILES:
        flags.FLAGS.unparse_flags()
        extra = [] if path.parent.name == "flags" else ["--flagfile", str(REPO / "flags" / "mrpc.flags")]
        flags.FLAGS(["prog", *extra, "--flagfile", str(path)])
        args = script.args_from_flags(flags.FLAGS)
        validate_args(args)  # no --data_dir: the TFDS source, not read here
    flags.FLAGS.unparse_flags()


def test_recompute_attention_trains_to_the_same_weights(tmp_path, tiny_checkpoint):
    """--recompute_attention changes what the backward pass keeps, not what it computes: two
    runs with the same seed (dropout on) end at the same adapter weights, where another seed
    ends far from them."""
    from safetensors.numpy import load_file

    write_glue_task(tmp_path / "glue", "mrpc", n=16)
    weights = {}
    for recompute, seed in ((False, 0), (True, 0), (False, 1)):
        out = tmp_path / f"out_{recompute}_{seed}"
        run(_args(tmp_path, tiny_checkpoint, epochs=1, predict_test=False, seed=seed,
                  recompute_attention=recompute, saved_models_dir=str(out)))
        weights[recompute, seed] = load_file(out / "mrpc" / "adapter" / "adapter.safetensors")
    plain, recomputed, other = weights[False, 0], weights[True, 0], weights[False, 1]
    assert plain.keys() == recomputed.keys()
    for name, value in plain.items():
        np.testing.assert_allclose(recomputed[name], value, atol=1e-5, err_msg=name)
    assert max(float(np.abs(other[name] - value).max()) for name, value in plain.items()) > 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_restores_the_policy(tmp_path, tiny_checkpoint, precision):
    import keras

    write_glue_task(tmp_path / "glue", "mrpc")
    results = run(_args(tmp_path, tiny_checkpoint, mixed_precision=precision, epochs=1,
                        max_grad_norm=1.0, predict_test=False))
    assert np.isfinite(results["best"]["dev"]["f1"])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_tpu_input_pipeline_has_static_shapes():
    """What --strategy tpu feeds the loop: full batches, each padded to a fixed length."""
    from adapter_bert.glue.data import EncodedExamples
    from adapter_bert.training import training_dataset

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, 50)
    encoded = EncodedExamples.from_rows([np.arange(n) + 1 for n in lengths])
    labels = rng.integers(0, 2, 50)
    fixed = training_dataset(TrainingArgs(batch_size=8, max_seq_length=64), encoded, labels, 0, True)
    assert fixed.element_spec[0]["input_ids"].shape.as_list() == [8, 64]
    assert sum(1 for _ in fixed) == 50 // 8  # the partial batch is dropped
    bucketed = training_dataset(TrainingArgs(batch_size=8, max_seq_length=64,
                                             bucket_boundaries=(16, 32, 64)), encoded, labels, 1, True)
    shapes = [tuple(x["input_ids"].shape) for x, _ in bucketed]
    assert shapes and all(b == 8 and s in (16, 32, 64) for b, s in shapes)
    assert bucketed.element_spec[0]["input_ids"].shape[0] == 8
    dynamic = training_dataset(TrainingArgs(batch_size=8, max_seq_length=64), encoded, labels, 0, False)
    assert dynamic.element_spec[0]["input_ids"].shape.as_list() == [None, None]


def _digests(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_new_adapter_trains_inside_a_stack_of_loaded_adapters(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file

    from adapter_bert import AdapterBertModel, Stack
    from adapter_bert.export import export_saved_model  # noqa: F401  (the run exports itself)

    write_glue_task(tmp_path / "glue", "sst2")
    write_glue_task(tmp_path / "glue", "mrpc")
    run(_args(tmp_path, tiny_checkpoint, task="sst2", adapter_config="seq_bn[reduction_factor=4]",
              epochs=1))
    sst2 = tmp_path / "out" / "sst2" / "adapter"
    before = _digests(sst2)
    args = _args(tmp_path, tiny_checkpoint, load_adapters=(str(sst2),),
                 adapter_setup="Stack(sst2, mrpc)", export=True, epochs=1)
    results = run(args)
    out = tmp_path / "out" / "mrpc"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["adapter_setup"] == "Stack[sst2, mrpc]"
    assert on_disk["loaded_adapters"] == [{"name": "sst2", "path": str(sst2)}]
    assert _digests(sst2) == before  # the loaded adapter's files are untouched
    # Only the new adapter and its head trained.
    mrpc_weights = load_file(str(out / "adapter" / "adapter.safetensors"))
    head_weights = load_file(str(out / "adapter" / "head.safetensors"))
    assert results["trainable_params"] == sum(int(np.prod(v.shape)) for v in
                                              list(mrpc_weights.values()) + list(head_weights.values()))
    assert sorted(p.name for p in (out / "setup").iterdir()) == ["adapter_setup.json", "mrpc", "sst2"]
    # The SavedModel serves the stack: it equals the model rebuilt from the saved setup.
    model = AdapterBertModel.from_pretrained(tiny_checkpoint)
    assert model.load_adapter_setup(out / "setup") == Stack("sst2", "mrpc")
    import tensorflow as tf

    features = {"input_ids": np.array([[6, 10, 11, 7, 0]], "int32"),
                "attention_mask": np.array([[1, 1, 1, 1, 0]], "int32"),
                "token_type_ids": np.zeros((1, 5), "int32")}
    served = tf.saved_model.load(str(out / "export" / "1")).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in features.items()})
    np.testing.assert_allclose(served["logits"].numpy(), model(features).numpy(), atol=1e-5)
    model.set_active_adapters("mrpc")
    assert np.abs(served["logits"].numpy() - model(features).numpy()).max() > 1e-6  # the stack matters
    # A changed loaded adapter is another run: resuming is refused.
    tensors = load_file(str(sst2 / "adapter.safetensors"))
    from safetensors.numpy import save_file

    save_file({k: v + 1 for k, v in tensors.items()}, str(sst2 / "adapter.safetensors"),
              metadata={"format": "adapter_bert"})
    with pytest.raises(ValueError, match="holds a run with other arguments \\(load_adapters differ\\)"):
        run(args)


def test_setup_errors(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc")
    write_glue_task(tmp_path / "glue", "sst2")
    run(_args(tmp_path, tiny_checkpoint, task="sst2", epochs=1))
    sst2 = str(tmp_path / "out" / "sst2" / "adapter")
    for overrides, match in (
            ({"adapter_setup": "Stack(mrpc, sst2)"}, "must end with 'mrpc'"),
            ({"adapter_setup": "Parallel(sst2, mrpc)"}, "must end with 'mrpc'"),
            ({"adapter_setup": "sst2"}, "does not hold the adapter this run trains, 'mrpc'"),
            ({"load_adapters": (sst2, sst2)}, "two --load_adapter directories hold an adapter named 'sst2'"),
            ({"merge_for_serving": True}, "--merge_for_serving merges one adapter"),
            ({"task": "sst2", "saved_models_dir": str(tmp_path / "o2")},
             "holds an adapter named 'sst2', the name of the adapter this run trains")):
        values = {"load_adapters": (sst2,), **overrides}
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run(_args(tmp_path, tiny_checkpoint, **values))
    assert not (tmp_path / "out" / "mrpc").exists()


def test_test_predictions_come_from_the_best_epoch_not_the_last(tmp_path, tiny_checkpoint,
                                                               monkeypatch):
    """The first evaluation is made the best; the predictions must be that adapter's."""
    from adapter_bert import AdapterBertModel, load_tokenizer
    from adapter_bert.glue import data, metrics, submission

    write_glue_task(tmp_path / "glue", "stsb")
    scores = iter([0.9, 0.5, 0.1])
    monkeypatch.setattr(metrics, "compute_metrics",
                        lambda task, predictions, labels: {"pearson": next(scores), "spearman": 0.0})
    captured = {}
    real_write = submission.write_submission

    def capture(task, split, guids, predictions, directory):
        captured["predictions"] = np.asarray(predictions)
        return real_write(task, split, guids, predictions, directory)

    monkeypatch.setattr(submission, "write_submission", capture)
    run(_args(tmp_path, tiny_checkpoint, task="stsb", epochs=1, eval_every=1))
    out = tmp_path / "out" / "stsb"
    assert json.loads((out / "results.json").read_text())["best"]["step"] == 1
    model = AdapterBertModel.from_pretrained(tiny_checkpoint)
    model.load_adapter(out / "adapter", set_active=True)
    examples = data.read_glue_tsv(get_task("stsb"), str(tmp_path / "glue"), "test")
    encoded = data.encode_examples(load_tokenizer(str(tiny_checkpoint)), examples, 32)
    expected = np.concatenate([model(inputs).numpy()[:, 0] for inputs, _ in data.make_dataset(
        encoded, None, 8, padding="dynamic", max_seq_length=32)])
    np.testing.assert_allclose(captured["predictions"], expected, atol=1e-5)


def test_fusion_of_trained_adapters_through_the_command(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file

    write_glue_task(tmp_path / "glue", "sst2")
    write_glue_task(tmp_path / "glue", "mrpc")
    run(_args(tmp_path, tiny_checkpoint, task="sst2", epochs=1))
    run(_args(tmp_path, tiny_checkpoint, task="mrpc", epochs=1, saved_models_dir=str(tmp_path / "mr")))
    dirs = (str(tmp_path / "out" / "sst2" / "adapter"), str(tmp_path / "mr" / "mrpc" / "adapter"))
    before = [_digests(Path(d)) for d in dirs]
    results = run(_args(tmp_path, tiny_checkpoint, task="mrpc", adapter_config=None, fusion=dirs,
                        epochs=1, export=True, saved_models_dir=str(tmp_path / "fused")))
    out = tmp_path / "fused" / "mrpc"
    assert [_digests(Path(d)) for d in dirs] == before
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["method"] == "fusion" and on_disk["adapter_setup"] == "Fuse[sst2, mrpc]"
    assert on_disk["fusion"]["adapters"] == ["sst2", "mrpc"]
    assert sorted(p.name for p in (out / "fusion").iterdir()) == [
        "adapter_fusion_config.json", "head.safetensors", "head_config.json",
        "model_adapter_fusion.safetensors"]
    fusion = load_file(str(out / "fusion" / "model_adapter_fusion.safetensors"))
    head = load_file(str(out / "fusion" / "head.safetensors"))
    assert results["trainable_params"] == sum(int(np.prod(v.shape)) for v in
                                              list(fusion.values()) + list(head.values()))
    assert (out / "export" / "1" / "saved_model.pb").is_file()
    for overrides, match in (({"adapter_config": "seq_bn"}, "--adapter_config does not apply"),
                             ({"load_adapters": dirs[:1]}, "--load_adapter does not apply"),
                             ({"fusion_config": "fancy"}, "bad --fusion_config")):
        values = {"adapter_config": None, "fusion": dirs, "saved_models_dir": str(tmp_path / "x"),
                  **overrides}
        with pytest.raises(ValueError, match=match):
            run(_args(tmp_path, tiny_checkpoint, **values))
    assert not (tmp_path / "x").exists()
