"""Rasterisation for the Pathfinder generator: supersampled anti-aliased paddles and discs, stamping, dilation.

The original draws each paddle with PIL on a canvas ``aa_scale`` times finer than the image and Lanczos-resizes
it. Here a shape's value in a pixel is its area coverage, estimated on ``SAMPLES_PER_SUBPIXEL * aa_scale``
samples per pixel and axis, each sample inside when its exact distance to the shape is within the radius
(point-to-segment for a paddle, point-to-centre for a disc), then box-averaged. Why finer than ``aa_scale``:
at 32 px a paddle is one subpixel wide (0.5 px at ``aa_scale`` 2), and sampling it only at subpixel centres
aliases, its coverage jumping between 0.25 and 0.75 of a pixel with the angle, where PIL lights one subpixel per
step (about 0.5). Samples sit at ``r + (i + 1/2)/n - 1/2`` around pixel ``r``: centred, and (``n`` even) never
exactly at our half-widths and radii from an integer point, so there are no ties to break.

Patches are square, ``(2R + 1, 2R + 1)``, with their centre ``[R, R]`` on the anchor pixel (a paddle's start, a
disc's centre); stamping clips them at the image border, as the original's placement does.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

SAMPLES_PER_SUBPIXEL = 4
"""Coverage samples per axis of one ``aa_scale`` subpixel."""


class Paddle(NamedTuple):
    """One rendered paddle, anchored at its start pixel.

    line: (2R+1, 2R+1) coverage of the segment of width ``2 * half_width``; mask: (2R+1, 2R+1) coverage of the
    segment widened by ``margin`` on every side (the original's margin-dilated paddle, its occupancy footprint);
    core: (K, 2) int offsets ``(dy, dx)`` from the start of the pixels where the mask is 0.8 or more, the seed
    dilation structure: a seed whose core lands on pixels occupied at most 0.3 passes the no-overlap test
    ``max(occupancy + mask) < 1.8`` everywhere (elsewhere its mask is under 0.8). The original casts its Lanczos
    mask to uint8, keeping only full-value pixels, which with area coverage would leave 0.95 pixels unchecked.
    """

    radius: int
    line: np.ndarray
    mask: np.ndarray
    core: np.ndarray


def _samples(radius: int, aa: int) -> np.ndarray:
    """Sample coordinates along one axis of a (2R+1)-pixel patch, relative to its centre pixel: ((2R+1)*n,)."""
    n = SAMPLES_PER_SUBPIXEL * aa
    return (np.arange(-radius * n, (radius + 1) * n) + 0.5) / n - 0.5


def _box(inside: np.ndarray, aa: int) -> np.ndarray:
    """(P*n, P*n) bool samples -> (P, P) float coverage, the mean over each pixel's n x n samples."""
    n = SAMPLES_PER_SUBPIXEL * aa
    pixels = inside.shape[0] // n
    return inside.reshape(pixels, n, pixels, n).mean(axis=(1, 3))


def readonly(array: np.ndarray) -> np.ndarray:
    """``array``, made read-only (for arrays shared through a cache)."""
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=16384)
def paddle(angle: float, length: float, half_width: float, margin: float, aa: int) -> Paddle:
    """The paddle from its start pixel to ``length * (sin angle, cos angle)`` (rows, columns), cached per angle.

    The result is shared between calls: its arrays are read-only.
    """
    radius = math.ceil(length + half_width + margin)
    axis = _samples(radius, aa)
    y, x = axis[:, None], axis[None, :]
    uy, ux = math.sin(angle), math.cos(angle)
    along = np.clip(y * uy + x * ux, 0.0, length)  # projection onto the segment, clamped to its ends
    dist2 = (y - along * uy) ** 2 + (x - along * ux) ** 2
    line = _box(dist2 <= half_width**2, aa)
    mask = _box(dist2 <= (half_width + margin) ** 2, aa)
    core = np.argwhere(mask >= 0.8) - radius
    return Paddle(radius, readonly(line), readonly(mask), readonly(core))


@functools.lru_cache(maxsize=64)
def disc(radius: float, aa: int) -> np.ndarray:
    """(2R+1, 2R+1) read-only coverage of a disc of ``radius`` px centred on the patch's centre pixel."""
    half = math.ceil(radius)
    axis = _samples(half, aa)
    return readonly(_box(axis[:, None] ** 2 + axis[None, :] ** 2 <= radius**2, aa))


def _window(shape: tuple[int, int], patch: np.ndarray, at: tuple[int, int]) -> tuple[slice, slice, slice, slice]:
    """Slices of the image and of the patch where a patch centred on pixel ``at`` overlaps the image."""
    radius = patch.shape[0] // 2
    y0, x0 = at[0] - radius, at[1] - radius
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + patch.shape[0], shape[0]), min(x0 + patch.shape[1], shape[1])
    return slice(top, bottom), slice(left, right), slice(top - y0, bottom - y0), slice(left - x0, right - x0)


def stamp_max(canvas: np.ndarray, patch: np.ndarray, at: tuple[int, int], scale: float = 1.0) -> None:
    """In place: ``canvas = max(canvas, scale * patch)`` with the patch centred on pixel ``at``, clipped."""
    rows, cols, prow, pcol = _window(canvas.shape, patch, at)
    np.maximum(canvas[rows, cols], scale * patch[prow, pcol], out=canvas[rows, cols])


def fits(canvas: np.ndarray, patch: np.ndarray, at: tuple[int, int], limit: float = 1.8) -> bool:
    """The original's no-overlap test ``max(canvas + patch) < limit``, with the patch centred on ``at``."""
    rows, cols, prow, pcol = _window(canvas.shape, patch, at)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return True
    return bool((canvas[rows, cols] + patch[prow, pcol]).max() < limit)


def dilate(occupied: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Binary dilation: ``out[p] = any(occupied[p + k] for k in offsets)``, ignoring ``p + k`` off the image.

    occupied: (H, W) bool; offsets: (K, 2) int. This is OpenCV's ``dilate`` with a structuring element anchored
    at its centre (a correlation: ``out[p]`` says "the shape placed at ``p`` touches something").
    """
    height, width = occupied.shape
    out = np.zeros_like(occupied)
    for dy, dx in offsets.tolist():
        if abs(dy) >= height or abs(dx) >= width:
            continue
        out[max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)] |= occupied[
            max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)
        ]
    return out


@functools.lru_cache(maxsize=16)
def disk_offsets(radius: int) -> np.ndarray:
    """(K, 2) int offsets of the digital disk ``dy^2 + dx^2 <= radius^2`` (the original's dilation kernel)."""
    span = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(span, span, indexing="ij")
    keep = dy**2 + dx**2 <= radius**2
    return readonly(np.stack([dy[keep], dx[keep]], axis=1))


def bytescale(image: np.ndarray) -> np.ndarray:
    """float (H, W) -> uint8 (H, W): ``round((x - min) * 255 / (max - min))``, all 0 when the image is flat.

    The semantics of ``scipy.misc.bytescale``, which ``scipy.misc.imsave`` applied to the original's float images
    when writing the PNG: the brightest pixel becomes 255 whatever the contrasts were.
    """
    low, high = float(image.min()), float(image.max())
    span = high - low if high > low else 1.0
    return np.floor((image - low) * (255.0 / span) + 0.5).clip(0, 255).astype(np.uint8)
