"""Fixtures for the metrics (src/eval): scikit-learn's AP, mAP and precision / recall / F1 on
random multi-label cases, ties and classes without positives included.

    python tools/make_metric_fixtures.py --out tests/fixtures/metrics.json

Scores are drawn as float32 (so the Rust side reads the very same numbers) and handed to
scikit-learn as float64. Conventions the Rust side follows:
  * AP: sklearn.metrics.average_precision_score on each column; null for a column without
    positives. mAP: the mean over the columns with positives; `map_empty_as_zero`: sklearn's
    own average="macro" over all columns (which scores such columns 0).
  * Threshold rule: predicted positive when score >= threshold.
  * Top-k rule: the k highest scores of a row, ties to the lower column (stable argsort of -s).
  * P/R/F1: sklearn.metrics.precision_recall_fscore_support with zero_division=0, micro,
    macro and per class.
"""

import argparse
import json
import warnings

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score, precision_recall_fscore_support


def top_k(scores, k):
    pred = np.zeros(scores.shape, dtype=np.int64)
    for i, row in enumerate(scores):
        idx = np.argsort(-row, kind="stable")[:k]
        pred[i, idx] = 1
    return pred


def prf(y, pred):
    out = {}
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        out[avg] = [float(p), float(r), float(f)]
    p, r, f, _ = precision_recall_fscore_support(y, pred, average=None, zero_division=0, labels=list(range(y.shape[1])))
    out["per_class"] = [[float(a), float(b), float(c)] for a, b, c in zip(p, r, f)]
    return out


def case(name, y, s, threshold, k):
    s = s.astype(np.float32)
    s64 = s.astype(np.float64)
    ap = []
    for c in range(y.shape[1]):
        ap.append(float(average_precision_score(y[:, c], s64[:, c])) if y[:, c].sum() > 0 else None)
    with_pos = [a for a in ap if a is not None]
    return {
        "name": name,
        "labels": y.astype(int).tolist(),
        "scores": [[float(v) for v in row] for row in s],
        "ap": ap,
        "map": float(np.mean(with_pos)) if with_pos else 0.0,
        "map_empty_as_zero": float(average_precision_score(y, s64, average="macro")),
        "threshold": threshold,
        "at_threshold": prf(y, (s64 >= np.float64(np.float32(threshold))).astype(np.int64)),
        "k": k,
        "at_top_k": prf(y, top_k(s, k)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/metrics.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(args.seed)
    cases = []

    for i in range(4):
        n, c = int(rng.integers(20, 60)), int(rng.integers(3, 9))
        y = (rng.random((n, c)) < rng.uniform(0.15, 0.5)).astype(np.int64)
        y[:, 0] = 0  # a class without positives
        s = rng.random((n, c))
        cases.append(case(f"random_{i}", y, s, 0.5, int(rng.integers(1, 4))))

    # Ties: scores on a coarse grid, so many images share a score (also across labels).
    for i in range(3):
        n, c = 40, 6
        y = (rng.random((n, c)) < 0.35).astype(np.int64)
        s = np.round(rng.random((n, c)) * 4) / 4
        cases.append(case(f"ties_{i}", y, s, 0.5, 2))

    # Edge columns: all scores equal; every image positive; one positive; no positive; and a
    # top-k larger than the class count.
    n = 12
    y = np.zeros((n, 5), dtype=np.int64)
    y[rng.random(n) < 0.5, 0] = 1
    y[:, 1] = 1
    y[3, 2] = 1
    y[0, 0] = 1
    s = rng.random((n, 5))
    s[:, 0] = 0.25
    cases.append(case("edges", y, s, 0.25, 7))

    # Softmax-like rows (sum to one), the form zeroshot writes.
    n, c = 30, 10
    logits = rng.normal(size=(n, c)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random((n, c)) < 0.2).astype(np.int64)
    cases.append(case("softmax", y, p, 0.1, 3))

    doc = {
        "made_by": "tools/make_metric_fixtures.py",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "seed": args.seed,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
