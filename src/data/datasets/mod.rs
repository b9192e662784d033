//! Multi-label datasets read from their standard layouts: PASCAL VOC 2007/2012, COCO 2014/2017,
//! NUS-WIDE and a generic CSV. Every reader produces the same [`Dataset`]: the class list in the
//! dataset's own order and one multi-hot label vector per image.
//!
//! Readers never open the images: an image that is listed but missing or unreadable is found by
//! the loader, which skips it and reports why. Problems with the annotations themselves (an XML
//! that does not parse, a label that is not a class) are listed in [`Dataset::skipped`] or
//! [`Dataset::notes`] and never stop the read, except when the layout itself is not there.
//! README.md (Datasets) lists the layouts accepted and the conventions chosen.

pub mod args;
pub mod coco;
pub mod csv;
pub mod nuswide;
pub mod voc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::data::loader::Skipped;
use crate::error::{Error, Result};

/// One image and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The image file: the dataset root joined with [`Item::rel`].
    pub path: PathBuf,
    /// The path relative to the dataset root, with `/` separators: the key of prediction files.
    pub rel: String,
    /// Multi-hot, one entry per class of the dataset (1 = present).
    pub labels: Vec<u8>,
}

/// A split of a dataset, read and labelled.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `voc2007`, `coco2017`, ...
    pub name: String,
    pub split: String,
    pub root: PathBuf,
    /// The class names as the annotations write them, in the dataset's order (VOC: the 20
    /// classes alphabetically; COCO: category-id order; NUS-WIDE: Concepts81.txt order).
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    /// How the labels were made (conventions, options in force, counts of what was left out).
    pub notes: Vec<String>,
    /// Images left out because of their annotations (with the reason).
    pub skipped: Vec<Skipped>,
    kind: DatasetKind,
}

/// The datasets the engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DatasetKind {
    Voc2007,
    Voc2012,
    Coco2014,
    Coco2017,
    NusWide,
    Csv,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Voc2007,
        DatasetKind::Voc2012,
        DatasetKind::Coco2014,
        DatasetKind::Coco2017,
        DatasetKind::NusWide,
        DatasetKind::Csv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Voc2007 => "voc2007",
            DatasetKind::Voc2012 => "voc2012",
            DatasetKind::Coco2014 => "coco2014",
            DatasetKind::Coco2017 => "coco2017",
            DatasetKind::NusWide => "nuswide",
            DatasetKind::Csv => "csv",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let want = s.to_ascii_lowercase().replace(['-', '_'], "");
        DatasetKind::ALL.into_iter().find(|k| k.name() == want).ok_or_else(|| {
            let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
            Error::Dataset(format!("unknown dataset `{s}`; known: {}", names.join(", ")))
        })
    }
}

/// Whether VOC objects marked `<difficult>1</difficult>` make their class present.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum VocDifficult {
    /// Every `<object>` counts (TagCLIP, and the CLIP-ES/IRN label files it derives from).
    #[default]
    Positive,
    /// Difficult objects are ignored: a class seen only as difficult is absent (the devkit's
    /// ImageSets/Main/<class>_<split>.txt label 0, read as negative by the single-positive
    /// label files CCD trains on).
    Ignore,
}

impl FromStr for VocDifficult {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "positive" => Ok(VocDifficult::Positive),
            "ignore" | "negative" => Ok(VocDifficult::Ignore),
            _ => Err(Error::Dataset(format!("--voc-difficult {s}: use positive or ignore"))),
        }
    }
}

/// Which spelling of the class names the text prompts use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ClassNames {
    /// Prompt-friendly: VOC's compounds split (`diningtable` -> `dining table`); COCO's
    /// official names; NUS-WIDE's concepts as written.
    #[default]
    Natural,
    /// As the annotations write them.
    Raw,
    /// The exact lists of TagCLIP's `clip_text.py`: VOC names as written, also inside its COCO
    /// list (aeroplane, motorbike, sofa, pottedplant, diningtable, tvmonitor).
    Tagclip,
}

impl FromStr for ClassNames {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "natural" => Ok(ClassNames::Natural),
            "raw" => Ok(ClassNames::Raw),
            "tagclip" => Ok(ClassNames::Tagclip),
            _ => Err(Error::Dataset(format!("--names {s}: use natural, raw or tagclip"))),
        }
    }
}

/// Options of the readers.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub voc_difficult: VocDifficult,
    /// Keep images with no positive label (by default they are left out, as the papers do:
    /// TagCLIP's COCO2014 val has the 40,137 of 40,504 images with at least one label).
    pub keep_unlabeled: bool,
    /// The class-names file of the CSV dataset (default `<root>/classes.txt`).
    pub classes_file: Option<PathBuf>,
}

