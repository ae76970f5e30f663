"""A synthetic CT phantom with fine structures and a known truth, for tests, benchmarks and the self-test.

Body ellipsoid of soft tissue, two lungs, vessels at every orientation, nodules, a tilted bone
shell and noise, all in HU; made at any isotropic spacing so thick slices can be simulated from it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


def _segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    direction = end - start
    t = np.clip(((points - start) @ direction) / float(direction @ direction), 0.0, 1.0)
    return np.linalg.norm(points - (start + t[:, None] * direction), axis=1)


def make_phantom(shape: tuple[int, int, int] = (96, 128, 128), spacing_mm: float = 0.5, seed: int = 0,
                 noise_hu: float = 10.0, vessels: int = 40, nodules: int = 12) -> np.ndarray:
    """(k, j, i) float32 HU volume with isotropic spacing_mm; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    extent = np.array(shape, dtype=float) * spacing_mm / 2.0  # half-size in mm per axis
    volume = np.full(shape, -1000.0, dtype=np.float32)
    body = (y / 0.92) ** 2 + (x / 0.95) ** 2 <= 1.0
    volume[body] = 40.0
    for side in (-1, 1):
        lung = ((x - 0.42 * side) / 0.36) ** 2 + (y / 0.62) ** 2 + (z / 1.15) ** 2 <= 1.0
        volume[lung] = -850.0
    tilt = 0.35 * z  # the bone shell drifts with z, so it has through-plane edges
    radius = np.sqrt((x - tilt) ** 2 + (y + 0.55) ** 2)
    volume[(radius > 0.12) & (radius < 0.2)] = 700.0
    volume[radius <= 0.12] = 250.0
    points_mm = np.stack([z.ravel() * extent[0], y.ravel() * extent[1], x.ravel() * extent[2]], axis=1)
    flat = volume.reshape(-1)
    for _ in range(vessels):
        start = rng.uniform(-0.8, 0.8, 3) * extent
        direction = rng.normal(size=3)
        end = start + direction / np.linalg.norm(direction) * rng.uniform(0.3, 0.9) * extent.min()
        width = rng.uniform(0.4, 2.0)
        near = _segment_distance(points_mm, start, end) <= width
        flat[near] = rng.uniform(60.0, 300.0)
    for _ in range(nodules):
        centre = rng.uniform(-0.7, 0.7, 3) * extent
        size = rng.uniform(1.0, 4.0)
        flat[np.linalg.norm(points_mm - centre, axis=1) <= size] = rng.uniform(-100.0, 120.0)
    if noise_hu > 0:
        volume += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    return volume


def make_ball_phantom(shape: tuple[int, int, int] = (300, 192, 192), spacing: float = 0.8, n_balls: int = 1000,
                 seed: int = 1) -> np.ndarray:
    """Statistically isotropic phantom (HU): 40 HU tissue with random anti-aliased balls (radius 1-14 mm)."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, 40.0, np.float32)
    edge = 0.5  # mm, erf edge width
    for _ in range(n_balls):
        radius = float(np.exp(rng.uniform(np.log(1.0), np.log(14.0))))
        centre = rng.uniform(0, 1, 3) * np.array(shape) * spacing
        contrast = float(rng.choice([-1, 1]) * np.exp(rng.uniform(np.log(20), np.log(900))))
        lo = np.maximum(((centre - radius - 3 * edge) / spacing).astype(int), 0)
        hi = np.minimum(((centre + radius + 3 * edge) / spacing).astype(int) + 2, shape)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        dist = np.sqrt((zz * spacing - centre[0]) ** 2 + (yy * spacing - centre[1]) ** 2 + (xx * spacing - centre[2]) ** 2)
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += (contrast * 0.5 * (1 - erf((dist - radius) / (edge * math.sqrt(2))))).astype(np.float32)
    return vol
