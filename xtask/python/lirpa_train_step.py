"""One training step of certified training with auto_LiRPA 0.7.1, timed in its own process (the
other half of `cargo run --release -p experiments --example train_step_speed`).

A step is what an interval-bound training loop does per batch: the bound of the margins
`z_y - z_j` over the l_inf ball of radius eps intersected with [0, 1] (`IBP` or `CROWN-IBP`),
the cross-entropy of the negated lower bounds, the backward pass and one Adam step (lr 1e-3).
The margins are the 9 rows `e_y - e_j`, j != y (auto_LiRPA's usual specification; the Rust side
computes 10, with the zero row j = y).

Prints one JSON object with the fields of `experiments::workloads::WorkerReport`.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def small():
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )


def large():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="folder with X.npy, y.npy and one PARAM.npy per parameter")
    ap.add_argument("--arch", choices=["mnist-small", "mnist-large"], required=True)
    ap.add_argument("--method", choices=["IBP", "CROWN-IBP"], required=True)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    net = small() if a.arch == "mnist-small" else large()
    sd = {k: torch.from_numpy(np.load(os.path.join(a.dir, k + ".npy"))) for k in net.state_dict()}
    net.load_state_dict(sd)
    X = torch.from_numpy(np.load(os.path.join(a.dir, "X.npy")))
    y = torch.from_numpy(np.load(os.path.join(a.dir, "y.npy"))).long()
    model = BoundedModule(net, torch.empty_like(X[:1]), device="cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b, k = X.shape[0], 10
    eye = torch.eye(k)
    C = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # [B, k, k]: row j = e_y - e_j
    keep = torch.arange(k).unsqueeze(0) != y.unsqueeze(1)
    C = C[keep].view(b, k - 1, k)
    ptb = PerturbationLpNorm(norm=np.inf, eps=a.eps, x_L=(X - a.eps).clamp(0, 1), x_U=(X + a.eps).clamp(0, 1))
    xb = BoundedTensor(X, ptb)

    def step():
        opt.zero_grad()
        lb, _ = model.compute_bounds(x=(xb,), C=C, method=a.method, bound_upper=False)
        logits = torch.cat([torch.zeros(b, 1), -lb], dim=1)  # the true class's margin is 0
        loss = nn.functional.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
        loss.backward()
        opt.step()
        return loss.item(), (lb.min(dim=1).values <= 0).float().mean().item()

    idle = rss_kib("VmRSS")
    step()  # warm-up
    seconds = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        loss, err = step()
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({
        "implementation": "auto_LiRPA",
        "seconds": seconds,
        "loss": loss,
        "robust_error": err,
        "grad_abs_sum": 0.0,
        "idle_rss_bytes": idle * 1024,
        "peak_rss_above_idle_bytes": max(0, rss_kib("VmHWM") - idle) * 1024,
    }))


if __name__ == "__main__":
    main()
