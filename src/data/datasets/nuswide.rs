//! NUS-WIDE, 81 concepts, in the layout of its official archives:
//!
//! ```text
//! root/Concepts81.txt                (or ConceptsList/Concepts81.txt; else the built-in list)
//! root/ImageList/TrainImagelist.txt  split `train`  (Imagelist.txt for split `all`)
//! root/ImageList/TestImagelist.txt   split `test`
//! root/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt / _Test.txt   (0/1, one a line)
//! root/Groundtruth/AllLabels/Labels_<concept>.txt                           (split `all`)
//! root/Flickr/<folder>/<file>.jpg    (or root/images/...; flat root/images/<file>.jpg too)
//! ```
//!
//! Image-list lines are Windows paths (`C:\ImageData\Flickr\actor\0001_2124494179.jpg` or
//! `actor\0001_2124494179.jpg`): backslashes become `/` and anything up to `Flickr/` is dropped.
//! Line i of every label file labels line i of the image list.

use std::path::Path;

use crate::data::datasets::{first_existing, item, read_lines, RawDataset};
use crate::error::{Error, Result};

/// The 81 concepts in the order of `Concepts81.txt`.
pub const NUS_CONCEPTS: [&str; 81] = [
    "airport",
    "animal",
    "beach",
    "bear",
    "birds",
    "boats",
    "book",
    "bridge",
    "buildings",
    "cars",
    "castle",
    "cat",
    "cityscape",
    "clouds",
    "computer",
    "coral",
    "cow",
    "dancing",
    "dog",
    "earthquake",
    "elk",
    "fire",
    "fish",
    "flags",
    "flowers",
    "food",
    "fox",
    "frost",
    "garden",
    "glacier",
    "grass",
    "harbor",
    "horses",
    "house",
    "lake",
    "leaf",
    "map",
    "military",
    "moon",
    "mountain",
    "nighttime",
    "ocean",
    "person",
    "plane",
    "plants",
    "police",
    "protest",
    "railroad",
    "rainbow",
    "reflection",
    "road",
    "rocks",
    "running",
    "sand",
    "sign",
    "sky",
    "snow",
    "soccer",
    "sports",
    "statue",
    "street",
    "sun",
    "sunset",
    "surf",
    "swimmers",
    "tattoo",
    "temple",
    "tiger",
    "tower",
    "town",
    "toy",
    "train",
    "tree",
    "valley",
    "vehicle",
    "water",
    "waterfall",
    "wedding",
    "whales",
    "window",
    "zebra",
];

pub const SPLITS: [&str; 3] = ["train", "test", "all"];

/// An image-list line as a `/`-separated path below the image folder.
pub fn normalize_list_path(line: &str) -> String {
    let p = line.trim().replace('\\', "/");
    let p = match p.rfind("Flickr/") {
        Some(i) => p[i + "Flickr/".len()..].to_string(),
        None => p,
    };
    p.trim_start_matches('/').to_string()
}

pub(crate) fn read(root: &Path, split: &str) -> Result<RawDataset> {
    // The image list and, for a concept, its label file below the root.
    type LabelFile = fn(&str) -> String;
    let (list_name, label_file): (&str, LabelFile) = match split {
        "train" => ("TrainImagelist.txt", |c| format!("Groundtruth/TrainTestLabels/Labels_{c}_Train.txt")),
        "test" => ("TestImagelist.txt", |c| format!("Groundtruth/TrainTestLabels/Labels_{c}_Test.txt")),
        "all" => ("Imagelist.txt", |c| format!("Groundtruth/AllLabels/Labels_{c}.txt")),
        _ => return Err(Error::Dataset(format!("NUS-WIDE split `{split}`: use one of {}", SPLITS.join(", ")))),
    };
    let mut notes = Vec::new();
    let concepts_file = [root.join("Concepts81.txt"), root.join("ConceptsList").join("Concepts81.txt")]
        .into_iter()
        .find(|p| p.is_file());
    let classes: Vec<String> = match &concepts_file {
        Some(p) => {
            let c = read_lines(p)?;
            if c.is_empty() {
                return Err(Error::Dataset(format!("{} lists no concept", p.display())));
            }
            notes.push(format!("{} concepts from {}", c.len(), p.display()));
            c
        }
        None => {
            notes.push("no Concepts81.txt: the 81 concepts of the official list were used".into());
            NUS_CONCEPTS.iter().map(|s| s.to_string()).collect()
        }
    };
    let list_path = first_existing(
        &format!("NUS-WIDE `{split}` image list"),
        &[root.join("ImageList").join(list_name), root.join(list_name)],
    )?;
    let rels: Vec<String> = read_lines(&list_path)?.iter().map(|l| normalize_list_path(l)).collect();
    let mut labels = vec![vec![0u8; classes.len()]; rels.len()];
    for (c, name) in classes.iter().enumerate() {
        let p = root.join(label_file(name));
        let lines = read_lines(&p)
            .map_err(|_| Error::Dataset(format!("NUS-WIDE labels of `{name}`: cannot read {}", p.display())))?;
        if lines.len() != rels.len() {
            return Err(Error::Dataset(format!(
                "{} has {} lines but the image list {} has {}",
                p.display(),
                lines.len(),
                list_path.display(),
                rels.len()
            )));
        }
        for (i, l) in lines.iter().enumerate() {
            labels[i][c] = match l.as_str() {
                "0" => 0,
                "1" => 1,
                other => {
                    return Err(Error::Dataset(format!("{} line {}: `{other}` is not 0 or 1", p.display(), i + 1)))
                }
            };
        }
    }
    let image_dir = if root.join("Flickr").is_dir() || !root.join("images").is_dir() { "Flickr" } else { "images" };
    // Re-crawled copies often keep the files flat in one folder: take that form when the first
    // images are found there and not below their concept folders.
    let probe: Vec<&String> = rels.iter().take(20).collect();
    let nested = probe.iter().filter(|r| root.join(image_dir).join(r).is_file()).count();
    let flat = probe.iter().filter(|r| root.join(image_dir).join(basename(r)).is_file()).count();
    let use_flat = flat > nested;
    notes.push(format!(
        "labels from Groundtruth ({} images in {}); images under {image_dir}/{}",
        rels.len(),
        list_path.display(),
        if use_flat { " (flat: file names only)" } else { "" }
    ));
    let items = rels
        .iter()
        .zip(labels)
        .map(|(r, l)| {
            let rel = if use_flat { format!("{image_dir}/{}", basename(r)) } else { format!("{image_dir}/{r}") };
            item(root, &rel, l)
        })
        .collect();
    Ok(RawDataset { root: root.to_path_buf(), split: split.to_string(), classes, items, notes, skipped: Vec::new() })
}

fn basename(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}
