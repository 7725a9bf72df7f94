"""The task interface, the task registry, and helpers shared by procedural task generators.

A task is a deterministic, download-free data source plus its metric. Example ``i`` of split ``s`` is a pure
function of ``(seed, s, i)`` (and the task's parameters), so a batch never depends on which other examples it
holds or in which order they were asked for, and the train and test streams never share a random stream.

Two kinds of task share the one ``Task`` protocol; a task's ``num_classes`` says which it is:

- **Token tasks** (language modelling: MQAR, copying, passkey, ...) have no ``num_classes`` (or None). ``labels``
  has the shape of ``inputs``, a target token at supervised positions and ``IGNORE_INDEX`` elsewhere; a causal LM
  is trained on them.
- **Classification tasks** (LRA's ListOps, Pathfinder) set ``num_classes: int``. ``labels`` is ``(B,)``, one class
  id in ``[0, num_classes)`` per example, and ``score`` receives ``B`` predictions and targets with
  ``example_index = arange(B)`` (what ``SequenceClassifier`` returns); an encoder classifier is trained on them.
  ``is_classification`` tells the two apart. A classification task may set ``segments = 2``: each row is then two
  sequences of ``seq_len // 2`` tokens side by side (a pair: "do they match?"), which ``TwoTowerClassifier``
  encodes apart with one shared encoder (``num_segments``).

Padding, for either kind: a task whose rows have different lengths right-pads them to ``seq_len`` with its
``pad_id`` (an int, a token reserved for padding); the model then gets ``mask = inputs != pad_id``
(``padding_mask``), so a padded position is an exact no-op for every mixer (docs/design.md §4). A task without a
``pad_id`` attribute, or with ``pad_id = None``, has no padding: every token is a real input and no mask is passed.
(``mqar_mixture`` pads with its filler token 0 and declares none: padding after a row's last supervised position
does not change a causal model's outputs there.)

**Splits.** Every task has ``train`` and ``test``. A task that also has a validation split (LRA reports test
accuracy at the checkpoint that is best on validation: ``TrainConfig.select_on``) declares ``splits =
VAL_SPLITS`` and generates ``val`` like the others, from its own split id (2) mixed into every example's seed, or
from data held out for it. Which tasks have one, and what it is:

- ``listops``, ``pathfinder``: an independent sample of the same generator, as large as the test split (LRA's
  sizes: 2,000 and 2,000 for ListOps, 10% and 10% of the images for Pathfinder).
- ``sfmnist``: the last 10% of the training images in the task's seeded order, held out of ``train`` (S4 holds 10%
  of the training set out with a fixed seed).
- ``bytetext``, ``dna_species``: windows drawn from the test regions by the validation streams (LRA's Text task
  uses its test set for validation too); ``byte_retrieval``: held-out works of its own.
- Token tasks have none: asking them for ``val`` is refused as an unknown split (``check_split``), and
  ``TrainConfig.select_on="val"`` is refused for them when the experiment is built.

The data fingerprint (``tasks/fingerprint.py``) hashes ``train`` and ``test`` only, so adding the validation split
moved no fingerprint.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Protocol, TypeVar, get_args, get_origin, get_type_hints, runtime_checkable

import numpy as np
import pydantic
import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label at unsupervised positions; ignored by the loss and by ``score``."""

SPLITS: dict[str, int] = {"train": 0, "test": 1, "val": 2}
"""Split name -> the split id mixed into every example's seed, so the streams of the splits differ."""
TRAIN_TEST: tuple[str, ...] = ("train", "test")
"""The splits of a task without a validation split (the default of ``task_splits``)."""
VAL_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits of a task with a validation split; such a task sets ``splits = VAL_SPLITS``."""


class TaskParameterError(ValueError):
    """A task parameter is unknown, of the wrong type, out of range, or inconsistent with another one."""


class UnknownTaskError(ValueError):
    """``build_task`` was asked for a name that is not registered."""


class ExampleIndexError(ValueError):
    """An unknown split, or an example index outside ``[0, num_examples(split))``."""


@runtime_checkable
class Task(Protocol):
    """A procedural data source with its metric.

    ``batch(split, indices)`` returns ``inputs: (B, L) int64`` token ids in ``[0, vocab_size)`` and, for a token
    task, ``labels: (B, L) int64`` holding the target at supervised positions and ``IGNORE_INDEX`` (-100)
    elsewhere; for a classification task (see ``ClassificationTask``), ``labels: (B,) int64`` class ids.
    ``score`` receives only the supervised positions of a batch, flattened (a classification task: one per
    example), and returns the per-example metric; the metric of a set of examples is the mean of the per-example
    values. Optional attribute ``pad_id: int | None``: see the module docstring.
    """

    name: str
    vocab_size: int
    seq_len: int
    metric_name: str
    higher_is_better: bool

    def num_examples(self, split: str) -> int:
        """Number of examples in ``split`` ("train", "test", and "val" for a task that has it)."""
        ...

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, L) int64`` and ``labels: (B, L) int64`` (-100 where unsupervised) for ``indices``."""
        ...

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example metric ``(batch_size,)`` from flat supervised positions ``(N,)`` and their example rows."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able parameters; ``build_task(**task.describe())`` rebuilds an identical task."""
        ...


