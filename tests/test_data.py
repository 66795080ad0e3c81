"""Data sources, the held-out split (disjoint from training), and the resumable, data-parallel stream."""

from pathlib import Path

import numpy as np
import pytest
import torch

from scaling.data import HELDOUT_RESERVE, TrainStream, finite_set, heldout, num_classes, shapes_train_index
from scaling.errors import SpecError, TrainError
from scaling.shapes import render, uniforms
from scaling.spec import DataSpec


def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_shapes_are_a_function_of_the_index():
    a, la = render(np.arange(20), 16, 1)
    b, lb = render(np.array([13, 2, 7]), 16, 1)
    assert np.array_equal(a[[13, 2, 7]], b) and np.array_equal(la[[13, 2, 7]], lb)
    assert a.shape == (20, 1, 16, 16) and a.dtype == np.float32
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.2
    assert len({img.tobytes() for img in a}) == 20
    rgb, _ = render(np.arange(4), 8, 3)
    assert rgb.shape == (4, 3, 8, 8) and not np.allclose(rgb[:, 0], rgb[:, 1])
    u = uniforms(np.arange(100_000), 2)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005


GOLDEN = Path(__file__).parent / "data" / "golden" / "shapes.npz"


def test_shapes_render_the_recorded_images():
    """The images of `golden/shapes.npz` (recorded 2026-12-07 with the renderer that drew all five signed
    distances for every image and slot): a faster renderer must draw the same pixels, or every logged L_iw of
    a shapes sweep would silently change. Mixed batches: all five kinds, 1-4 shapes, RGB and grey."""
    with np.load(GOLDEN) as g:
        rgb, labels = render(g["index"], 16, 3)
        np.testing.assert_allclose(rgb, g["rgb16"], rtol=0, atol=1e-6)
        assert np.array_equal(labels, g["labels_rgb16"]) and set(labels) == set(range(5))
        grey, labels = render(g["index"][::-1], 12, 1)  # another order: the same image per index
        np.testing.assert_allclose(grey[::-1], g["grey12"], rtol=0, atol=1e-6)
        assert np.array_equal(labels[::-1], g["labels_grey12"])
        one, _ = render(g["index"][3:4], 16, 3)  # alone in its batch
        np.testing.assert_allclose(one[0], g["rgb16"][3], rtol=0, atol=1e-6)


def test_shapes_heldout_is_disjoint_and_seed_independent():
    spec = DataSpec(image_size=8)
    x, y = heldout(spec, 32)
    x2, _ = heldout(DataSpec(image_size=8, seed=5), 32)
    assert torch.equal(x, x2) and y.shape == (32,) and y.max() < num_classes(spec)
    positions = np.arange(10_000)
    for seed in (0, 1, 7):
        index = shapes_train_index(DataSpec(seed=seed), positions)
        assert index.min() >= HELDOUT_RESERVE
    train = torch.cat([b[0] for b in take(TrainStream(spec, 64), 4)])
    held = {img.numpy().tobytes() for img in x}
    assert not any(img.numpy().tobytes() in held for img in train)
    other_seed = torch.cat([b[0] for b in take(TrainStream(DataSpec(image_size=8, seed=1), 64), 1)])
    assert not torch.equal(other_seed, train[:64])


@pytest.mark.parametrize("source", ["shapes", "digits"])
def test_stream_resumes_exactly(source):
    spec = DataSpec(source=source, image_size=8, seed=3)
    straight = take(TrainStream(spec, 48), 40)
    first = TrainStream(spec, 48)
    take(first, 25)
    state = first.state_dict()
    resumed = TrainStream(spec, 48)
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(straight[25:], take(resumed, 15)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("source", ["shapes", "digits"])
def test_ranks_split_the_global_batch(source):
    spec = DataSpec(source=source, image_size=8)
    single = take(TrainStream(spec, 12), 3)
    ranks = [take(TrainStream(spec, 12, rank=r, world_size=3), 3) for r in range(3)]
    for step in range(3):
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(3)]), single[step][0])
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(3)]), single[step][1])
    with pytest.raises(SpecError, match="divisible"):
        TrainStream(spec, 10, rank=0, world_size=3)


def test_digits_split_and_epochs():
    spec = DataSpec(source="digits", image_size=8, seed=1)
    x, y, held, train = finite_set(spec)
    assert len(x) == 1797 and len(held) == 256 and len(train) == 1797 - 256
    assert set(held.tolist()).isdisjoint(train.tolist()) and len(set(held.tolist()) | set(train.tolist())) == 1797
    assert x.min() == -1 and x.max() == 1 and int(y.max()) == 9 and num_classes(spec) == 10
    hx, hy = heldout(spec, 100)
    assert torch.equal(hx, x[held[:100]]) and torch.equal(hy, y[held[:100]])
    stream = TrainStream(spec, 67)  # does not divide the 1541 training images: batches straddle epochs
    seen = stream._finite_indices(np.arange(2 * 1541))
    assert sorted(seen[:1541].tolist()) == sorted(train.tolist()) == sorted(seen[1541:].tolist())
    assert not np.array_equal(seen[:1541], seen[1541:])  # each epoch in its own order
    with pytest.raises(SpecError, match="at most 256"):
        heldout(spec, 300)
    big, _ = heldout(DataSpec(source="digits", image_size=16), 4)
    assert big.shape == (4, 1, 16, 16)


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    spec = DataSpec(source="npz", path=str(tmp_path / "d.npz"), image_size=12, channels=3)
    x, y, held, train = finite_set(spec)
    assert x.shape == (40, 3, 12, 12) and len(held) == 10 and num_classes(spec) == 4
    assert torch.allclose(x[5], torch.from_numpy(images[5].transpose(2, 0, 1) / 255.0 * 2 - 1).float(), atol=1e-6)
    assert torch.equal(y, torch.from_numpy(labels))
    grey, _ = heldout(DataSpec(source="npz", path=str(tmp_path / "d.npz"), image_size=6), 3)
    assert grey.shape == (3, 1, 6, 6)
    np.savez(tmp_path / "bad.npz", pictures=images)
    with pytest.raises(SpecError, match="no array 'images'.*pictures"):
        heldout(DataSpec(source="npz", path=str(tmp_path / "bad.npz")), 2)
    np.savez(tmp_path / "range.npz", images=rng.normal(0, 50, (8, 4, 4)))
    with pytest.raises(SpecError, match="values span"):
        heldout(DataSpec(source="npz", path=str(tmp_path / "range.npz")), 1)


def test_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    spec = DataSpec(source="folder", path=str(tmp_path), image_size=8, channels=3)
    x, y, held, train = finite_set(spec)
    assert x.shape == (12, 3, 8, 8) and sorted(set(y.tolist())) == [0, 1] and len(held) == 3
    batch, labels = next(TrainStream(spec, 4))
    assert batch.shape == (4, 3, 8, 8) and labels.shape == (4,)
    with pytest.raises(SpecError, match="no such file"):
        heldout(DataSpec(source="folder", path=str(tmp_path / "missing")), 1)


def test_resume_with_another_dataset_is_refused():
    state = TrainStream(DataSpec(seed=1), 8).state_dict()
    with pytest.raises(TrainError, match="seed"):
        TrainStream(DataSpec(seed=2), 8).load_state_dict(state)
