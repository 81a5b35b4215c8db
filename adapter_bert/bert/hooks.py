"""The encoder's hook API: the one way adapter methods change what the frozen base computes.

Every place a method may act is a `HookPoint`, owned by a layer of the encoder and named by its
path (`layer_3.attention.value`, `layer_3.output_residual`, `embeddings.layer_norm`, ...). A method
registers its hooks under the adapter's name (one per point and per method family, so a union
such as LoRA + BitFit may put two on one Dense layer); registering twice, or removing what is not
there, is an error naming the point and the adapter. Registered hooks do nothing until the
encoder's *active setup* names their adapter: at each point the setup (an adapter name or a
composition block, `adapter_bert.composition`) is walked once, and the hooks of the adapters it
names run in the order and shape it gives (stacked, split across the batch, averaged, ...).

Kinds of point, and what a hook there is called with:

=============  =======================================================  ==========================
kind           hook call                                                 used by
=============  =======================================================  ==========================
`dense`        `hook(x, y, training=)` -> `y` (a Dense layer's output)  LoRA, (IA)^3, BitFit
`norm`         `hook(x, y, training=)` -> `y` (a LayerNorm's output)     BitFit
`residual`     replaces "LayerNorm(sublayer_output + sublayer_input)"   bottleneck adapters
`attention`    `(key, value, mask_bias, hidden)` -> the first three, ext.  prefix tuning
`embeddings`   `(hidden, mask, positions)` -> the same, extended        prompt tuning
`hidden`       `(hidden,)` -> the same: a whole layer's output           ReFT
=============  =======================================================  ==========================

At the `embeddings` point (the embedding output), `positions` holds, for each position of the
original input, its index in the sequence the encoder runs on; the encoder returns only those.

How hooks of one family combine inside a block is the family's business: each hook names its
`composer`, a `Composer` subclass that walks the setup over the family's hooks at that point
(see `Composer` for the generic rules, which follow the adapters library). Several families at
one point (LoRA and BitFit on one Dense) each compose their own adapters, in the order their
first hooks were registered.

Example (a hook that halves one projection, active while the setup names "half"):
>>> import numpy as np
>>> from adapter_bert.testing import random_inputs, tiny_encoder
>>> encoder = tiny_encoder()
>>> inputs = random_inputs()
>>> base = encoder(inputs)["sequence_output"].numpy()
>>> class Half:
...     composer = OutputComposer
...     def __call__(self, x, y, training=None):
...         return 0.5 * y
>>> encoder.layers[1].add_hook("attention.value", "half", Half())
>>> encoder.layers[1].hooks("attention.value")
('half',)
>>> bool(np.allclose(encoder(inputs)["sequence_output"], base))   # registered, not active
True
>>> encoder.set_active_setup("half")
>>> bool(np.allclose(encoder(inputs)["sequence_output"], base))
False
>>> encoder.layers[1].remove_hook("attention.value", "half")
>>> encoder.layers[1].remove_hook("attention.value", "half")
Traceback (most recent call last):
...
KeyError: "adapter 'half' has no hook at layer_1.attention.value"
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

from keras import ops

KINDS = ("dense", "norm", "residual", "attention", "embeddings", "hidden", "positions")


class HookPoint:
    """One place in the encoder where adapters act; hooks are kept by adapter name.

    Each adapter has at most one hook per family here (a family is the hook's `composer` class):
    a union such as LoRA + BitFit may put one of each on one Dense layer.

    Args:
        path: the point's name inside the encoder, e.g. `layer_0.attention.query`.
        kind: one of `KINDS`.
        layer: the encoder layer the point belongs to (None for embeddings and pooler), so that
            `skip_layers` (AdapterDrop) can switch a layer's points off.
    """

    def __init__(self, path: str, kind: str, layer: int | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown hook kind {kind!r}; known: {', '.join(KINDS)}")
        self.path, self.kind, self.layer = path, kind, layer
        self._families: dict[type, dict[str, Any]] = {}
        self.owner = EncoderHooks()  # replaced by the encoder's own when the point is bound

    def add(self, adapter: str, hook) -> None:
        """Registers `hook` for `adapter`.

        Raises:
            TypeError: the hook names no `composer`, or one that does not serve this kind.
            ValueError: `adapter` has a hook of that family here already.
        """
        composer = getattr(hook, "composer", None)
        if not (isinstance(composer, type) and issubclass(composer, Composer)):
            raise TypeError(f"a hook at {self.path} needs a `composer` (a Composer subclass); "
                            f"{type(hook).__name__} has none")
        if self.kind not in composer.kinds:
            raise TypeError(f"{composer.__name__} hooks act at {', '.join(composer.kinds)} "
                            f"points, not at {self.path} ({self.kind})")
        family = self._families.setdefault(composer, {})
        if adapter in family:
            raise ValueError(f"adapter {adapter!r} has a hook at {self.path} already")
        family[adapter] = hook

    def remove(self, adapter: str, hook=None) -> None:
        """Unregisters `adapter`'s hook (only `hook`, if given); a KeyError if there is none."""
        removed = False
        for composer, family in list(self._families.items()):
            if adapter in family and (hook is None or family[adapter] is hook):
                del family[adapter]
                removed = True
                if not family:
                    del self._families[composer]
        if not removed:
            raise KeyError(f"adapter {adapter!r} has no hook at {self.path}")

    def get(self, adapter: str) -> list:
        """`adapter`'s hooks here (one per family), in the order the families run."""
        return [family[adapter] for _, family in self._ordered() if adapter in family]

    def adapters(self) -> tuple[str, ...]:
        """Names of the adapters with a hook here."""
        names = []
        for _, family in self._ordered():
            names += [name for name in family if name not in names]
        return tuple(names)

    def __contains__(self, adapter: str) -> bool:
        return any(adapter in family for family in self._families.values())

    def __len__(self) -> int:
        return len(self.adapters())

    def __repr__(self):
        return f"HookPoint({self.path!r}, {self.kind!r}, adapters={list(self.adapters())})"

    def _ordered(self):
        return sorted(self._families.items(), key=lambda item: item[0].priority)

    def families(self):
        """`(composer class, {adapter: hook})` pairs, in the order they run."""
        return self._ordered()

    def is_active(self) -> bool:
        """Whether any hook here runs under the owner's active setup."""
        owner = self.owner
        if owner.setup is None or not self._families:
            return False
        if self.layer is not None and self.layer in owner.skip_layers:
            return False
        return any(name in self for name in owner.setup_names)

    def run(self, *state, training=None):
        """The point's state after the active setup's hooks; unchanged when none runs."""
        if not self.is_active():
            return state
        for composer_class, hooks in self._ordered():
            if not any(name in hooks for name in self.owner.setup_names):
                continue
            composer = composer_class(self, hooks, self.owner.context, training)
            state = composer.compose(self.owner.setup, state)
        return state


class ForwardContext:
    """What hooks need to know about the call in progress, beyond their own inputs.

    Args:
        tokens: the encoder's `TokenIndex` when dense layers run on real tokens only (axis 0 of
            per-token tensors is then the tokens of all rows, row after row), else None (axis 0
            is the batch and axis 1 the sequence).
        replicas: how many copies of the batch axis 0 holds (a `Parallel` block replicates it).
        task_sizes: under a `MultiTask` setup, the rows of each task (the encoder sorts the
            batch by task, so each task's rows are consecutive).
    """

    def __init__(self, tokens=None, replicas: int = 1, task_sizes=None, mask=None):
        self.tokens, self.replicas = tokens, replicas
        #: The `[batch, seq]` attention mask the layers run with (after any replication).
        self.mask = mask
        #: Under a `MultiTask` setup: `[n_tasks]` rows of each task, the batch being sorted by task.
        self.task_sizes = task_sizes


class EncoderHooks:
    """The active setup of one encoder, shared by all its hook points.

    `setup` is None (the plain base), an adapter name, or a composition block (anything with
    `block_type`, `children` and `flatten()`); `skip_layers` are layers whose points stay off.
    """

    def __init__(self):
        self.setup = None
        self.setup_names: frozenset = frozenset()
        self.skip_layers: frozenset = frozenset()
        self.required_rows = self.required_positions = None
        self.context = ForwardContext()

    def set(self, setup, skip_layers=()) -> None:
        """Activates `setup`; a `BatchSplit` or `Split` that cannot fit any batch is a ValueError."""
        rows, positions = required_shape(setup)
        if _parallel_width(setup) > 1 and _task_count(setup) is not None:
            raise ValueError(f"{setup} holds both Parallel and MultiTask; the batch is either "
                             "replicated or sorted by task, not both")
        self.setup = setup
        if setup is None:
            self.setup_names = frozenset()
        elif isinstance(setup, str):
            self.setup_names = frozenset([setup])
        else:
            self.setup_names = frozenset(setup.flatten())
        self.skip_layers = frozenset(skip_layers or ())
        self.required_rows, self.required_positions = rows, positions

    @property
    def parallel_width(self) -> int:
        """How many branches the active setup's `Parallel` block has (1 without one)."""
        return _parallel_width(self.setup)

    @property
    def task_count(self) -> int | None:
        """How many members the active setup's `MultiTask` block has (None without one)."""
        return _task_count(self.setup)

    @contextlib.contextmanager
    def calling(self, context: ForwardContext):
        """Makes `context` the one hooks see for the duration of an encoder call."""
        previous, self.context = self.context, context
        try:
            yield context
        finally:
            self.context = previous


def required_shape(setup) -> tuple:
    """`(rows, positions)` a batch must have under `setup`, each None when any will do.

    `BatchSplit` sizes add up to the rows of the piece they split (the batch, or a copy of it in
    `Parallel`, or the enclosing group); `Split` segment lengths add up to the sequence length.

    Raises:
        ValueError: sizes that no batch satisfies (two top-level splits of different sums, or a
            nested split whose sizes do not add up to its group's).
    """
    found_rows, found_positions = set(), set()

    def visit(node, rows):
        if node is None or isinstance(node, str):
            return
        if node.block_type == "batch_split":
            total = sum(node.batch_sizes)
            if rows is None:
                found_rows.add(total)
            elif total != rows:
                raise ValueError(f"{node} splits {total} rows; its group has {rows}")
            for child, size in zip(node.children, node.batch_sizes):
                visit(child, size)
            return
        if node.block_type == "split" and node.sequence_length() is not None:
            found_positions.add(node.sequence_length())
        for child in node.children:
            visit(child, rows)

    visit(setup, None)
    for found, what in ((found_rows, "BatchSplit sizes"), (found_positions, "Split lengths")):
        if len(found) > 1:
            raise ValueError(f"the {what} of {setup} add up to different totals "
                             f"({', '.join(map(str, sorted(found)))}); one batch cannot fit them")
    return (next(iter(found_rows), None), next(iter(found_positions), None))


def first_adapter(setup) -> str | None:
    """The first adapter a setup names (`Stack(a, b)`, `Fuse(a, b)`, `"a"`: a), as the adapters
    library's `first()`: the one whose invertible adapter acts."""
    while setup is not None and not isinstance(setup, str):
        if not setup.children:
            return None
        setup = setup.children[0]
    return setup


def _task_count(setup) -> int | None:
    if setup is None or isinstance(setup, str):
        return None
    if setup.block_type == "multi_task":
        return len(setup.children)
    counts = [c for c in (_task_count(child) for child in setup.children) if c is not None]
    return counts[0] if counts else None


def _parallel_width(setup) -> int:
    if setup is None or isinstance(setup, str):
        return 1
    if setup.block_type == "parallel":
        return len(setup.children)
    return max([_parallel_width(child) for child in setup.children] + [1])


# --- rows: how axis 0 of a hook's tensors maps to examples ---------------------------------------

class Rows:
    """The examples a piece of a hook's tensors covers, and how its axis 0 is laid out.

    Per-token tensors hold `[examples, seq, width]` (batch layout) or the real tokens of those
    examples one after another, `[n_tokens, width]` (token layout: `lengths` and `positions`
    given). Blocks that cut the batch (`BatchSplit`) or the sequence (`Split`) ask their rows where
    to cut; gates (UniPELT) ask for means over each example's real tokens.

    Args:
        start: the first example, counted within one copy of the batch.
        lengths: `[batch]` real tokens per example (token layout), else None.
        positions: each row's sequence position, aligned with axis 0 (token layout), else None.
        first: the first example, counted over axis 0 of the whole (perhaps replicated) batch.
        examples: each token row's example, counted that way (token layout), else None.
        mask: `[examples, seq]` attention mask of the piece (batch layout), else None.
    """

    def __init__(self, start=0, lengths=None, positions=None, first=0, examples=None, mask=None):
        self.start, self.lengths, self.positions = start, lengths, positions
        self.first, self.examples, self.mask = first, examples, mask

    @classmethod
    def of(cls, context: "ForwardContext") -> "Rows":
        tokens = context.tokens
        if tokens is None:
            return cls(mask=context.mask)
        return cls(0, tokens.lengths, tokens.positions, 0, tokens.examples)

    @property
    def token_layout(self) -> bool:
        return self.lengths is not None

    def _tokens_before(self, example):
        if isinstance(example, int) and example == 0:
            return 0
        return ops.sum(self.lengths[:example])

    def replica(self, index: int, replicas: int, size) -> "Rows":
        """Copy `index` of `replicas` copies of the batch, `size` rows long (axis 0)."""
        if not self.token_layout:
            mask = None if self.mask is None else self.mask[index * size:(index + 1) * size]
            return Rows(self.start, first=index * size, mask=mask)
        per_copy = ops.shape(self.lengths)[0] // replicas
        cut = slice(index * size, (index + 1) * size)
        return Rows(self.start, self.lengths, None if self.positions is None else self.positions[cut],
                    index * per_copy, None if self.examples is None else self.examples[cut])

    def split(self, sizes, per_token: bool = True) -> list:
        """`(begin, end, Rows)` for consecutive groups of `sizes` examples from `start`.

        `begin` / `end` index axis 0 of this piece: tokens in token layout when `per_token`,
        else examples.
        """
        pieces, example, first = [], self.start, self.first
        tokens = per_token and self.token_layout
        base = self._tokens_before(self.start) if tokens else self.start
        for size in sizes:
            if tokens:
                begin = self._tokens_before(example) - base
                end = self._tokens_before(example + size) - base
                rows = Rows(example, self.lengths, self.positions[begin:end], first,
                            None if self.examples is None else self.examples[begin:end])
            else:
                begin, end = example - base, example + size - base
                mask = None if self.mask is None else self.mask[begin:end]
                rows = Rows(example, self.lengths, None, first, mask=mask)
            pieces.append((begin, end, rows))
            example, first = example + size, first + size
        return pieces

    def position_of(self, like):
        """Each row's sequence position, broadcastable against the per-token tensor `like`."""
        if self.token_layout:
            position = self.positions
        else:
            position = ops.arange(ops.shape(like)[1])[None, :]
        while len(position.shape) < len(like.shape):
            position = position[..., None]
        return position

    def example_mean(self, values):
        """Each row's example's mean of `values` over its real tokens, shaped like `values`'
        rows (`[n_tokens, k]` in token layout, `[examples, 1, k]` in batch layout)."""
        if self.token_layout:
            ids = self.examples - self.first
            sums = ops.segment_sum(values, ids, sorted=True)
            counts = ops.segment_sum(ops.ones_like(values[:, :1]), ids, sorted=True)
            return ops.take(sums / ops.maximum(counts, 1.0), ids, axis=0)
        mask = ops.cast(self.mask, values.dtype)[..., None]
        return (ops.sum(values * mask, axis=1, keepdims=True)
                / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0))


