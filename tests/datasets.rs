//! The dataset readers on small trees made here (VOC, COCO, NUS-WIDE, CSV) and on the real
//! coco128 sample when ../shared/data/coco128 is there.

mod common;

use std::path::{Path, PathBuf};

use common::{write, TempDir};
use labelfree::data::datasets::{self, ClassNames, Dataset, DatasetKind, LoadOptions, VocDifficult};

fn load(kind: DatasetKind, root: &Path, split: &str, opts: &LoadOptions) -> Dataset {
    datasets::load(kind, root, split, opts).unwrap_or_else(|e| panic!("{kind} {split} at {}: {e}", root.display()))
}

fn labels_of<'a>(ds: &'a Dataset, rel: &str) -> Vec<&'a str> {
    let it = ds
        .items
        .iter()
        .find(|i| i.rel == rel)
        .unwrap_or_else(|| panic!("{rel} not in {:?}", ds.items.iter().map(|i| &i.rel).collect::<Vec<_>>()));
    it.labels.iter().enumerate().filter(|(_, &v)| v == 1).map(|(c, _)| ds.classes[c].as_str()).collect()
}

fn voc_object(name: &str, difficult: bool) -> String {
    format!(
        "<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{}</difficult>\
         <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>\
         <part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part></object>",
        difficult as u8
    )
}

/// VOCdevkit/VOC2007 with five listed images: 000001 dog + person; 000002 train and a
/// difficult chair; 000003 only a difficult cat (and an unknown name); 000004 broken XML;
/// 000005 no XML at all.
fn voc_tree(tmp: &Path) -> PathBuf {
    let dir = tmp.join("VOCdevkit/VOC2007");
    let ann = |id: &str, objs: &[String]| {
        write(
            &dir.join(format!("Annotations/{id}.xml")),
            format!("<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>\n<size><width>5</width><height>5</height><depth>3</depth></size>{}</annotation>", objs.concat()),
        )
    };
    ann("000001", &[voc_object("dog", false), voc_object("person", false)]);
    ann("000002", &[voc_object("train", false), voc_object("chair", true)]);
    ann("000003", &[voc_object("cat", true), voc_object("unicorn", false)]);
    write(&dir.join("Annotations/000004.xml"), "<annotation><object><name>dog</name>");
    for id in ["000001", "000002", "000003", "000004"] {
        common::write_png(&dir.join(format!("JPEGImages/{id}.jpg")), 6, 5, id.as_bytes()[5]);
    }
    write(&dir.join("ImageSets/Main/test.txt"), "000001\n000002\n000003\n000004\n000005\n");
    write(&dir.join("ImageSets/Main/train.txt"), "000001\n");
    write(&dir.join("ImageSets/Main/dog_test.txt"), "000001  1\n");
    dir
}

