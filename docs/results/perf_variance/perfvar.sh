#!/usr/bin/env bash
# Variance sources of our exact forward (+backward) worker, batch 50 (issue 22).
cd /work/main
W="target/release/xtask bench-worker --model ../shared/models/fashion_mnist_small_eps0.1.pth --x target/bench-vs-pytorch/x50.npy --y target/bench-vs-pytorch/y50.npy --eps 0.1 --bounded --repeats 5"
for bwd in "" "--backward"; do
for large in 1 0; do
for i in 1 2 3 4; do
  out=$(MIMALLOC_PURGE_DELAY=-1 CANDLE_BARRIER_POOL_SPIN_LIMIT=100 MIMALLOC_ALLOW_LARGE_OS_PAGES=$large RAYON_NUM_THREADS=2 \
    /usr/bin/time -f "TIME %e %U %S %R %F %c %w" $W $bwd 2>&1)
  js=$(echo "$out" | grep '^{')
  t=$(echo "$out" | grep '^TIME')
  python3 - "$js" "$t" "$bwd" "$large" <<'PY'
import json,sys,statistics
d=json.loads(sys.argv[1]); t=sys.argv[2].split()
s=d['seconds']
print(f"bwd={sys.argv[3] or 'no':10s} large_pages={sys.argv[4]} times={' '.join(f'{x:.3f}' for x in s)} median={statistics.median(s):.3f} peak={d['peak_rss_above_idle_bytes']/2**30:.2f}GiB wall={t[1]} user={t[2]} sys={t[3]} minflt={t[4]} majflt={t[5]} invcs={t[6]} volcs={t[7]}")
PY
done; done; done
