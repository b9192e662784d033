//! PASCAL VOC 2007 and 2012: `VOCdevkit/VOC20XX/{JPEGImages, Annotations, ImageSets/Main}`.
//!
//! `root` may be the year folder itself, the `VOCdevkit` folder holding it, or the parent of
//! `VOCdevkit`. The split (`train`, `val`, `trainval`, `test`) is `ImageSets/Main/<split>.txt`,
//! one image id a line; labels come from `Annotations/<id>.xml`: every `<object>`'s `<name>`
//! that is one of the 20 classes, with `<difficult>1</difficult>` objects counted as the
//! [`VocDifficult`] option says (default: counted, as TagCLIP's label files do).

use std::path::{Path, PathBuf};

use crate::data::datasets::{first_existing, item, read_lines, LoadOptions, RawDataset, VocDifficult};
use crate::data::loader::Skipped;
use crate::error::{Error, Result};

/// The 20 VOC classes in the devkit's order, as the annotations write them (TagCLIP's
/// `class_names_voc`).
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The prompt-friendly spelling of a VOC class: the devkit's run-together compounds split.
pub fn natural_name(class: &str) -> &str {
    match class {
        "diningtable" => "dining table",
        "pottedplant" => "potted plant",
        "tvmonitor" => "tv monitor",
        other => other,
    }
}

pub const SPLITS: [&str; 4] = ["train", "val", "trainval", "test"];

/// The year folder (the one holding `Annotations/` and `ImageSets/`) under `root`.
pub fn year_dir(root: &Path, year: u32) -> Result<PathBuf> {
    let y = format!("VOC{year}");
    let candidates = [root.to_path_buf(), root.join(&y), root.join("VOCdevkit").join(&y)];
    let found = candidates.iter().find(|d| d.join("Annotations").is_dir() && d.join("ImageSets").is_dir());
    match found {
        // A folder named for another year is a mistake worth stopping for.
        Some(d)
            if d == root
                && root.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("VOC20") && n != y) =>
        {
            Err(Error::Dataset(format!("{} is not a {y} folder", root.display())))
        }
        Some(d) => Ok(d.clone()),
        None => {
            let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            Err(Error::Dataset(format!(
                "no {y} layout (Annotations/ and ImageSets/Main/) found; looked in: {}",
                list.join(", ")
            )))
        }
    }
}

/// One annotation file's objects: (class name, difficult).
pub fn parse_annotation(xml: &str) -> std::result::Result<Vec<(String, bool)>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("annotation XML does not parse: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "annotation" {
        return Err(format!("annotation XML has root <{}>, expected <annotation>", root.tag_name().name()));
    }
    let child_text = |node: roxmltree::Node, tag: &str| {
        node.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text()).map(|t| t.trim().to_string())
    };
    let mut out = Vec::new();
    for obj in root.children().filter(|c| c.has_tag_name("object")) {
        let name = child_text(obj, "name").ok_or("an <object> has no <name>")?;
        let difficult = match child_text(obj, "difficult").as_deref() {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(format!("object `{name}` has <difficult>{other}</difficult>")),
        };
        out.push((name, difficult));
    }
    Ok(out)
}

pub(crate) fn read(root: &Path, year: u32, split: &str, opts: &LoadOptions) -> Result<RawDataset> {
    if !SPLITS.contains(&split) {
        return Err(Error::Dataset(format!("VOC split `{split}`: use one of {}", SPLITS.join(", "))));
    }
    let dir = year_dir(root, year)?;
    let list = first_existing(
        &format!("VOC{year} split `{split}`"),
        &[dir.join("ImageSets").join("Main").join(format!("{split}.txt"))],
    )?;
    // A line is an image id, possibly followed by a label column (the per-class files' form).
    let ids: Vec<String> =
        read_lines(&list)?.iter().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    let classes: Vec<String> = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
    let mut items = Vec::with_capacity(ids.len());
    let mut skipped = Vec::new();
    let mut unknown: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut objects, mut difficult_only) = (0usize, 0usize);
    for id in &ids {
        let rel = format!("JPEGImages/{id}.jpg");
        let xml_path = dir.join("Annotations").join(format!("{id}.xml"));
        let parsed = std::fs::read_to_string(&xml_path)
            .map_err(|e| format!("annotation {}: {e}", xml_path.display()))
            .and_then(|x| parse_annotation(&x).map_err(|e| format!("{}: {e}", xml_path.display())));
        let objs = match parsed {
            Ok(o) => o,
            Err(reason) => {
                skipped.push(Skipped { path: dir.join(&rel).display().to_string(), reason });
                continue;
            }
        };
        let mut labels = vec![0u8; 20];
        let mut seen_difficult = vec![false; 20];
        for (name, difficult) in objs {
            let Some(c) = VOC_CLASSES.iter().position(|k| *k == name) else {
                *unknown.entry(name).or_default() += 1;
                continue;
            };
            objects += 1;
            if difficult && opts.voc_difficult == VocDifficult::Ignore {
                seen_difficult[c] = true;
            } else {
                labels[c] = 1;
            }
        }
        difficult_only += labels.iter().zip(&seen_difficult).filter(|(l, d)| **l == 0 && **d).count();
        items.push(item(&dir, &rel, labels));
    }
    let mut notes = vec![format!(
        "labels from Annotations/*.xml ({objects} objects); difficult objects {}",
        match opts.voc_difficult {
            VocDifficult::Positive =>
                "count as positives (TagCLIP's convention; --voc-difficult ignore for CCD's)".to_string(),
            VocDifficult::Ignore =>
                format!("are ignored ({difficult_only} image-class pairs seen only as difficult are negative)"),
        }
    )];
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|(n, k)| format!("{n} ({k})")).collect();
        notes.push(format!("object names that are not VOC classes were ignored: {}", list.join(", ")));
    }
    Ok(RawDataset { root: dir, split: split.to_string(), classes, items, notes, skipped })
}
