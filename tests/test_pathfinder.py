"""Pathfinder / Path-X generator (LRA, spec tasks.md §1a): determinism, geometry, markers, solvability, rasters."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from longseq.tasks._raster import bytescale, dilate, disc, paddle, stamp_max
from longseq.tasks.base import ExampleIndexError, TaskParameterError
from longseq.tasks.pathfinder import (
    PathfinderConfig,
    PathfinderSample,
    pathfinder_batch,
    pathfinder_config,
    pathfinder_example,
    pathfinder_sample,
)


@functools.cache
def samples(size: int, difficulty: str, count: int, split: str = "test") -> tuple[PathfinderSample, ...]:
    """The first ``count`` examples of ``split`` (seed 0), shared between tests."""
    config = pathfinder_config(size, difficulty)
    return tuple(pathfinder_sample(config, 0, split, i) for i in range(count))


def dump_npy(size: int, difficulty: str, count: int, directory: Path) -> list[Path]:
    """Write the first ``count`` test images of ``(size, difficulty)`` as ``(size, size)`` uint8 .npy files, for
    inspection, e.g. ``plt.imshow(np.load(path), cmap="gray")``; the label is in the name."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(samples(size, difficulty, count)):
        path = directory / f"pathfinder{size}_{difficulty}_{i}_label{sample.label}.npy"
        np.save(path, sample.pixels)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------
# Parameters


def test_presets_follow_the_lra_table() -> None:
    hard32, easy64, hard128 = pathfinder_config(32, "hard"), pathfinder_config(64, "easy"), pathfinder_config(128)
    assert (hard32.contour_length, hard32.distractor_length, hard32.num_distractor_snakes) == (14, 4, 5)
    assert (hard32.paddle_length, hard32.paddle_thickness, hard32.seed_distance, hard32.continuity) == (2, 0.5, 7, 1)
    assert (hard32.snake_contrasts, hard32.paddle_contrasts, hard32.marker_radius) == ((2.0,), (0.75,), 1.5)
    assert (easy64.contour_length, easy64.distractor_length, easy64.num_distractor_snakes) == (6, 2, 11)
    assert (hard128.size, hard128.contour_length, hard128.num_distractor_snakes) == (128, 14, 8)
    assert hard128.paddle_margins == (2, 3) and hard128.paddle_thickness == 1.5 and hard128.seed_distance == 20
    assert pathfinder_config(32, "intermediate").num_distractor_snakes == 20 // 3
    assert pathfinder_config(32) == hard32


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"size": 48}, r"size=48 \(allowed: 32, 64, 128\)"),
        ({"difficulty": "medium"}, r"difficulty='medium' \(allowed: 'easy', 'intermediate', 'hard'\)"),
    ],
)
def test_unknown_size_or_difficulty_is_named(kwargs: dict, expected: str) -> None:
    with pytest.raises(TaskParameterError, match=expected):
        pathfinder_config(**kwargs)


def test_invalid_custom_parameters_are_named() -> None:
    base = pathfinder_config(32, "easy")
    with pytest.raises(TaskParameterError, match=r"paddle_thickness=0\.3 \(allowed: .*aa_scale an integer\)"):
        dataclasses.replace(base, paddle_thickness=0.3)
    with pytest.raises(TaskParameterError, match=r"size=28 \(allowed: > 4 \* seed_distance\)"):
        dataclasses.replace(base, size=28)
    with pytest.raises(TaskParameterError, match=r"contour_length=1 \(allowed: >= 2\); paddle_margins=\(\)"):
        dataclasses.replace(base, paddle_margins=(), contour_length=1)
    assert isinstance(dataclasses.replace(base, continuity=1.8), PathfinderConfig)


# ----------------------------------------------------------------------------------------------------------
# Determinism, splits, batches, balance


def test_examples_are_pure_functions_of_seed_split_index() -> None:
    config = pathfinder_config(32, "hard")
    pixels, label = pathfinder_example(config, 3, "train", 17)
    again, label_again = pathfinder_example(config, 3, "train", 17)
    assert pixels.shape == (32 * 32,) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, again) and label == label_again
    others = [pathfinder_example(config, 3, split, index)[0] for split, index in (("train", 18), ("test", 17))]
    others.append(pathfinder_example(config, 4, "train", 17)[0])
    assert all(not np.array_equal(pixels, other) for other in others)


