"""Pathfinder / Path-X images (Long Range Arena): are the two circles on the ends of one curve?

Our own generator with the semantics of drewlinsley/pathfinder ``snakes2.py`` + ``snakes.py`` (MIT; Kim, Linsley
et al., ICLR 2020), which produced the LRA datasets (spec ``tasks.md`` §1a). An image holds two *target snakes*
seeded ``seed_distance`` px apart, short *distractor snakes*, and two circular *markers*: one on the origin tip of
a target snake, the other on the terminal tip of the same snake (label 1) or of the other one (label 0).

A *paddle* is a short anti-aliased segment (``paddle_length``, ``paddle_thickness``); its occupancy footprint is
the segment widened by the image's ``margin`` on every side, a soft mask (see ``_raster``). Per image, drawn from
the example's own random stream (``base.example_rng``): the label (uniform), the margin (uniform over
``paddle_margins``), then

1. Seeds. Snake 0: an integer orientation in [-180, 180) degrees, and a tail uniform over the pixels from which
   the paddle's core (its footprint's pixels at 0.8 or more) touches nothing occupied (more than 0.3) and no pixel
   of the ``2 * seed_distance`` border band: the occupancy dilated by the core, as the original does with cv2.
   Snake 1: its tail ``rint(seed_distance * (sin, cos))`` from snake 0's tail at a uniform integer direction in
   [0, 360) degrees, with its own orientation. A paddle runs from its tail to ``head = ceil(tail + length * u)``;
   its *pivot* is ``ceil(head - (length + margin) * u)``. A seed whose head or pivot leaves the image is redrawn,
   ``max_paddle_retrial + 1`` draws in all.
2. Growth, ``contour_length - 1`` rounds, the two snakes alternating. From the last pivot and orientation, the next
   pivot is ``ceil(pivot + (length + 2 margin) * u)``; the candidate heads are the distinct in-image integer
   points (truncated) of ``360 / (2 pi r)``-degree steps on the circle of radius ``r = length + margin`` around it,
   weighted by ``(1 - occupancy dilated by a disk of radius margin) * max(cos(min(continuity * dtheta, pi/2)), 0)^2``
   (``dtheta``: the turn from the last orientation; larger ``continuity``, straighter snakes). A head is drawn from
   the weights and its paddle points back at the pivot; it is accepted when ``max(occupancy + footprint) < 1.8``.
   No candidate weight, or ``max_paddle_retrial + 1`` rejected draws, fails the image, which restarts from the
   seeds with the same label and margin. The snake's last head is its *terminal tip*; its first tail the *origin*.
3. Distractors: ``num_distractor_snakes`` snakes of ``distractor_length`` paddles, seeded like snake 0 (border band
   1 px) and grown alone. A failed snake leaves no trace and is retried, ``max_distractor_retrial + 1`` attempts
   in all, then skipped; placement stops once under 1% of the image is free. Distractors are drawn with the
   snake contrast alone (the original passes ``snake_contrast_list`` where targets get snake x paddle contrast).
4. Markers: ``o`` uniform in {0, 1}; discs of ``marker_radius`` (value 1) on snake o's origin tip and on the
   terminal tip of snake ``o`` (label 1) or ``1 - o`` (label 0), so both classes put a marker at both seeds.
5. Image: the max of the paddles (coverage x contrast) and the markers, byte-scaled by its own min and max as
   ``scipy.misc.imsave`` did (``_raster.bytescale``), NOT the 2026 "modernized" PIL path (float resize, then /255
   again), which makes the markers nearly invisible. Tokens are the bytes, rows first.

Where this code departs from the original, and why (each also where it happens):

- Rendering: area coverage from exact point-to-segment distances, estimated on ``4 * aa_scale`` samples per pixel
  and axis and box-averaged, instead of PIL's line at ``aa_scale`` plus a Lanczos resize (why finer: ``_raster``);
  a footprint is the segment within ``half_width + margin`` (the original dilates the supersampled line by a disk
  of ``margin * aa_scale``): the same shapes up to sub-pixel detail, with no PIL or cv2.
- The seed dilation structure is the footprint's pixels at 0.8 or more, where the original keeps those at full
  value (its uint8 cast of the Lanczos mask): with area coverage that would leave 0.95 pixels unchecked, while
  0.8 makes a seed found by dilation pass the overlap test like every other paddle (``_raster.Paddle``).
- Occupancy, the "one paddle behind" rule: the original keeps a snake's newest paddle out of the occupancy so its
  successor may touch it, but with two interleaved target snakes that also hides each snake's newest paddle from
  the other one, and it never adds target snake 0's last paddle, so a distractor may cross its terminal tip. Here
  a snake's view is every placed paddle except its own newest one; all paddles are in before the distractors.
- Snake 1's seed is also subject to the overlap test against snake 0's seed (the original never tests it; the
  paddles can only meet at 64 px, where ``2 * length`` nearly reaches ``seed_distance``).
- Restarts: the original loops forever; here ``MAX_RESTARTS`` (far above what is seen) then ``RuntimeError``.
- The random streams are numpy's per example, so images are not the original's bit for bit (nor could they be:
  the original is unseeded). The label is the stream's first draw: one ``(seed, split, index)`` has the same label
  at every size and difficulty.

Parameters per size (``PRESETS``, from LRA's ``lra_benchmarks/data/pathfinder.py`` docstrings and the wrapper's
defaults): difficulty easy / intermediate / hard is ``contour_length`` 6 / 9 / 14; ``distractor_length =
contour_length // 3`` and ``num_distractor_snakes = budget // distractor_length`` with budget 20 / 22 / 35 at
32 / 64 / 128 px. (The wrapper script computes that count once, for contour length 6, before looping over 9 and
14; LRA's docstrings write it per run, which we follow.) LRA Pathfinder is 32 px hard, Path-X 128 px hard.

Cost (one core): long snakes in a small image mostly run into the border, and each failure restarts the pair, as
in the original; a try costs about 0.5 ms. Measured CPU time per image (mean restarts): 32 px easy / intermediate
/ hard 1.7 / 2.2 / 7 ms (1 / 4 / 19); 64 px 4 / 16 / 170 ms (3 / 56 / 680); 128 px 9 / 10 / 150 ms (0.6 / 13 /
460; at hard, margin 3 needs about 850 restarts, margin 2 about 90). So 32 px is cheap enough to generate batches
on the fly; 64 and 128 px hard want a cache of pre-generated examples: ``longseq data cache-pathfinder`` writes one to
disk (``tasks/example_cache.py``), which the task reads for the indices it holds, bit for bit what it would generate.
``GENERATOR_VERSION`` identifies this code's output there: bump it with any change that changes an image.

The registered task ``pathfinder`` (``Pathfinder``) is a classification task (``tasks/base.py``): ``inputs: (B,
size * size)``, the pixel bytes as tokens (``vocab_size`` 256: LRA's and S4's "tokenize" input, not normalised
floats), ``labels: (B,)`` 0/1 (``num_classes`` 2), metric accuracy. There is no padding: every image is full length
and token 0 is a black pixel, a real input, so ``pad_id`` is None and the model gets no mask. Defaults: 32 px hard,
LRA's Pathfinder; ``size=128`` is Path-X. Split sizes: LRA's configs assume 160,000 train and 20,000 evaluation
examples (TFDS 80/10/10 of 200,000 images): the defaults are 160,000 train and 20,000 test, and the validation
split (``val``, split id 2) is as large as the test split, LRA's other 10%. At ~7 ms per 32 px hard image, a full
test (or validation) pass costs ~2.5 CPU minutes of generation alone: set ``TrainConfig.eval_examples`` for
periodic evaluations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from longseq.tasks._generated import GeneratedClassification
from longseq.tasks._raster import Paddle, bytescale, dilate, disc, disk_offsets, fits, paddle, readonly, stamp_max
from longseq.tasks.base import (
    VAL_SPLITS,
    ExampleIndexError,
    TaskParameterError,
    check_indices,
    check_split,
    example_rng,
    register_task,
)
from longseq.tasks.example_cache import EntrySpec, cached_batch

DIFFICULTIES: dict[str, int] = {"easy": 6, "intermediate": 9, "hard": 14}
"""Difficulty -> contour length (the original's ``curv_baseline``, ``curv_contour_length_9`` and ``_14``)."""

PRESETS: dict[int, dict] = {
    32: dict(paddle_margins=(1,), paddle_length=2, paddle_thickness=0.5, marker_radius=1.5, seed_distance=7,
             continuity=1.0, distractor_budget=20, snake_contrasts=(2.0,), paddle_contrasts=(0.75,)),
    64: dict(paddle_margins=(1,), paddle_length=5, paddle_thickness=1.0, marker_radius=2.5, seed_distance=12,
             continuity=1.8, distractor_budget=22, snake_contrasts=(0.8,), paddle_contrasts=(1.0,)),
    128: dict(paddle_margins=(2, 3), paddle_length=5, paddle_thickness=1.5, marker_radius=3.0, seed_distance=20,
              continuity=1.8, distractor_budget=35, snake_contrasts=(0.9,), paddle_contrasts=(1.0,)),
}  # fmt: skip
"""Image size -> the LRA generation parameters that differ between sizes (padding 1, ``aa_scale`` 2 for all)."""

GENERATOR_VERSION = 1
"""The version of this generator's output, recorded with every cache entry: bump it with any change that changes an
image or a label, so that entries built before are ignored (with a notice) rather than read."""

MAX_RESTARTS = 100_000
"""Failed target-snake pairs tolerated per image before giving up (the original retries forever)."""


@dataclasses.dataclass(frozen=True)
class PathfinderConfig:
    """The generation parameters of one image family (``pathfinder_config`` builds LRA's)."""

    size: int
    contour_length: int
    distractor_length: int
    num_distractor_snakes: int
    paddle_margins: tuple[int, ...]
    paddle_length: int
    paddle_thickness: float
    marker_radius: float
    seed_distance: int
    continuity: float
    snake_contrasts: tuple[float, ...]
    paddle_contrasts: tuple[float, ...]
    padding: int = 1
    aa_scale: int = 2
    max_paddle_retrial: int = 2
    max_distractor_retrial: int = 4

    def __post_init__(self) -> None:
        checks = [
            ("size", self.size, self.size > 4 * self.seed_distance, "> 4 * seed_distance"),
            ("contour_length", self.contour_length, self.contour_length >= 2, ">= 2"),
            ("distractor_length", self.distractor_length, self.distractor_length >= 1, ">= 1"),
            ("num_distractor_snakes", self.num_distractor_snakes, self.num_distractor_snakes >= 0, ">= 0"),
            ("paddle_margins", self.paddle_margins, min(self.paddle_margins, default=0) >= 1, "integers >= 1"),
            ("paddle_length", self.paddle_length, self.paddle_length >= 1, ">= 1"),
            ("paddle_thickness", self.paddle_thickness, float(self.paddle_thickness * self.aa_scale).is_integer()
             and self.paddle_thickness > 0, "> 0 with paddle_thickness * aa_scale an integer"),
            ("seed_distance", self.seed_distance, self.seed_distance >= 1, ">= 1"),
            ("snake_contrasts", self.snake_contrasts, min(self.snake_contrasts, default=0) > 0, "positive numbers"),
            ("paddle_contrasts", self.paddle_contrasts, min(self.paddle_contrasts, default=0) > 0, "positive numbers"),
            ("padding", self.padding, 1 <= self.padding <= 2 * self.seed_distance, ">= 1, <= 2 * seed_distance"),
            ("aa_scale", self.aa_scale, self.aa_scale >= 1, ">= 1"),
        ]  # fmt: skip
        problems = [f"{name}={value!r} (allowed: {allowed})" for name, value, ok, allowed in checks if not ok]
        if problems:
            raise TaskParameterError("pathfinder: " + "; ".join(problems))


def pathfinder_config(size: int = 32, difficulty: str = "hard") -> PathfinderConfig:
    """LRA's parameters for ``size`` (32: Pathfinder, 128: Path-X, or 64) and ``difficulty``."""
    problems = []
    if size not in PRESETS:
        problems.append(f"size={size!r} (allowed: {', '.join(map(str, PRESETS))})")
    if difficulty not in DIFFICULTIES:
        problems.append(f"difficulty={difficulty!r} (allowed: {', '.join(map(repr, DIFFICULTIES))})")
    if problems:
        raise TaskParameterError("pathfinder: " + "; ".join(problems))
    params = dict(PRESETS[size])
    budget = params.pop("distractor_budget")
    contour_length = DIFFICULTIES[difficulty]
    distractor_length = contour_length // 3
    return PathfinderConfig(
        size=size,
        contour_length=contour_length,
        distractor_length=distractor_length,
        num_distractor_snakes=budget // distractor_length,
        **params,
    )


class SnakeGeometry(NamedTuple):
    """The paddles of one snake in growth order, in pixel coordinates (row, column).

    starts: (n, 2) int — where each paddle is drawn from: the origin tip for paddle 0, the sampled head (the free
    end) for the others, so ``starts[-1]`` is the terminal tip. angles: (n,) — the direction each paddle is drawn
    in, radians, ``u = (sin, cos)``. ends: (n, 2) float — ``start + length * u``. pivots: (n, 2) int — the growth
    anchors, ``length + 2 * margin`` apart (up to ceil rounding); paddle k >= 1 starts ``length + margin`` from
    its pivot (up to the truncation of the candidate points) and points at it.
    """

    starts: np.ndarray
    angles: np.ndarray
    ends: np.ndarray
    pivots: np.ndarray


@dataclasses.dataclass(frozen=True)
class PathfinderSample:
    """One image with its label and everything needed to check it."""

    pixels: np.ndarray  # (size, size) uint8
    label: int
    origin_snake: int  # the target snake whose origin tip carries a marker
    targets: tuple[SnakeGeometry, SnakeGeometry]
    distractors: tuple[SnakeGeometry, ...]
    origin_marker: tuple[int, int]
    terminal_marker: tuple[int, int]
    margin: int
    restarts: int  # failed target-snake pairs before this one


class _Placed(NamedTuple):
    start: tuple[int, int]
    angle: float  # orientation of the snake at this paddle (pivot -> head; tail -> head for a seed)
    pivot: tuple[int, int]
    drawn: float  # direction the paddle is drawn in from ``start`` (toward the pivot for a grown paddle)
    paddle: Paddle
    contrast: float


def _flip(angle: float) -> float:
    return angle + math.pi if angle < 0 else angle - math.pi


def _ceil_step(point: tuple[int, int], angle: float, distance: float) -> tuple[int, int]:
    return math.ceil(point[0] + distance * math.sin(angle)), math.ceil(point[1] + distance * math.cos(angle))


@functools.lru_cache(maxsize=16)
def _circle(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The original's candidate heads around an integer pivot: offsets (K, 2) int and their angles (K,).

    The distinct ``floor(radius * (sin a, cos a))``, sorted, over ``a`` in steps of ``360 / (2 pi radius)``
    degrees from 0 (one per pixel of arc). As pivots are integer points, flooring ``pivot + radius * (sin, cos)``
    is ``pivot + offsets``, and lies on the image exactly when the unfloored point does: nothing depends on the
    pivot.
    """
    radians = np.arange(0.0, 360.0, 360.0 / (2 * radius * math.pi)) * math.pi / 180
    points = np.stack([np.floor(radius * np.sin(radians)), np.floor(radius * np.cos(radians))], axis=1)
    offsets = readonly(np.unique(points.astype(np.int64), axis=0))
    return offsets, readonly(np.arctan2(offsets[:, 0], offsets[:, 1]))


@functools.lru_cache(maxsize=64)
def _neighbours(radius: int, margin: int, width: int) -> np.ndarray:
    """(K, D) int: flat offsets, in a ``width``-wide array, of the margin-disk around each candidate head."""
    offsets, disk = _circle(radius)[0], disk_offsets(margin)
    return readonly((offsets[:, None, 0] + disk[None, :, 0]) * width + offsets[:, None, 1] + disk[None, :, 1])


@functools.lru_cache(maxsize=8192)
def _smoothness(radius: int, continuity: float, heading: float) -> np.ndarray:
    """(K,) continuity weights ``max(cos(min(continuity * turn, pi/2)), 0)^2`` of the candidates after
    ``heading`` (a finite set of values: integer degrees for seeds, candidate angles after that)."""
    turn = np.abs(_circle(radius)[1] - heading)
    turn = np.minimum(turn, 2 * math.pi - turn)
    return readonly(np.maximum(np.cos(np.minimum(continuity * turn, math.pi / 2)), 0.0) ** 2)


class _Growth:
    """The occupancy of one image and the snake-growing steps that read and extend it."""

    def __init__(self, config: PathfinderConfig, margin: int, rng: np.random.Generator) -> None:
        self.config, self.margin, self.rng = config, margin, rng
        # The occupancy in a zero frame ``margin`` wide, so that the disk around any on-image point reads the
        # array without bounds checks (off-image values are ignored, as by OpenCV's dilation); ``mask`` is the
        # image part of it, where everything is stamped and tested.
        self.reframe(np.zeros((config.size + 2 * margin, config.size + 2 * margin)))
        pad = config.padding
        self.mask[:pad], self.mask[-pad:], self.mask[:, :pad], self.mask[:, -pad:] = 1, 1, 1, 1

    def inner(self, framed: np.ndarray) -> np.ndarray:
        """The image part of a framed occupancy array (a view)."""
        return framed[self.margin : -self.margin, self.margin : -self.margin]

    def reframe(self, framed: np.ndarray) -> None:
        self.framed, self.mask = framed, self.inner(framed)

    def paddle(self, angle: float) -> Paddle:
        c = self.config
        return paddle(angle, float(c.paddle_length), c.paddle_thickness / 2, float(self.margin), c.aa_scale)

    def inside(self, *points: tuple[int, int]) -> bool:
        return all(0 <= y < self.config.size and 0 <= x < self.config.size for y, x in points)

    def seed(self, band: int, contrast: float, first: bool = False) -> _Placed | None:
        """A seed paddle touching nothing occupied, its tail ``band`` px or more from the border (step 1).

        ``first``: the image holds nothing but its padding, which lies inside the band, so the free tails form a
        rectangle, the inside of the band shrunk by the extent of the paddle's core: the same tails, in the
        same row-major order, as dilating, without the dilation.
        """
        c, size = self.config, self.config.size
        if not first:
            blocked = np.ones((size, size), dtype=bool)
            blocked[band : size - band, band : size - band] = self.mask[band : size - band, band : size - band] > 0.3
        for _ in range(c.max_paddle_retrial + 1):
            angle = int(self.rng.integers(-180, 180)) * math.pi / 180
            drawn = self.paddle(angle)
            if first:
                (top, left), (bottom, right) = band - drawn.core.min(axis=0), size - band - drawn.core.max(axis=0)
                height, width = max(int(bottom - top), 0), max(int(right - left), 0)
                if height * width == 0:
                    return None
                tail = divmod(int(self.rng.integers(height * width)), width)
                tail = (int(top) + tail[0], int(left) + tail[1])
            else:
                available = np.flatnonzero(~dilate(blocked, drawn.core))
                if available.size == 0:
                    return None
                tail = divmod(int(available[self.rng.integers(available.size)]), size)
            head = _ceil_step(tail, angle, c.paddle_length)
            pivot = _ceil_step(head, _flip(angle), c.paddle_length + self.margin)
            if self.inside(head, pivot):
                return _Placed(tail, angle, pivot, angle, drawn, contrast)
        return None

    def partner_seed(self, first: _Placed, framed: np.ndarray, contrast: float) -> _Placed | None:
        """Snake 1's seed, ``seed_distance`` from snake 0's tail (step 1); ``framed`` holds snake 0's seed."""
        c, view = self.config, self.inner(framed)
        for _ in range(c.max_paddle_retrial + 1):
            angle = int(self.rng.integers(-180, 180)) * math.pi / 180
            direction = int(self.rng.integers(0, 360)) * math.pi / 180
            tail = (
                int(np.rint(first.start[0] + c.seed_distance * math.sin(direction))),
                int(np.rint(first.start[1] + c.seed_distance * math.cos(direction))),
            )
            head = _ceil_step(tail, angle, c.paddle_length)
            pivot = _ceil_step(head, _flip(angle), c.paddle_length + self.margin)
            drawn = self.paddle(angle)
            if self.inside(head, pivot) and fits(view, drawn.mask, tail):
                return _Placed(tail, angle, pivot, angle, drawn, contrast)
        return None

    def extend(self, framed: np.ndarray, last: _Placed, contrast: float) -> _Placed | None:
        """The next paddle after ``last`` against the framed occupancy ``framed`` (step 2), or None on failure."""
        c, size, margin = self.config, self.config.size, self.margin
        radius = c.paddle_length + margin
        offsets, angles = _circle(radius)
        pivot = _ceil_step(last.pivot, last.angle, c.paddle_length + 2 * margin)
        if radius <= min(pivot) and max(pivot) < size - radius:
            keep: slice | np.ndarray = slice(None)  # the whole circle lies on the image
        else:
            ys, xs = pivot[0] + offsets[:, 0], pivot[1] + offsets[:, 1]
            keep = np.flatnonzero((ys >= 0) & (ys < size) & (xs >= 0) & (xs < size))
            if keep.size == 0:
                return None
        base = (pivot[0] + margin) * framed.shape[1] + pivot[1] + margin
        dilated = framed.ravel()[base + _neighbours(radius, margin, framed.shape[1])[keep]].max(axis=1)
        cumulative = np.cumsum((1.0 - dilated) * _smoothness(radius, c.continuity, last.angle)[keep])
        total = cumulative[-1]
        if total < 1e-4:
            return None
        heads, angles = offsets[keep], angles[keep]
        for _ in range(c.max_paddle_retrial + 1):
            pick = min(int(np.searchsorted(cumulative, self.rng.random() * total, side="right")), len(heads) - 1)
            start = (pivot[0] + int(heads[pick, 0]), pivot[1] + int(heads[pick, 1]))
            back = _flip(float(angles[pick]))
            drawn = self.paddle(back)
            if fits(self.inner(framed), drawn.mask, start):
                return _Placed(start, float(angles[pick]), pivot, back, drawn, contrast)
        return None

    def targets(self) -> tuple[list[_Placed], list[_Placed]] | None:
        """The two target snakes (steps 1-2), or None when the pair fails and the image must restart.

        Each snake grows against its own view: every placed paddle but its own newest one. ``views[s]`` is kept
        up to date incrementally; at the end ``views[0]``, which is ``self.framed``, holds every paddle.
        """
        c, rng = self.config, self.rng
        snake_contrast = rng.permutation(np.array(c.snake_contrasts * 2))[:2].tolist()
        first = self.seed(2 * c.seed_distance, snake_contrast[0] * float(rng.choice(c.paddle_contrasts)), True)
        if first is None:
            return None
        views = (self.framed, self.framed.copy())
        stamp_max(self.inner(views[1]), first.paddle.mask, first.start)
        second = self.partner_seed(first, views[1], snake_contrast[1] * float(rng.choice(c.paddle_contrasts)))
        if second is None:
            return None
        stamp_max(self.inner(views[0]), second.paddle.mask, second.start)
        snakes = ([first], [second])
        for _ in range(c.contour_length - 1):
            paddle_contrast = float(rng.choice(c.paddle_contrasts))
            for s, snake in enumerate(snakes):
                step = self.extend(views[s], snake[-1], snake_contrast[s] * paddle_contrast)
                if step is None:
                    return None
                stamp_max(self.inner(views[s]), snake[-1].paddle.mask, snake[-1].start)
                stamp_max(self.inner(views[1 - s]), step.paddle.mask, step.start)
                snake.append(step)
        stamp_max(self.mask, snakes[0][-1].paddle.mask, snakes[0][-1].start)
        return snakes

    def distractor(self) -> list[_Placed] | None:
        """One distractor snake (step 3); on failure the occupancy is left as it was."""
        c, saved = self.config, self.framed.copy()
        snake = [self.seed(1, float(self.rng.choice(c.snake_contrasts)))]
        while snake[-1] is not None and len(snake) < c.distractor_length:
            step = self.extend(self.framed, snake[-1], float(self.rng.choice(c.snake_contrasts)))
            if step is not None:
                stamp_max(self.mask, snake[-1].paddle.mask, snake[-1].start)
            snake.append(step)
        if snake[-1] is None:
            self.reframe(saved)
            return None
        stamp_max(self.mask, snake[-1].paddle.mask, snake[-1].start)
        return snake

    def distractors(self) -> list[list[_Placed]]:
        """Up to ``num_distractor_snakes`` distractors (step 3), each given ``max_distractor_retrial + 1`` tries."""
        placed = []
        for _ in range(self.config.num_distractor_snakes):
            if np.mean(self.mask <= 0.3) < 0.01:
                break
            for _attempt in range(self.config.max_distractor_retrial + 1):
                snake = self.distractor()
                if snake is not None:
                    placed.append(snake)
                    break
        return placed


def _geometry(snake: list[_Placed], length: int) -> SnakeGeometry:
    starts = np.array([p.start for p in snake], dtype=np.int64)
    angles = np.array([p.drawn for p in snake])
    ends = starts + length * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    return SnakeGeometry(starts, angles, ends, np.array([p.pivot for p in snake], dtype=np.int64))


def generate(config: PathfinderConfig, rng: np.random.Generator) -> PathfinderSample:
    """One image drawn from ``rng`` (steps 1-5 of the module docstring)."""
    label = int(rng.integers(2))
    margin = int(rng.choice(config.paddle_margins))
    for restarts in range(MAX_RESTARTS):  # noqa: B007 (reported in the sample)
        growth = _Growth(config, margin, rng)
        targets = growth.targets()
        if targets is not None:
            break
    else:
        raise RuntimeError(f"pathfinder: no pair of target snakes fits after {MAX_RESTARTS} restarts ({config})")
    distractors = growth.distractors()
    origin = int(rng.integers(2))
    origin_tip = targets[origin][0].start
    terminal_tip = targets[origin if label == 1 else 1 - origin][-1].start

    image = np.zeros((config.size, config.size))
    for snake in (*targets, *distractors):
        for placed in snake:
            stamp_max(image, placed.paddle.line, placed.start, placed.contrast)
    marker = disc(config.marker_radius, config.aa_scale)
    stamp_max(image, marker, origin_tip)
    stamp_max(image, marker, terminal_tip)
    return PathfinderSample(
        pixels=bytescale(image),
        label=label,
        origin_snake=origin,
        targets=(_geometry(targets[0], config.paddle_length), _geometry(targets[1], config.paddle_length)),
        distractors=tuple(_geometry(snake, config.paddle_length) for snake in distractors),
        origin_marker=origin_tip,
        terminal_marker=terminal_tip,
        margin=margin,
        restarts=restarts,
    )


def pathfinder_sample(config: PathfinderConfig, seed: int, split: str, index: int) -> PathfinderSample:
    """Example ``index`` of ``split`` with its geometry: a pure function of ``(config, seed, split, index)``."""
    return generate(config, example_rng(seed, check_split(split, VAL_SPLITS), index))


def pathfinder_example(config: PathfinderConfig, seed: int, split: str, index: int) -> tuple[np.ndarray, int]:
    """``(pixels: (size * size,) uint8, rows first, label)`` of example ``index`` of ``split``."""
    sample = pathfinder_sample(config, seed, split, index)
    return sample.pixels.reshape(-1), sample.label


def pathfinder_batch(
    config: PathfinderConfig, seed: int, split: str, indices: Sequence[int] | np.ndarray
) -> tuple[Tensor, Tensor]:
    """``tokens: (B, size * size) int64`` in [0, 256) and ``labels: (B,) int64`` of examples ``indices``."""
    check_split(split, VAL_SPLITS)
    rows = np.asarray(indices)
    if rows.ndim != 1 or (rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0)):
        raise ExampleIndexError(f"indices must be a 1-D sequence of integers >= 0, got {indices!r}")
    tokens = np.empty((rows.size, config.size * config.size), dtype=np.int64)
    labels = np.empty(rows.size, dtype=np.int64)
    for row, index in enumerate(rows.tolist()):
        tokens[row], labels[row] = pathfinder_example(config, seed, split, index)
    return torch.from_numpy(tokens), torch.from_numpy(labels)


def pathfinder_cache_spec(size: int, difficulty: str, seed: int, split: str) -> EntrySpec:
    """The disk-cache entry of ``split``'s examples at LRA's parameters for ``size`` and ``difficulty``."""
    check_split(split, VAL_SPLITS)
    return _cache_spec(pathfinder_config(size, difficulty), difficulty, seed, split, GENERATOR_VERSION)


@functools.lru_cache(maxsize=32)  # one per (config, split) in use: a batch looks it up
def _cache_spec(config: PathfinderConfig, difficulty: str, seed: int, split: str, version: int) -> EntrySpec:
    return EntrySpec(
        family="pathfinder",
        label=f"{config.size}px-{difficulty}",
        config=dataclasses.asdict(config),
        seed=seed,
        split=split,
        version=version,
        row_length=config.size * config.size,
        generate=functools.partial(pathfinder_example, config, seed, split),
        command=f"longseq data cache-pathfinder --size {config.size} --difficulty {difficulty} --split {split} "
        f"--seed {seed}",
    )


# ----------------------------------------------------------------------------------------------------------
# The task

PositiveInt = Annotated[int, Field(gt=0)]


@register_task("pathfinder")
class Pathfinder(GeneratedClassification):
    """LRA Pathfinder / Path-X: do the two markers sit on the ends of one curve? One label per image.

    Parameters: ``size`` 32 (Pathfinder), 64 or 128 (Path-X), ``seq_len = size ** 2``; ``difficulty`` easy /
    intermediate / hard (contour length 6 / 9 / 14; LRA uses hard); the split sizes (160,000 train and 20,000
    test, as LRA's configs; ``val`` has ``num_test`` examples) and the seed. Tokens are the pixel bytes, rows
    first; no padding (``pad_id`` None).
    """

    name = "pathfinder"
    vocab_size = 256
    num_classes = 2
    pad_id = None

    def __init__(
        self,
        *,
        size: Literal[32, 64, 128] = 32,
        difficulty: Literal["easy", "intermediate", "hard"] = "hard",
        num_train: PositiveInt = 160_000,
        num_test: PositiveInt = 20_000,
        seed: Annotated[int, Field(ge=0)] = 0,
    ) -> None:
        self.config = pathfinder_config(size, difficulty)
        self.size = size
        self.difficulty = difficulty
        self.seq_len = size * size
        self.num_train = num_train
        self.num_test = num_test
        self.seed = seed

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, size * size) int64`` pixel bytes and ``labels: (B,) int64`` (1: the markers are joined);
        read from the disk cache for the indices its entry holds (``cache_spec``), generated otherwise."""
        rows = check_indices(split, indices, self.num_examples(split))
        generate = functools.partial(pathfinder_batch, self.config, self.seed, split)
        return cached_batch(self.cache_spec(split), rows, generate)

    def cache_spec(self, split: str) -> EntrySpec:
        """The disk-cache entry of ``split`` (``tasks/example_cache.py``)."""
        return pathfinder_cache_spec(self.size, self.difficulty, self.seed, split)
