"""Composition blocks: how several adapters are active at once over one frozen base.

The blocks, their names and their nesting rules are the adapters library's
(`adapters.composition`): a setup is an adapter name or a block of names and blocks, and
`AdapterBertModel.set_active_adapters(setup)` makes the encoder walk it at every hook point (see
`adapter_bert.bert.hooks`).

* `Stack("a", "b")`: at each hook point `b` runs on `a`'s output (bottleneck adapters: `b`
  adapts what `a` produced; LoRA: `b`'s update is applied to `a`'s update; (IA)^3: the vectors
  multiply; prefix tuning: both prefixes are prepended, `b`'s first).
* `Parallel("a", "b")`: the batch is replicated once, at the first adapted layer; each branch
  runs its own adapters on its copy; `model.bert(...)` returns one output per branch and
  `model(...)` one head output per branch. Two tasks on one input in one pass.
* `BatchSplit("a", "b", batch_sizes=[2, 3])`: rows 0-1 through `a`, rows 2-4 through `b`.
* `Average("a", "b", weights=[0.7, 0.3])`: the weighted average of the members' outputs at each
  hook point (weights normalised to sum 1 unless `normalize_weights=False`).
* `Split("a", "b", splits=[k])`: sequence positions before `k` through `a`, the rest through `b`.
* `Fuse("a", "b")`: AdapterFusion over the members' bottleneck adapters (needs a fusion layer).
* `MultiTask("a", "b")`: each row through the member its `task_ids` input names.

Where this package departs from the library, it is because the library's result is not what the
block is documented to do, and each departure agrees with the library wherever the library's
result is that:

* `Average` computes `sum(w_i * out_i)`. The library divides that once more by the number of
  members (a mean over weights that were already normalised), so its
  `Average("a", "b", weights=[w_a, w_b])` equals ours with `weights=[w_a / 2, w_b / 2],
  normalize_weights=False`; the tests check both against the library's numbers.
* In `Parallel`, `BatchSplit` and `Split` each branch runs exactly as its adapter would alone
  (its own LayerNorm placement and residual), so members of different configurations, e.g. a
  Pfeiffer and a parallel adapter, or different prefix lengths, give each row what its adapter
  gives; the library applies the first member's input handling and the last member's output
  handling to all rows (the same thing when the members share their configuration).
* Prefixes of different lengths in one batch are padded with masked positions.
* At a layer where some members of an `Average` have no adapter (`leave_out`), the members
  present there are averaged, their weights renormalised (the library fails or mis-broadcasts).

Nesting rules (`ALLOWED_NESTINGS`) are the library's: e.g. a `Parallel` may hold names, `Stack`,
`BatchSplit` and `Average`; below the second level only `Stack` and names are allowed.

Example:
>>> setup = Stack("lang", Parallel("sst2", "mrpc"))
>>> setup
Stack[lang, Parallel[sst2, mrpc]]
>>> setup.flatten(), setup.parallel_channels
(('lang', 'sst2', 'mrpc'), 2)
>>> parse_setup_string("BatchSplit(a, Stack(b, c), batch_sizes=[2, 3])")
BatchSplit[a, Stack[b, c]]
>>> Stack("a", Stack("b", "c"))
Traceback (most recent call last):
...
ValueError: adapter setup is invalid: cannot nest Stack[b, c] in Stack[a, Stack[b, c]]; Stack may hold names, Fuse, Split, Parallel, BatchSplit, Average, MultiTask
"""

from __future__ import annotations

import ast
import json
import re
from typing import ClassVar, Sequence

from adapter_bert.configuration import split_top_level


