//! COCO 2014 and 2017: `annotations/instances_<split>.json` and the images in `<split>/` (or
//! `images/<split>/`). The split is `train2014`, `val2014`, `train2017`, `val2017` (`train` or
//! `val` alone get the dataset's year). Classes are the JSON's 80 categories in category-id
//! order; an image is positive for every category with at least one annotation (crowd
//! annotations included). Images with no annotation are left out unless --keep-unlabeled.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::data::datasets::{first_existing, io_err, item, RawDataset};
use crate::error::{Error, Result};

/// The 80 COCO categories in category-id order, with their official names.
pub const COCO_CLASSES: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// TagCLIP's name for a COCO category (`class_names_coco` in its `clip_text.py`): the VOC
/// spelling for the six classes VOC shares under another name, the official name otherwise.
pub fn tagclip_name(class: &str) -> &str {
    match class {
        "motorcycle" => "motorbike",
        "airplane" => "aeroplane",
        "couch" => "sofa",
        "potted plant" => "pottedplant",
        "dining table" => "diningtable",
        "tv" => "tvmonitor",
        other => other,
    }
}

#[derive(Deserialize)]
struct Instances {
    images: Vec<ImageEntry>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    categories: Vec<Category>,
}

#[derive(Deserialize)]
struct ImageEntry {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize)]
struct Category {
    id: u64,
    name: String,
}

/// The full split name: `train` -> `train2017` for COCO 2017.
pub fn full_split(year: u32, split: &str) -> Result<String> {
    let full = match split {
        "train" | "val" => format!("{split}{year}"),
        s => s.to_string(),
    };
    if full != format!("train{year}") && full != format!("val{year}") {
        return Err(Error::Dataset(format!("COCO {year} split `{split}`: use train{year} or val{year}")));
    }
    Ok(full)
}

pub(crate) fn read(root: &Path, year: u32, split: &str) -> Result<RawDataset> {
    let split = full_split(year, split)?;
    let ann_path = first_existing(
        &format!("COCO {split} annotations"),
        &[root.join("annotations").join(format!("instances_{split}.json"))],
    )?;
    let image_dir =
        first_existing(&format!("COCO {split} image folder"), &[root.join(&split), root.join("images").join(&split)])?;
    let prefix = image_dir.strip_prefix(root).unwrap_or(&image_dir).to_string_lossy().replace('\\', "/");
    let bytes = std::fs::read(&ann_path).map_err(io_err(&ann_path))?;
    let inst: Instances = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Dataset(format!("{}: not COCO instances JSON: {e}", ann_path.display())))?;
    drop(bytes);

    let mut cats: Vec<&Category> = inst.categories.iter().collect();
    cats.sort_by_key(|c| c.id);
    let classes: Vec<String> = cats.iter().map(|c| c.name.clone()).collect();
    let class_of: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let mut notes = vec![format!(
        "labels from {} ({} annotations, crowd included); {} categories in id order",
        ann_path.display(),
        inst.annotations.len(),
        classes.len()
    )];
    if classes.len() != 80 {
        notes.push(format!("this JSON has {} categories, not COCO's 80", classes.len()));
    }

    let index: HashMap<u64, usize> = inst.images.iter().enumerate().map(|(i, im)| (im.id, i)).collect();
    let mut labels = vec![vec![0u8; classes.len()]; inst.images.len()];
    let (mut bad_image, mut bad_cat) = (0usize, 0usize);
    for a in &inst.annotations {
        match (index.get(&a.image_id), class_of.get(&a.category_id)) {
            (Some(&i), Some(&c)) => labels[i][c] = 1,
            (None, _) => bad_image += 1,
            (_, None) => bad_cat += 1,
        }
    }
    if bad_image + bad_cat > 0 {
        notes.push(format!("ignored {bad_image} annotations of unknown images and {bad_cat} of unknown categories"));
    }
    let items =
        inst.images.iter().zip(labels).map(|(im, l)| item(root, &format!("{prefix}/{}", im.file_name), l)).collect();
    Ok(RawDataset { root: root.to_path_buf(), split, classes, items, notes, skipped: Vec::new() })
}