def test_batch_stacks_examples_as_int64_tokens() -> None:
    config = pathfinder_config(32, "easy")
    tokens, labels = pathfinder_batch(config, 0, "test", [5, 2, 5])
    assert tokens.shape == (3, 1024) and tokens.dtype == labels.dtype == torch.int64 and labels.shape == (3,)
    assert int(tokens.min()) >= 0 and int(tokens.max()) <= 255
    for row, index in enumerate([5, 2, 5]):
        pixels, label = pathfinder_example(config, 0, "test", index)
        assert torch.equal(tokens[row], torch.from_numpy(pixels.astype(np.int64))) and int(labels[row]) == label
    empty_tokens, empty_labels = pathfinder_batch(config, 0, "test", [])
    assert empty_tokens.shape == (0, 1024) and empty_labels.shape == (0,)
    with pytest.raises(ExampleIndexError, match="unknown split 'valid'"):
        pathfinder_batch(config, 0, "valid", [0])
    with pytest.raises(ExampleIndexError, match="integers >= 0"):
        pathfinder_batch(config, 0, "test", [-1])


def test_labels_are_balanced() -> None:
    labels = np.array([s.label for s in samples(32, "easy", 400)])
    sigma = math.sqrt(0.25 / labels.size)
    assert abs(labels.mean() - 0.5) < 3 * sigma, labels.mean()
    origins = np.array([s.origin_snake for s in samples(32, "easy", 400)])
    assert abs(origins.mean() - 0.5) < 3 * sigma, origins.mean()


def test_images_are_byte_scaled_and_not_blank() -> None:
    for sample in samples(32, "hard", 30):
        assert sample.pixels.min() == 0 and sample.pixels.max() == 255
        assert 0.05 < np.mean(sample.pixels > 0) < 0.6


# ----------------------------------------------------------------------------------------------------------
# Geometry

GEOMETRY_CASES = [(32, "hard", 30), (32, "easy", 30), (64, "intermediate", 6), (128, "easy", 4), (128, "hard", 1)]


def footprint(config: PathfinderConfig, margin: int, start: np.ndarray, angle: float) -> np.ndarray:
    """The occupancy footprint (margin-widened mask) of one paddle, on the whole image."""
    drawn = paddle(float(angle), float(config.paddle_length), config.paddle_thickness / 2, float(margin), 2)
    canvas = np.zeros((config.size, config.size))
    stamp_max(canvas, drawn.mask, (int(start[0]), int(start[1])))
    return canvas


@pytest.mark.parametrize(("size", "difficulty", "count"), GEOMETRY_CASES)
def test_snake_lengths_and_spacing(size: int, difficulty: str, count: int) -> None:
    config = pathfinder_config(size, difficulty)
    for sample in samples(size, difficulty, count):
        assert sample.margin in config.paddle_margins
        assert len(sample.distractors) <= config.num_distractor_snakes
        assert all(len(s.starts) == config.distractor_length for s in sample.distractors)
        assert all(len(s.starts) == config.contour_length for s in sample.targets)
        stride, radius = config.paddle_length + 2 * sample.margin, config.paddle_length + sample.margin
        for snake in (*sample.targets, *sample.distractors):
            assert np.all((snake.starts >= 0) & (snake.starts < size))
            pivot_steps = np.linalg.norm(np.diff(snake.pivots, axis=0), axis=1)
            assert np.all(np.abs(pivot_steps - stride) < math.sqrt(2)), pivot_steps
            from_pivot = np.linalg.norm(snake.starts[1:] - snake.pivots[1:], axis=1)
            assert np.all(np.abs(from_pivot - radius) < math.sqrt(2)), from_pivot
            # grown paddles point back at their pivot
            to_pivot = snake.pivots[1:] - snake.starts[1:]
            cosine = (to_pivot[:, 0] * np.sin(snake.angles[1:]) + to_pivot[:, 1] * np.cos(snake.angles[1:])) / (
                from_pivot
            )
            assert np.all(cosine > 0.95), cosine
            assert np.allclose(np.linalg.norm(snake.ends - snake.starts, axis=1), config.paddle_length)
        seeds = np.linalg.norm(sample.targets[0].starts[0] - sample.targets[1].starts[0])
        assert abs(seeds - config.seed_distance) < 1.0, seeds


