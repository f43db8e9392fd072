"""Projected robust error of the PyTorch package `convex_adversarial` (0.4.4) over several
seeds, to set beside `cargo run --release -p experiments --example projection_curve`:

    target/bench-venv/bin/python xtask/python/projection_curve_pytorch.py \
        --weights ../shared/models/fashion_mnist_small_eps0.1.pth \
        --data /usr/share/datasets/fashion-mnist --n 1000 --ks 10,50 --seeds 10

Prints one JSON line per (k, seed) and a summary (mean and standard deviation per k). Ball not
clipped unless --bounded; eps 0.1; batch 50; l1_median projections.
"""
import argparse
import gzip
import json
import statistics

import numpy as np
import torch
import torch.nn as nn
from convex_adversarial import robust_loss


def idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[offset:], dtype=np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ks", default="10,50")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--bounded", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    state = torch.load(a.weights, map_location="cpu", weights_only=False)
    if isinstance(state, list):
        state = state[0]
    net.load_state_dict(state)
    X = idx(f"{a.data}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)[: a.n].astype(np.float32) / 255.0
    Y = idx(f"{a.data}/t10k-labels-idx1-ubyte.gz", 8)[: a.n].astype(np.int64)
    X, Y = torch.from_numpy(X), torch.from_numpy(Y)
    summary = {}
    for k in [int(v) for v in a.ks.split(",")]:
        errs = []
        for seed in range(a.seeds):
            torch.manual_seed(seed)
            wrong = 0
            with torch.no_grad():
                for i in range(0, a.n, a.batch):
                    x, y = X[i : i + a.batch], Y[i : i + a.batch]
                    kw = {"bounded_input": a.bounded}
                    if k > 0:
                        kw.update(proj=k, norm_type="l1_median")
                    _, err = robust_loss(net, a.eps, x, y, size_average=False, **kw)
                    wrong += int(err.sum())
            errs.append(wrong / a.n)
            print(json.dumps({"k": k, "seed": seed, "robust_error": wrong / a.n}), flush=True)
            if k == 0:
                break
        summary[k] = {"mean": statistics.mean(errs), "sd": statistics.stdev(errs) if len(errs) > 1 else 0.0, "runs": errs}
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
