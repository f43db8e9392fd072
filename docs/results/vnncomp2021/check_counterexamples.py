"""Checks every `sat` answer of this folder with onnxruntime (f32), as the competition does:
the output we wrote must match onnxruntime's at atol 1e-4 / rtol 1e-3 and the input must lie in
the property's box; for mnistfc, onnxruntime's own output must be unsafe too.
Needs numpy and onnxruntime; run from anywhere: python check_counterexamples.py
"""
import os, re
import numpy as np, onnxruntime as ort
here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "../../../../shared/vnncomp2021")
res = here
bad = 0; n = 0
mnist_n = 0; mnist_fail = 0
stem = lambda s: os.path.splitext(s)[0]
for bench in ["test", "acasxu", "mnistfc"]:
    for line in open(f"{res}/{bench}_results.csv").read().splitlines()[1:]:
        onnx, vnn, _, result = line.split(",")[:4]
        if result != "sat": continue
        txt = open(f"{res}/{bench}/results/{stem(onnx)}__{stem(vnn)}.txt").read()
        vals = dict((k, float(v)) for k, v in re.findall(r"\((\w+_\d+) ([^)]+)\)", txt))
        xs = [vals[f"X_{i}"] for i in range(sum(1 for k in vals if k.startswith("X_")))]
        ys = [vals[f"Y_{i}"] for i in range(sum(1 for k in vals if k.startswith("Y_")))]
        s = ort.InferenceSession(f"{root}/{bench}/{onnx}", providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        y = s.run(None, {i.name: np.array(xs, np.float32).reshape(shape)})[0].ravel()
        ok = np.allclose(y, ys, atol=1e-4, rtol=1e-3)
        # Box check from the vnnlib file (simple bounds only).
        txtv = open(f"{root}/{bench}/{vnn}").read()
        inbox = True
        for op, var, val in re.findall(r"\(assert \((<=|>=) (X_\d+) ([-\d.e]+)\)\)", txtv):
            v = vals[var]; val = float(val)
            if (op == "<=" and v > val) or (op == ">=" and v < val): inbox = False
        n += 1
        if not (ok and inbox):
            bad += 1; print("BAD", bench, onnx, vnn, ok, inbox, np.abs(y - ys).max())
        if bench == "mnistfc":
            # onnxruntime's output itself must be unsafe (some other class scores at least the label's).
            label = int(re.search(r"label: (\d+)", txtv).group(1))
            margin = max(y[j] for j in range(10) if j != label) - y[label]
            mnist_n += 1
            if margin < 0: mnist_fail += 1; print("NOT UNSAFE under ort", onnx, vnn, margin)
print(f"{n} counterexamples checked with onnxruntime (f32), {bad} bad")
print(f"mnistfc: {mnist_n} counterexamples unsafe under onnxruntime too, {mnist_fail} not")