/// Reads a split of a dataset.
pub fn load(kind: DatasetKind, root: &Path, split: &str, opts: &LoadOptions) -> Result<Dataset> {
    let raw = match kind {
        DatasetKind::Voc2007 => voc::read(root, 2007, split, opts)?,
        DatasetKind::Voc2012 => voc::read(root, 2012, split, opts)?,
        DatasetKind::Coco2014 => coco::read(root, 2014, split)?,
        DatasetKind::Coco2017 => coco::read(root, 2017, split)?,
        DatasetKind::NusWide => nuswide::read(root, split)?,
        DatasetKind::Csv => csv::read(root, split, opts.classes_file.as_deref())?,
    };
    Ok(raw.finish(kind, opts.keep_unlabeled))
}

/// What a reader hands back before the common policies are applied.
pub(crate) struct RawDataset {
    pub root: PathBuf,
    pub split: String,
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    pub notes: Vec<String>,
    pub skipped: Vec<Skipped>,
}

impl RawDataset {
    fn finish(mut self, kind: DatasetKind, keep_unlabeled: bool) -> Dataset {
        let before = self.items.len();
        if !keep_unlabeled {
            self.items.retain(|it| it.labels.iter().any(|&v| v != 0));
            let dropped = before - self.items.len();
            if dropped > 0 {
                self.notes.push(format!(
                    "{dropped} of {before} images have no positive label and are left out (--keep-unlabeled keeps them)"
                ));
            }
        }
        Dataset {
            name: kind.name().to_string(),
            split: self.split,
            root: self.root,
            classes: self.classes,
            items: self.items,
            notes: self.notes,
            skipped: self.skipped,
            kind,
        }
    }
}

/// `root` joined with a `/`-separated relative path, and that relative path.
pub(crate) fn item(root: &Path, rel: &str, labels: Vec<u8>) -> Item {
    Item { path: root.join(rel), rel: rel.to_string(), labels }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io { path: path.display().to_string(), source: e }
}

impl Dataset {
    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The class names the text prompts use, in the dataset's class order.
    pub fn class_names(&self, style: ClassNames) -> Vec<String> {
        match (self.kind, style) {
            (_, ClassNames::Raw) => self.classes.clone(),
            (DatasetKind::Voc2007 | DatasetKind::Voc2012, ClassNames::Natural) => {
                self.classes.iter().map(|c| voc::natural_name(c).to_string()).collect()
            }
            (DatasetKind::Voc2007 | DatasetKind::Voc2012, ClassNames::Tagclip) => self.classes.clone(),
            (DatasetKind::Coco2014 | DatasetKind::Coco2017, ClassNames::Tagclip) => {
                self.classes.iter().map(|c| coco::tagclip_name(c).to_string()).collect()
            }
            _ => self.classes.clone(),
        }
    }

    /// Every spelling of class `c` a prediction file may use as its column name.
    pub fn class_aliases(&self, c: usize) -> Vec<String> {
        let mut v = vec![self.classes[c].clone()];
        for style in [ClassNames::Natural, ClassNames::Tagclip] {
            let n = self.class_names(style).swap_remove(c);
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v
    }

    /// Number of positives of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut n = vec![0usize; self.classes.len()];
        for it in &self.items {
            for (c, &v) in it.labels.iter().enumerate() {
                n[c] += (v != 0) as usize;
            }
        }
        n
    }

    /// The label matrix, (items, classes) row-major.
    pub fn label_matrix(&self) -> Vec<u8> {
        self.items.iter().flat_map(|it| it.labels.iter().copied()).collect()
    }

    /// A one-line summary for people.
    pub fn summary(&self) -> String {
        let pos: usize = self.class_counts().iter().sum();
        format!(
            "{} {} at {}: {} images, {} classes, {:.2} labels per image",
            self.name,
            self.split,
            self.root.display(),
            self.items.len(),
            self.classes.len(),
            pos as f64 / self.items.len().max(1) as f64
        )
    }
}

/// Lines of a text file, trimmed, blank lines and `#` comments dropped.
pub(crate) fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Ok(text
        .lines()
        .map(|l| l.trim().trim_start_matches('\u{feff}').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect())
}

/// The first of `candidates` that exists, or an error naming all of them.
pub(crate) fn first_existing(what: &str, candidates: &[PathBuf]) -> Result<PathBuf> {
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Error::Dataset(format!("{what} not found; looked for: {}", list.join(", ")))
    })
}
