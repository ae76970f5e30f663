"""Estimate the slice sensitivity profile (SSP) and the noise of a thick-slice CT stack.

Profile family. A slice integrates the anatomy with the density of X = U + G, U uniform on
[-w/2, w/2] and G ~ N(0, sigma^2) (a box of width w blurred by a Gaussian; sigma = 0: box,
w = 0: Gaussian):

    p(x) = [Phi((x + w/2)/sigma) - Phi((x - w/2)/sigma)] / w,     H(nu) = sinc(w nu) exp(-2 pi^2 sigma^2 nu^2).

Expected ramp. With v = centre - knot, the Gaussian alone gives E[(G + v)^+] = sigma psi1(v/sigma),
psi1(z) = z Phi(z) + phi(z). Averaging over the box,

    R(v) = E[(X - knot)^+] = (1/w) int_{-w/2}^{w/2} sigma psi1((v + u)/sigma) du
         = (sigma^2 / w) [psi2((v + w/2)/sigma) - psi2((v - w/2)/sigma)],
    psi2(z) = ((z^2 + 1) Phi(z) + z phi(z)) / 2,          psi2' = psi1, psi1' = Phi, Phi' = phi,

psi2 being the second antiderivative of the Gaussian distribution function (third of the density).
As in forward.thick_sampling_matrix, a fine signal is the linear interpolant of its samples, so the
weight of fine sample k in the slice centred at c (fine-sample units) is the second difference of R
over the knots k-1, k, k+1: S[m, k] = R(c-k+1) - 2 R(c-k) + R(c-k-1); rows sum to one, and samples
beyond the ends are mirrored back in.

Shape coordinate. Members scale with the FWHM F; the shape is fixed by rho = FWTM / FWHM, from 1
(box) to sqrt(ln 10 / ln 2) = 1.8226 (Gaussian). Internally alpha = sigma / (F * FWHM_TO_SIGMA) in
[0, 1]; a dense table alpha <-> rho (vectorised bisection) maps one to the other, and w follows from
fwhm(w, sigma) = F (one root). fwhm and fwtm themselves are roots of p(x) = p(0)/2, p(0)/10.

Estimator (self-similarity, made symmetric). Let D(z, x) be the planes of the stack that hold the
through-plane axis z (sampled every d, true profile p_t) and one in-plane axis x (sampled every r).
If the anatomy is statistically isotropic, swapping x and z leaves its statistics unchanged. Blur D
along x with a candidate p: its z-lines carry p_t along the line and p across it. Degrade the x-lines
of D with p and sample them every d (all sub-slice phases, as the forward model's S; the linear
interpolation back, U, is a fixed known map and adds nothing, so the lines are compared at d): they
carry p along the line and p_t across it. The two families of lines have the same spectrum when
p = p_t:

    A_p(f) = sum_nu |H~_p(nu)|^2 Q(f, nu)                       (z-lines of D blurred along x)
    B_p(f) = sum_nu P(nu) sinc^4(r nu) |H_p(nu)|^2 K(f - nu d)   (x-lines degraded and resampled)

Q is the Welch (periodic Hann, length L) z-periodogram of D resolved in x-frequency, P the x-line
periodogram, K the Hann window's spectral kernel: B_p is the exact phase-averaged expectation of the
spatial procedure, aliasing and leakage included; H~_p is the transfer of blurring a fine sequence
(replicas of H_p sinc^2 summed). Using the stack's own in-plane lines as the sharp reference without
the symmetric blur would be biased: those lines were averaged over the slice thickness along z, which
removes fine in-plane detail of oblique structures; blurring the z-lines across cancels it exactly.
Noise. Noise independent between slices (correlated in-plane with 1-D spectrum N) adds a flat floor
N_A to A and a low-passed one N_B to B (both known from N and p). The anatomy may differ in contrast
between directions by a gain g that multiplies the anatomy only, so the fit is

    minimise over (FWHM, rho) [and g per axis]:  sum_f [log A_p - log(g (B_p - N_B,p) + N_A,p)]^2

over the bins 2..L/2 where the z-lines' anatomy exceeds their noise, summed over the two in-plane
axes; grid search plus local refinement, then Occam's rule: take the box when it fits within one unit
of the residual variance (the FWTM of near-boxes is barely constrained). L <= min(64, nz, line length
x r / d) so the z-window never resolves finer than the in-plane lines.
Uncertainty: half-ranges of FWHM and FWTM over candidates within one residual-variance unit, the
spread between fits on the two in-plane axes alone, and an in-plane self-check (an in-plane axis of
the slices degraded with the estimate and re-estimated against the other in-plane axis: it measures
how much the anatomy's anisotropy moves the estimator), added in quadrature.
Target. The profile found is the one that, applied to the in-plane images as the forward model's W
does, reproduces the through-plane statistics; it absorbs any difference between in-plane and
through-plane native resolution (a softer in-plane kernel makes it narrower), which is what training
on degraded in-plane images needs.
Limits (see results.md): anatomy that is not isotropic (a head and neck: vertical structures) biases
it by 5-25 %; with d >= T (no overlap) the shape is not identifiable and only the in-band transfer
is matched; noise along z is assumed independent between slices (noise_model="none" ignores noise).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage, optimize, sparse
from scipy.special import ndtr

from .forward import FWHM_TO_SIGMA, reflect_index

GAUSSIAN_FWTM_RATIO = math.sqrt(math.log(10.0) / math.log(2.0))
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
FWHM_RANGE = (0.75, 1.25)  # searched FWHM / nominal thickness
MIN_SLICES = 8
MAX_SEGMENT = 64  # Welch segment length along z (slices)


# ----------------------------------------------------------------------------------------------
# Profile family: closed forms
# ----------------------------------------------------------------------------------------------


def _phi(z: np.ndarray) -> np.ndarray:
    """Standard normal density."""
    return _INV_SQRT_2PI * np.exp(-0.5 * z * z)


def _psi1(z: np.ndarray) -> np.ndarray:
    """First antiderivative of Phi: E[(G + z)^+] for G ~ N(0, 1)."""
    return z * ndtr(z) + _phi(z)


def _psi2(z: np.ndarray) -> np.ndarray:
    """Second antiderivative of Phi (psi2' = psi1)."""
    return 0.5 * ((z * z + 1.0) * ndtr(z) + z * _phi(z))


def expected_ramp(offset: np.ndarray, w: float, sigma: float) -> np.ndarray:
    """E[(X - knot)^+] with offset = centre - knot, X ~ box(w) * N(0, sigma^2) about the centre."""
    v = np.asarray(offset, dtype=np.float64)
    w, sigma = float(w), float(sigma)
    if w < 0 or sigma < 0:
        raise ValueError("w and sigma must be non-negative")
    if sigma <= 1e-12 * max(w, 1e-300):
        if w == 0.0:
            return np.maximum(v, 0.0)
        hi, lo = np.maximum(v + 0.5 * w, 0.0), np.maximum(v - 0.5 * w, 0.0)
        return (hi * hi - lo * lo) / (2.0 * w)
    if w <= 1e-3 * sigma:  # Taylor in w: R_G + w^2/24 R_G'', error O(w^4 / sigma^3)
        z = v / sigma
        return sigma * _psi1(z) + (w * w / 24.0) * _phi(z) / sigma
    a, b = (v + 0.5 * w) / sigma, (v - 0.5 * w) / sigma
    return (sigma * sigma / w) * (_psi2(a) - _psi2(b))


def profile_density(x: np.ndarray, w: float, sigma: float) -> np.ndarray:
    """p(x) of the family (box(w) convolved with N(0, sigma^2)); finite sigma or w required."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    if sigma <= 1e-12 * max(w, 1e-300):
        return np.where(x < 0.5 * w, 1.0 / w, np.where(x == 0.5 * w, 0.5 / w, 0.0))
    if w <= 1e-6 * sigma:
        return _phi(x / sigma) / sigma
    a, b = (x + 0.5 * w) / sigma, (x - 0.5 * w) / sigma
    return (ndtr(-b) - ndtr(-a)) / w  # upper tails: accurate where both are near 1


def transfer_function(nu: np.ndarray, w: float, sigma: float) -> np.ndarray:
    """Fourier transform of the profile (nu in cycles per unit of w and sigma)."""
    nu = np.asarray(nu, dtype=np.float64)
    return np.sinc(w * nu) * np.exp(-2.0 * math.pi**2 * sigma * sigma * nu * nu)


def width_at_fraction(w: float, sigma: float, fraction: float) -> float:
    """Full width of the profile at `fraction` of its maximum (numerically exact root)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must lie in (0, 1)")
    if sigma <= 1e-12 * max(w, 1e-300):
        return float(w)
    if w <= 1e-6 * sigma:
        return 2.0 * sigma * math.sqrt(2.0 * math.log(1.0 / fraction))
    target = fraction * float(profile_density(0.0, w, sigma))
    upper = 0.5 * w + 12.0 * sigma
    half = optimize.brentq(lambda x: float(profile_density(x, w, sigma)) - target, 0.0, upper,
                           xtol=1e-14 * (w + sigma), rtol=1e-15, maxiter=200)
    return 2.0 * half


def fwhm(w: float, sigma: float) -> float:
    """Full width at half maximum of box(w) * N(0, sigma^2)."""
    return width_at_fraction(w, sigma, 0.5)


def fwtm(w: float, sigma: float) -> float:
    """Full width at tenth maximum of box(w) * N(0, sigma^2)."""
    return width_at_fraction(w, sigma, 0.1)


def _box_fraction(alpha: float) -> float:
    """w / FWHM for the member with Gaussian part sigma = alpha * FWHM * FWHM_TO_SIGMA."""
    if alpha <= 0.0:
        return 1.0
    if alpha >= 1.0 - 1e-12:
        return 0.0
    sigma = alpha * FWHM_TO_SIGMA

    def excess(w: float) -> float:  # p(1/2) - p(0)/2 for FWHM 1: positive when w is too large
        a, b = (0.5 + 0.5 * w) / sigma, (0.5 - 0.5 * w) / sigma
        return float(((ndtr(a) - ndtr(b)) - 0.5 * (ndtr(0.5 * w / sigma) - ndtr(-0.5 * w / sigma))) / w)

    if excess(1e-9) >= 0.0:
        return 0.0
    return optimize.brentq(excess, 1e-9, 1.0, xtol=1e-15, rtol=1e-15, maxiter=200)


def _bisect(func, lo: np.ndarray, hi: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Vectorised bisection for func(x) changing sign from negative (lo) to positive (hi)."""
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        positive = func(mid) > 0
        hi, lo = np.where(positive, mid, hi), np.where(positive, lo, mid)
    return 0.5 * (lo + hi)


@lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, np.ndarray]:
    """(alpha, FWTM/FWHM) on a dense alpha grid, computed by vectorised bisection (FWHM = 1)."""
    t = np.linspace(0.0, 1.0, 2001)
    alpha = 0.5 - 0.5 * np.cos(math.pi * t)  # dense near both ends
    sigma = np.maximum(alpha * FWHM_TO_SIGMA, 1e-300)
    inner = (alpha > 0) & (alpha < 1)
    s = sigma[inner]

    def dens(x, w):  # w * p(x), upper-tail form
        return ndtr(-(x - 0.5 * w) / s) - ndtr(-(x + 0.5 * w) / s)

    w = _bisect(lambda w: (dens(0.5, w) - 0.5 * dens(0.0, w)) / w, np.full(s.shape, 1e-12), np.ones(s.shape))
    top = dens(0.0, w)
    half = _bisect(lambda x: 0.1 * top - dens(x, w), np.zeros(s.shape), 0.5 * w + 12 * s)
    ratio = np.empty_like(alpha)
    ratio[inner] = 2.0 * half
    ratio[alpha <= 0] = 1.0
    ratio[alpha >= 1] = GAUSSIAN_FWTM_RATIO
    return alpha, np.maximum.accumulate(ratio)


def alpha_from_ratio(ratio: float) -> float:
    """Shape alpha of the member with FWTM / FWHM = ratio (1 = box .. 1.8226 = Gaussian)."""
    alpha, table = _shape_table()
    ratio = float(np.clip(ratio, 1.0, GAUSSIAN_FWTM_RATIO))
    return float(np.interp(ratio, table, alpha))


def family_member(fwhm_value: float, alpha: float) -> tuple[float, float]:
    """(w, sigma) of the member with the given FWHM and shape alpha (0 box .. 1 Gaussian)."""
    alpha = float(np.clip(alpha, 0.0, 1.0))
    return fwhm_value * _box_fraction(alpha), alpha * fwhm_value * FWHM_TO_SIGMA


def member_from_widths(fwhm_value: float, ratio: float) -> tuple[float, float]:
    """(w, sigma) with the given FWHM and FWTM / FWHM ratio (clipped to 1 .. 1.8226)."""
    return family_member(fwhm_value, alpha_from_ratio(ratio))


def family_name(w: float, sigma: float) -> str:
    """'box', 'blurred box' or 'gaussian' by FWTM / FWHM (box < 1.1 <= blurred box <= 1.8 < gaussian)."""
    ratio = fwtm(w, sigma) / fwhm(w, sigma)
    return "box" if ratio < 1.1 else ("gaussian" if ratio > 1.8 else "blurred box")


def thick_sampling_matrix(n_fine: int, centres: np.ndarray, w: float, sigma: float) -> np.ndarray:
    """S[m, k] = weight of fine sample k in the slice centred at centres[m] (fine-sample units).

    Same conventions as forward.thick_sampling_matrix: linear-interpolant signal, rows sum to one,
    contributions beyond the ends mirrored back in.
    """
    centres = np.asarray(centres, dtype=np.float64)
    radius = 0.5 * w + 8.0 * sigma + 1.0
    offsets = np.arange(-math.ceil(radius) - 1, math.ceil(radius) + 2)
    knots = np.floor(centres)[:, None] + offsets[None, :]
    v = centres[:, None] - knots
    weights = expected_ramp(v + 1.0, w, sigma) - 2.0 * expected_ramp(v, w, sigma) + expected_ramp(v - 1.0, w, sigma)
    weights = np.maximum(weights, 0.0)  # round-off of the second difference (|error| < 1e-14)
    matrix = np.zeros((len(centres), n_fine), dtype=np.float64)
    rows = np.broadcast_to(np.arange(len(centres))[:, None], knots.shape)
    np.add.at(matrix, (rows, reflect_index(knots.astype(np.int64), n_fine)), weights)
    return matrix


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------

_PATCH = 32
_MAX_LAG = 10  # autocovariance lags kept (pixels); the model's correlation is < 0.3 % beyond


@dataclass(frozen=True, eq=False)
class NoiseEstimate:
    """Slice noise: std (HU) and in-plane correlation (autocovariance along an in-plane line)."""

    std_hu: float
    correlation_length_mm: float  # sum of the normalised autocorrelation over all lags x spacing (NPS(0) / variance)
    autocovariance: np.ndarray = field(repr=False)  # HU^2 at lags 0.._MAX_LAG pixels, mean of rows and columns
    n_patches: int = 0
    notes: tuple[str, ...] = ()

    def nps_on_grid(self, n_line: int) -> np.ndarray:
        """Per-sample 1-D NPS (HU^2; mean over the period = variance) on the n_line-point DFT grid, fft order."""
        return _acf_to_nps(self.autocovariance, n_line)


def _acf_to_nps(acf: np.ndarray, n_line: int) -> np.ndarray:
    """1-D NPS on an n-point DFT grid (fft order) from the autocovariance at lags 0..K (zero beyond)."""
    lags = np.arange(len(acf))
    nu = np.fft.fftfreq(n_line)
    nps = acf[0] + 2.0 * np.sum(acf[None, 1:] * np.cos(2 * math.pi * nu[:, None] * lags[None, 1:]), axis=1)
    return np.maximum(nps, 1e-6 * acf[0])


def _patch_view(image: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping size x size patches of a 2-D image, shape (n, size, size)."""
    rows, cols = image.shape[0] // size, image.shape[1] // size
    cut = image[: rows * size, : cols * size]
    return cut.reshape(rows, size, cols, size).swapaxes(1, 2).reshape(-1, size, size)


def _flat_patches(stack: np.ndarray, max_slices: int = 8) -> np.ndarray:
    """32x32 patches whose smoothed gradient is near the quietest patches' (noise only), none clipped or constant."""
    chosen = _select(stack.shape[0], max_slices)
    patches, scores = [], []
    for z in chosen:
        image = np.asarray(stack[z], dtype=np.float64)
        smooth = ndimage.gaussian_filter(image, 2.0)
        grad = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
        floor = float(image.min())
        p, g = _patch_view(image, _PATCH), _patch_view(grad, _PATCH)
        if len(p) == 0:
            continue
        clipped = np.mean(p <= floor + 1e-6, axis=(1, 2))
        ok = (clipped < 0.01) & (np.ptp(p, axis=(1, 2)) > 1e-6)
        patches.append(p[ok])
        scores.append(np.percentile(g[ok], 90, axis=(1, 2)) if ok.any() else np.zeros(0))
    if not patches or sum(len(p) for p in patches) == 0:
        return np.zeros((0, _PATCH, _PATCH))
    patches, scores = np.concatenate(patches), np.concatenate(scores)
    # keep patches whose structure is near the quietest ones (noise level), not a fixed fraction:
    # a fixed fraction of pure-noise patches would pick the ones with the least noise
    keep = scores <= 1.6 * np.percentile(scores, 10)
    if keep.sum() < 16:
        keep = scores <= np.percentile(scores, 25)
    kept = patches[keep]
    return kept[_select(len(kept), 128)]


def _detrend_plane(patches: np.ndarray) -> np.ndarray:
    """Remove a least-squares plane from each patch."""
    n = patches.shape[-1]
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    basis = np.stack([np.ones(n * n), yy.ravel() - yy.mean(), xx.ravel() - xx.mean()], axis=1)
    flat = patches.reshape(len(patches), -1).T
    coef, *_ = np.linalg.lstsq(basis, flat, rcond=None)
    return (flat - basis @ coef).T.reshape(patches.shape)


_LAGS = np.arange(1, 11)  # pixel lags of the increments used by the noise fit
_CORR_GRID = np.concatenate([[0.0], np.arange(0.3, 2.0001, 0.025)])  # smoothing sigma (pixels) of the noise model


@lru_cache(maxsize=1)
def _model_correlations() -> np.ndarray:
    """rho(lag; s) along a line for white noise smoothed by a sampled Gaussian of sigma s: (n_s, lags 0..10)."""
    top = int(max(_MAX_LAG, _LAGS.max()))
    out = np.zeros((len(_CORR_GRID), top + 1))
    for i, s in enumerate(_CORR_GRID):
        if s == 0.0:
            out[i, 0] = 1.0
            continue
        x = np.arange(-int(4 * s + 1), int(4 * s + 1) + 1)
        k = np.exp(-0.5 * (x / s) ** 2)
        acf = np.correlate(k, k, mode="full")  # lags -(len-1)..(len-1)
        mid = len(acf) // 2
        lags = np.arange(top + 1)
        out[i] = np.where(lags <= mid, acf[mid + np.minimum(lags, mid)], 0.0) / acf[mid]
    return out


def _increment_variances(patches: np.ndarray) -> np.ndarray:
    """Robust (MAD) variance of plane-detrended increments at _LAGS along rows and columns, pooled over patches."""
    resid = _detrend_plane(patches)
    out = []
    for lag in _LAGS:
        dx = (resid[:, :, lag:] - resid[:, :, :-lag]).ravel()
        dy = (resid[:, lag:, :] - resid[:, :-lag, :]).ravel()
        d = np.concatenate([dx, dy])
        out.append((1.4826 * np.median(np.abs(d - np.median(d)))) ** 2)
    return np.array(out)


def estimate_noise(stack: np.ndarray, in_plane_spacing_mm: float) -> NoiseEstimate:
    """Noise std and in-plane autocovariance from robust increments of low-gradient patches.

    Var(I(x + l) - I(x)) = 2 sigma^2 (1 - rho(l)) + beta l^2 + gamma l^4 at lags l = 1..10 pixels (MAD
    over plane-detrended 32x32 patches whose smoothed gradient is at noise level): rho of white noise
    smoothed by a Gaussian (smoothing on a grid up to 2 px), beta l^2 + gamma l^4 the residual smooth
    anatomy (sigma^2, beta >= 0); non-negative least squares in relative error.
    """
    stack = np.asarray(stack)
    if stack.ndim == 2:
        stack = stack[None]
    patches = _flat_patches(stack)
    if len(patches) < 4:
        return NoiseEstimate(0.0, 0.0, np.zeros(_MAX_LAG + 1), len(patches), ("no uniform regions found",))
    v = _increment_variances(patches)
    if not np.all(np.isfinite(v)) or v.max() <= 0:
        return NoiseEstimate(0.0, 0.0, np.zeros(_MAX_LAG + 1), len(patches), ("uniform regions are constant",))
    rho = _model_correlations()
    lag2 = _LAGS.astype(float) ** 2
    scale = 1.0 / v  # relative errors
    best, best_misfit, best_var = 0, np.inf, 0.0
    for i in range(len(_CORR_GRID)):
        # gamma of either sign as two non-negative columns, so that plain NNLS applies
        design = np.stack([2.0 * (1.0 - rho[i, _LAGS]), lag2, lag2 * lag2, -lag2 * lag2], axis=1) * scale[:, None]
        coef, _ = optimize.nnls(design, v * scale)
        misfit = float(np.sum((design @ coef - v * scale) ** 2))
        if misfit < best_misfit:
            best, best_misfit, best_var = i, misfit, float(coef[0])
    acf = best_var * rho[best, : _MAX_LAG + 1]
    if best_var <= 0:
        return NoiseEstimate(0.0, 0.0, np.zeros(_MAX_LAG + 1), len(patches), ("no noise component found",))
    corr_len = float(_acf_to_nps(acf, 64)[0] / acf[0]) * in_plane_spacing_mm
    notes = [] if len(patches) >= 16 else [f"only {len(patches)} uniform patches: noise estimate is rough"]
    if best_misfit > 0.05 * len(_LAGS):
        notes.append("noise increments do not follow the smoothed-white model well")
    return NoiseEstimate(math.sqrt(best_var), corr_len, acf, len(patches), tuple(notes))


# ----------------------------------------------------------------------------------------------
# Spectral statistics of the stack and the predicted spectra
# ----------------------------------------------------------------------------------------------

_REPLICAS = 2  # fine-grid spectral replicas kept (|nu| < 2 / spacing)
_LEAKAGE_DOF = 1.5  # adjacent Hann bins are correlated: about 1.5 bins per independent residual
_MIN_FREQ_WIDTH = 0.0  # f x FWHM below this: no profile information (0: keep all; cuts did not help, see results.md)
_SNAP = 1.0  # take the box when its misfit is within this many residual-variance units of the best


def _select(n: int, count: int) -> np.ndarray:
    """About `count` evenly spaced indices of 0..n-1 (all of them when n <= count)."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))


def _hann(length: int) -> np.ndarray:
    """Periodic Hann window with unit energy (sum of squares one)."""
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * np.arange(length) / length)
    return window / np.sqrt(np.sum(window**2))


def _hann_kernel(length: int, u: np.ndarray) -> np.ndarray:
    """|W(u)|^2 of the unit-energy periodic Hann window at u cycles/sample (table, linear interpolation)."""
    fine = 128 * length
    table = np.abs(np.fft.fft(_hann(length), fine)) ** 2
    pos = np.mod(u, 1.0) * fine
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    return table[lo % fine] * (1.0 - frac) + table[(lo + 1) % fine] * frac


def _segment_starts(nz: int, length: int) -> np.ndarray:
    """Starts of Welch segments (about 50 % overlap) covering 0..nz-1."""
    if nz <= length:
        return np.array([0])
    count = int(math.ceil(2.0 * (nz - length) / length)) + 1
    return np.unique(np.linspace(0, nz - length, count).round().astype(int))


def _plane_statistics(planes: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Q[f, nu] (z-Welch periodogram, exact x-DFT, mean over x and planes) and P[nu] (x-line periodogram).

    planes: (n, nz, n_line). Q is normalised so that sum over nu gives the mean z-periodogram of a line.
    """
    n, nz, n_line = planes.shape
    window_z = _hann(length)
    starts = _segment_starts(nz, length)
    q = np.zeros((length // 2 + 1, n_line))
    for start in starts:
        seg = planes[:, start : start + length, :]
        seg = (seg - seg.mean(axis=1, keepdims=True)) * window_z[None, :, None]
        q += np.mean(np.abs(np.fft.fft(np.fft.rfft(seg, axis=1), axis=2)) ** 2, axis=0)
    q /= len(starts) * n_line**2
    window_x = np.sqrt(np.hanning(n_line + 2)[1:-1])  # mild taper against leakage from the line ends
    lines = (planes - planes.mean(axis=2, keepdims=True)) * window_x
    p = np.mean(np.abs(np.fft.fft(lines, axis=2)) ** 2, axis=(0, 1)) / np.sum(window_x**2)
    return q, p


@dataclass(frozen=True, eq=False)
class _Model:
    """Linear maps from |H_p|^2 on frequency bins to the predicted spectra of one in-plane axis.

    A_p = qa @ |H~_p(nu_a)|^2 (z-lines) and B_p = bm @ |H_p(nu_b)|^2 (in-plane lines); noise likewise.
    """

    qa: np.ndarray  # (n_f, n_a)
    nu_a: np.ndarray  # (n_a,) cycles/mm, bin centres of the line DFT frequencies
    bm: np.ndarray  # (n_f, n_b): Hann kernel x sinc^4 x P / n_line summed over each bin
    nu_b: np.ndarray  # (n_b,) cycles/mm, bin centres of the extended frequencies
    noise_a: np.ndarray  # (n_a,): noise level of A = noise_a @ |H~_p|^2, shaped by noise_zshape
    noise_b: np.ndarray  # (n_f, n_b): noise of B = noise_b @ |H_p|^2
    noise_zshape: np.ndarray  # (n_f,) through-plane noise spectrum / in-plane variance (1: independent slices)
    spacing: float
    freqs: np.ndarray  # (n_f,) through-plane bin frequencies, cycles/mm


def _bin_sum(values: np.ndarray, nu: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Sum values (..., n) over frequency bins of `width` (cycles/mm); returns (sums (..., n_bins), bin centres)."""
    order = np.argsort(nu, kind="stable")
    key = np.floor(nu[order] / width + 0.5).astype(np.int64)
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    counts = np.diff(np.append(starts, len(key)))
    return np.add.reduceat(values[..., order], starts, axis=-1), np.add.reduceat(nu[order], starts) / counts


def _build_model(planes: np.ndarray, spacing: float, increment: float, length: int, nominal: float,
                 noise_line: np.ndarray | None = None, noise_zshape: np.ndarray | None = None,
                 noise_line_scale: float = 1.0) -> _Model:
    """Statistics of planes (n, nz, n_line) turned into binned linear maps of the predicted spectra."""
    n_line = planes.shape[2]
    q, p = _plane_statistics(planes, length)
    noise_line = np.zeros(n_line) if noise_line is None else np.asarray(noise_line, dtype=np.float64)
    width = 1.0 / (20.0 * FWHM_RANGE[1] * nominal)  # |H|^2 varies on the scale 1/FWHM: 20 bins per period
    nu = np.fft.fftfreq(n_line, spacing)
    qa, nu_a = _bin_sum(q, nu, width)
    noise_a, _ = _bin_sum(noise_line / n_line, nu, width)
    j = np.arange(-_REPLICAS * n_line, _REPLICAS * n_line)
    nu_ext = j / (n_line * spacing)
    cycles = np.arange(length // 2 + 1) / length
    kernel = _hann_kernel(length, cycles[:, None] - nu_ext[None, :] * increment)
    kernel *= (_sinc(spacing * nu_ext) ** 4)[None, :] / n_line
    wrap = np.mod(j, n_line)
    bm, nu_b = _bin_sum(kernel * p[wrap][None, :], nu_ext, width)
    noise_b, _ = _bin_sum(noise_line_scale * kernel * noise_line[wrap][None, :], nu_ext, width)
    zshape = np.ones(length // 2 + 1) if noise_zshape is None else np.asarray(noise_zshape, dtype=np.float64)
    return _Model(qa, nu_a, bm, nu_b, noise_a, noise_b, zshape, spacing, cycles / increment)


def _sinc(x: np.ndarray) -> np.ndarray:
    """sin(pi x) / (pi x), 1 at 0."""
    y = math.pi * np.asarray(x, dtype=np.float64)
    small = np.abs(y) < 1e-8
    return np.where(small, 1.0 - y * y / 6.0, np.sin(y) / np.where(small, 1.0, y))


def _transfer(nu: np.ndarray, w: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """H(nu) for arrays of (w, sigma) of shape (n, 1) against nu of shape (1, m)."""
    return _sinc(w * nu) * np.exp(-2.0 * math.pi**2 * sigma * sigma * nu * nu)


def _fine_blur_power(nu: np.ndarray, spacing: float, w: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """|H~(nu)|^2 of blurring a fine sequence with the profile (replicas of H sinc^2 summed coherently)."""
    total = 0.0
    for k in range(-_REPLICAS, _REPLICAS + 1):
        shifted = nu + k / spacing
        total = total + _transfer(shifted, w, sigma) * _sinc(spacing * shifted) ** 2
    return total * total


def _predict(model: _Model, w: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, noise of A, noise of B), each (n_candidates, n_f), for candidate arrays w, sigma."""
    w, sigma = np.atleast_1d(w)[:, None], np.atleast_1d(sigma)[:, None]
    ha = _fine_blur_power(model.nu_a[None, :], model.spacing, w, sigma)
    hb = _transfer(model.nu_b[None, :], w, sigma) ** 2
    noise_a = (ha @ model.noise_a)[:, None] * model.noise_zshape[None, :]
    return ha @ model.qa.T, hb @ model.bm.T, noise_a, hb @ model.noise_b.T


# ----------------------------------------------------------------------------------------------
# Fit
# ----------------------------------------------------------------------------------------------

_RHO_GRID = np.linspace(1.0, GAUSSIAN_FWTM_RATIO, 15)
_U_GRID = np.linspace(FWHM_RANGE[0], FWHM_RANGE[1], 26)


@lru_cache(maxsize=8192)
def _unit_member(ratio: float) -> tuple[float, float]:
    """(w, sigma) of the member with FWHM 1 and FWTM / FWHM = ratio (members scale linearly with FWHM)."""
    return member_from_widths(1.0, ratio)


def _members(fwhms: np.ndarray, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w, sigma) arrays for paired FWHM and FWTM / FWHM arrays."""
    unit = np.array([_unit_member(float(round(r, 12))) for r in np.atleast_1d(ratios)])
    return np.atleast_1d(fwhms) * unit[:, 0], np.atleast_1d(fwhms) * unit[:, 1]


def _misfit(models: list[_Model], bins: tuple[np.ndarray, ...], w: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Sum over axes of squared log-residuals log A - log(g (B - N_B) + N_A), g the anatomy gain, per candidate.

    The gain multiplies the anatomy only (its contrast along z and in-plane may differ); the noise of the
    z-lines, N_A, is added to the prediction and the stack's own noise in B, N_B, is taken out.
    """
    total = np.zeros(len(np.atleast_1d(w)))
    for model, index in zip(models, bins):
        a, b, noise_a, noise_b = (x[:, index] for x in _predict(model, w, sigma))
        log_a = np.log(np.maximum(a, 1e-300))
        signal_b = np.maximum(b - noise_b, 0.05 * b)
        theta = np.mean(log_a - np.log(np.maximum(signal_b + noise_a, 1e-300)), axis=1, keepdims=True)
        for _ in range(6):  # Gauss-Newton on theta = log g
            model_b = np.exp(theta) * signal_b
            r = log_a - np.log(model_b + noise_a)
            u = model_b / (model_b + noise_a)
            theta = theta + np.sum(r * u, axis=1, keepdims=True) / np.maximum(np.sum(u * u, axis=1, keepdims=True), 1e-12)
        r = log_a - np.log(np.exp(theta) * signal_b + noise_a)
        total += np.sum(r * r, axis=1)
    return total


def _choose_bins(models: list[_Model], w: float, sigma: float, min_snr: float = 1.0) -> tuple[np.ndarray, ...]:
    """Per axis, the bins 2..L/2 where the z-lines' anatomy exceeds min_snr x their noise (A - N_A >= min_snr N_A).

    N_A depends only weakly on the profile (through the in-plane blur), so the provisional one suffices.
    """
    out = []
    width = fwhm(w, sigma)
    for model in models:
        a, b, noise_a, noise_b = (x[0] for x in _predict(model, np.array([w]), np.array([sigma])))
        snr_z = (a - noise_a) / np.maximum(noise_a, 1e-300)
        snr_b = (b - noise_b) / np.maximum(noise_b, 1e-300)
        informative = model.freqs * width >= _MIN_FREQ_WIDTH  # below: |H|^2 > 0.93, anatomy only
        keep = (np.arange(len(model.freqs)) >= 2) & informative & (snr_z >= min_snr) & (snr_b >= min_snr)
        out.append(np.flatnonzero(keep))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class _Fit:
    """Best (FWHM, FWTM / FWHM) with the evaluated candidates and their misfits."""

    fwhm: float
    ratio: float
    cost: float
    dof: int
    fwhms: np.ndarray
    ratios: np.ndarray
    costs: np.ndarray

    def scale(self) -> float:
        """Misfit per effective degree of freedom (the residual variance)."""
        return self.cost / self.dof


def _grid_fit(models: list[_Model], bins: tuple[np.ndarray, ...], nominal: float) -> _Fit:
    """Grid search over (FWHM, FWTM/FWHM), three local refinements, then Occam's snap to the box."""
    uu, rr = np.meshgrid(_U_GRID, _RHO_GRID, indexing="ij")
    fw, ra = uu.ravel() * nominal, rr.ravel()
    all_f, all_r, all_c = [fw], [ra], [_misfit(models, bins, *_members(fw, ra))]
    best = int(np.argmin(all_c[0]))
    f0, r0 = fw[best], ra[best]
    step_f, step_r = (_U_GRID[1] - _U_GRID[0]) * nominal, _RHO_GRID[1] - _RHO_GRID[0]
    for _ in range(3):
        step_f, step_r = step_f / 3.0, step_r / 3.0
        ff, rr2 = np.meshgrid(f0 + step_f * np.arange(-3, 4), r0 + step_r * np.arange(-3, 4), indexing="ij")
        ff = np.clip(ff.ravel(), FWHM_RANGE[0] * nominal, FWHM_RANGE[1] * nominal)
        rr2 = np.clip(rr2.ravel(), 1.0, GAUSSIAN_FWTM_RATIO)
        all_f.append(ff), all_r.append(rr2), all_c.append(_misfit(models, bins, *_members(ff, rr2)))
        k = int(np.argmin(all_c[-1]))
        f0, r0 = ff[k], rr2[k]
    fws, ras, costs = np.concatenate(all_f), np.concatenate(all_r), np.concatenate(all_c)
    k = int(np.argmin(costs))
    dof = max(int(sum(len(i) - 1 for i in bins) / _LEAKAGE_DOF) - 2, 1)
    fit = _Fit(float(fws[k]), float(ras[k]), float(costs[k]), dof, fws, ras, costs)
    box = ras == 1.0
    if fit.ratio > 1.0 and box.any():
        # the FWTM of a near-box is barely constrained: take the box when it fits within one unit
        j = np.flatnonzero(box)[np.argmin(costs[box])]
        if costs[j] <= fit.cost + _SNAP * fit.scale():
            fit = _Fit(float(fws[j]), 1.0, float(costs[j]), dof, fws, ras, costs)
    return fit


def _interval(fit: _Fit) -> tuple[float, float]:
    """Half-ranges of FWHM and FWTM over the candidates within one residual-variance unit of the best."""
    ok = fit.costs <= fit.cost + fit.scale()
    floor = (_U_GRID[1] - _U_GRID[0]) * fit.fwhm / 9.0
    return (max(0.5 * float(np.ptp(fit.fwhms[ok])), floor),
            max(0.5 * float(np.ptp(fit.fwhms[ok] * fit.ratios[ok])), floor))


def _at_bound(value: float, nominal: float) -> bool:
    """FWHM within 0.5 % of either end of the search range."""
    return value <= FWHM_RANGE[0] * nominal * 1.005 or value >= FWHM_RANGE[1] * nominal * 0.995


def _interior_alternative(fit: _Fit, nominal: float) -> _Fit | None:
    """The best candidate off the FWHM bounds if it fits within one residual-variance unit of the bound fit."""
    inside = np.array([not _at_bound(float(f), nominal) for f in fit.fwhms])
    ok = inside & (fit.costs <= fit.cost + fit.scale())
    if not ok.any():
        return None
    k = np.flatnonzero(ok)[np.argmin(fit.costs[ok])]
    return _Fit(float(fit.fwhms[k]), float(fit.ratios[k]), float(fit.costs[k]), fit.dof, fit.fwhms, fit.ratios, fit.costs)


def _fit_widths(models: list[_Model], nominal: float) -> tuple[_Fit, tuple[np.ndarray, ...]]:
    """Two passes: frequency bins chosen for the nominal box, then for the first estimate."""
    bins = _choose_bins(models, nominal, 0.0)
    if min(len(i) for i in bins) < 3:
        return _grid_fit(models, bins, nominal), bins
    fit = _grid_fit(models, bins, nominal)
    w, s = _members(np.array([fit.fwhm]), np.array([fit.ratio]))
    bins = _choose_bins(models, float(w[0]), float(s[0]))
    return _grid_fit(models, bins, nominal), bins


# ----------------------------------------------------------------------------------------------
# Public estimator
# ----------------------------------------------------------------------------------------------


class SliceProfileWarning(UserWarning):
    """The slice-profile estimate cannot be trusted: the nominal box is returned, or the result is uncertain."""


@dataclass(frozen=True)
class ProfileEstimate:
    """Estimated slice profile box(w) * N(0, sigma^2): family, widths, uncertainty and caveats."""

    family: str  # "box", "blurred box" or "gaussian"
    w_mm: float
    sigma_mm: float
    fwhm_mm: float
    fwtm_mm: float
    fwhm_std_mm: float  # combined: fit interval, row/column spread and the in-plane self-check
    fwtm_std_mm: float
    confidence: str  # "high", "medium", "low" or "fallback"
    trusted: bool  # False for "low" and "fallback"
    notes: tuple[str, ...] = ()
    per_axis: tuple[tuple[float, float], ...] = ()  # (FWHM, FWTM) fitted on the row planes and on the column planes
    self_check: tuple[float, float] = (float("nan"), float("nan"))  # relative FWHM, FWTM error, in-plane test
    noise_std_hu: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """The figures a user reads (`sr4zct info --estimate-profile --json`: slice_profile)."""
        return {"family": self.family, "fwhm_mm": self.fwhm_mm, "fwtm_mm": self.fwtm_mm,
                "fwhm_std_mm": self.fwhm_std_mm, "fwtm_std_mm": self.fwtm_std_mm, "confidence": self.confidence,
                "trusted": self.trusted, "box_width_mm": self.w_mm, "blur_sigma_mm": self.sigma_mm,
                "noise_std_hu": self.noise_std_hu, "notes": list(self.notes), "seconds": self.seconds}


FALLBACK_NOTE = "fell back to the nominal box"  # the last note of a fallback estimate (after its reason)


def _fallback(nominal: float, reason: str, start: float, noise: float = 0.0) -> ProfileEstimate:
    """The nominal box, with a SliceProfileWarning."""
    warnings.warn(f"slice profile not estimated ({reason}); using the nominal box of {nominal:g} mm",
                  SliceProfileWarning, stacklevel=3)
    nan = float("nan")
    return ProfileEstimate("box", nominal, 0.0, nominal, nominal, nan, nan, "fallback", False,
                           (reason, FALLBACK_NOTE), (), (nan, nan), noise, time.perf_counter() - start)


def _plane_indices(stack: np.ndarray, axis: int, count: int) -> np.ndarray:
    """Up to `count` evenly spaced planes along `axis` (1 or 2) among those holding structure."""
    n = stack.shape[axis]
    other = 2 if axis == 1 else 1
    sub = stack[:: max(1, stack.shape[0] // 8)]
    sub = np.take(sub, np.arange(0, sub.shape[other], max(1, sub.shape[other] // 64)), axis=other)
    spread = np.std(sub.astype(np.float64), axis=(0, other))
    positive = spread[spread > 0]
    candidates = np.flatnonzero(spread > 0.05 * np.median(positive)) if len(positive) else np.arange(n)
    if len(candidates) == 0:
        candidates = np.arange(n)
    return candidates[_select(len(candidates), count)]


def _axis_models(stack: np.ndarray, spacing: float, increment: float, nominal: float,
                 noise: NoiseEstimate | None, max_planes: int) -> list[_Model]:
    """Models for the planes holding z and the column axis (fixed row), and z and the row axis (fixed column)."""
    models = []
    for axis in (1, 2):
        # the z-window must not resolve finer than the in-plane lines do: L d <= line length
        length = max(min(stack.shape[0], MAX_SEGMENT, int(stack.shape[3 - axis] * spacing / increment)), MIN_SLICES)
        idx = _plane_indices(stack, axis, max_planes)
        planes = np.moveaxis(np.take(stack, idx, axis=axis), axis, 0).astype(np.float64)
        line = noise.nps_on_grid(planes.shape[2]) if noise is not None and noise.std_hu > 0 else None
        models.append(_build_model(planes, spacing, increment, length, nominal, line))
    return models


def _cap_noise(models: list[_Model], nominal: float) -> tuple[list[_Model], float]:
    """Scale the noise down if its floor exceeds the observed z-line power (A >= N_A must hold at every bin)."""
    ratios = []
    for model in models:
        a, _, noise_a, _ = (x[0] for x in _predict(model, np.array([nominal]), np.array([0.0])))
        positive = noise_a[2:] > 0
        if positive.any():
            ratios.append(float(np.min(a[2:][positive] / noise_a[2:][positive])))
    factor = min(ratios) if ratios else 1.0
    if factor >= 1.0:
        return models, 1.0
    factor = 0.9 * factor
    scaled = [replace(m, noise_a=m.noise_a * factor, noise_b=m.noise_b * factor) for m in models]
    return scaled, factor


def _self_check(stack: np.ndarray, spacing: float, increment: float, nominal: float, w: float, sigma: float,
                noise: NoiseEstimate | None, max_slices: int = 32, max_lines: int = 256) -> tuple[float, float]:
    """Degrade each in-plane axis of some slices with the estimate, re-estimate it there: rms relative errors.

    The other in-plane axis is the reference, so the errors measure how far the anatomy's in-plane
    anisotropy alone moves the estimator.
    """
    slices = np.asarray(stack[_select(stack.shape[0], max_slices)], dtype=np.float64)
    true_fwhm, true_fwtm = fwhm(w, sigma), fwtm(w, sigma)
    errors = []
    for axis in (1, 2):
        n = slices.shape[axis]
        count = int(math.floor((n - 1) * spacing / increment + 1e-9)) + 1
        if count < 2 * MIN_SLICES:
            continue
        sampling = sparse.csr_matrix(
            thick_sampling_matrix(n, np.arange(count) * increment / spacing, w / spacing, sigma / spacing))
        moved = np.moveaxis(slices, axis, -1)
        moved = moved[:, _select(moved.shape[1], max_lines)]
        pseudo = np.asarray(sampling.dot(moved.reshape(-1, n).T)).T.reshape(moved.shape[:2] + (count,))
        planes = np.swapaxes(pseudo, 1, 2)  # (slices, count, lines): the degraded axis plays z
        length = min(count, MAX_SEGMENT)
        line = zshape = None
        scale = 1.0
        if noise is not None and noise.std_hu > 0:
            # the degraded in-plane noise is not independent along the pseudo-z axis: give its spectrum
            line = noise.nps_on_grid(planes.shape[2])
            j = np.arange(-_REPLICAS * n, _REPLICAS * n)
            nu_ext = j / (n * spacing)
            cycles = np.arange(length // 2 + 1) / length
            kernel = _hann_kernel(length, cycles[:, None] - nu_ext[None, :] * increment) * _sinc(spacing * nu_ext) ** 4 / n
            z_noise = kernel @ (noise.nps_on_grid(n)[np.mod(j, n)] * transfer_function(nu_ext, w, sigma) ** 2)
            zshape = z_noise / noise.std_hu**2
            scale = float(np.mean(zshape))
        model = _build_model(planes, spacing, increment, length, nominal, line, zshape, scale)
        fit = _grid_fit([model], _choose_bins([model], w, sigma), nominal)
        wf, sf = (float(x[0]) for x in _members(np.array([fit.fwhm]), np.array([fit.ratio])))
        errors.append((fit.fwhm / true_fwhm - 1.0, fwtm(wf, sf) / true_fwtm - 1.0))
    if not errors:
        return float("nan"), float("nan")
    e = np.array(errors)
    return float(np.sqrt(np.mean(e[:, 0] ** 2))), float(np.sqrt(np.mean(e[:, 1] ** 2)))


def estimate_slice_profile(stack: np.ndarray, in_plane_spacing_mm: float, increment_mm: float,
                           nominal_thickness_mm: float, *, noise: NoiseEstimate | None = None,
                           noise_model: str = "independent", max_planes: int = 48,
                           self_check: bool = True) -> ProfileEstimate:
    """Fit box(w) * N(0, sigma^2) to a thick-slice stack (z, rows, cols) in HU by symmetric self-similarity.

    noise_model "independent": slice noise uncorrelated between slices (estimated unless given);
    "none": no noise terms. See the module docstring for the method.
    """
    start = time.perf_counter()
    stack = np.asarray(stack)
    nominal = float(nominal_thickness_mm)
    if stack.ndim != 3:
        raise ValueError(f"stack must be 3-D (z, rows, cols), got shape {stack.shape}")
    if min(in_plane_spacing_mm, increment_mm, nominal) <= 0:
        raise ValueError("spacings and thickness must be positive")
    if noise_model not in ("independent", "none"):
        raise ValueError("noise_model must be 'independent' or 'none'")
    if stack.shape[0] < MIN_SLICES:
        return _fallback(nominal, f"only {stack.shape[0]} slices (need {MIN_SLICES})", start)
    probe = stack[:: max(1, stack.shape[0] // 8), ::4, ::4].astype(np.float64)
    if not np.all(np.isfinite(probe)) or float(np.std(probe)) < 1.0:
        return _fallback(nominal, "the images are flat or not finite", start)
    if noise is None:
        noise = estimate_noise(stack, in_plane_spacing_mm) if noise_model == "independent" else None
    noise_std = 0.0 if noise is None else noise.std_hu
    models = _axis_models(stack, in_plane_spacing_mm, increment_mm, nominal,
                          noise if noise_model == "independent" else None, max_planes)
    models, factor = _cap_noise(models, nominal)
    cap_note = None
    if factor < 1.0:
        cap_note = (f"the noise estimate ({noise_std:.1f} HU) exceeds what the through-plane spectrum allows; "
                    f"scaled to {noise_std * math.sqrt(factor):.1f} HU (texture mistaken for noise?)")
        noise_std *= math.sqrt(factor)
    fit, bins = _fit_widths(models, nominal)
    if min(len(i) for i in bins) < 3:
        return _fallback(nominal, "too few through-plane frequencies with signal above the noise", start, noise_std)
    notes = [] if noise is None else list(noise.notes)
    if cap_note:
        notes.append(cap_note)
    at_bound = False
    if _at_bound(fit.fwhm, nominal):
        inside = _interior_alternative(fit, nominal)
        if inside is None:
            return _fallback(nominal, f"FWHM fit at the search bound ({fit.fwhm:.2f} mm)", start, noise_std)
        notes.append(f"best fit at the FWHM bound ({fit.fwhm:.2f} mm); an interior profile fits as well and is returned")
        fit, at_bound = inside, True
    w, sigma = (float(x[0]) for x in _members(np.array([fit.fwhm]), np.array([fit.ratio])))
    est_fwhm, est_fwtm = fwhm(w, sigma), fwtm(w, sigma)
    half_f, half_t = _interval(fit)
    per_axis = []
    for model, index in zip(models, bins):
        one = _grid_fit([model], (index,), nominal)
        wk, sk = (float(x[0]) for x in _members(np.array([one.fwhm]), np.array([one.ratio])))
        per_axis.append((fwhm(wk, sk), fwtm(wk, sk)))
    spread_f = 0.5 * abs(per_axis[0][0] - per_axis[1][0])
    spread_t = 0.5 * abs(per_axis[0][1] - per_axis[1][1])
    check = (_self_check(stack, in_plane_spacing_mm, increment_mm, nominal, w, sigma,
                         noise if noise_model == "independent" else None)
             if self_check else (float("nan"), float("nan")))
    check_f = 0.0 if math.isnan(check[0]) else check[0] * est_fwhm
    check_t = 0.0 if math.isnan(check[1]) else check[1] * est_fwtm
    std_f = math.sqrt(half_f**2 + spread_f**2 + check_f**2)
    std_t = math.sqrt(half_t**2 + spread_t**2 + check_t**2)
    rel_f, rel_t = std_f / est_fwhm, std_t / est_fwtm
    confidence = "high" if rel_f < 0.03 and rel_t < 0.08 else ("medium" if rel_f < 0.06 and rel_t < 0.15 else "low")
    if at_bound:
        confidence = "low"
    if confidence == "low":
        notes.append("low confidence: FWHM or FWTM uncertain by more than 6 % / 15 %")
        warnings.warn(f"slice profile estimate uncertain (FWHM {est_fwhm:.2f} +/- {std_f:.2f} mm, "
                      f"FWTM {est_fwtm:.2f} +/- {std_t:.2f} mm)", SliceProfileWarning, stacklevel=2)
    return ProfileEstimate(family_name(w, sigma), w, sigma, est_fwhm, est_fwtm, std_f, std_t, confidence,
                           confidence != "low", tuple(notes), tuple(per_axis), check, noise_std,
                           time.perf_counter() - start)


def simulate_stack(truth: np.ndarray, spacing: float, increment: float, w_mm: float, sigma_mm: float,
             noise_hu: float = 0.0, noise_corr_px: float = 0.8, seed: int = 0) -> np.ndarray:
    """Thick slices along axis 0 of the truth (centres every increment from sample 0), plus slice noise."""
    nz = truth.shape[0]
    count = int(math.floor((nz - 1) * spacing / increment + 1e-9)) + 1
    centres = np.arange(count) * increment / spacing
    sampling = thick_sampling_matrix(nz, centres, w_mm / spacing, sigma_mm / spacing).astype(np.float32)
    stack = (sampling @ truth.reshape(nz, -1)).reshape((count,) + truth.shape[1:])
    if noise_hu > 0:
        rng = np.random.default_rng(seed)
        noise = ndimage.gaussian_filter(rng.standard_normal(stack.shape).astype(np.float32), (0, noise_corr_px, noise_corr_px))
        stack = stack + noise * (noise_hu / noise.std())
    return stack
