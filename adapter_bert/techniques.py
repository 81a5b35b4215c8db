"""Fine-tuning techniques beside the adapters: layer-wise learning rates, cautious updating
(L2-SP, EWC, learning without forgetting), gradual unfreezing, and how far a run moved the base.

Every trained weight belongs to one part of the model, bottom to top: `embeddings` (with an
invertible adapter), `layer_0` ... `layer_{L-1}`, then `top` (the pooler, the heads, and adapter
weights shared by all layers such as a prefix pool or prompts). An adapter's weights belong to
the layer they sit in.
The techniques act on parts:

* Layer-wise learning rates (`layer_lr_decay=D`): layer l of L (counted 1..L from the bottom)
  trains at `lr * D**(L - l)`, the embeddings at `lr * D**L`, the top at `lr`.
* L2-SP (`l2sp`): `strength / 2 * sum((w - w0)**2)` over the trained base weights, `w0` their
  values when the run started (the pretrained ones, or a loaded fine-tuned base's).
* EWC (`ewc`): the same pull weighted by a diagonal Fisher estimate of an earlier run,
  `strength / 2 * sum(F * (w - w0)**2)`; `save_fisher` writes one (`fisher.safetensors`: the
  mean over a run's training batches of each base weight's squared loss gradient).
* Learning without forgetting (`kl`): `strength * T**2 * KL(p_old || p_new)` with temperature
  `T = 2` for every earlier task's head, between that head's predictions on this task's inputs
  under the frozen starting model and under the model being trained.
* Gradual unfreezing (ULMFiT): the top part trains first; every interval one more layer below
  joins, the embeddings last. A newly unfrozen weight starts its Adam moments then.

`TechniquesAdamW` is AdamW with a learning-rate factor and an Adam step count per weight (a
weight first updated at step t is updated as a fresh Adam would); with every factor 1 and every
weight trained from the start it computes what `keras.optimizers.AdamW` does on dense gradients
(an embedding's sparse gradient is made dense first, as PyTorch's Adam sees it).

Example:
>>> layer_lr_factors(["embeddings", "layer_0", "layer_1", "top"], num_layers=2, decay=0.5)
[0.25, 0.5, 1.0, 1.0]
>>> unfreezing_stages(["embeddings", "layer_0", "layer_1", "top"], num_layers=2)
[3, 2, 1, 0]
>>> parse_interval("2", steps_per_epoch=50), parse_interval("30steps", steps_per_epoch=50)
(100, 30)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

TOP = "top"
REGULARIZERS = ("l2sp", "ewc", "kl")
FISHER_FILE = "fisher.safetensors"
#: The temperature of learning without forgetting (Li & Hoiem 2016 use 2).
KL_TEMPERATURE = 2.0

_LAYER = re.compile(r"(?:^|[._/])layer_(\d+)(?:[._/]|$)")


# --- parts ----------------------------------------------------------------------------------------

def part_of_adapter_weight(name: str) -> str:
    """The part an adapter weight named `name` (`named_variables` key) sits in.

    Example:
    >>> part_of_adapter_weight("bottleneck.layer_3_mh_adapter.down.kernel")
    'layer_3'
    >>> part_of_adapter_weight("prefix_tuning.pool.wte.embeddings")
    'top'
    >>> part_of_adapter_weight("bottleneck.invertible.F.0.kernel")
    'embeddings'
    """
    match = _LAYER.search(name)
    if match:
        return f"layer_{match.group(1)}"
    # An invertible adapter (MAD-X) acts on the embedding output.
    return "embeddings" if ".invertible." in f".{name}" else TOP


def trained_parts(model, trainable) -> list[str]:
    """The part of each variable in `trainable` (the model's trainable weights)."""
    from adapter_bert.bert.checkpoint import base_variables_by_part

    parts = {}
    for part, variables in base_variables_by_part(model.bert).items():
        for variable in variables.values():
            parts[id(variable)] = TOP if part == "pooler" else part
    for module in list(model.adapter_modules.values()) + list(model.fusion_modules.values()):
        for name, variable in module.named_variables().items():
            parts.setdefault(id(variable), part_of_adapter_weight(name))
    return [parts.get(id(v), TOP) for v in trainable]


def _depth(part: str, num_layers: int) -> int:
    """0 for the embeddings, l for layer l (1-based), L + 1 for the top."""
    if part == "embeddings":
        return 0
    if part == TOP:
        return num_layers + 1
    return int(part.removeprefix("layer_")) + 1


def layer_lr_factors(parts: list[str], num_layers: int, decay: float) -> list[float]:
    """The learning-rate factor of each part (see the module docstring)."""
    return [decay ** max(num_layers - _depth(p, num_layers), 0) for p in parts]


def unfreezing_stages(parts: list[str], num_layers: int) -> list[int]:
    """The stage from which each part trains under gradual unfreezing: 0 for the top, 1 for the
    top layer, ..., L for layer 0, L + 1 for the embeddings."""
    return [num_layers + 1 - _depth(p, num_layers) for p in parts]


def parse_interval(value: str, steps_per_epoch: int) -> int:
    """Steps of a `--gradual_unfreezing` interval: `"N"` or `"Nepochs"` epochs, `"Nsteps"` steps."""
    match = re.fullmatch(r"\s*(\d+)\s*(epochs?|steps?)?\s*", str(value))
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"--gradual_unfreezing takes a positive number of epochs (2, 2epochs) or "
                         f"steps (100steps), got {value!r}")
    count, unit = int(match.group(1)), match.group(2) or "epochs"
    return count if unit.startswith("step") else count * steps_per_epoch