def example_means(values, context: "ForwardContext"):
    """Per example of the whole batch, the mean of per-token `values` over its real tokens:
    `[examples, k]` (for per-example points such as attention's keys and values)."""
    if context.tokens is not None:
        ids = context.tokens.examples
        sums = ops.segment_sum(values, ids, num_segments=ops.shape(context.tokens.lengths)[0])
        counts = ops.segment_sum(ops.ones_like(values[:, :1]), ids,
                                 num_segments=ops.shape(context.tokens.lengths)[0])
        return sums / ops.maximum(counts, 1.0)
    mask = ops.cast(context.mask, values.dtype)[..., None]
    return ops.sum(values * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)


# --- composers: the walk over a setup ------------------------------------------------------------

class Composer:
    """Walks an active setup over one family's hooks at one point (the adapters library's rules).

    The walk, shared by every family (`compose`):

    * an adapter name, or each name in a `Stack`: `pre` then `single` on the current state, so
      `Stack(a, b)` runs `b` on `a`'s output. An adapter without a hook here (left out of this
      layer) is passed over.
    * `Parallel(a, b)`: axis 0 holds one copy of the batch per branch (the encoder replicated it
      at the first adapted layer); each branch runs on its copy as if it were the whole setup.
    * `BatchSplit(a, b, batch_sizes=[m, n])`: the first `m` examples through `a`, the next `n`
      through `b`, each as if alone.
    * `Split(a, b, splits=[k])`: every branch runs on the whole sequence, and positions before `k`
      keep `a`'s result, the rest `b`'s (per-token points only).
    * `Average(a, b, weights=[...])`: `pre` of the first member present here, then each member on
      that state, then `average` of their states; members without a hook here are left out and
      the others' weights renormalised.
    * `Fuse`: `compose_fuse`, which only families with fusion layers define.

    After the walk, `finish` turns the state into the point's output. Which adapter ran last
    (`state.last`) may differ between groups of rows or positions after a block that cuts the
    batch or the sequence; `finish` is then applied to each group with its own last adapter, so
    that every branch ends as it would alone.

    A family subclasses this with a `state` NamedTuple (a `last` field and the tensors named in
    `row_aligned`, whose axis 0 follows the batch or, in token layout, the tokens) and defines
    `start`, `single`, `finish` and, where its method says so, `pre` and `average`. The blocks
    it can walk are `supported_blocks`; the model refuses other setups when they are activated.
    `priority` orders families at one point (lower first: BitFit, which changes the base
    layer's own bias, before LoRA and (IA)^3, which act on that layer's output).
    """

    supported_blocks = ("stack", "parallel", "batch_split", "average", "split", "multi_task")
    #: The kinds of point this family's hooks may be registered at.
    kinds: tuple[str, ...] = ()
    priority = 10
    #: Axis 0 of the row-aligned tensors is per token (dense, norm, residual) or per example.
    per_token = True
    row_aligned: tuple[str, ...] = ()

    def __init__(self, point: HookPoint, hooks: dict, context: ForwardContext, training=None):
        self.point, self.hooks, self.context, self.training = point, hooks, context, training

    # -- what a family defines -------------------------------------------------------------------

    def start(self, point_state: tuple):
        """The family's state from the point's inputs."""
        raise NotImplementedError

    def pre(self, name: str, hook, state):
        """What happens to the state before adapter `name` runs in a `Stack` (default nothing)."""
        return state

    def single(self, name: str, hook, state):
        """Adapter `name` on the state; returns the new state with `last=name`."""
        raise NotImplementedError

    def average(self, states: list, weights: list[float], state):
        """The weighted sum of the members' states (fields in `averaged`), last of the last."""
        values = {f: _weighted_sum([getattr(s, f) for s in states], weights)
                  for f in self.averaged}
        return states[0]._replace(last=states[-1].last, **values)

    averaged: tuple[str, ...] = ()

    def finish(self, state) -> tuple:
        """The point's output from the state after the walk, `state.last` a name or None."""
        raise NotImplementedError

    def concat_outputs(self, outputs: list[tuple]) -> tuple:
        """Outputs of consecutive row groups joined along axis 0 (every field row-aligned)."""
        return tuple(ops.concatenate(list(parts), axis=0) for parts in zip(*outputs))

    # -- the walk ---------------------------------------------------------------------------------

    def compose(self, setup, point_state: tuple) -> tuple:
        rows = Rows.of(self.context)
        state = self._walk(setup, self.start(point_state), rows)
        return self._finish(state, rows)

    def _walk(self, setup, state, rows: Rows):
        self.rows = rows  # what `single` and gates see of the current piece
        if isinstance(setup, str):
            hook = self.hooks.get(setup)
            return state if hook is None else self.single(setup, hook, self.pre(setup, hook, state))
        if not any(name in self.hooks for name in setup.flatten()):
            return state
        walk = getattr(self, f"compose_{setup.block_type}", None)
        if walk is None or setup.block_type not in self.supported_blocks:
            raise ValueError(f"{setup} is not supported by {type(self).__name__} at "
                             f"{self.point.path}")
        return walk(setup, state, rows)

    def compose_stack(self, block, state, rows):
        for child in block.children:
            state = self._walk(child, state, rows)
        return state

    def compose_parallel(self, block, state, rows):
        n = len(block.children)
        if self.context.replicas != n:
            raise ValueError(f"{block} at {self.point.path} needs the batch replicated {n} "
                             f"times (it is {self.context.replicas})")
        size = ops.shape(getattr(state, self.row_aligned[0]))[0] // n
        pieces = []
        for index, child in enumerate(block.children):
            begin, end = index * size, (index + 1) * size
            sub_rows = rows.replica(index, n, size)
            pieces.append((begin, end, sub_rows,
                           self._walk(child, self._cut(state, begin, end), sub_rows)))
        return self._join(pieces, state)

    def compose_batch_split(self, block, state, rows):
        pieces = []
        for child, (begin, end, sub_rows) in zip(block.children,
                                                 rows.split(block.batch_sizes, self.per_token)):
            pieces.append((begin, end, sub_rows,
                           self._walk(child, self._cut(state, begin, end), sub_rows)))
        return self._join(pieces, state)

    def compose_multi_task(self, block, state, rows):
        """Like `BatchSplit`, with the task sizes of the batch (which the encoder sorted by task)."""
        sizes = self.context.task_sizes
        if sizes is None:
            raise ValueError(f"{block} needs `task_ids` in the inputs: one member index per row")
        pieces = []
        for index, (child, (begin, end, sub_rows)) in enumerate(zip(
                block.children, rows.split([sizes[i] for i in range(len(block.children))],
                                           self.per_token))):
            pieces.append((begin, end, sub_rows,
                           self._walk(child, self._cut(state, begin, end), sub_rows)))
        return self._join(pieces, state)

    def compose_split(self, block, state, rows):
        if not self.per_token:
            raise ValueError(f"{block} splits sequence positions; {self.point.path} is not per token")
        like = getattr(state, self.row_aligned[0])
        states = [self._walk(child, state, rows) for child in block.children]
        position = rows.position_of(like)
        bounds = [0] + block.boundaries() + [None]
        groups = [(bounds[i], bounds[i + 1], s.last) for i, s in enumerate(states)]
        merged = {}
        for field in self.row_aligned:
            values = [getattr(s, field) for s in states]
            if all(v is None for v in values):
                continue
            values = [self.fill(field, s) if v is None else v for v, s in zip(values, states)]
            out = values[-1]
            for i in range(len(values) - 2, -1, -1):
                out = ops.where(_expand(position < bounds[i + 1], out), values[i], out)
            merged[field] = out
        return states[-1]._replace(last=("positions", groups), **merged)

    def compose_average(self, block, state, rows):
        present = [(child, weight) for child, weight in zip(block.children, block.weights)
                   if any(name in self.hooks for name in
                          ([child] if isinstance(child, str) else child.flatten()))]
        first = next(n for n in block.flatten() if n in self.hooks)
        state = self.pre(first, self.hooks[first], state)
        states = []
        for child, _ in present:
            self.rows = rows
            if isinstance(child, str):
                states.append(self.single(child, self.hooks[child], state))
            else:
                states.append(self._walk(child, state, rows))
        total = sum(w for _, w in present)
        weights = [w / total if total and len(present) < len(block.children) else w
                   for _, w in present]
        return self.average(states, weights, state)

    @staticmethod
    def averaged_last(states, weights):
        """`last` of an average: `("average", [(member's last, weight), ...])`."""
        return ("average", [(s.last, w) for s, w in zip(states, weights)])

    # -- finishing --------------------------------------------------------------------------------

    def _finish(self, state, rows: Rows) -> tuple:
        last = state.last
        if last is None or isinstance(last, str) or last[0] not in ("rows", "positions"):
            return self.finish(state)
        kind, groups = last
        if kind == "rows":
            return self.concat_outputs([
                self._finish(self._cut(state, begin, end)._replace(last=group_last), sub_rows)
                for begin, end, sub_rows, group_last in groups])
        outputs = [self._finish(state._replace(last=group_last), rows)
                   for _, _, group_last in groups]
        position = rows.position_of(outputs[0][0])
        result = list(outputs[-1])
        for i in range(len(outputs) - 2, -1, -1):
            inside = position < groups[i][1]
            result = [ops.where(_expand(inside, r), o, r) for o, r in zip(outputs[i], result)]
        return tuple(result)

    # -- helpers ----------------------------------------------------------------------------------

    def _cut(self, state, begin, end):
        return state._replace(**{f: getattr(state, f)[begin:end] for f in self.row_aligned
                                 if getattr(state, f) is not None})

    def _join(self, pieces, state):
        """One state from the states of consecutive row groups (`pieces`: begin, end, rows, state)."""
        states = [p[3] for p in pieces]
        joined = self.concat_states(states, state)
        return joined._replace(last=("rows", [(begin, end, rows, s.last)
                                              for (begin, end, rows, _), s in zip(pieces, states)]))

    def concat_states(self, states: list, state):
        """States of consecutive row groups joined along axis 0.

        A field that is None in some groups (LoRA's update where a branch has no adapter) is
        given that group's neutral value by `fill`.
        """
        values = {}
        for field in self.row_aligned:
            parts = [getattr(s, field) for s in states]
            if all(p is None for p in parts):
                values[field] = None
                continue
            parts = [self.fill(field, s) if p is None else p for p, s in zip(parts, states)]
            values[field] = ops.concatenate(parts, axis=0)
        return states[-1]._replace(**values)

    def fill(self, field: str, state):
        raise ValueError(f"{type(self).__name__}: no neutral value for {field}")


class OutputState(NamedTuple):
    x: Any
    y: Any
    last: Any = None


class OutputComposer(Composer):
    """The family of hooks that map a layer's output: `hook(x, y, training=) -> y`.

    `Stack` applies them one after another, `Average` averages the outputs.
    """

    kinds = ("dense", "norm")
    row_aligned = ("x", "y")
    averaged = ("y",)

    def start(self, point_state):
        return OutputState(*point_state)

    def single(self, name, hook, state):
        return state._replace(y=hook(state.x, state.y, training=self.training), last=name)

    def finish(self, state):
        return state.x, state.y


def _expand(mask, like):
    while len(mask.shape) < len(like.shape):
        mask = mask[..., None]
    return mask


def _weighted_sum(tensors, weights):
    total = None
    for tensor, weight in zip(tensors, weights):
        term = tensor * ops.cast(weight, tensor.dtype)
        total = term if total is None else total + term
    return total