class AdapterCompositionBlock(Sequence):
    """A block of adapter names and nested blocks; subclasses are the block types.

    Blocks compare equal when their type, children and options are equal, and are hashable, so
    a setup can key a cache of traced functions.
    """

    #: The name the encoder's composers dispatch on (`compose_<block_type>`).
    block_type: ClassVar[str] = ""

    def __init__(self, *children):
        if not children:
            raise ValueError(f"{type(self).__name__} needs at least one adapter")
        self.children = [_child(c) for c in children]
        validate_composition(self)

    # -- Sequence --------------------------------------------------------------------------------

    def __getitem__(self, index):
        return self.children[index]

    def __len__(self):
        return len(self.children)

    # -- identity --------------------------------------------------------------------------------

    def options(self) -> dict:
        """The block's options besides its children (saved with it)."""
        return {}

    def __eq__(self, other):
        return (type(other) is type(self) and self.children == other.children
                and self.options() == other.options())

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self):
        return f"{type(self).__name__}[{', '.join(map(str, self.children))}]"

    # -- structure -------------------------------------------------------------------------------

    def first(self) -> str:
        """The first adapter name, depth first."""
        child = self.children[0]
        return child if isinstance(child, str) else child.first()

    def last(self) -> str:
        """The last adapter name, depth first."""
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    def flatten(self) -> tuple[str, ...]:
        """Every adapter name in the block, in order of first appearance."""
        names = []
        for child in self.children:
            for name in ([child] if isinstance(child, str) else child.flatten()):
                if name not in names:
                    names.append(name)
        return tuple(names)

    @property
    def parallel_channels(self) -> int:
        """How many copies of the batch the block needs (its `Parallel`'s branch count, or 1)."""
        return max([1] + [c.parallel_channels for c in self.children if not isinstance(c, str)])

    # -- files -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The adapters library's `to_dict` form: type, children, and options as kwargs."""
        values = {"type": type(self).__name__,
                  "children": [setup_to_dict(child) for child in self.children]}
        if self.options():
            values["kwargs"] = self.options()
        return values


class Stack(AdapterCompositionBlock):
    """Each member runs on the previous member's output."""

    block_type = "stack"


class Parallel(AdapterCompositionBlock):
    """Each member runs on its own copy of the batch; one output per member."""

    block_type = "parallel"

    @property
    def parallel_channels(self) -> int:
        return len(self.children)


class Fuse(AdapterCompositionBlock):
    """AdapterFusion over the members (the fusion layer is added with `add_adapter_fusion`).

    Args:
        name: the fusion's name; default the members' last names joined by commas.
    """

    block_type = "fuse"

    def __init__(self, *children, name: str | None = None):
        self._name = None
        super().__init__(*children)
        if name is not None and name != self.name:  # the default name is no option
            self._name = name

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        return ",".join(c if isinstance(c, str) else c.last() for c in self.children)

    def options(self) -> dict:
        return {} if self._name is None else {"name": self._name}


class BatchSplit(AdapterCompositionBlock):
    """Consecutive groups of `batch_sizes` examples go through the members, one group each.

    Args:
        batch_sizes: one size per member, or one int for all.
    """

    block_type = "batch_split"

    def __init__(self, *children, batch_sizes):
        sizes = batch_sizes if isinstance(batch_sizes, (list, tuple)) else [batch_sizes] * len(children)
        if len(sizes) != len(children) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
            raise ValueError(f"BatchSplit needs one non-negative int batch size per member "
                             f"({len(children)}), got {batch_sizes!r}")
        self.batch_sizes = list(sizes)
        super().__init__(*children)

    def options(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}


class Average(AdapterCompositionBlock):
    """The weighted average of the members' outputs at every hook point.

    Args:
        weights: one weight per member (default equal weights).
        normalize_weights: divide the weights by their sum.
    """

    block_type = "average"

    def __init__(self, *children, weights=None, normalize_weights: bool = True):
        if weights is None:
            weights = [1.0 / len(children)] * len(children)
        else:
            weights = list(weights)
            if len(weights) != len(children) or not all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
                raise ValueError(f"Average needs one number per member ({len(children)}), got "
                                 f"weights={weights!r}")
            if normalize_weights:
                total = sum(weights)
                if total == 0:
                    raise ValueError(f"Average weights {weights!r} sum to 0 and cannot be "
                                     "normalised; pass normalize_weights=False")
                weights = [w / total for w in weights]
        self.weights = [float(w) for w in weights]
        super().__init__(*children)

    def options(self) -> dict:
        # Saved already normalised, as the library saves them.
        return {"weights": list(self.weights)}


class Split(AdapterCompositionBlock):
    """Consecutive sequence positions go through the members, one run of positions each.

    Args:
        splits: either split positions, one fewer than the members (`splits=[k]`: positions
            before `k` through the first member, the rest through the second), or, as in the
            adapters library, one segment length per member (or one int for all), which must
            add up to the sequence length.
    """

    block_type = "split"

    def __init__(self, *children, splits):
        values = splits if isinstance(splits, (list, tuple)) else [splits] * len(children)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"Split positions must be non-negative ints, got {splits!r}")
        if len(values) not in (len(children) - 1, len(children)):
            raise ValueError(f"Split of {len(children)} members needs {len(children) - 1} split "
                             f"positions (or {len(children)} segment lengths), got {splits!r}")
        self.splits = list(values)
        super().__init__(*children)
        boundaries = self.boundaries()
        if boundaries != sorted(boundaries):
            raise ValueError(f"Split positions must not decrease, got {splits!r}")

    def boundaries(self) -> list[int]:
        """The first position of every member but the first."""
        if len(self.splits) == len(self.children) - 1:
            return list(self.splits)
        ends, total = [], 0
        for length in self.splits[:-1]:
            total += length
            ends.append(total)
        return ends

    def sequence_length(self) -> int | None:
        """The sequence length segment lengths require (None for split positions)."""
        return sum(self.splits) if len(self.splits) == len(self.children) else None

    def options(self) -> dict:
        return {"splits": list(self.splits)}


