"""The forward (degradation) model of a thick-slice acquisition along one axis.

A fine signal f with spacing s is the linear interpolant of its samples, extended by mirror
reflection beyond its ends. A thick slice centred at c measures

    b(c) = integral p(x - c) f(x) dx,

p the slice profile, for centres c = phi + m*d: a box of width r_z, a Gaussian of FWHM r_z, or a
blurred box (a box of width w convolved with a Gaussian of sigma, w and sigma such that the FWHM is
r_z and the FWTM the given one; closed forms in core/slice_profile.py: expected_ramp, member_from_widths).
Linear interpolation U of b back onto the fine grid gives the degraded image W f = U S f.
Since f = sum_k f_k hat(x/s - k), each weight S[m, k] = E_p[hat(X/s - k)] has a closed form
(hat is the second difference of the ramp function), so S is exact, not a quadrature.

Data consistency. The measured thick slices b (centres 0, d, 2d, ... on the output's fine grid,
which runs from the first centre to the last) constrain an estimate y through S y = b. The
projection is the regularised least-norm correction, one through-plane line at a time:

    y' = y + S^T (S S^T + lambda mu I)^-1 (b - S y),    mu = mean of diag(S S^T),

the smallest change of y (in the L2 norm) that makes S y' match b, up to lambda. With the
eigenvalues s_i^2 of S S^T it leaves a residual S y' - b = lambda mu (S S^T + lambda mu I)^-1 (S y - b),
each mode scaled by lambda mu / (s_i^2 + lambda mu) < 1, and changes nothing outside S's row
space: it cannot diverge, and a second application changes y by at most that same factor times
the first correction. lambda (relative, dimensionless) trades fit to noisy or mis-modelled slices
against fit to the measured data; CONSISTENCY_LAMBDA was measured on volumes other than the one
docs/benchmarks.md reports (see there). S S^T is banded (slices overlap only their neighbours), so
it is factored once per volume (banded Cholesky) and applied to all lines at once.
End slices: the grid stops at the first and last centre, so the end slices also measured anatomy
the grid does not contain. Assuming it mirrors the inside (as W above does for training) is wrong
where the anatomy continues, so the projection uses only the slices whose profile puts at most
END_MASS_TOLERANCE of its weight beyond the grid (rows truncated there and renormalised); the
partial end slices constrain nothing and the estimate within about half a thickness of each end
is left as it was, apart from the spread of the neighbouring slices' corrections.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.linalg import cho_solve_banded, cholesky_banded
from scipy.sparse import csr_matrix
from scipy.special import ndtr

from typing import Optional

from ..options import CONSISTENCY_LAMBDA
from ..progress import Reporter
from .acquisition import BLURRED_BOX_FWTM_RATIO, Acquisition

_SQRT_2PI = math.sqrt(2.0 * math.pi)
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
END_MASS_TOLERANCE = 1e-3  # profile weight beyond the grid above which an end slice is not used


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Fold indices onto 0..length-1 by mirror reflection about the end samples (whole-sample symmetric)."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    return np.where(folded > length - 1, period - folded, folded)


def _psi1(z: np.ndarray) -> np.ndarray:
    """E[(G + z)^+] for G ~ N(0, 1)."""
    return z * ndtr(z) + np.exp(-0.5 * z * z) / _SQRT_2PI


def _blurred_box(width: float, fwtm_ratio: float) -> tuple[float, float]:
    """(w, sigma) of the blurred box of FWHM `width` and FWTM `fwtm_ratio` x width (same units)."""
    from .slice_profile import member_from_widths  # the family's maths live with its estimator

    return member_from_widths(width, fwtm_ratio)


def _expected_ramp(centre: np.ndarray, knot: np.ndarray, width: float, profile: str) -> np.ndarray:
    """E[(X - knot)^+] for X drawn from the slice profile of FWHM `width` centred at `centre`."""
    v = centre - knot
    if profile == "box":
        half = 0.5 * width
        hi = np.maximum(v + half, 0.0)
        lo = np.maximum(v - half, 0.0)
        return (hi * hi - lo * lo) / (2.0 * width)
    sigma = width * FWHM_TO_SIGMA
    z = v / sigma
    return v * ndtr(z) + sigma * np.exp(-0.5 * z * z) / _SQRT_2PI


def _profile_radius(width: float, profile: str) -> float:
    """Half-support of the profile in samples (Gaussian truncated at 6 sigma, weight < 1e-9)."""
    return 0.5 * width if profile == "box" else 6.0 * width * FWHM_TO_SIGMA


def thick_sampling_matrix(
    n_fine: int, centres: np.ndarray, width: float, profile: str = "box", fwtm_ratio: Optional[float] = None
) -> np.ndarray:
    """S with S[m, k] = weight of fine sample k in the thick slice centred at centres[m].

    Positions and width (the FWHM) are in fine-sample units (millimetres / fine spacing); fwtm_ratio
    (FWTM / FWHM) shapes a blurred box. Rows sum to one; contributions from beyond the ends are mirrored back in.
    """
    if profile == "blurred-box":
        from .slice_profile import thick_sampling_matrix as family_sampling_matrix

        return family_sampling_matrix(n_fine, centres, *_blurred_box(width, fwtm_ratio or BLURRED_BOX_FWTM_RATIO))
    centres = np.asarray(centres, dtype=np.float64)
    radius = _profile_radius(width, profile) + 1.0
    offsets = np.arange(-math.ceil(radius) - 1, math.ceil(radius) + 2)
    knots = np.floor(centres)[:, None] + offsets[None, :]
    c = centres[:, None]
    weights = (
        _expected_ramp(c, knots - 1.0, width, profile)
        - 2.0 * _expected_ramp(c, knots, width, profile)
        + _expected_ramp(c, knots + 1.0, width, profile)
    )
    matrix = np.zeros((len(centres), n_fine), dtype=np.float64)
    rows = np.broadcast_to(np.arange(len(centres))[:, None], knots.shape)
    np.add.at(matrix, (rows, reflect_index(knots.astype(np.int64), n_fine)), weights)
    return matrix


def linear_interpolation_matrix(positions: np.ndarray, n_samples: int) -> np.ndarray:
    """U with (U b)[i] = linear interpolation of samples b (at 0..n_samples-1) at positions[i].

    Positions outside [0, n_samples-1] are mirrored back inside (reflection, not extrapolation).
    """
    positions = np.asarray(positions, dtype=np.float64)
    matrix = np.zeros((len(positions), n_samples), dtype=np.float64)
    if n_samples == 1:
        matrix[:, 0] = 1.0
        return matrix
    period = 2.0 * (n_samples - 1)
    folded = np.mod(positions, period)
    folded = np.where(folded > n_samples - 1, period - folded, folded)
    lower = np.minimum(np.floor(folded).astype(np.int64), n_samples - 2)
    frac = folded - lower
    rows = np.arange(len(positions))
    matrix[rows, lower] = 1.0 - frac
    matrix[rows, lower + 1] += frac
    return matrix


def slice_centres(n_fine: int, spacing_mm: float, increment_mm: float, phase_mm: float) -> np.ndarray:
    """Centres phase + m*increment that fall on the fine grid's extent, in fine-sample units.

    The grid is exact: the increment is never stretched to fit the extent.
    """
    extent = (n_fine - 1) * spacing_mm
    count = int(math.floor((extent - phase_mm) / increment_mm + 1e-9)) + 1
    return (phase_mm + increment_mm * np.arange(max(count, 1))) / spacing_mm


def degradation_operators(
    n_fine: int, spacing_mm: float, acquisition: Acquisition, phase_mm: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(S, U) for a fine axis of n_fine samples at spacing_mm: thick sampling, then linear interpolation back."""
    centres = slice_centres(n_fine, spacing_mm, acquisition.increment_mm, phase_mm)
    sampling = thick_sampling_matrix(n_fine, centres, acquisition.thickness_mm / spacing_mm, acquisition.profile,
                                     acquisition.fwtm_ratio)
    increment_samples = acquisition.increment_mm / spacing_mm
    back = linear_interpolation_matrix((np.arange(n_fine) - centres[0]) / increment_samples, len(centres))
    return sampling, back


