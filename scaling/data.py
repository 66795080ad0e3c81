"""Training images and the fixed held-out set: procedural shapes, sklearn digits, `.npz` arrays, image folders.

Every source gives images (N, C, H, W) float32 in [-1, 1] at `data.image_size` and `data.channels`, and
labels (N,) int64 or None.

- `shapes`: `scaling.shapes.render(index)`, infinite. Held-out images are the indices [0, n) of a reserved
  range [0, 2^24); training position q of data seed s is the index 2^24 + (s mod 2^24)·2^36 + q. Held-out
  images are therefore the same for every data seed, and never seen in training.
- `digits`, `npz`, `folder`: a finite set. A fixed permutation (independent of the data seed) puts
  `heldout_pool(N)` = min(max(256, N/10), N/4) images aside for evaluation; the rest is training data,
  visited in epochs, each epoch in its own order drawn from (data seed, epoch).

`TrainStream(spec, batch_size, rank=, world_size=)` yields the global batch of each step, or this rank's
contiguous slice of it (batch_size is the *global* batch; each rank gets batch_size / world_size), so data
parallel ranks together see exactly the single-process batch. Its state is one number, the global position
(samples consumed): `state_dict()` / `load_state_dict()` make a resumed run see the same batches.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scaling.errors import SpecError, TrainError
from scaling.shapes import SHAPE_TYPES, render
from scaling.spec import DataSpec

log = logging.getLogger(__name__)

HELDOUT_RESERVE = 2**24
"""Shapes indices [0, HELDOUT_RESERVE) are reserved for evaluation."""
SEED_STRIDE = 2**36
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SPLIT_KEY = 0x5CA1E  # the held-out split of finite sets does not depend on the data seed


def heldout_pool(n: int) -> int:
    """Images of a finite set of n put aside for evaluation."""
    return min(max(256, n // 10), n // 4)


# --- finite sources ---------------------------------------------------------------------------------

def _to_nchw(images: np.ndarray, path: str) -> np.ndarray:
    """(n,H,W), (n,H,W,C) or (n,C,H,W) -> (n,C,H,W) float64 in [0, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)
    elif a.ndim != 4 or a.shape[1] not in (1, 3, 4):
        raise SpecError(f"array 'images' must be (n,H,W), (n,H,W,C) or (n,C,H,W) with C in 1/3/4, got shape "
                        f"{a.shape}", "data.path", path)
    if a.dtype == np.uint8:
        a = a / 255.0
    elif a.dtype == bool:
        a = a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.number):
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise SpecError("array 'images' has NaN or infinite values", "data.path", path)
        if lo >= -1 and hi <= 1 and lo < 0:
            a = (a + 1) / 2  # already in [-1, 1]
        elif lo >= 0 and hi <= 1:
            pass
        elif lo >= 0 and hi <= 255:
            a = a / 255.0
        else:
            raise SpecError(f"image values span [{lo:g}, {hi:g}]; give uint8, or floats in [0, 1], [-1, 1] or "
                            "[0, 255]", "data.path", path)
    else:
        raise SpecError(f"array 'images' has dtype {a.dtype}; expected numbers", "data.path", path)
    return a[:, :3]  # drop an alpha channel


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SpecError("source 'digits' needs scikit-learn: pip install scikit-learn", "data.source") from None
    d = load_digits()
    return d.images[:, None] / 16.0, d.target.astype(np.int64)


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise SpecError(f"no array 'images' in the .npz (it has: {', '.join(f.files) or 'nothing'})",
                                "data.path", path)
            images, labels = f["images"], (f["labels"] if "labels" in f else None)
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read the .npz file: {e}", "data.path", path) from None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise SpecError(f"'labels' must be {len(images)} non-negative integers", "data.path", path)
    return _to_nchw(images, path), None if labels is None else labels.astype(np.int64)


