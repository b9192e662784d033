//! Bounding boxes of the external contours of a binary map: what OpenCV's
//! `findContours(img, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)` followed by `boundingRect` on each
//! contour returns (TagCLIP's `scoremap2bbox`), written from the definition.
//!
//! Suzuki and Abe's border following (the algorithm behind `findContours`) works in the
//! (8, 4) digital topology: foreground pixels connect through their 8 neighbours, background
//! pixels through their 4 neighbours, and the image is surrounded by a one-pixel frame of
//! background (OpenCV pads the input so shapes on the border are found whole). Every
//! 8-connected foreground component has exactly one outer border; `RETR_EXTERNAL` keeps the
//! outer borders whose parent is the frame, i.e. the components that touch the background
//! component containing the frame. A component lying inside a hole of another component
//! (however deep) is dropped. The outer border holds the extreme pixels of its component, so
//! `boundingRect` of the contour is the bounding box of the component, whatever the
//! approximation of the chain.
//!
//! So: label the frame's 4-connected background, label 8-connected foreground components,
//! keep those 4-adjacent to the frame's background (8-adjacency gives the same answer: a
//! diagonal contact implies a 4-contact through one of the two shared neighbours), and
//! return their boxes. Order: by the component's first pixel in raster order (OpenCV's
//! order differs and does not matter to a union of boxes). Linear time, no recursion.
//!
//! A CPU op only: the maps are small (one cell per patch) and each class is independent, so
//! callers run the classes in parallel.

/// `cv2.boundingRect`: top-left corner and size, in cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Boxes of the external contours of `mask` (h x w, row-major, nonzero = foreground).
pub fn external_contour_boxes(mask: &[bool], h: usize, w: usize) -> Vec<Rect> {
    assert_eq!(mask.len(), h * w, "external_contour_boxes: mask of {} cells for {h} x {w}", mask.len());
    if h == 0 || w == 0 {
        return Vec::new();
    }
    // Padded grid: (h + 2) x (w + 2), frame of background.
    let (ph, pw) = (h + 2, w + 2);
    let fg = |y: usize, x: usize| -> bool { y >= 1 && y <= h && x >= 1 && x <= w && mask[(y - 1) * w + (x - 1)] };
    // 1. The frame's background component (4-connected), flood-filled from a corner.
    let mut outer = vec![false; ph * pw];
    let mut stack = vec![(0usize, 0usize)];
    outer[0] = true;
    while let Some((y, x)) = stack.pop() {
        let mut visit = |ny: usize, nx: usize, stack: &mut Vec<(usize, usize)>| {
            let i = ny * pw + nx;
            if !outer[i] && !fg(ny, nx) {
                outer[i] = true;
                stack.push((ny, nx));
            }
        };
        if y > 0 {
            visit(y - 1, x, &mut stack);
        }
        if y + 1 < ph {
            visit(y + 1, x, &mut stack);
        }
        if x > 0 {
            visit(y, x - 1, &mut stack);
        }
        if x + 1 < pw {
            visit(y, x + 1, &mut stack);
        }
    }
    // 2. Foreground components (8-connected), in raster order of their first pixel.
    let mut seen = vec![false; ph * pw];
    let mut boxes = Vec::new();
    for y0 in 1..=h {
        for x0 in 1..=w {
            if !fg(y0, x0) || seen[y0 * pw + x0] {
                continue;
            }
            seen[y0 * pw + x0] = true;
            stack.clear();
            stack.push((y0, x0));
            let (mut ymin, mut ymax, mut xmin, mut xmax) = (y0, y0, x0, x0);
            let mut external = false;
            while let Some((y, x)) = stack.pop() {
                ymin = ymin.min(y);
                ymax = ymax.max(y);
                xmin = xmin.min(x);
                xmax = xmax.max(x);
                // Padded coordinates: every foreground pixel has all 8 neighbours in range.
                for (dy, dx) in [(-1i32, -1i32), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)] {
                    let (ny, nx) = ((y as i32 + dy) as usize, (x as i32 + dx) as usize);
                    let i = ny * pw + nx;
                    if fg(ny, nx) {
                        if !seen[i] {
                            seen[i] = true;
                            stack.push((ny, nx));
                        }
                    } else if (dy == 0 || dx == 0) && outer[i] {
                        external = true;
                    }
                }
            }
            if external {
                boxes.push(Rect { x: xmin - 1, y: ymin - 1, w: xmax - xmin + 1, h: ymax - ymin + 1 });
            }
        }
    }
    boxes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let h = rows.len();
        let w = rows[0].len();
        (rows.iter().flat_map(|r| r.bytes().map(|b| b == b'1')).collect(), h, w)
    }

    #[test]
    fn blob_inside_a_hole_is_not_external() {
        let (m, h, w) = parse(&["11111", "10001", "10101", "10001", "11111"]);
        assert_eq!(external_contour_boxes(&m, h, w), vec![Rect { x: 0, y: 0, w: 5, h: 5 }]);
        // Open the ring (4-connected gap): the blob becomes external.
        let (m, h, w) = parse(&["11011", "10001", "10101", "10001", "11111"]);
        assert_eq!(external_contour_boxes(&m, h, w).len(), 2);
    }

    #[test]
    fn empty_and_border() {
        assert!(external_contour_boxes(&[false; 6], 2, 3).is_empty());
        assert_eq!(external_contour_boxes(&[true; 6], 2, 3), vec![Rect { x: 0, y: 0, w: 3, h: 2 }]);
    }
}
