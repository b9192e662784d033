//! External-contour boxes against OpenCV (tools/make_contour_fixtures.py).

mod common;

use labelfree::ops::contours::{external_contour_boxes, Rect};

#[test]
fn boxes_match_opencv() {
    let path = common::fixtures().join("contours/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() > 50);
    let mut failures = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let (h, w) = (c["h"].as_u64().unwrap() as usize, c["w"].as_u64().unwrap() as usize);
        let mask: Vec<bool> = c["rows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_str().unwrap().bytes().map(|b| b == b'1').collect::<Vec<_>>())
            .collect();
        assert_eq!(mask.len(), h * w, "{name}");
        let mut want: Vec<Rect> = c["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let v: Vec<usize> = b.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
                Rect { x: v[0], y: v[1], w: v[2], h: v[3] }
            })
            .collect();
        want.sort();
        let mut got = external_contour_boxes(&mask, h, w);
        got.sort();
        if got != want {
            failures.push(format!("{name}: got {got:?}, OpenCV {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("{} cases agree with OpenCV {}", cases.len(), doc["opencv"]);
}