def _load_folder(path: str, channels: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    try:
        from PIL import Image
    except ImportError:
        raise SpecError("source 'folder' needs Pillow: pip install pillow", "data.source") from None
    root = Path(path)
    if not root.is_dir():
        raise SpecError("not a folder of images", "data.path", path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SpecError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under the folder", "data.path", path)
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    labelled = all(len(p.relative_to(root).parts) > 1 for p in files)
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float64) / 255.0
        except OSError as e:
            raise SpecError(f"cannot read image {p}: {e}", "data.path", path) from None
        images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    labels = np.array([classes.index(p.relative_to(root).parts[0]) for p in files]) if labelled else None
    return images, labels


def _resize(a: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """(n,C,H,W) in [0,1] -> (n,channels,size,size) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a)).float()
    if t.shape[1] == 3 and channels == 1:
        t = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif t.shape[1] == 1 and channels == 3:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] != channels:
        raise SpecError(f"cannot turn {t.shape[1]}-channel images into {channels} channels", "data.channels")
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (t * 2 - 1).clamp(-1, 1).contiguous()


@functools.lru_cache(maxsize=4)
def _finite(source: str, path: str | None, stamp: float, size: int, channels: int):
    if source == "digits":
        a, labels = _load_digits()
        x = _resize(a, size, channels)
    elif source == "npz":
        a, labels = _load_npz(path)
        x = _resize(a, size, channels)
    else:
        images, labels = _load_folder(path, channels)
        x = torch.cat([_resize(a[None], size, channels) for a in images])
    y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(x)
    pool = heldout_pool(n)
    if pool < 1:
        raise SpecError(f"{n} images are too few to hold some out for evaluation; give at least 4",
                        "data.path", path or source)
    perm = np.random.default_rng(_SPLIT_KEY).permutation(n)
    return x, y, torch.from_numpy(perm[:pool].copy()), torch.from_numpy(np.sort(perm[pool:]))


def finite_set(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(images, labels or None, held-out indices, training indices) of a finite source (cached)."""
    if spec.source not in ("digits", "npz", "folder"):
        raise SpecError(f"{spec.source!r} is not a finite source", "data.source")
    if spec.source != "digits" and not spec.path:
        raise SpecError(f"source {spec.source!r} needs data.path", "data.path")
    path = None if spec.source == "digits" else os.path.abspath(os.path.expanduser(spec.path))
    if path is not None and not os.path.exists(path):
        raise SpecError("no such file or folder", "data.path", path)
    stamp = os.path.getmtime(path) if path else 0.0
    return _finite(spec.source, path, stamp, spec.image_size, spec.channels)


# --- public API -------------------------------------------------------------------------------------

def num_classes(spec: DataSpec) -> int:
    """Label classes of the source (0 when it has no labels)."""
    if spec.source == "shapes":
        return len(SHAPE_TYPES)
    _, y, _, _ = finite_set(spec)
    return 0 if y is None else int(y.max()) + 1


def _shapes(index: np.ndarray, spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = render(index, spec.image_size, spec.channels)
    return torch.from_numpy(x), torch.from_numpy(y)


def heldout(spec: DataSpec, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed held-out set: the same n images for every size, seed and evaluation; never trained on."""
    if n <= 0:
        raise SpecError(f"held-out samples must be positive, got {n}", "evaluation.samples")
    if spec.source == "shapes":
        if n > HELDOUT_RESERVE:
            raise SpecError(f"at most {HELDOUT_RESERVE} held-out shapes, asked {n}", "evaluation.samples")
        return _shapes(np.arange(n), spec)
    x, y, held, _ = finite_set(spec)
    if n > len(held):
        raise SpecError(f"this {spec.source} set of {len(x)} images holds out {len(held)} for evaluation; "
                        f"lower evaluation.samples to at most {len(held)}", "evaluation.samples")
    idx = held[:n]
    return x[idx], None if y is None else y[idx]


def shapes_train_index(spec: DataSpec, positions: np.ndarray) -> np.ndarray:
    """The generator index of training positions (global sample counts) under the data seed."""
    return HELDOUT_RESERVE + (spec.seed % HELDOUT_RESERVE) * SEED_STRIDE + np.asarray(positions, dtype=np.int64)


class TrainStream:
    """Deterministic, resumable, infinite iterator of training batches `(x, y)` (y None when unlabelled).

    `batch_size` is the global batch; this rank yields its slice [rank·b, (rank+1)·b), b = batch_size/world_size.
    """

    def __init__(self, spec: DataSpec, batch_size: int, *, rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise SpecError(f"batch size must be positive, got {batch_size}", "train.batch_size")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise SpecError(f"rank {rank} is not in [0, {world_size})")
        if batch_size % world_size:
            raise SpecError(f"global batch {batch_size} is not divisible by {world_size} data-parallel ranks",
                            "train.batch_size")
        self.spec, self.batch_size, self.rank, self.world_size = spec, batch_size, rank, world_size
        self.local_batch_size = batch_size // world_size
        self.position = 0
        "Global samples consumed so far (the whole state)."
        self._epoch_order: tuple[int, np.ndarray] | None = None
        if spec.source != "shapes":
            self._x, self._y, _, self._train = finite_set(spec)

    def __iter__(self) -> TrainStream:
        return self

    def _finite_indices(self, positions: np.ndarray) -> np.ndarray:
        m = len(self._train)
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(positions // m):
            if self._epoch_order is None or self._epoch_order[0] != epoch:
                order = np.random.default_rng([self.spec.seed % 2**32, int(epoch)]).permutation(m)
                self._epoch_order = (int(epoch), order)
            sel = positions // m == epoch
            out[sel] = self._train.numpy()[self._epoch_order[1][positions[sel] % m]]
        return out

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        start = self.position + self.rank * self.local_batch_size
        positions = np.arange(start, start + self.local_batch_size, dtype=np.int64)
        self.position += self.batch_size
        if self.spec.source == "shapes":
            return _shapes(shapes_train_index(self.spec, positions), self.spec)
        idx = torch.from_numpy(self._finite_indices(positions))
        return self._x[idx], None if self._y is None else self._y[idx]

    def state_dict(self) -> dict:
        return {"position": self.position, "source": self.spec.source, "seed": self.spec.seed,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the source and seed must match (the world size may differ)."""
        for key in ("source", "seed"):
            if state.get(key) != getattr(self.spec, key):
                raise TrainError(f"the checkpoint's data {key} is {state.get(key)!r} but the sweep's is "
                                 f"{getattr(self.spec, key)!r}; resume with the sweep the run started with")
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise TrainError(f"bad data position {position!r} in the checkpoint")
        self.position = position