#[test]
fn voc_reads_labels_from_xml_with_both_difficult_conventions() {
    let tmp = TempDir::new("voc");
    let dir = voc_tree(tmp.path());
    let opts = LoadOptions::default();
    let ds = load(DatasetKind::Voc2007, tmp.path(), "test", &opts);
    assert_eq!(ds.classes.len(), 20);
    assert_eq!(ds.root, dir);
    assert_eq!(ds.items.len(), 3, "{:?}", ds.items);
    assert_eq!(labels_of(&ds, "JPEGImages/000001.jpg"), ["dog", "person"]);
    assert_eq!(labels_of(&ds, "JPEGImages/000002.jpg"), ["chair", "train"]);
    assert_eq!(labels_of(&ds, "JPEGImages/000003.jpg"), ["cat"]);
    assert_eq!(ds.items[0].path, dir.join("JPEGImages/000001.jpg"));
    // The broken and the missing annotation are listed, with reasons.
    assert_eq!(ds.skipped.len(), 2, "{:?}", ds.skipped);
    assert!(ds.skipped[0].path.ends_with("000004.jpg") && ds.skipped[0].reason.contains("does not parse"));
    assert!(ds.skipped[1].path.ends_with("000005.jpg") && ds.skipped[1].reason.contains("000005.xml"));
    assert!(ds.notes.iter().any(|n| n.contains("unicorn (1)")), "{:?}", ds.notes);
    assert!(ds.notes.iter().any(|n| n.contains("count as positives")));

    // Any of the three roots.
    for root in [tmp.path().join("VOCdevkit"), dir.clone()] {
        let other = load(DatasetKind::Voc2007, &root, "test", &opts);
        assert_eq!(other.items, ds.items);
    }

    // Difficult objects ignored: 000003 has no label left and is left out unless kept.
    let ign = LoadOptions { voc_difficult: VocDifficult::Ignore, ..Default::default() };
    let ds = load(DatasetKind::Voc2007, tmp.path(), "test", &ign);
    assert_eq!(ds.items.len(), 2);
    assert_eq!(labels_of(&ds, "JPEGImages/000002.jpg"), ["train"]);
    assert!(ds.notes.iter().any(|n| n.contains("1 of 3 images have no positive label")), "{:?}", ds.notes);
    let keep = LoadOptions { voc_difficult: VocDifficult::Ignore, keep_unlabeled: true, ..Default::default() };
    let ds = load(DatasetKind::Voc2007, tmp.path(), "test", &keep);
    assert_eq!(ds.items.len(), 3);
    assert!(labels_of(&ds, "JPEGImages/000003.jpg").is_empty());

    assert_eq!(load(DatasetKind::Voc2007, tmp.path(), "train", &opts).items.len(), 1);
    // Errors that name what is wrong.
    let e = datasets::load(DatasetKind::Voc2007, tmp.path(), "val", &opts).unwrap_err().to_string();
    assert!(e.contains("val.txt"), "{e}");
    let e = datasets::load(DatasetKind::Voc2012, tmp.path(), "val", &opts).unwrap_err().to_string();
    assert!(e.contains("VOC2012"), "{e}");
    let e = datasets::load(DatasetKind::Voc2007, tmp.path(), "trainaug", &opts).unwrap_err().to_string();
    assert!(e.contains("trainval"), "{e}");
}

#[test]
fn voc_class_names() {
    let tmp = TempDir::new("vocnames");
    voc_tree(tmp.path());
    let ds = load(DatasetKind::Voc2007, tmp.path(), "test", &LoadOptions::default());
    let natural = ds.class_names(ClassNames::Natural);
    assert_eq!(natural[10], "dining table");
    assert_eq!(natural[15], "potted plant");
    assert_eq!(natural[19], "tv monitor");
    assert_eq!(natural[0], "aeroplane");
    assert_eq!(ds.class_names(ClassNames::Tagclip)[10], "diningtable");
    assert_eq!(ds.class_names(ClassNames::Raw), ds.classes);
    assert_eq!(ds.class_aliases(19), ["tvmonitor", "tv monitor"]);
}

fn coco_json(images: &[(u64, &str)], anns: &[(u64, u64)], cats: &[(u64, &str)]) -> String {
    let images: Vec<_> =
        images.iter().map(|(id, f)| serde_json::json!({"id": id, "file_name": f, "width": 4, "height": 4})).collect();
    let anns: Vec<_> = anns
        .iter()
        .enumerate()
        .map(|(i, (im, c))| serde_json::json!({"id": i, "image_id": im, "category_id": c, "bbox": [0, 0, 1, 1], "iscrowd": 0, "segmentation": [[0, 0, 1, 1]]}))
        .collect();
    let cats: Vec<_> =
        cats.iter().map(|(id, n)| serde_json::json!({"id": id, "name": n, "supercategory": "x"})).collect();
    serde_json::json!({"info": {}, "images": images, "annotations": anns, "categories": cats}).to_string()
}