class MultiTask(AdapterCompositionBlock):
    """Each row goes through the member its `task_ids` entry names (an index into the members).

    The model's inputs carry `task_ids` (int `[batch]`); rows are grouped by task once, before
    the embeddings, so each member runs on its own rows only, and put back in order at the end.
    This is what a server batching requests of several tasks needs (the mixed-task signature of
    `adapter_bert.export`).
    """

    block_type = "multi_task"


BLOCKS = {cls.__name__: cls for cls in (Stack, Parallel, Fuse, BatchSplit, Average, Split,
                                        MultiTask)}

#: Which children each block may hold (the adapters library's table; `str`: an adapter name).
ALLOWED_NESTINGS = {
    Stack: (str, Fuse, Split, Parallel, BatchSplit, Average, MultiTask),
    MultiTask: (str, Stack, Average, Fuse),
    Fuse: (str, Stack),
    Split: (str, Split, Stack, BatchSplit, Average),
    Parallel: (str, Stack, BatchSplit, Average),
    BatchSplit: (str, Stack, Split, BatchSplit, Average),
    Average: (str, Stack, Split, BatchSplit),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _child(child):
    if isinstance(child, AdapterCompositionBlock):
        return child
    if isinstance(child, str):
        if not _NAME.match(child):
            raise ValueError(f"adapter name must be letters, digits, '_', '-' or '.', got {child!r}")
        return child
    if isinstance(child, (list, tuple)):
        return Stack(*child)
    raise TypeError(f"a composition block holds adapter names and blocks, got "
                    f"{type(child).__name__}")


def _allowed(block_class) -> str:
    return ", ".join("names" if c is str else c.__name__ for c in ALLOWED_NESTINGS[block_class])


def validate_composition(setup, level: int = 0) -> None:
    """Raises ValueError for a nesting the adapters library does not allow.

    Below the second level (the top block is level 0) only `Stack` and names are allowed.
    """
    if isinstance(setup, str):
        return
    if level > 1 and not isinstance(setup, Stack):
        raise ValueError(f"adapter setup is too deep: cannot have {setup} at level {level}")
    for child in setup.children:
        if not isinstance(child, ALLOWED_NESTINGS[type(setup)]):
            raise ValueError(f"adapter setup is invalid: cannot nest {child} in {setup}; "
                             f"{type(setup).__name__} may hold {_allowed(type(setup))}")
        validate_composition(child, level + 1)


def parse_composition(setup, level: int = 0):
    """An adapter name, block, list (a `Stack`; a list inside it a `Fuse`, as in the library) or
    None, as a name or a validated block.

    Example:
    >>> parse_composition(["a", ["b", "c"]])
    Stack[a, Fuse[b, c]]
    >>> parse_composition("a")
    'a'
    """
    if setup is None or setup == [] or setup == ():
        return None
    if isinstance(setup, AdapterCompositionBlock):
        validate_composition(setup, level)
        return setup
    if isinstance(setup, str):
        return _child(setup)
    if isinstance(setup, (list, tuple)):
        block = Fuse if level == 1 else Stack
        return block(*[parse_composition(c, level + 1) for c in setup])
    raise TypeError(f"an adapter setup is a name, a composition block or a list, got "
                    f"{type(setup).__name__}")


def parse_heads_from_composition(setup, heads=None):
    """The head setup that goes with an adapter setup (the library's rule).

    A name, or a `Stack` ending in a name: that name. A `Parallel` (or a `Stack` ending in one):
    a list with the last name of each branch. A `BatchSplit` likewise: a `BatchSplit` of those
    names (a `MultiTask`: a `MultiTask` of them; the library has no heads for it). Anything else: None. With `heads` (the names that exist), a name without a head
    gives None and a `BatchSplit` with a missing head is a ValueError.

    Example:
    >>> parse_heads_from_composition(Stack("lang", Parallel("a", Stack("b", "c"))))
    ['a', 'c']
    """
    final = setup
    if isinstance(final, Stack):
        final = final.children[-1]
    if isinstance(final, str):
        return final if heads is None or final in heads else None
    if isinstance(final, Parallel):
        return [c if isinstance(c, str) else c.last() for c in final.children]
    if isinstance(final, (BatchSplit, MultiTask)):
        names = [c if isinstance(c, str) else c.last() for c in final.children]
        missing = [n for n in names if heads is not None and n not in heads]
        if missing:
            raise ValueError(f"{type(final).__name__} heads missing: {', '.join(missing)} "
                             f"(expected heads {', '.join(names)})")
        if isinstance(final, MultiTask):
            return MultiTask(*names)
        return BatchSplit(*names, batch_sizes=final.batch_sizes)
    return None


# --- files and strings ---------------------------------------------------------------------------

def setup_to_dict(setup) -> dict:
    """A name or block in the adapters library's `to_dict` form (a name: type `single`)."""
    if isinstance(setup, str):
        return {"type": "single", "children": [setup]}
    return setup.to_dict()


def setup_from_dict(values: dict):
    """The inverse of `setup_to_dict`; unknown types are a ValueError naming the known ones."""
    if not isinstance(values, dict) or "type" not in values or "children" not in values:
        raise ValueError(f"an adapter setup dict has 'type' and 'children', got {values!r}")
    kind = values["type"]
    if kind == "single":
        return _child(values["children"][0])
    if kind not in BLOCKS:
        raise ValueError(f"unknown composition block {kind!r}; known: single, {', '.join(BLOCKS)}")
    kwargs = dict(values.get("kwargs") or {})
    if kind == "Average":
        kwargs.setdefault("normalize_weights", False)  # saved normalised
    children = [setup_from_dict(c) for c in values["children"]]
    return BLOCKS[kind](*children, **kwargs)


def setup_key(setup) -> str:
    """A string that identifies a setup exactly (its type, children and options)."""
    return "" if setup is None else json.dumps(setup_to_dict(setup), sort_keys=True)


_CALL = re.compile(r"^\s*([A-Za-z]+)\s*[\(\[](.*)[\)\]]\s*$", re.DOTALL)
_OPTION = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(.*)$", re.DOTALL)


def parse_setup_string(text: str):
    """Parses `"Stack(lang, mrpc)"`-style text (also the `Stack[lang, mrpc]` repr) without eval.

    Block options are Python literals read with `ast.literal_eval`
    (`BatchSplit(a, b, batch_sizes=[2, 3])`); a bare word is an adapter name.

    Example:
    >>> parse_setup_string("Average(a, b, weights=[0.7, 0.3])").weights
    [0.7, 0.3]
    >>> parse_setup_string("Stack(a, __import__('os'))")
    Traceback (most recent call last):
    ...
    ValueError: cannot parse adapter setup "__import__('os')": expected a name or Block(...)
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty adapter setup string")
    text = text.strip()
    if _NAME.match(text):
        return text
    match = _CALL.match(text)
    if not match or match.group(1) not in BLOCKS:
        shown = text if len(text) <= 200 else text[:200] + "..."
        if match:
            raise ValueError(f"unknown composition block {match.group(1)!r} in adapter setup "
                             f"{shown!r}; known: {', '.join(BLOCKS)}")
        raise ValueError(f'cannot parse adapter setup "{shown}": expected a name or Block(...)')
    block, body = BLOCKS[match.group(1)], match.group(2)
    children, options = [], {}
    for item in split_top_level(body, ",", what="adapter setup"):
        if not item.strip():
            continue
        option = _OPTION.match(item)
        if option:
            try:
                options[option.group(1)] = ast.literal_eval(option.group(2).strip())
            except (ValueError, SyntaxError):
                raise ValueError(f"option {option.group(1)!r} of {block.__name__}(...) is not a "
                                 f"Python literal: {option.group(2).strip()!r}") from None
        else:
            children.append(parse_setup_string(item))
    try:
        return block(*children, **options)
    except TypeError as e:
        raise ValueError(f"bad options for {block.__name__}: {e}") from None


def as_setup(setup):
    """A setup given as a name, block, list, setup string or dict, as a name or block."""
    if isinstance(setup, dict):
        return setup_from_dict(setup)
    if isinstance(setup, str) and not _NAME.match(setup.strip()):
        return parse_setup_string(setup)
    return parse_composition(setup)
