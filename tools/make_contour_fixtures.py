#!/usr/bin/env python3
"""Bounding boxes of external contours, from OpenCV, for tests/contours.rs.

For each binary map, `cv2.findContours(img, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)`
followed by `cv2.boundingRect` on every contour: the exact calls TagCLIP's `scoremap2bbox`
makes. Maps: random noise at several densities and sizes (1 x 1 to 64 x 48), smoothed random
blobs, and hand-made shapes (nested rings, blobs inside holes, diagonal contacts, shapes on
the border, empty and full maps).

    python tools/make_contour_fixtures.py --out tests/fixtures/contours/cases.json --seed 0

The JSON holds, per case, `name`, `h`, `w`, `rows` (one string of 0/1 per row) and `boxes`
([x, y, w, h] per external contour, sorted), plus the OpenCV version.
"""
import argparse
import json

import cv2
import numpy as np


def boxes_of(m):
    img = (m > 0).astype(np.uint8) * 255
    contours = cv2.findContours(img, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    return sorted([list(map(int, cv2.boundingRect(c))) for c in contours])


def ring(h, w, y0, x0, y1, x1, m, v=1):
    """Draws the 1-pixel outline of the rectangle [y0, y1] x [x0, x1] (inclusive)."""
    m[y0, x0:x1 + 1] = v
    m[y1, x0:x1 + 1] = v
    m[y0:y1 + 1, x0] = v
    m[y0:y1 + 1, x1] = v
    return m


def handmade():
    cases = []
    z = lambda h, w: np.zeros((h, w), np.uint8)
    cases.append(("empty", z(5, 7)))
    cases.append(("full", np.ones((6, 4), np.uint8)))
    cases.append(("single_pixel", np.pad(np.ones((1, 1), np.uint8), ((2, 3), (4, 1)))))
    cases.append(("one_by_one_on", np.ones((1, 1), np.uint8)))
    cases.append(("one_by_one_off", z(1, 1)))
    cases.append(("row", np.array([[1, 1, 0, 1, 0, 0, 1, 1, 1]], np.uint8)))
    cases.append(("column", np.array([[1], [0], [1], [1], [0]], np.uint8)))
    # A blob inside a closed ring: only the ring is external.
    m = ring(9, 9, 0, 0, 8, 8, z(9, 9))
    m[3:6, 3:6] = 1
    cases.append(("blob_in_ring", m))
    # Three levels: ring, ring inside its hole, blob inside that.
    m = ring(15, 15, 1, 1, 13, 13, z(15, 15))
    ring(15, 15, 4, 4, 10, 10, m)
    m[7, 7] = 1
    cases.append(("nested_three", m))
    # Ring whose corner is open diagonally: background is 4-connected, so the hole is still
    # closed and the inner blob is not external.
    m = ring(9, 9, 1, 1, 7, 7, z(9, 9))
    m[1, 1] = 0
    m[4, 4] = 1
    cases.append(("diagonal_gap_closed", m))
    # Ring with a 4-connected gap: the hole opens to the outside, the blob is external.
    m = ring(9, 9, 1, 1, 7, 7, z(9, 9))
    m[1, 4] = 0
    m[4, 4] = 1
    cases.append(("open_ring", m))
    # Diagonal contact joins two squares into one component (8-connectivity).
    m = z(8, 8)
    m[1:3, 1:3] = 1
    m[3:5, 3:5] = 1
    m[6:8, 0:2] = 1
    cases.append(("diagonal_join", m))
    # Shapes on every border and in the corners.
    m = z(10, 12)
    m[0, 3:7] = 1
    m[4:8, 11] = 1
    m[9, 0:2] = 1
    m[0, 11] = 1
    m[5, 0] = 1
    cases.append(("border", m))
    # A ring touching the border with a blob inside.
    m = ring(7, 10, 0, 0, 6, 9, z(7, 10))
    m[2:5, 2:4] = 1
    m[3, 6] = 1
    cases.append(("border_ring_inside", m))
    # Two blobs side by side inside one hole, plus one outside.
    m = ring(12, 16, 0, 0, 8, 10, z(12, 16))
    m[2:4, 2:4] = 1
    m[5:7, 5:9] = 1
    m[10:12, 12:16] = 1
    cases.append(("two_in_hole", m))
    # A U shape (not closed) with a blob in its mouth.
    m = z(8, 8)
    m[1:7, 1] = 1
    m[1:7, 6] = 1
    m[6, 1:7] = 1
    m[3, 3:5] = 1
    cases.append(("u_shape", m))
    # A spiral.
    m = z(11, 11)
    ring(11, 11, 0, 0, 10, 10, m)
    m[0, 1] = 0
    ring(11, 11, 2, 2, 8, 8, m)
    m[8, 7] = 0
    m[4:7, 4:7] = 1
    m[5, 5] = 0
    cases.append(("spiral_like", m))
    # Checkerboard: every pixel joins diagonally into one component.
    cases.append(("checker", (np.indices((7, 9)).sum(0) % 2).astype(np.uint8)))
    return cases


def random_cases(rng):
    cases = []
    sizes = [(1, 1), (1, 9), (9, 1), (2, 2), (3, 3), (5, 7), (7, 5), (13, 10), (10, 13), (20, 30),
             (30, 40), (40, 30), (48, 64)]
    for (h, w) in sizes:
        for d in (0.1, 0.3, 0.5, 0.7):
            m = (rng.random((h, w)) < d).astype(np.uint8)
            cases.append((f"noise_{h}x{w}_d{d}", m))
    # Smooth blobs: block-averaged noise thresholded at its mean, like a class-score map.
    for k, (h, w) in enumerate([(14, 14), (30, 40), (40, 30), (24, 36), (48, 64), (17, 23)]):
        for rep in range(3):
            base = rng.random((h + 4, w + 4))
            sm = sum(np.roll(np.roll(base, dy, 0), dx, 1) for dy in range(-2, 3) for dx in range(-2, 3))
            sm = sm[2:-2, 2:-2]
            m = (sm > sm.mean() + (rep - 1) * 0.5).astype(np.uint8)
            cases.append((f"blobs_{h}x{w}_{rep}", m))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    out = []
    for name, m in handmade() + random_cases(rng):
        h, w = m.shape
        rows = ["".join("1" if v else "0" for v in r) for r in m]
        out.append({"name": name, "h": int(h), "w": int(w), "rows": rows, "boxes": boxes_of(m)})
    doc = {"opencv": cv2.__version__, "call": "findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE) + boundingRect", "cases": out}
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(out)} cases -> {args.out}")


if __name__ == "__main__":
    main()