def point_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    t = np.clip((p - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
    return float(np.linalg.norm(p - a - t * (b - a)))


def segment_distance(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> float:
    """Distance between segments [a0, a1] and [b0, b1] in the plane: 0 when they cross, else the least of the
    four endpoint-to-segment distances."""

    def side(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
        return float(np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])))

    if side(a0, a1, b0) * side(a0, a1, b1) < 0 and side(b0, b1, a0) * side(b0, b1, a1) < 0:
        return 0.0
    return min(
        point_segment(a0, b0, b1), point_segment(a1, b0, b1), point_segment(b0, a0, a1), point_segment(b1, a0, a1)
    )


@pytest.mark.parametrize(("size", "difficulty", "count"), GEOMETRY_CASES)
def test_no_two_paddles_overlap(size: int, difficulty: str, count: int) -> None:
    """The acceptance test ``max(fp_i + fp_j) < 1.8`` holds for every pair of paddles but consecutive ones of a
    snake (which may touch: the occupancy lags one paddle behind), and the drawn lines keep apart."""
    config = pathfinder_config(size, difficulty)
    closest = math.inf
    for sample in samples(size, difficulty, count):
        paddles = [
            (s, k, snake.starts[k], snake.ends[k], snake.angles[k])
            for s, snake in enumerate((*sample.targets, *sample.distractors))
            for k in range(len(snake.starts))
        ]
        prints = np.stack([footprint(config, sample.margin, start, angle) for _, _, start, _, angle in paddles])
        for i, (s, k, start, end, _) in enumerate(paddles):
            others = [j for j, (t, q, *_) in enumerate(paddles) if j > i and not (t == s and abs(q - k) == 1)]
            if others:
                assert (prints[i] + prints[others]).max() < 1.8, (sample.label, s, k)
                closest = min(closest, *(segment_distance(start, end, *paddles[j][2:4]) for j in others))
    assert closest > config.paddle_thickness, closest


@pytest.mark.parametrize(("size", "difficulty", "count"), GEOMETRY_CASES)
def test_markers_sit_on_the_tips_and_are_bright(size: int, difficulty: str, count: int) -> None:
    config = pathfinder_config(size, difficulty)
    for sample in samples(size, difficulty, count):
        origin = sample.targets[sample.origin_snake]
        other = sample.targets[1 - sample.origin_snake]
        assert sample.origin_marker == tuple(origin.starts[0])
        terminal = origin if sample.label == 1 else other
        assert sample.terminal_marker == tuple(terminal.starts[-1])
        assert sample.terminal_marker != tuple((other if sample.label == 1 else origin).starts[-1])
        for marker in (sample.origin_marker, sample.terminal_marker):
            # a marker has value 1 where snakes reach at most snake x paddle contrast x line coverage
            assert sample.pixels[marker] >= 0.75 * 255, (marker, sample.pixels[marker])
            y, x = marker
            r = int(config.marker_radius)
            assert sample.pixels[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].mean() > 60


# ----------------------------------------------------------------------------------------------------------
# Solvable from pixels, not from a trivial cue


def markers_connected(pixels: np.ndarray, a: tuple[int, int], b: tuple[int, int], reach: float) -> bool:
    """Whether a chain of non-zero pixels, each within ``reach`` of the next, joins pixels ``a`` and ``b``."""
    span = int(reach)
    grid = torch.arange(-span, span + 1, dtype=torch.float32)
    kernel = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= reach**2).float()[None, None]
    bright = torch.from_numpy(pixels > 0)
    reached = torch.zeros_like(bright)
    reached[a] = True
    while not reached[b]:
        grown = (torch.nn.functional.conv2d(reached.float()[None, None], kernel, padding=span)[0, 0] > 0) & bright
        grown[a] = True
        if torch.equal(grown, reached):
            return False
        reached = grown
    return True


