"""The size registry's exact counts against the built models, and its FLOPs against torch's counter."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaling.models import build_model
from scaling.sizes import flops_per_sample, param_count
from scaling.spec import load_sweep, parse_sweep

from .conftest import REPO, tiny_sweep_dict

SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))
CASES = [(path, size) for path in SHIPPED for size in load_sweep(path).model.sizes]


@pytest.mark.parametrize("path, size", CASES, ids=[f"{p.stem}-{s}" for p, s in CASES])
def test_param_count_equals_built_model(path, size):
    spec = load_sweep(path)
    with torch.device("meta"):  # the 673M-parameter XL costs no memory on the meta device
        model = build_model(spec.model.sizes[size], spec.model, spec.data.image_size, spec.data.channels)
    assert param_count(spec.model.sizes[size], spec.model, spec.data) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("extra", [{}, {"num_classes": 10}, {"learn_sigma": True}, {"mlp_ratio": 2}])
def test_param_count_variants(extra):
    data = tiny_sweep_dict()
    data["model"].update(extra)
    spec = parse_sweep(data)
    for size in spec.model.sizes.values():
        model = build_model(size, spec.model, spec.data.image_size, spec.data.channels)
        assert param_count(size, spec.model, spec.data) == sum(p.numel() for p in model.parameters())


def test_reference_sizes_within_two_percent():
    spec = load_sweep(REPO / "sweeps" / "vsd-t2i.yaml")
    reference = {"S": 32.28e6, "M": 128.56e6, "L": 454.98e6, "XL": 671.32e6}
    for name, target in reference.items():
        count = param_count(spec.model.sizes[name], spec.model, spec.data)
        assert abs(count / target - 1) < 0.02, (name, count, target)


def test_flops_match_torch_flop_counter():
    data = tiny_sweep_dict()
    data["model"]["sizes"] = {"A": {"depth": 3, "width": 64, "heads": 4, "patch": 2}}
    data["fit"] = {}
    data["data"]["image_size"] = 16
    spec = parse_sweep(data)
    size = spec.model.sizes["A"]
    model = build_model(size, spec.model, 16, 1)
    for p in model.parameters():  # non-zero weights so every matmul runs with gradients
        torch.nn.init.normal_(p, std=0.02)
    batch = 4
    z, lam = torch.randn(batch, 1, 16, 16), torch.randn(batch)
    # The math backend spells attention as matmuls, which the counter sees (the fused CPU kernel it misses).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(z, lam).square().mean().backward()
    measured = counter.get_total_flops() / batch
    predicted = flops_per_sample(size, spec.model, spec.data)
    # torch counts the real backward (no input gradient for the first layer); the 3x-forward rule is within 1%.
    assert abs(predicted / measured - 1) < 0.01, (predicted, measured)