class UnfreezingSchedule:
    """Which trained variables train at a step under gradual unfreezing (all without one)."""

    def __init__(self, trainable, stages: list[int] | None = None, interval: int | None = None):
        self.trainable, self.stages, self.interval = list(trainable), stages, interval

    def stage(self, step: int) -> int:
        if self.stages is None:
            return 0
        return min(step // self.interval, max(self.stages))

    def variables(self, stage: int) -> list:
        if self.stages is None:
            return self.trainable
        return [v for v, s in zip(self.trainable, self.stages) if s <= stage]


# --- the optimizer --------------------------------------------------------------------------------

def make_techniques_adamw(learning_rate, weight_decay: float = 0.0, factors=None):
    """A `TechniquesAdamW` (the class is made on first use: Keras is imported late). Gradient
    clipping is the train step's (`adapter_bert.training.make_train_step`)."""
    import keras

    class TechniquesAdamW(keras.optimizers.Adam):
        """AdamW with a learning-rate factor and an Adam step count per weight."""

        def __init__(self, learning_rate, weight_decay=0.0, factors=None, **kwargs):
            super().__init__(learning_rate, **kwargs)
            self.decoupled_weight_decay = float(weight_decay)
            self.factors = factors

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self._weight_steps = [self.add_variable((), initializer="zeros", dtype="float32",
                                                    name=f"steps_{i}") for i in range(len(var_list))]
            factors = self.factors or {}
            self._factors = [float(factors.get(id(v), 1.0)) for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            import tensorflow as tf

            ops = keras.ops
            if isinstance(gradient, tf.IndexedSlices):
                # Dense, as Adam's moments of the summed gradient need: Keras' sparse path
                # squares a repeated row's parts before summing them, so an embedding row
                # seen twice in a batch would step by more than the learning rate.
                gradient = tf.convert_to_tensor(gradient)
            index = self._get_variable_index(variable)
            lr = ops.cast(learning_rate, variable.dtype) * self._factors[index]
            if self.decoupled_weight_decay:
                self.assign_sub(variable, variable * (self.decoupled_weight_decay * lr))
            steps = self._weight_steps[index]
            self.assign_add(steps, 1.0)
            t = ops.cast(steps, variable.dtype)
            gradient = ops.cast(gradient, variable.dtype)
            m, v = self._momentums[index], self._velocities[index]
            self.assign_add(m, (gradient - m) * (1 - self.beta_1))
            self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
            alpha = lr * ops.sqrt(1 - ops.power(self.beta_2, t)) / (1 - ops.power(self.beta_1, t))
            self.assign_sub(variable, m * alpha / (ops.sqrt(v) + self.epsilon))

    return TechniquesAdamW(learning_rate, weight_decay=weight_decay, factors=factors)


# --- cautious updating ----------------------------------------------------------------------------

def trained_base_weights(model, trainable) -> dict[str, object]:
    """`{HF name: variable}` of the base weights in `trainable`."""
    from adapter_bert.bert.checkpoint import base_variables_by_part

    ids = {id(v) for v in trainable}
    return {name: v for part in base_variables_by_part(model.bert).values()
            for name, v in part.items() if id(v) in ids}


def _hf_orientation(name: str, value: np.ndarray) -> np.ndarray:
    """Keras kernels are `[in, out]`, Hugging Face's `[out, in]` (the files use HF's)."""
    from adapter_bert.bert.checkpoint import is_transposed

    return value.T if is_transposed(name) else value


class WeightPull:
    """L2-SP or EWC: `strength / 2 * sum(F * (w - w0)**2)` (F = 1 for L2-SP) over `weights`.

    Create it inside the strategy's scope (the anchors and Fisher weights are copied to every
    replica). `__call__()` is the penalty (a scalar tensor).
    """

    def __init__(self, weights: dict, strength: float, fisher: dict | None = None):
        import tensorflow as tf

        self.names = list(weights)
        self.weights = [weights[n] for n in self.names]
        self.strength = float(strength)
        self.anchors = [tf.Variable(tf.identity(v.value), trainable=False, name="anchor")
                        for v in self.weights]
        self.fisher = None
        if fisher is not None:
            self.fisher = [tf.Variable(_hf_orientation(n, fisher[n]).astype(np.float32),
                                       trainable=False, name="fisher") for n in self.names]

    def __call__(self):
        import tensorflow as tf

        total = tf.constant(0.0, tf.float32)
        for i, (w, w0) in enumerate(zip(self.weights, self.anchors)):
            square = tf.square(tf.cast(w.value, tf.float32) - w0)
            if self.fisher is not None:
                square = square * self.fisher[i]
            total = total + tf.reduce_sum(square)
        return 0.5 * self.strength * total


def read_fisher(path: str | Path, model, weights: dict) -> dict[str, np.ndarray]:
    """The Fisher estimates of `weights` from `path` (a `fisher.safetensors` or the run directory
    holding one), with one-line errors for a missing file or a weight it lacks or sizes otherwise."""
    from adapter_bert.model import read_weights

    file = fisher_file(path)
    fisher = read_weights(file)
    missing = [n for n in weights if n not in fisher]
    if missing:
        raise ValueError(f"--fisher_from {file} has no Fisher estimate of {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + ": it was written for another model")
    for name, variable in weights.items():
        shape = tuple(_hf_orientation(name, np.zeros(tuple(variable.shape))).shape)
        if tuple(fisher[name].shape) != shape:
            raise ValueError(f"--fisher_from {file}: {name} has shape {tuple(fisher[name].shape)}, "
                             f"this model's {shape}: it was written for a model of another size")
    return {n: fisher[n] for n in weights}


def fisher_file(path: str | Path) -> Path:
    """`path` itself, or `path/fisher.safetensors` for a directory (FileNotFoundError if absent)."""
    path = Path(path)
    file = path / FISHER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"--fisher_from {path}: no {FISHER_FILE} there (a run with "
                                "--save_fisher writes one)")
    return file


def estimate_fisher(model, batches, loss, replicas: int = 1) -> dict[str, np.ndarray]:
    """The diagonal Fisher estimate of every base weight: the mean over `batches` of the squared
    gradient of `loss(labels, model(inputs))`, by Hugging Face name and orientation (dropout off)."""
    import tensorflow as tf

    from adapter_bert.bert.checkpoint import base_variables_by_part

    weights = {n: v for part in base_variables_by_part(model.bert).values() for n, v in part.items()}
    names = list(weights)
    sums = [np.zeros(tuple(weights[n].shape), np.float64) for n in names]

    @tf.function(reduce_retracing=True)
    def squared_gradients(inputs, labels):
        variables = [weights[n].value for n in names]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            value = loss(labels, model(inputs, training=False))
        grads = tape.gradient(value, variables)
        return [tf.zeros_like(v) if g is None else tf.square(tf.convert_to_tensor(g) * replicas)
                for g, v in zip(grads, variables)]

    count = 0
    for inputs, labels in batches:
        for total, square in zip(sums, squared_gradients(inputs, labels)):
            total += square.numpy()
        count += 1
    if count == 0:
        raise ValueError("no training batches to estimate the Fisher information on")
    return {n: _hf_orientation(n, (s / count).astype(np.float32)) for n, s in zip(names, sums)}


class ForgettingPenalty:
    """Learning without forgetting: `strength * T**2 * KL(p_teacher || p_student)` for every
    earlier task's head (`heads`), its batch sum over the global batch size.

    `teacher` is a frozen model holding the starting weights and those heads; `__call__(inputs,
    outputs)` takes the student's encoder outputs of the batch.
    """

    def __init__(self, model, teacher, heads: list[str], strength: float, global_batch: int):
        self.model, self.teacher, self.heads = model, teacher, list(heads)
        self.strength, self.global_batch = float(strength), global_batch

    def __call__(self, inputs, outputs):
        import tensorflow as tf

        teacher_outputs = self.teacher.bert(inputs, training=False)
        total = tf.constant(0.0, tf.float32)
        t = KL_TEMPERATURE
        for name in self.heads:
            old = tf.stop_gradient(tf.cast(
                self.teacher.head_logits(name, teacher_outputs, inputs, training=False), tf.float32))
            new = tf.cast(self.model.head_logits(name, outputs, inputs, training=True), tf.float32)
            if old.shape[-1] == 1:  # a regression head: the squared difference
                per_example = tf.reduce_sum(tf.square(new - old), -1)
            else:
                p_old = tf.nn.softmax(old / t)
                per_example = tf.reduce_sum(
                    p_old * (tf.nn.log_softmax(old / t) - tf.nn.log_softmax(new / t)), -1) * t * t
            total = total + tf.reduce_sum(per_example) / self.global_batch
        return self.strength * total


# --- what a run changed ---------------------------------------------------------------------------

def snapshot_base(model, trainable) -> dict[str, np.ndarray]:
    """Copies of the trained base weights (the start of `weight_change`)."""
    return {n: np.array(v.numpy(), np.float64) for n, v in trained_base_weights(model, trainable).items()}


def weight_change(model, start: dict[str, np.ndarray]) -> dict[str, float]:
    """For each base part (`embeddings`, `layer_<i>`, `pooler`), the relative L2 change of its
    weights from `start` (`snapshot_base`): `||w - w0|| / ||w0||`; 0 for parts that did not train."""
    from adapter_bert.bert.checkpoint import base_variables_by_part

    out = {}
    for part, variables in base_variables_by_part(model.bert).items():
        moved = [n for n in variables if n in start]
        if not moved:
            out[part] = 0.0
            continue
        diff = sum(float(np.sum((np.asarray(variables[n].numpy(), np.float64) - start[n]) ** 2))
                   for n in moved)
        norm = sum(float(np.sum(start[n] ** 2)) for n in moved)
        out[part] = float(np.sqrt(diff) / max(np.sqrt(norm), 1e-30))
    return out
