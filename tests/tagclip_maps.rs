//! `tagclip --save-maps`: every map PNG carries its label (class name and final score, drawn
//! with the embedded bitmap font), its boxes and the legend; index.html links every image and
//! map in the folder.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use labelfree::methods::tagclip::maps::{self, CWR_BOX, DMAR_BOX, LABEL_BACKGROUND, LABEL_TEXT, PAD};

/// (width, height, RGB bytes) of a PNG.
fn read_png(p: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn px(rgb: &[u8], w: usize, x: usize, y: usize) -> [u8; 3] {
    let i = (y * w + x) * 3;
    [rgb[i], rgb[i + 1], rgb[i + 2]]
}

#[test]
fn maps_show_label_boxes_legend_and_index_lists_them_all() {
    let dir = common::TempDir::new("tagclip-maps");
    let d = dir.path();
    let weights = common::tiny_tagclip_weights(d);
    // Two coco128 photos (640 wide: 16-pixel glyphs) and the fixture's small ones (8-pixel).
    let photos = d.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let coco = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017");
    for p in ["000000000049.jpg", "000000000061.jpg"] {
        std::fs::copy(coco.join(p), photos.join(p)).unwrap();
    }
    let small = common::fixtures().join("tagclip/images");
    let (scores, report, out_maps) = (d.join("s.csv"), d.join("s.json"), d.join("maps"));
    let args = [
        "tagclip",
        "--weights",
        weights.to_str().unwrap(),
        "--preset",
        "coco",
        "--images",
        photos.to_str().unwrap(),
        small.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
        "--json",
        report.to_str().unwrap(),
        "--save-maps",
        out_maps.to_str().unwrap(),
        "--maps-limit",
        "4",
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Final scores by (image stem, class) from the CSV; tags and crops from the report.
    let csv = std::fs::read_to_string(&scores).unwrap();
    let mut lines = csv.lines();
    let classes: Vec<String> = lines.next().unwrap().split(',').skip(1).map(str::to_string).collect();
    let mut score: HashMap<(String, String), f32> = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let stem = Path::new(f[0]).file_stem().unwrap().to_str().unwrap().to_string();
        for (c, v) in classes.iter().zip(&f[1..]) {
            score.insert((stem.clone(), c.clone()), v.parse().unwrap());
        }
    }
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let images = rep["extra"]["images"].as_array().unwrap();

    let mut expected_files = BTreeSet::new();
    let (mut dmar_seen, mut cwr_checked) = (0, 0);
    for im in images.iter().take(4) {
        let stem = Path::new(im["path"].as_str().unwrap()).file_stem().unwrap().to_str().unwrap().to_string();
        expected_files.insert(format!("{stem}.png"));
        let cropped: Vec<usize> =
            im["crops"].as_array().unwrap().iter().map(|c| c["class"].as_u64().unwrap() as usize).collect();
        for tag in im["tags"].as_array().unwrap() {
            let class = tag.as_str().unwrap();
            let file = format!("{stem}_{}.png", class.replace(' ', "_"));
            expected_files.insert(file.clone());
            let (w, h, rgb) = read_png(&out_maps.join(&file));
            let scale = maps::text_scale(w);
            let image_h = h - maps::legend_height(scale);
            // The label: every pixel of the glyphs' box is text or background, as the font says.
            let text = maps::label_text(class, score[&(stem.clone(), class.to_string())]);
            let (tw, th, mask) = maps::text_mask(&text, scale);
            assert!(tw + 2 * PAD <= w, "{text} fits in {w}");
            for y in 0..th {
                for x in 0..tw {
                    let want = if mask[y * tw + x] { LABEL_TEXT } else { LABEL_BACKGROUND };
                    assert_eq!(px(&rgb, w, PAD + x, PAD + y), want, "{file}: label `{text}` at ({x}, {y})");
                }
            }
            assert!(mask.iter().filter(|&&m| m).count() > 20 * text.len() / 2, "glyphs have pixels");
            // The legend's swatches, under the image.
            let line = 8 * scale + 2 * PAD;
            assert_eq!(px(&rgb, w, PAD + 1, image_h + line + PAD + 1), DMAR_BOX, "{file}: legend");
            // Boxes inside the image: DMAR's where the class has one, CWR's where it was cropped.
            let image_px = |c: [u8; 3]| (0..image_h).any(|y| (0..w).any(|x| px(&rgb, w, x, y) == c));
            dmar_seen += image_px(DMAR_BOX) as usize;
            let cls = classes.iter().position(|c| c == class).unwrap();
            if cropped.contains(&cls) {
                assert!(image_px(CWR_BOX), "{file}: class {class} was cropped by CWR: its box is drawn");
                cwr_checked += 1;
            }
        }
    }
    assert!(dmar_seen > 0 && cwr_checked > 0, "DMAR boxes on {dmar_seen} maps, CWR crops on {cwr_checked}");

    // index.html: every PNG of the folder, linked relatively, and nothing else.
    let html = std::fs::read_to_string(out_maps.join("index.html")).unwrap();
    let linked: BTreeSet<String> =
        html.split("src=\"").skip(1).map(|s| s[..s.find('"').unwrap()].to_string()).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(&out_maps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".png"))
        .collect();
    assert_eq!(on_disk, expected_files);
    assert_eq!(linked, on_disk);
}
