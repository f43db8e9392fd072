"""One measurement of `cargo xtask bench-vs-lirpa`, run with auto_LiRPA (0.7.1) in its own
process, so its peak memory is its own.

Bounds the margins z_y - z_j of the small MNIST-architecture model over the l_inf ball (∩ [0, 1]
with --bounded) of every image of --x, in batches of --batch, with one of auto_LiRPA's methods
(IBP, CROWN-IBP, CROWN, alpha-CROWN; its default options: adaptive ReLU slopes, sparse
intermediate bounds, alpha-CROWN's early stop). Untimed warm-up passes over all the images, then --repeats passes over all
images, every batch's bound call timed (model building, data loading and the clean prediction, which
is checked against the certificates, excluded); the warm-up repeats its pass
until --warmup-seconds have gone.

Prints one JSON object: the seconds of every timed batch, the certified robust error of the last
pass, the idle resident memory (model and data loaded) and the peak above it (VmHWM).
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

METHODS = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN"}


def rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def mnist_small():
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )


def load(weights):
    net = mnist_small()
    state = torch.load(weights, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, (list, tuple)):
        state = state[0]
    net.load_state_dict(state)
    return net.eval()


def margins_spec(y, classes):
    """C with rows e_y - e_j (row y is zero), [B, classes, classes]."""
    c = -torch.eye(classes).unsqueeze(0).repeat(len(y), 1, 1)
    c[torch.arange(len(y)), :, y] += 1.0
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--x", required=True)
    ap.add_argument("--y", required=True)
    ap.add_argument("--method", required=True, choices=sorted(METHODS))
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--bounded", action="store_true")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup-seconds", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alpha-iterations", type=int, default=20)
    ap.add_argument("--alpha-lr", type=float, default=0.1)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    net = load(a.weights)
    x_all = torch.tensor(np.load(a.x)).float()
    y_all = torch.tensor(np.load(a.y)).long()
    n = len(y_all)
    opts = {"relu": "adaptive"}
    if a.method == "alpha-crown":
        opts["optimize_bound_args"] = {"iteration": a.alpha_iterations, "lr_alpha": a.alpha_lr}
    model = BoundedModule(net, torch.zeros(min(a.batch, n), *x_all.shape[1:]), bound_opts=opts, device="cpu")
    model.eval()

    def run(lo, hi):
        """One batch: the bound call timed; the clean prediction untimed, checked against it."""
        x, y = x_all[lo:hi], y_all[lo:hi]
        t0 = time.perf_counter()
        if a.bounded:
            p = PerturbationLpNorm(norm=np.inf, eps=a.eps, x_L=(x - a.eps).clamp(0, 1), x_U=(x + a.eps).clamp(0, 1))
        else:
            p = PerturbationLpNorm(norm=np.inf, eps=a.eps)
        c = margins_spec(y, 10)
        if a.method == "alpha-crown":
            lb, _ = model.compute_bounds(x=(BoundedTensor(x, p),), C=c, method=METHODS[a.method], bound_upper=False)
        else:
            with torch.no_grad():
                lb, _ = model.compute_bounds(x=(BoundedTensor(x, p),), C=c, method=METHODS[a.method],
                                             bound_upper=False)
        lb = lb.detach()
        secs = time.perf_counter() - t0
        with torch.no_grad():
            pred = net(x).argmax(1)
        lb[torch.arange(len(y)), y] = 1.0
        certified = (lb > 0).all(1)
        if bool((certified & (pred != y)).any()):
            raise SystemExit("an image certified but predicted wrong: an unsound bound")
        return int((~certified).sum()), secs
    idle = rss_bytes("VmRSS")
    warm = time.perf_counter()
    while True:  # warm-up: untimed passes over every batch for --warmup-seconds, at least one (as the Rust side)
        for lo in range(0, n, a.batch):
            run(lo, min(lo + a.batch, n))
        if time.perf_counter() - warm >= a.warmup_seconds:
            break
    seconds, errors = [], 0
    for _ in range(a.repeats):
        errors = 0
        for lo in range(0, n, a.batch):
            e, secs = run(lo, min(lo + a.batch, n))
            errors += e
            seconds.append(secs)
    print(json.dumps({
        "implementation": "auto_LiRPA",
        "seconds": seconds,
        "robust_error": errors / max(n, 1),
        "idle_rss_bytes": idle,
        "peak_rss_above_idle_bytes": max(rss_bytes("VmHWM") - idle, 0),
    }))


if __name__ == "__main__":
    main()