@runtime_checkable
class ClassificationTask(Task, Protocol):
    """A task with one label per sequence: ``labels: (B,) int64`` in ``[0, num_classes)``, ``inputs`` right-padded
    with ``pad_id`` (None: every row is full length, no padding)."""

    num_classes: int
    pad_id: int | None


def is_classification(task: Task) -> bool:
    """Whether ``task`` is a classification task: it sets ``num_classes`` (token tasks leave it unset or None)."""
    return getattr(task, "num_classes", None) is not None


def is_classification_class(cls: type) -> bool:
    """Whether the task class ``cls`` makes classification tasks, known without building one (which may need a
    dataset): the class, or a base, declares ``num_classes``, as a value or as an annotation (the count then
    depends on the parameters, e.g. ``dna_species``' species list)."""
    return any("num_classes" in vars(klass) or "num_classes" in getattr(klass, "__annotations__", {})
               for klass in cls.__mro__)


def task_splits(task: Task) -> tuple[str, ...]:
    """The splits ``task`` has: its ``splits`` (``VAL_SPLITS`` for a task with a validation split), else train and
    test."""
    return tuple(getattr(task, "splits", TRAIN_TEST))


def num_segments(task: Task) -> int:
    """How many sequences side by side each row of ``task`` holds: its ``segments`` (2 for a pair task), else 1."""
    return int(getattr(task, "segments", 1))


def padding_mask(task: Task, inputs: Tensor) -> Tensor | None:
    """``mask: (B, L) bool``, True on real tokens, for ``inputs: (B, L)`` of ``task``; None when the task declares
    no ``pad_id`` (then every position is a real token)."""
    pad_id = getattr(task, "pad_id", None)
    return None if pad_id is None else inputs != pad_id


# ----------------------------------------------------------------------------------------------------------
# Helpers for generators


def check_split(split: str, allowed: Sequence[str] = TRAIN_TEST) -> int:
    """The split id (``SPLITS``) of ``split``; raises ``ExampleIndexError`` for a split not in ``allowed`` (by
    default train and test: ``val`` only for a task that passes its ``VAL_SPLITS``)."""
    if split not in allowed:
        raise ExampleIndexError(f"unknown split {split!r}; allowed: {', '.join(map(repr, allowed))}")
    return SPLITS[split]


