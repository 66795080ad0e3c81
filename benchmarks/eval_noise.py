"""How noisy is the importance-weighted loss? Prints the figures issue #3 asks for.

1. Trains the sweep's sizes (default S and M of sweeps/demo.yaml) for the sweep's step budget with the bare
   loop of benchmarks/overhead.py (the built-in trainer's model, data, AdamW, schedule and noise, nothing else;
   one process per size, `train.threads` threads each). Trained weights are cached under --cache, keyed by
   the sources and sweep.
2. Evaluates L_iw of each model on the fixed held-out set with --seeds different evaluation noise seeds:
   the std across seeds vs the gap between the sizes (target: std <= gap / 10).
   Also the same figures for cheaper evaluations (fewer images, coarser grid) with their overhead.
3. The same cost spent on a random-λ Monte-Carlo estimate (each held-out image at as many random levels as
   the grid has, λ drawn from w itself or uniformly on the grid's range with weights w/p, fresh ε):
   its variance vs the grid estimate's (the variance ratio).

    PYTHONPATH=$PWD python benchmarks/eval_noise.py                     # S, M of the demo, ~5 min on 2 cores
    PYTHONPATH=$PWD python benchmarks/eval_noise.py --sizes S,M,L,XL --seeds 0   # scaling of all sizes only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.overhead import bare_loop
from scaling import diffusion, evaluate
from scaling.data import heldout
from scaling.models import build_model
from scaling.plan import plan
from scaling.sizes import size_info
from scaling.spec import Spec, load_sweep
from scaling.weightings import iw_from_levels, weight_np

ROOT = Path(__file__).resolve().parents[1]


def train_size(args: tuple[str, str, int, str]) -> tuple[str, float, float]:
    """Train one size with the bare loop of benchmarks/overhead.py (the built-in trainer's training, nothing
    else); save its state dict to `out`. Returns (size, seconds, last mean train loss)."""
    sweep, size, steps, out = args
    spec = load_sweep(sweep)
    job = next(j for j in plan(spec) if j.size == size and j.seed == spec.seeds_for(size)[0]
               and j.budget == spec.train.budget[0])
    model, losses, _, seconds = bare_loop(spec, dataclasses.replace(job, steps=steps))
    torch.save(model.state_dict(), out)
    return size, seconds, float(np.mean(losses[-50:]))


def load_model(spec: Spec, size: str, path: Path) -> torch.nn.Module:
    model = build_model(spec.model.sizes[size], spec.model, spec.data.image_size, spec.data.channels)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def mc_estimate(model, data, grid: np.ndarray, w, draws_per_image: int, seed: int, mode: str, prediction: str,
                conditional: bool) -> tuple[float, float]:
    """Random-λ Monte-Carlo estimate of L_iw from N·draws_per_image random pairs, and the standard error the
    same estimator would have at the grid's cost N·K (the per-pair std over sqrt(N·K)).

    mode 'w': λ ~ w truncated to the grid's range, term ℓ; mode 'uniform': λ ~ U(range), self-normalised
    weights w(λ)/mean w. Every held-out image is drawn equally often (as in the grid estimate), with fresh ε.
    """
    x, y = data
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(grid[0] - (grid[1] - grid[0]) / 2), float(grid[-1] + (grid[-1] - grid[-2]) / 2)
    total = n * draws_per_image
    if mode == "w":  # inverse CDF of w on [lo, hi] by a fine tabulation
        fine = np.linspace(lo, hi, 200001)
        cdf = np.cumsum(weight_np(w, fine))
        cdf /= cdf[-1]
        u = torch.rand(total, generator=g, dtype=torch.float64).numpy()
        lam = np.interp(u, cdf, fine)
        ratio = np.ones(total)
    else:
        lam = lo + (hi - lo) * torch.rand(total, generator=g, dtype=torch.float64).numpy()
        ratio = weight_np(w, lam)
    terms = np.empty(total)
    with torch.no_grad():
        for start in range(0, total, 512):
            sl = slice(start, min(start + 512, total))
            idx = torch.arange(sl.start, sl.stop) % n
            xb = x[idx]
            eps = torch.randn(xb.shape, generator=g)
            lb = torch.as_tensor(lam[sl], dtype=torch.float32)
            z = diffusion.add_noise(xb, eps, lb)
            yb = y[idx] if (conditional and y is not None) else None
            eps_hat = diffusion.to_eps(model(z, lb, yb), z, lb, prediction)
            terms[sl] = (eps_hat - eps).pow(2).flatten(1).mean(1).double().numpy()
    ratio = ratio / ratio.mean()  # self-normalised (mode 'w': all ones)
    est = float(np.mean(ratio * terms))
    # delta-method standard error of the self-normalised estimator (exact for mode 'w')
    se = float(np.std(ratio * (terms - est), ddof=1) / math.sqrt(n * len(grid)))
    return est, se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default=str(ROOT / "sweeps" / "demo.yaml"))
    ap.add_argument("--sizes", default="S,M", help="comma-separated sizes to train (the gap is first vs second)")
    ap.add_argument("--steps", type=int, default=None, help="default: the sweep's first budget in steps")
    ap.add_argument("--seeds", type=int, default=8, help="evaluation noise seeds for the std (0: skip)")
    ap.add_argument("--cache", default="/tmp/scaling-eval-noise", help="folder of trained weights")
    args = ap.parse_args()

    spec = load_sweep(args.sweep)
    sizes = args.sizes.split(",")
    budget = spec.train.budget[0]
    steps = args.steps or (int(budget.value) if budget.kind == "steps" else 600)
    digest = hashlib.sha256(spec.sha256.encode())
    for name in ("shapes.py", "data.py", "diffusion.py", "weightings.py", "models.py", "train/schedule.py"):
        digest.update((ROOT / "scaling" / name).read_bytes())
    digest.update((ROOT / "benchmarks" / "overhead.py").read_bytes())
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = {s: cache / f"{spec.name}-{s}-{steps}-{digest.hexdigest()[:12]}.pt" for s in sizes}
    todo = [(args.sweep, s, steps, str(paths[s])) for s in sizes if not paths[s].exists()]
    if todo:
        print(f"training {', '.join(t[1] for t in todo)} for {steps} steps ...", flush=True)
        with mp.get_context("spawn").Pool(min(len(todo), spec.launch.max_parallel)) as pool:
            for size, secs, loss in pool.imap_unordered(train_size, todo):
                print(f"  {size}: {secs:.0f} s, train loss (last 50 steps) {loss:.4f}", flush=True)

    torch.set_num_threads(spec.train.threads or 1)
    ev = spec.evaluation
    data = heldout(spec.data, ev.samples)
    if spec.model.num_classes == 0:
        data = (data[0], None)
    grid = evaluate.lambda_grid(ev)
    labels = [w.label for w in ev.weightings]
    models = {s: load_model(spec, s, paths[s]) for s in sizes}
    print(f"\nheld-out {ev.samples} images x {len(grid)} levels = {ev.samples * len(grid)} evaluations per L_iw")
    base = {s: evaluate.importance_weighted_loss(models[s], data, grid, ev.weightings, noise_seed=ev.noise_seed,
                                                 prediction=spec.diffusion.prediction, batch_size=ev.batch_size)
            for s in sizes}
    print("\nL_iw at the sweep's noise seed:")
    print(f"  {'size':<5}{'params':>10}  " + "".join(f"{lab:>14}" for lab in labels))
    for s in sizes:
        params = size_info(s, spec.model, spec.data).params
        print(f"  {s:<5}{params:>10,}  " + "".join(f"{base[s].iw[lab]:>14.5f}" for lab in labels))
    if args.seeds <= 0 or len(sizes) < 2:
        return

    a, b = sizes[0], sizes[1]
    gnp = grid.numpy()
    t0 = time.time()
    pairs = {s: [evaluate.Evaluator(data, grid, ev.weightings, noise_seed=10_000 + k, batch_size=ev.batch_size,
                                    prediction=spec.diffusion.prediction).pair_losses(models[s])
                 for k in range(args.seeds)] for s in (a, b)}  # (K, N) per seed
    secs = (time.time() - t0) / (2 * args.seeds)

    def iw_runs(s: str, w, n: int | None = None, stride: int = 1) -> np.ndarray:
        return np.array([iw_from_levels(p[::stride, :n].mean(1), gnp[::stride], w) for p in pairs[s]])

    print(f"\n(a) std of L_iw over {args.seeds} evaluation noise seeds ({secs:.1f} s per evaluation) vs gap {a}-{b}:")
    print(f"  {'weighting':<14}{'gap':>10}{'std ' + a:>12}{'std ' + b:>12}{'std gap':>12}{'gap/std':>10}")
    runs = {}
    for w in ev.weightings:
        va, vb = iw_runs(a, w), iw_runs(b, w)
        runs[w.label] = vb
        gap = base[a].iw[w.label] - base[b].iw[w.label]
        sd = max(va.std(ddof=1), vb.std(ddof=1))
        print(f"  {w.label:<14}{gap:>10.5f}{va.std(ddof=1):>12.2e}{vb.std(ddof=1):>12.2e}"
              f"{(va - vb).std(ddof=1):>12.2e}{gap / sd:>10.0f}")

    prim = next(w for w in ev.weightings if w.label == ev.primary)
    evals = max(1, steps // spec.train.eval_every)
    train_fwd = 3 * steps * spec.train.batch_size  # forward-pass equivalents of training (backward ≈ 2 forward)
    print(f"\n(c) cheaper evaluations ({ev.primary}; overhead = {evals} evaluations x pairs / {train_fwd} "
          "training forward-equivalents):")
    print(f"  {'samples':>8}{'dλ':>6}{'pairs':>8}{'overhead':>10}{'gap':>10}{'std':>10}{'gap/std':>9}")
    for n in (ev.samples, ev.samples // 2, ev.samples // 4, ev.samples // 8):
        for stride in (1, 2, 4):
            va, vb = iw_runs(a, prim, n, stride), iw_runs(b, prim, n, stride)
            gap = va.mean() - vb.mean()
            sd = max(va.std(ddof=1), vb.std(ddof=1))
            cost = n * len(gnp[::stride])
            print(f"  {n:>8}{ev.lambda_step * stride:>6g}{cost:>8}{evals * cost / train_fwd:>10.1%}{gap:>10.5f}"
                  f"{sd:>10.2e}{gap / sd:>9.0f}")

    print(f"\n(b) variance of a random-λ Monte-Carlo estimate of the same cost vs the grid's (model {b}):")
    print(f"  {'weighting':<14}{'grid std':>12}{'MC(λ~w) std':>14}{'ratio':>10}{'MC(λ~U) std':>14}{'ratio':>10}")
    for w in ev.weightings:
        sd_grid = runs[w.label].std(ddof=1)
        cols = []
        for mode in ("w", "uniform"):
            _, se = mc_estimate(models[b], data, gnp, w, max(8, len(gnp) // 4), 777, mode,
                                spec.diffusion.prediction, spec.model.num_classes > 0)
            cols.append((se, se**2 / sd_grid**2))
        print(f"  {w.label:<14}{sd_grid:>12.2e}{cols[0][0]:>14.2e}{cols[0][1]:>10.0f}{cols[1][0]:>14.2e}"
              f"{cols[1][1]:>10.0f}")


if __name__ == "__main__":
    main()
