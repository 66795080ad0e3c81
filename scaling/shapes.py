"""Procedural images: each image is a pure function of its integer index (no download, never repeats).

An image is a background (a level plus a linear gradient) with 1-4 anti-aliased shapes drawn over it, each
one of: disc, rectangle, triangle, ring or striped disc, with random centre, size, aspect, rotation,
opacity and intensity (a colour when channels = 3). Edges are anti-aliased from signed distances, so the
images are resolution-independent (rendered directly at the requested size). The label is the type of the
topmost shape (0 disc, 1 rectangle, 2 triangle, 3 ring, 4 stripes).

The random numbers come from a counter-based hash (splitmix64) of (index, draw number), so a batch of
any composition renders the same image for the same index, on any numpy version. Each slot is drawn only on
the images that have a shape there, and each signed distance only on the images of its kind (3x faster than
computing all five for every image; the same pixels, `tests/data/golden/shapes.npz`).
"""

from __future__ import annotations

import numpy as np

SHAPE_TYPES = ("disc", "rectangle", "triangle", "ring", "stripes")
MAX_SHAPES = 4
_GLOBAL_DRAWS = 8  # count, background level, gradient angle, gradient amplitude, colour draws
_SHAPE_DRAWS = 16  # per shape slot

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return x ^ (x >> np.uint64(31))


def uniforms(index: np.ndarray, count: int) -> np.ndarray:
    """(len(index), count) uniforms in [0, 1) from a hash of (index, j): the same for an index in any batch."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)[:, None]
    j = np.arange(count, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _splitmix64(_splitmix64(idx) ^ (j * np.uint64(0xD1B54A32D192ED03) & _M64))
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _sdf_box(u: np.ndarray, v: np.ndarray, hu: np.ndarray, hv: np.ndarray) -> np.ndarray:
    qu, qv = np.abs(u) - hu, np.abs(v) - hv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def _sdf_triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to an equilateral triangle of circumradius-like size r (Quilez's formula)."""
    k = np.sqrt(3.0)
    pu, pv = np.abs(u) - r, v + r / k
    flip = pu + k * pv > 0
    pu, pv = np.where(flip, (pu - k * pv) / 2, pu), np.where(flip, (-k * pu - pv) / 2, pv)
    pu = pu - np.clip(pu, -2 * r, 0)
    return -np.hypot(pu, pv) * np.sign(pv)


def render(index: np.ndarray, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (B, channels, size, size) float32 in [-1, 1] and labels (B,) int64 for the given indices."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    b = len(index)
    u = uniforms(index, _GLOBAL_DRAWS + MAX_SHAPES * _SHAPE_DRAWS)
    g, s = u[:, :_GLOBAL_DRAWS], u[:, _GLOBAL_DRAWS:].reshape(b, MAX_SHAPES, _SHAPE_DRAWS)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size  # pixel centres in (0, 1)
    py, px = coords[None, :, None], coords[None, None, :]  # (1, H, 1), (1, 1, W)

    # background: level in [-1, -0.2] plus a gradient of amplitude up to 0.4 in a random direction
    angle = 2 * np.pi * g[:, 2]
    ramp = (np.cos(angle)[:, None, None] * (px - 0.5) + np.sin(angle)[:, None, None] * (py - 0.5))  # (B, H, W)
    base = -1 + 0.8 * g[:, 1]
    tint = 1 + 0.3 * (g[:, 4:4 + 3] - 0.5)  # per-channel tint of the background (B, 3)
    img = np.empty((b, channels, size, size))
    for c in range(channels):
        level = base * (tint[:, c] if channels == 3 else 1.0)
        img[:, c] = level[:, None, None] + 0.4 * g[:, 3][:, None, None] * ramp

    count = 1 + np.minimum((g[:, 0] * MAX_SHAPES).astype(int), MAX_SHAPES - 1)
    labels = np.zeros(b, dtype=np.int64)
    for slot in range(MAX_SHAPES):
        on = np.flatnonzero(slot < count)  # the images that have a shape in this slot (count >= 1: slot 0 all)
        if not len(on):
            break
        d = s[on, slot]  # (n, 16) draws of this slot

        def col(i: int, d: np.ndarray = d) -> np.ndarray:
            return d[:, i][:, None, None]  # (n, 1, 1)

        kind = np.minimum((d[:, 0] * len(SHAPE_TYPES)).astype(int), len(SHAPE_TYPES) - 1)
        cx, cy = 0.15 + 0.7 * col(1), 0.15 + 0.7 * col(2)
        r = 0.10 + 0.25 * col(3)  # size as a fraction of the image
        aspect = 0.35 + 0.65 * col(4)
        theta = np.pi * col(5)
        du, dv = px - cx, py - cy
        pu = (np.cos(theta) * du + np.sin(theta) * dv) * size  # rotated frame, in pixels
        pv = (-np.sin(theta) * du + np.cos(theta) * dv) * size
        rp = r * size
        sdf = np.empty_like(pu)
        texture = np.ones_like(pu)
        for k in np.unique(kind):  # each signed distance only where it is drawn (element-wise: the same values)
            m = np.flatnonzero(kind == k)
            u_, v_, rp_ = pu[m], pv[m], rp[m]
            if k == 0:  # disc
                sdf[m] = np.hypot(u_, v_) - rp_
            elif k == 1:  # rectangle
                sdf[m] = _sdf_box(u_, v_, rp_, rp_ * aspect[m])
            elif k == 2:  # triangle
                sdf[m] = _sdf_triangle(u_, v_, rp_)
            elif k == 3:  # ring
                sdf[m] = np.abs(np.hypot(u_, v_) - rp_) - np.maximum(0.6, 0.35 * rp_ * col(6)[m])
            else:  # stripes: an ellipse filled with a grating
                sdf[m] = np.hypot(u_, v_ / np.maximum(aspect[m], 0.6)) - rp_
                period = np.maximum(2.5, rp_ * (0.3 + 0.5 * col(7)[m]))
                texture[m] = 0.5 + 0.5 * np.sin(2 * np.pi * u_ / period + 2 * np.pi * col(8)[m])
        coverage = np.clip(0.5 - sdf, 0.0, 1.0)  # 1-pixel anti-aliased edge
        alpha = coverage * (0.6 + 0.4 * col(9))
        for c in range(channels):
            intensity = -0.4 + 1.4 * (col(10 + c) if channels == 3 else col(10))  # in [-0.4, 1]
            paint = intensity * texture + (1 - texture) * (-1.0)
            img[on, c] = img[on, c] * (1 - alpha) + alpha * paint
        labels[on] = kind
    return np.clip(img, -1.0, 1.0).astype(np.float32), labels
