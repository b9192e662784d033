//! The `--dataset --root --split ...` flags every subcommand that reads a dataset shares
//! (zeroshot, tagclip, eval, train), the `--names` flag of those that write class prompts
//! (zeroshot, tagclip), and the one place they are turned into a [`Dataset`].

use std::path::{Path, PathBuf};

use crate::data::datasets::{self, ClassNames, Dataset, DatasetKind, LoadOptions};
use crate::error::{Error, Result};

#[derive(clap::Args, Clone, Debug)]
pub struct DatasetArgs {
    /// voc2007, voc2012, coco2014, coco2017, nuswide or csv (see README.md, Datasets)
    #[arg(long)]
    pub dataset: Option<String>,
    /// The dataset folder (VOC: VOCdevkit, its parent or VOC20XX; COCO: the folder holding
    /// annotations/; NUS-WIDE: the folder holding ImageList/ and Groundtruth/; csv: the folder
    /// the CSV paths are relative to; train without --dataset: the folder the label file's
    /// paths start from, default .)
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The split (default for zeroshot and eval: the papers' evaluation split: voc2007 test,
    /// voc2012 val, coco val, nuswide test; for train: the training split: voc2007 trainval,
    /// voc2012 train, coco train, nuswide train; csv: required, `<root>/<split>.csv`)
    #[arg(long)]
    pub split: Option<String>,
    /// VOC objects marked difficult: positive (TagCLIP's labels) or ignore (CCD's)
    #[arg(long, default_value = "positive")]
    pub voc_difficult: String,
    /// Keep images with no positive label (left out by default, as the papers do)
    #[arg(long)]
    pub keep_unlabeled: bool,
    /// One class name per line: the class list of --dataset csv (default <root>/classes.txt);
    /// zeroshot and tagclip also read it as the classes of --images
    #[arg(long)]
    pub classes_file: Option<PathBuf>,
}

/// `--names`: the spelling of a dataset's class names in the text prompts (the scores CSV
/// always names its columns as the annotations do).
#[derive(clap::Args, Clone, Debug)]
pub struct ClassNameArgs {
    /// Class-name spelling in the prompts of a --dataset: natural (dining table), raw (as
    /// annotated: diningtable) or tagclip (TagCLIP's lists: VOC spellings, also for COCO's
    /// airplane, motorcycle, couch, potted plant, dining table, tv). Default: natural for
    /// zeroshot, tagclip for tagclip
    #[arg(long)]
    pub names: Option<String>,
}

impl ClassNameArgs {
    /// The spelling asked for, else the command's default.
    pub fn style(&self, default: ClassNames) -> Result<ClassNames> {
        match &self.names {
            Some(n) => n.parse(),
            None => Ok(default),
        }
    }
}

/// What the split is read for: it picks the default split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitUse {
    /// The papers' evaluation split.
    Evaluate,
    /// The split the papers train on.
    Train,
}

/// The split used when `--split` is not given.
pub fn default_split(kind: DatasetKind, usage: SplitUse) -> Result<&'static str> {
    Ok(match (kind, usage) {
        (DatasetKind::Voc2007 | DatasetKind::NusWide, SplitUse::Evaluate) => "test",
        (DatasetKind::Voc2012, SplitUse::Evaluate) => "val",
        (DatasetKind::Coco2014, SplitUse::Evaluate) => "val2014",
        (DatasetKind::Coco2017, SplitUse::Evaluate) => "val2017",
        (DatasetKind::Voc2007, SplitUse::Train) => "trainval",
        (DatasetKind::Voc2012 | DatasetKind::NusWide, SplitUse::Train) => "train",
        (DatasetKind::Coco2014, SplitUse::Train) => "train2014",
        (DatasetKind::Coco2017, SplitUse::Train) => "train2017",
        (DatasetKind::Csv, _) => {
            return Err(Error::Dataset("--dataset csv needs --split (the CSV is <root>/<split>.csv)".into()))
        }
    })
}

impl DatasetArgs {
    /// The dataset kind and root; an error naming the missing flag.
    fn kind_and_root(&self) -> Result<(DatasetKind, &Path)> {
        let name = self.dataset.as_deref().ok_or_else(|| Error::Dataset("give --dataset".into()))?;
        let kind: DatasetKind = name.parse()?;
        let root = self.root.as_deref().ok_or_else(|| Error::Dataset("give the dataset folder with --root".into()))?;
        Ok((kind, root))
    }

    /// Reads `--split` (or the default split for `usage`). `--classes-file` is the class list
    /// of `--dataset csv` (an error with another dataset, which defines its own classes).
    pub fn load(&self, usage: SplitUse) -> Result<Dataset> {
        let (kind, _) = self.kind_and_root()?;
        let split = match &self.split {
            Some(s) => s.clone(),
            None => default_split(kind, usage)?.to_string(),
        };
        self.load_split(&split)
    }

    /// Reads the given split of the same dataset, with the same options.
    pub fn load_split(&self, split: &str) -> Result<Dataset> {
        let (kind, root) = self.kind_and_root()?;
        let classes_file = self.classes_file.as_deref();
        if kind != DatasetKind::Csv && classes_file.is_some() {
            return Err(Error::Dataset(format!(
                "--classes-file is the class list of --dataset csv; {kind} defines its own classes"
            )));
        }
        let opts = LoadOptions {
            voc_difficult: self.voc_difficult.parse()?,
            keep_unlabeled: self.keep_unlabeled,
            classes_file: classes_file.map(Path::to_path_buf),
        };
        let ds = datasets::load(kind, root, split, &opts).map_err(|e| {
            let why = match e {
                Error::Dataset(m) => m,
                other => other.to_string(),
            };
            Error::Dataset(format!("reading {kind} {split} at {}: {why}", root.display()))
        })?;
        if ds.items.is_empty() {
            return Err(Error::Dataset(format!("{} {} at {} has no images", ds.name, ds.split, ds.root.display())));
        }
        Ok(ds)
    }
}

/// Prints the dataset's one-line summary and its notes (how the labels were made).
pub fn announce(ds: &Dataset) {
    eprintln!("dataset: {}", ds.summary());
    for n in &ds.notes {
        eprintln!("  {n}");
    }
}

/// The dataset as the run reports record it.
pub fn dataset_json(ds: &Dataset) -> serde_json::Value {
    serde_json::json!({
        "name": ds.name,
        "split": ds.split,
        "root": ds.root.display().to_string(),
        "images": ds.items.len(),
        "classes": ds.classes,
        "positives": ds.class_counts(),
        "notes": ds.notes,
        "skipped_annotations": ds.skipped,
    })
}