#[test]
fn coco_synthetic_tree() {
    let tmp = TempDir::new("coco");
    let root = tmp.path();
    // Categories out of id order in the file; images under images/val2014.
    write(
        &root.join("annotations/instances_val2014.json"),
        coco_json(
            &[(7, "a.jpg"), (3, "b.jpg"), (9, "c.jpg")],
            &[(7, 18), (7, 1), (3, 18), (3, 18), (42, 1), (3, 99)],
            &[(18, "dog"), (1, "person")],
        ),
    );
    std::fs::create_dir_all(root.join("images/val2014")).unwrap();
    let ds = load(DatasetKind::Coco2014, root, "val", &LoadOptions::default());
    assert_eq!(ds.split, "val2014");
    assert_eq!(ds.classes, ["person", "dog"]);
    assert_eq!(ds.items.len(), 2);
    assert_eq!(labels_of(&ds, "images/val2014/a.jpg"), ["person", "dog"]);
    assert_eq!(labels_of(&ds, "images/val2014/b.jpg"), ["dog"]);
    assert!(
        ds.notes.iter().any(|n| n.contains("ignored 1 annotations of unknown images and 1 of unknown categories")),
        "{:?}",
        ds.notes
    );
    let keep =
        load(DatasetKind::Coco2014, root, "val2014", &LoadOptions { keep_unlabeled: true, ..Default::default() });
    assert_eq!(keep.items.len(), 3);
    // TagCLIP's spelling of the six VOC classes.
    assert_eq!(labelfree::data::datasets::coco::tagclip_name("dining table"), "diningtable");
    let e = datasets::load(DatasetKind::Coco2014, root, "val2017", &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("val2014"), "{e}");
    let e = datasets::load(DatasetKind::Coco2014, root, "train", &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("instances_train2014.json"), "{e}");
}

pub fn coco128() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [here.join("../shared/data/coco128"), here.join("shared/data/coco128")]
        .into_iter()
        .find(|p| p.join("annotations").is_dir())
}

#[test]
fn coco128_sample() {
    let Some(root) = coco128() else {
        eprintln!("coco128 not found next to the repository: skipped");
        return;
    };
    let ds = load(DatasetKind::Coco2017, &root, "train2017", &LoadOptions::default());
    assert_eq!(ds.classes.len(), 80);
    assert_eq!(ds.classes[0], "person");
    assert_eq!(ds.classes[79], "toothbrush");
    let official: Vec<&str> = labelfree::data::datasets::coco::COCO_CLASSES.to_vec();
    assert_eq!(ds.classes, official);
    // The sample's README: 126 of 128 images annotated, 101 with two or more categories, 71
    // of the 80 categories occur.
    assert_eq!(ds.items.len(), 126);
    assert_eq!(ds.items.iter().filter(|i| i.labels.iter().filter(|&&v| v == 1).count() >= 2).count(), 101);
    assert_eq!(ds.class_counts().iter().filter(|&&n| n > 0).count(), 71);
    assert!(ds.items.iter().all(|i| i.path.is_file()));
    assert_eq!(ds.items[0].rel, "train2017/000000000009.jpg");
    let keep =
        load(DatasetKind::Coco2017, &root, "train2017", &LoadOptions { keep_unlabeled: true, ..Default::default() });
    assert_eq!(keep.items.len(), 128);
    let tag = ds.class_names(ClassNames::Tagclip);
    assert_eq!((tag[3].as_str(), tag[4].as_str(), tag[62].as_str()), ("motorbike", "aeroplane", "tvmonitor"));
}

/// NUS-WIDE with 3 concepts and 4 train images (one with no concept).
fn nus_tree(root: &Path, flat: bool) {
    write(&root.join("Concepts81.txt"), "animal\nbeach\nsky\n");
    write(
        &root.join("ImageList/TrainImagelist.txt"),
        "actor\\0001_2124494179.jpg\r\nairport\\0002_7.jpg\r\nbeach\\0003_8.jpg\r\nzoo\\0004_9.jpg\r\n",
    );
    write(&root.join("ImageList/Imagelist.txt"), "C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg\n");
    for (c, col) in [("animal", "1\n0\n1\n0\n"), ("beach", "0\n0\n1\n0\n"), ("sky", "1\n1\n0\n0\n")] {
        write(&root.join(format!("Groundtruth/TrainTestLabels/Labels_{c}_Train.txt")), col);
    }
    for c in ["animal", "beach", "sky"] {
        write(&root.join(format!("Groundtruth/AllLabels/Labels_{c}.txt")), "1\n");
    }
    for (i, rel) in ["actor/0001_2124494179.jpg", "airport/0002_7.jpg", "beach/0003_8.jpg"].iter().enumerate() {
        let p = if flat {
            root.join("images").join(rel.rsplit('/').next().unwrap())
        } else {
            root.join("Flickr").join(rel)
        };
        common::write_png(&p, 4, 4, i as u8);
    }
}

