"""Per-instance times beside the 2021 entrants' (stdlib only).

python3 compare_times.py NAME  (reads NAME_results.csv here and ../../../../shared/vnncomp2021/results_2021.csv,
or the path given as a second argument; writes NAME_times.md)
"""
import csv
import statistics
import sys
from pathlib import Path

here = Path(__file__).parent
name = sys.argv[1]
ref_path = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "../../../../shared/vnncomp2021/results_2021.csv"
ref = {}
with open(ref_path) as f:
    for r in csv.DictReader(f):
        if r["benchmark"] == name:
            ref[(r["onnx"], r["vnnlib"])] = r
rows = list(csv.DictReader(open(here / f"{name}_results.csv")))
out = [f"# {name}: time per instance beside 2021\n",
       "Seconds; ours on this shared 2-core CPU (see README for the load), α,β-CROWN and nnenum on their 2021 machines.\n",
       "| onnx | vnnlib | ours | s | α,β-CROWN | s | nnenum | s |", "|---|---|---|---|---|---|---|---|"]
ours_solved, ab, nn = [], [], []
for r in rows:
    x = ref.get((r["onnx"], r["vnnlib"]), {})
    out.append(f"| {r['onnx']} | {r['vnnlib']} | {r['result']} | {float(r['seconds']):.2f} | {x.get('abcrown_result', '-')} | "
               f"{float(x.get('abcrown_seconds') or 0):.2f} | {x.get('nnenum_result', '-')} | {float(x.get('nnenum_seconds') or 0):.2f} |")
    if r["result"] in ("sat", "unsat"):
        ours_solved.append(float(r["seconds"]))
    if x.get("abcrown_result") in ("sat", "unsat"):
        ab.append(float(x["abcrown_seconds"]))
    if x.get("nnenum_result") in ("sat", "unsat"):
        nn.append(float(x["nnenum_seconds"]))
def summ(v):
    return f"{len(v)} solved, median {statistics.median(v):.2f} s, total {sum(v):.0f} s" if v else "0 solved"
out[2:2] = [f"- ours: {summ(ours_solved)}", f"- α,β-CROWN 2021: {summ(ab)}", f"- nnenum 2021: {summ(nn)}\n"]
(here / f"{name}_times.md").write_text("\n".join(out) + "\n")
print("\n".join(out[:6]))