@pytest.mark.parametrize(("size", "count", "reach", "min_gap"), [(32, 200, 2.5, 0.15), (128, 60, 6.0, 0.5)])
def test_markers_are_joined_by_bright_pixels_more_often_when_positive(
    size: int, count: int, reach: float, min_gap: float
) -> None:
    """On easy images, a gap-bridging flood fill from one marker reaches the other far more often for label 1.

    Consecutive paddles of a snake are about ``2 * margin`` apart, and different snakes may come about as close
    (their footprints may touch), so at 32 px proximity alone is a weak solver (observed 0.84 vs 0.54); at 128 px
    with ``reach`` 6 it is a strong one (0.97 vs 0.23). Solving hard images needs the snakes' continuity.
    """
    connected: dict[int, list[bool]] = {0: [], 1: []}
    for sample in samples(size, "easy", count):
        connected[sample.label].append(
            markers_connected(sample.pixels, sample.origin_marker, sample.terminal_marker, reach)
        )
    positive, negative = np.mean(connected[1]), np.mean(connected[0])
    assert positive - negative > min_gap, (positive, negative)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    diff = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@pytest.mark.parametrize(("size", "difficulty", "count"), [(32, "easy", 400), (32, "hard", 200)])
def test_marker_distance_alone_is_near_chance(size: int, difficulty: str, count: int) -> None:
    """Both classes put a marker on each snake's seed side, so how far apart the markers are says little."""
    batch = samples(size, difficulty, count)
    labels = np.array([s.label for s in batch])
    distance = np.array([math.dist(s.origin_marker, s.terminal_marker) for s in batch])
    sigma = math.sqrt((labels.size + 1) / (12 * labels.sum() * (labels.size - labels.sum())))  # AUC under H0
    assert abs(auc(distance, labels) - 0.5) < max(3 * sigma, 0.1), auc(distance, labels)


# ----------------------------------------------------------------------------------------------------------
# Rasterisation


@pytest.mark.parametrize(("length", "half_width", "margin"), [(2, 0.25, 1), (5, 0.5, 1), (5, 0.75, 3)])
def test_paddle_coverage_is_the_stadium_area(length: int, half_width: float, margin: int) -> None:
    for degrees in (0, 17, 45, 90, -135):
        drawn = paddle(degrees * math.pi / 180, float(length), half_width, float(margin), 2)
        for image, radius in ((drawn.line, half_width), (drawn.mask, half_width + margin)):
            area = 2 * radius * length + math.pi * radius**2
            assert abs(image.sum() - area) < 0.03 * area + 0.1, (degrees, image.sum(), area)
            assert image.min() >= 0 and image.max() <= 1
        centre = drawn.radius
        assert drawn.line[centre, centre] > 0 and tuple(drawn.core.min(axis=0)) <= (0, 0)
        assert np.all(drawn.mask[tuple((drawn.core + centre).T)] >= 0.8)
        with pytest.raises(ValueError, match="read-only"):
            drawn.line[0, 0] = 1


def test_disc_and_bytescale() -> None:
    patch = disc(2.5, 2)
    assert patch.shape == (7, 7) and patch[3, 3] == 1.0 and abs(patch.sum() - math.pi * 2.5**2) < 0.2
    assert np.array_equal(patch, patch.T) and np.array_equal(patch, patch[::-1])
    image = np.array([[0.0, 0.5], [1.0, 2.0]])
    assert bytescale(image).tolist() == [[0, 64], [128, 255]]  # floor(x * 255 / 2 + 0.5)
    assert bytescale(image + 3).tolist() == [[0, 64], [128, 255]]  # the min maps to 0
    assert bytescale(np.full((2, 2), 0.7)).tolist() == [[0, 0], [0, 0]]


def test_dilate_and_stamp_clip_at_the_border() -> None:
    occupied = np.zeros((5, 5), dtype=bool)
    occupied[0, 4] = True
    out = dilate(occupied, np.array([[0, 0], [0, 1], [1, 0]]))  # out[p] = any occupied[p + k]
    assert sorted(map(tuple, np.argwhere(out).tolist())) == [(0, 3), (0, 4)]
    canvas = np.zeros((4, 4))
    stamp_max(canvas, np.ones((3, 3)), (0, 0), scale=0.5)
    assert canvas.sum() == 4 * 0.5 and canvas[1, 1] == 0.5 and canvas[2, 2] == 0


def test_dump_npy_round_trips(tmp_path: Path) -> None:
    paths = dump_npy(32, "hard", 4, tmp_path)
    assert len(paths) == 4
    for path, sample in zip(paths, samples(32, "hard", 4), strict=True):
        assert np.array_equal(np.load(path), sample.pixels) and path.name.endswith(f"label{sample.label}.npy")