#[test]
fn nuswide_layouts() {
    let tmp = TempDir::new("nus");
    nus_tree(tmp.path(), false);
    let ds = load(DatasetKind::NusWide, tmp.path(), "train", &LoadOptions::default());
    assert_eq!(ds.classes, ["animal", "beach", "sky"]);
    assert_eq!(ds.items.len(), 3);
    assert_eq!(labels_of(&ds, "Flickr/actor/0001_2124494179.jpg"), ["animal", "sky"]);
    assert_eq!(labels_of(&ds, "Flickr/airport/0002_7.jpg"), ["sky"]);
    assert_eq!(labels_of(&ds, "Flickr/beach/0003_8.jpg"), ["animal", "beach"]);
    assert!(ds.items.iter().all(|i| i.path.is_file()));
    let all = load(DatasetKind::NusWide, tmp.path(), "all", &LoadOptions::default());
    assert_eq!(all.items[0].rel, "Flickr/actor/0001_2124494179.jpg");
    let e = datasets::load(DatasetKind::NusWide, tmp.path(), "test", &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("TestImagelist.txt"), "{e}");
    // A label file that does not line up with the list is an error naming both.
    write(&tmp.path().join("Groundtruth/TrainTestLabels/Labels_sky_Train.txt"), "1\n");
    let e = datasets::load(DatasetKind::NusWide, tmp.path(), "train", &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("Labels_sky_Train.txt has 1 lines"), "{e}");

    // Flat images/ folder, no Concepts81.txt: the official list, so the 3 label files are not
    // enough (an error naming the first missing concept).
    let flat = TempDir::new("nusflat");
    nus_tree(flat.path(), true);
    let ds = load(DatasetKind::NusWide, flat.path(), "train", &LoadOptions::default());
    assert_eq!(labels_of(&ds, "images/0001_2124494179.jpg"), ["animal", "sky"]);
    assert!(ds.items.iter().all(|i| i.path.is_file()));
    std::fs::remove_file(flat.path().join("Concepts81.txt")).unwrap();
    let e =
        datasets::load(DatasetKind::NusWide, flat.path(), "train", &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("`airport`"), "{e}");
}

#[test]
fn csv_dataset() {
    let tmp = TempDir::new("csv");
    let root = tmp.path();
    write(&root.join("classes.txt"), "cat\ndog\nhot dog\n");
    write(
        &root.join("train.csv"),
        "path,labels\nimg/a.png,cat;dog\n\"img/b, with comma.png\",hot dog\nimg/c.png,\nimg/d.png,cat;wolf\nimg/e.png,cat,extra\n\"img/f.png,dog\n",
    );
    let ds = load(DatasetKind::Csv, root, "train", &LoadOptions::default());
    assert_eq!(ds.classes, ["cat", "dog", "hot dog"]);
    assert_eq!(ds.items.len(), 2);
    assert_eq!(labels_of(&ds, "img/a.png"), ["cat", "dog"]);
    assert_eq!(labels_of(&ds, "img/b, with comma.png"), ["hot dog"]);
    assert_eq!(ds.items[0].path, root.join("img/a.png"));
    let reasons: Vec<&str> = ds.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("wolf"));
    assert!(reasons[1].contains("3 fields"));
    assert!(reasons[2].contains("unterminated quote"));
    assert!(ds.skipped[0].path.ends_with("train.csv:5"), "{}", ds.skipped[0].path);
    let keep = load(DatasetKind::Csv, root, "train", &LoadOptions { keep_unlabeled: true, ..Default::default() });
    assert_eq!(keep.items.len(), 3);
    // Another class file, given explicitly; a missing one is an error naming the option.
    write(&root.join("other.txt"), "dog\ncat\nhot dog\n");
    let other = load(
        DatasetKind::Csv,
        root,
        "train",
        &LoadOptions { classes_file: Some(root.join("other.txt")), ..Default::default() },
    );
    assert_eq!(labels_of(&other, "img/a.png"), ["dog", "cat"]);
    std::fs::remove_file(root.join("classes.txt")).unwrap();
    let e = datasets::load(DatasetKind::Csv, root, "train", &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("--classes-file"), "{e}");
}

#[test]
fn dataset_names_parse() {
    for k in DatasetKind::ALL {
        assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
    }
    assert_eq!("VOC-2007".parse::<DatasetKind>().unwrap(), DatasetKind::Voc2007);
    assert!("imagenet".parse::<DatasetKind>().unwrap_err().to_string().contains("nuswide"));
}
