//! A generic multi-label CSV: `<root>/<split>.csv` (or `<root>/<split>` when that file
//! exists), one image a line, `path,labels`, the labels separated by `;` and written as class
//! names, the path relative to `root`. A first line `path,labels` is a header. The class list is
//! a text file with one name a line (default `<root>/classes.txt`); its order is the class order.
//!
//! A line that does not parse or names a class that is not in the list is left out and listed
//! with its reason; the rest of the file is read.

use std::path::Path;

use crate::data::csvio::parse_record;
use crate::data::datasets::{first_existing, io_err, item, read_lines, RawDataset};
use crate::error::{Error, Result};
use crate::data::loader::Skipped;

pub(crate) fn read(root: &Path, split: &str, classes_file: Option<&Path>) -> Result<RawDataset> {
    let list = first_existing(&format!("CSV split `{split}`"), &[root.join(format!("{split}.csv")), root.join(split)])?;
    let classes_path = match classes_file {
        Some(p) => p.to_path_buf(),
        None => first_existing("the class list (--classes-file)", &[root.join("classes.txt")])?,
    };
    let classes = read_lines(&classes_path)?;
    if classes.is_empty() {
        return Err(Error::Dataset(format!("{} lists no class", classes_path.display())));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(Error::Dataset(format!("{}: class `{dup}` is listed twice", classes_path.display())));
    }
    let text = std::fs::read_to_string(&list).map_err(io_err(&list))?;
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Skipped { path: format!("{}:{}", list.display(), n + 1), reason };
        let fields = match parse_record(line) {
            Ok(f) => f,
            Err(e) => {
                skipped.push(bad(e));
                continue;
            }
        };
        if n == 0 && fields[0].trim() == "path" {
            continue;
        }
        if fields.len() > 2 {
            skipped.push(bad(format!("{} fields, expected `path,labels` (labels separated by `;`)", fields.len())));
            continue;
        }
        let path = fields[0].trim();
        if path.is_empty() {
            skipped.push(bad("empty path".into()));
            continue;
        }
        let mut labels = vec![0u8; classes.len()];
        let mut unknown = Vec::new();
        for name in fields.get(1).map(String::as_str).unwrap_or("").split(';').map(str::trim).filter(|s| !s.is_empty()) {
            match classes.iter().position(|c| c == name) {
                Some(c) => labels[c] = 1,
                None => unknown.push(name.to_string()),
            }
        }
        if !unknown.is_empty() {
            skipped.push(bad(format!("`{path}`: labels not in {}: {}", classes_path.display(), unknown.join(", "))));
            continue;
        }
        items.push(item(root, path, labels));
    }
    let notes = vec![format!("labels from {}, classes from {}", list.display(), classes_path.display())];
    Ok(RawDataset { root: root.to_path_buf(), split: split.to_string(), classes, items, notes, skipped })
}
