"""One workload of `cargo xtask bench-vs-pytorch`, run with the PyTorch package
`convex_adversarial` (0.4.4) in its own process, so its peak memory is its own.

Prints one JSON object: the seconds of every timed run, the robust loss and error, the sum of the
absolute parameter gradients (with --backward) and the peak resident memory above the idle
process (model and data loaded, nothing computed yet).

The workload is `robust_loss(net, eps, X, y, bounded_input=..., proj=..., norm_type=...)`, the
package's robust cross-entropy; forward-only runs under torch.no_grad().
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
from convex_adversarial import robust_loss


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def mnist_small():
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--x", required=True)
    ap.add_argument("--y", required=True)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--bounded", action="store_true")
    ap.add_argument("--proj", type=int, default=0)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup-seconds", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full-batch", type=int, default=0,
                    help="certify all of --x in batches of this size, timed once as a whole")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    net = mnist_small()
    state = torch.load(a.weights, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, list):
        state = state[0]
    net.load_state_dict(state)
    X = torch.from_numpy(np.load(a.x)).float()
    y = torch.from_numpy(np.load(a.y)).long()
    kw = {"bounded_input": a.bounded}
    if a.proj > 0:
        kw.update(proj=a.proj, norm_type="l1_median")

    idle = rss_kib("VmRSS")
    if a.full_batch > 0:
        # The whole set once, batch by batch: wall time, mean loss and the fraction not certified.
        n = X.shape[0]
        t0 = time.perf_counter()
        loss_sum, err_sum = 0.0, 0.0
        with torch.no_grad():
            for i in range(0, n, a.full_batch):
                xb, yb = X[i:i + a.full_batch], y[i:i + a.full_batch]
                l, e = robust_loss(net, a.eps, xb, yb, **kw)
                loss_sum += float(l) * len(yb)
                err_sum += float(e) * len(yb)
        dt = time.perf_counter() - t0
        peak = rss_kib("VmHWM")
        print(json.dumps({
            "implementation": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "seconds": [dt], "loss": loss_sum / n, "robust_error": err_sum / n, "grad_abs_sum": 0.0,
            "idle_rss_bytes": idle * 1024, "peak_rss_above_idle_bytes": max(peak - idle, 0) * 1024,
        }))
        return

    def one():
        """One run: the robust loss (and its backward); its seconds, loss, error, gradient mass."""
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if a.backward:
            l, e = robust_loss(net, a.eps, X, y, **kw)
            l.backward()
        else:
            with torch.no_grad():
                l, e = robust_loss(net, a.eps, X, y, **kw)
        dt = time.perf_counter() - t0
        g = 0.0
        if a.backward:
            g = float(sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None))
        return dt, float(l.detach()), float(e), g

    # Warm-up, not timed: runs until --warmup-seconds have gone, at least one (as the Rust side).
    warm = time.perf_counter()
    _, loss, err, gsum = one()
    while time.perf_counter() - warm < a.warmup_seconds:
        _, loss, err, gsum = one()
    times = []
    for _ in range(a.repeats):
        dt, loss, err, gsum = one()
        times.append(dt)
    peak = rss_kib("VmHWM")
    print(json.dumps({
        "implementation": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": times,
        "loss": loss,
        "robust_error": err,
        "grad_abs_sum": gsum,
        "idle_rss_bytes": idle * 1024,
        "peak_rss_above_idle_bytes": max(peak - idle, 0) * 1024,
    }))


if __name__ == "__main__":
    main()