def degradation_matrix(
    n_fine: int, spacing_mm: float, acquisition: Acquisition, phase_mm: float = 0.0
) -> np.ndarray:
    """W = U S (n_fine x n_fine): what the acquisition plus linear interpolation does to a fine signal."""
    sampling, back = degradation_operators(n_fine, spacing_mm, acquisition, phase_mm)
    return back @ sampling


def apply_along_axis(data: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply matrix (n_out x n_in) to every 1D line of `data` along `axis` (one batched matmul)."""
    moved = torch.movedim(data, axis, -1)
    result = moved @ matrix.to(dtype=data.dtype, device=data.device).T
    return torch.movedim(result, -1, axis)


def degrade(
    image: np.ndarray | torch.Tensor,
    axis: int,
    spacing_mm: float,
    acquisition: Acquisition,
    phase_mm: float = 0.0,
) -> torch.Tensor:
    """Simulate the thick-slice acquisition along one axis of a fine image (or volume) and interpolate back.

    Applies the two banded factors S and U as sparse matrices: a few multiply-adds per output sample,
    instead of a dense n x n product.
    """
    data = torch.as_tensor(image)
    if not data.is_floating_point():
        data = data.to(torch.float32)
    sampling, back = degradation_operators(data.shape[axis], spacing_mm, acquisition, phase_mm)
    moved = torch.movedim(data, axis, 0)
    lines = moved.reshape(moved.shape[0], -1)
    thick = _sparse(sampling, lines) @ lines
    result = (_sparse(back, lines) @ thick).reshape(moved.shape)
    return torch.movedim(result, 0, axis)


def _sparse(matrix: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls its sparse CSR support beta; the product itself is plain
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix).to(dtype=like.dtype, device=like.device).to_sparse_csr()


SIMULATE_CHUNK = 16  # planes across the slice axis per step of simulate_thick_slices (one progress report each)


def simulate_thick_slices(
    volume: np.ndarray | torch.Tensor, axis: int, spacing_mm: float, acquisition: Acquisition,
    reporter: Optional[Reporter] = None,
) -> torch.Tensor:
    """Thick slices (not interpolated back) from a thin-slice volume; the first centre is the first sample.

    Works in chunks of planes across `axis`, reporting stage "simulating" after each (and checking for cancel).
    """
    reporter = reporter or Reporter()
    data = torch.as_tensor(volume)
    centres = slice_centres(data.shape[axis], spacing_mm, acquisition.increment_mm, 0.0)
    sampling = torch.from_numpy(thick_sampling_matrix(
        data.shape[axis], centres, acquisition.thickness_mm / spacing_mm, acquisition.profile, acquisition.fwtm_ratio
    ))
    across = 1 if axis == 0 else 0
    chunks = torch.split(data, SIMULATE_CHUNK, dim=across)
    thick = []
    for index, chunk in enumerate(chunks):
        thick.append(apply_along_axis(chunk if chunk.is_floating_point() else chunk.to(torch.float32), sampling, axis))
        reporter.step("simulating", (index + 1) / len(chunks), f"{len(centres)} slices, {acquisition.describe()}")
    return torch.cat(thick, dim=across)


def _mass_outside(centres: np.ndarray, n_fine: int, width: float, profile: str,
                  fwtm_ratio: Optional[float] = None) -> np.ndarray:
    """Fraction of each slice's profile that lies beyond the grid [0, n_fine - 1] (fine-sample units)."""
    left, right = centres, (n_fine - 1) - centres
    if profile == "box":
        return np.clip(0.5 - left / width, 0.0, 1.0) + np.clip(0.5 - right / width, 0.0, 1.0)
    if profile == "blurred-box":  # P(U + G < -distance) = (sigma / w) [psi1((w/2 - t)/sigma) - psi1((-w/2 - t)/sigma)]
        w, sigma = _blurred_box(width, fwtm_ratio or BLURRED_BOX_FWTM_RATIO)
        tail = (lambda t: (sigma / w) * (_psi1((0.5 * w - t) / sigma) - _psi1((-0.5 * w - t) / sigma)))  # noqa: E731
        return tail(left) + tail(right)
    sigma = width * FWHM_TO_SIGMA
    return ndtr(-left / sigma) + ndtr(-right / sigma)


class ConsistencyProjection:
    """y -> y + S^T (S S^T + lambda mu I)^-1 (b - S y) along axis 0 (the module docstring has the maths).

    S holds the measured slices at centres m * increment from the grid's first sample, except the
    partial end slices; the banded Cholesky factor of S S^T + lambda mu I is computed once.
    """

    def __init__(self, n_fine: int, n_slices: int, spacing_mm: float, acquisition: Acquisition,
                 regularisation: float = CONSISTENCY_LAMBDA) -> None:
        centres = np.arange(n_slices) * acquisition.increment_mm / spacing_mm
        width = acquisition.thickness_mm / spacing_mm
        shape = (acquisition.profile, acquisition.fwtm_ratio)
        self.used = np.flatnonzero(_mass_outside(centres, n_fine, width, *shape) <= END_MASS_TOLERANCE)
        sampling = thick_sampling_matrix(n_fine, centres[self.used], width, *shape)
        self.sampling = sampling / np.maximum(sampling.sum(axis=1, keepdims=True), 1e-300)
        self._sparse = csr_matrix(self.sampling)  # a band of about thickness / spacing + 2 weights per row
        gram = self.sampling @ self.sampling.T
        self.shift = float(regularisation) * (float(np.mean(np.diag(gram))) if len(gram) else 1.0)
        self.factor = _banded_cholesky(gram + self.shift * np.eye(len(gram))) if len(gram) else None

    def correction(self, estimate: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """S^T (S S^T + lambda mu I)^-1 (b - S y) for estimate (n_fine, lines) and measured (n_slices, lines)."""
        if self.factor is None:
            return np.zeros_like(estimate, dtype=np.float64)
        residual = measured[self.used].astype(np.float64) - self._sparse @ estimate
        return self._sparse.T @ cho_solve_banded((self.factor, False), residual)

    def __call__(self, estimate: np.ndarray, measured: np.ndarray) -> np.ndarray:
        return estimate + self.correction(estimate, measured)


def _banded_cholesky(matrix: np.ndarray) -> np.ndarray:
    """Upper banded Cholesky factor of a symmetric positive definite banded matrix (LAPACK's upper form)."""
    n = len(matrix)
    rows, cols = np.nonzero(np.abs(matrix) > 0)
    bandwidth = int(np.max(np.abs(rows - cols))) if len(rows) else 0
    banded = np.zeros((bandwidth + 1, n))
    for offset in range(bandwidth + 1):
        banded[bandwidth - offset, offset:] = np.diagonal(matrix, offset)
    return cholesky_banded(banded, lower=False)