def check_indices(split: str, indices: Sequence[int] | np.ndarray, num_examples: int) -> np.ndarray:
    """``indices`` as a 1-D int64 array, each in ``[0, num_examples)``; raises ``ExampleIndexError`` otherwise."""
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ExampleIndexError(f"indices must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ExampleIndexError(f"indices must be integers, got dtype {array.dtype}")
    bad = array[(array < 0) | (array >= num_examples)]
    if bad.size:
        raise ExampleIndexError(
            f"index {int(bad[0])} is out of range for split {split!r}: allowed 0 <= index < {num_examples}"
        )
    return array.astype(np.int64)


def example_rng(seed: int, split_id: int, index: int) -> np.random.Generator:
    """The random stream of one example: PCG64 seeded by ``SeedSequence([seed, split_id, index])``.

    SeedSequence hashes the three integers together, so neighbouring indices and the two splits get
    statistically independent streams, and an example never depends on the rest of its batch.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_id, index])))


def per_example_accuracy(predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
    """Mean of ``predictions == targets`` over each example's supervised positions.

    predictions, targets, example_index: (N,) — one entry per supervised position; ``example_index`` is the row
    of that position in a batch of ``batch_size`` examples. Returns ``(batch_size,)`` float32. Every row must
    own at least one position: an example without supervision has no accuracy, and silently calling it 0 or 1
    would bias the mean.
    """
    if not (predictions.ndim == targets.ndim == example_index.ndim == 1):
        raise ValueError(
            "predictions, targets and example_index must be 1-D, got shapes "
            f"{tuple(predictions.shape)}, {tuple(targets.shape)}, {tuple(example_index.shape)}"
        )
    if not (predictions.shape == targets.shape == example_index.shape):
        raise ValueError(
            "predictions, targets and example_index must have the same length, got "
            f"{predictions.shape[0]}, {targets.shape[0]}, {example_index.shape[0]}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index = example_index.long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch_size):
        raise ValueError(
            f"example_index values must lie in [0, {batch_size}), got range [{int(index.min())}, {int(index.max())}]"
        )
    counts = torch.bincount(index, minlength=batch_size)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"examples {missing} have no supervised positions; their accuracy is undefined")
    correct = (predictions == targets).to(torch.float32)
    sums = torch.zeros(batch_size, dtype=torch.float32, device=correct.device).index_add_(0, index, correct)
    return sums / counts.to(sums)


# ----------------------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, type] = {}
_TaskClass = TypeVar("_TaskClass", bound=type)


def register_task(name: str) -> Callable[[_TaskClass], _TaskClass]:
    """Class decorator: register a task under ``name``.

    The class needs a docstring (its first line is the description in ``available_tasks``) and a keyword-only
    constructor with annotated parameters. The constructor is wrapped so that every call — directly or through
    ``build_task`` — validates those annotations strictly with pydantic (``True`` is not an int, ``"3"`` is
    not an int) and reports a failure as ``TaskParameterError`` naming the field, the value and what is allowed.
    """

    def decorate(cls: _TaskClass) -> _TaskClass:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"task class {cls.__qualname__} needs a docstring: its first line describes it")
        positional = [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        if positional:
            raise TypeError(f"task class {cls.__qualname__} must take keyword-only parameters, got {positional}")
        cls.__init__ = _validating(name, cls.__init__)
        _REGISTRY[name] = cls
        return cls

    return decorate


def _validating(task_name: str, init: Callable[..., None]) -> Callable[..., None]:
    checked = pydantic.validate_call(config=pydantic.ConfigDict(strict=True))(init)
    hints = {name: hint for name, hint in get_type_hints(init, include_extras=True).items() if name != "return"}

    @functools.wraps(init)
    def wrapper(self: Any, **params: Any) -> None:
        try:
            checked(self, **params)
        except pydantic.ValidationError as error:
            problems = []
            for item in error.errors(include_url=False):
                field = ".".join(str(part) for part in item["loc"])
                if item["type"] == "unexpected_keyword_argument":
                    allowed = ", ".join(hints)
                    problems.append(f"unknown parameter {field!r}; allowed: {allowed}")
                else:
                    expected = describe_annotation(hints[field]) if field in hints else "?"
                    problems.append(f"{field}={item['input']!r}: {item['msg']} (allowed: {expected})")
            raise TaskParameterError(f"task {task_name!r}: " + "; ".join(problems)) from None

    return wrapper


def constructor_params(task: Any) -> dict[str, Any]:
    """``{"name": task.name, <each constructor parameter>: its value on the task}``: the ``describe()`` of a task
    that keeps every constructor parameter as an attribute of the same name, so ``build_task(**that)`` rebuilds it.
    Tuples become lists (JSON has no tuples, and the validated parameter accepts either)."""
    params = [p for p in inspect.signature(type(task).__init__).parameters if p != "self"]

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    return {"name": task.name, **{p: plain(getattr(task, p)) for p in params}}


def describe_annotation(annotation: Any) -> str:
    """A short human form of a parameter annotation, e.g. ``int > 0`` for ``Annotated[int, Field(gt=0)]``."""
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        bounds = []
        for meta in metadata:
            for constraint in getattr(meta, "metadata", [meta]):
                for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    if getattr(constraint, attr, None) is not None:
                        bounds.append(f"{symbol} {getattr(constraint, attr)}")
                if getattr(constraint, "allow_inf_nan", True) is False:
                    bounds.append("finite")
        name = describe_annotation(base)
        return ", ".join([f"{name} {bounds[0]}", *bounds[1:]]) if bounds else name
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(repr, get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def available_tasks() -> dict[str, str]:
    """Registered task name -> one-line description."""
    return {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in sorted(_REGISTRY.items())}


def task_class(name: str) -> type:
    """The class registered as ``name``; ``UnknownTaskError`` listing the registered ones."""
    if name not in _REGISTRY:
        raise UnknownTaskError(f"unknown task {name!r}; available: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name]


def build_task(name: str, **params: Any) -> Task:
    """Construct the task registered as ``name`` with ``params``.

    Unknown names raise ``UnknownTaskError`` listing the registered ones; unknown, mistyped or out-of-range
    parameters raise ``TaskParameterError`` naming the field, the value and what is allowed.
    """
    cls = task_class(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TaskParameterError(
            f"task {name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
        )
    return cls(**params)
