//! Score files: `path,<class>,<class>,...` then one row per image, scores written in the
//! shortest form that reads back to the same f32. `labelfree zeroshot` writes them; `labelfree
//! eval` reads any file of this form and matches its rows to a dataset's images by path.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::data::datasets::csv::records;
use crate::data::datasets::Dataset;
use crate::error::{Error, Result};

/// The text of a score file. `scores` is (paths, classes) row-major.
pub fn to_csv(paths: &[String], classes: &[String], scores: &[f32]) -> String {
    let c = classes.len();
    assert_eq!(paths.len() * c, scores.len(), "to_csv: {} paths x {c} classes != {} scores", paths.len(), scores.len());
    let mut w = csv::Writer::from_writer(Vec::new());
    let write = "writing CSV to memory cannot fail";
    w.write_record(std::iter::once("path").chain(classes.iter().map(String::as_str))).expect(write);
    for (p, row) in paths.iter().zip(scores.chunks_exact(c.max(1))) {
        w.write_record(std::iter::once(p.clone()).chain(row.iter().map(|v| format!("{v:e}")))).expect(write);
    }
    String::from_utf8(w.into_inner().expect(write)).expect("the fields are UTF-8")
}

/// A score file, read.
#[derive(Clone, Debug)]
pub struct ScoreTable {
    pub classes: Vec<String>,
    pub paths: Vec<String>,
    /// (paths, classes) row-major.
    pub scores: Vec<f32>,
    /// The 1-based line of the file each row was read from (0 when it came from elsewhere).
    pub lines: Vec<usize>,
    /// Lines that could not be read, with the reason.
    pub bad_lines: Vec<String>,
}

pub fn read(path: &Path) -> Result<ScoreTable> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let fail = |m: String| Error::Dataset(format!("{}: {m}", path.display()));
    let mut rows = records(&text);
    let (_, head) = rows.next().ok_or_else(|| fail("empty file".into()))?;
    let head = head.map_err(|e| fail(format!("header: {e}")))?;
    if head.len() < 2 || head[0].trim() != "path" {
        return Err(fail("the header must be `path,<class>,<class>,...`".into()));
    }
    let classes: Vec<String> = head[1..].iter().map(|s| s.trim().to_string()).collect();
    let mut t = ScoreTable { classes, paths: Vec::new(), scores: Vec::new(), lines: Vec::new(), bad_lines: Vec::new() };
    for (line, fields) in rows {
        let row = fields.and_then(|f| {
            if f.len() != t.classes.len() + 1 {
                return Err(format!("{} fields, the header has {}", f.len(), t.classes.len() + 1));
            }
            let vals: std::result::Result<Vec<f32>, String> = f[1..]
                .iter()
                .map(|v| match v.trim().parse::<f32>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    _ => Err(format!("`{v}` is not a finite number")),
                })
                .collect();
            Ok((f[0].clone(), vals?))
        });
        match row {
            Ok((p, vals)) => {
                t.paths.push(p);
                t.scores.extend(vals);
                t.lines.push(line);
            }
            Err(e) => t.bad_lines.push(format!("line {line}: {e}")),
        }
    }
    Ok(t)
}

/// A score table matched to a dataset: the images present on both sides, in dataset order.
#[derive(Clone, Debug, Serialize)]
pub struct Matched {
    /// Index into the dataset's items of each matched image.
    #[serde(skip)]
    pub items: Vec<usize>,
    /// (matched, dataset classes) row-major, columns in the dataset's class order.
    #[serde(skip)]
    pub scores: Vec<f32>,
    /// Dataset images with no row in the scores (left out of the metrics).
    pub missing_rows: Vec<String>,
    /// Rows that match no dataset image (ignored).
    pub unknown_rows: Vec<String>,
    /// Paths with more than one row (the first row is used).
    pub duplicate_rows: Vec<String>,
    /// Score columns that are not classes of the dataset (ignored).
    pub extra_columns: Vec<String>,
}

/// Matches rows to the dataset's images by path, tolerantly: the path relative to the dataset
/// root (as `zeroshot` writes it), the full path, either with a leading `./` or `\\`
/// separators, an absolute path under the dataset root, or else the file name alone when
/// exactly one dataset image has it. Columns are matched by class name, in any order and in
/// any of the spellings of [`Dataset::class_aliases`]; a class with no column is an error.
pub fn match_dataset(t: &ScoreTable, ds: &Dataset) -> Result<Matched> {
    let c = ds.num_classes();
    let mut col_of = vec![None; c];
    let mut extra_columns = Vec::new();
    for (j, name) in t.classes.iter().enumerate() {
        match (0..c).find(|&k| col_of[k].is_none() && ds.class_aliases(k).contains(name)) {
            Some(k) => col_of[k] = Some(j),
            None => extra_columns.push(name.clone()),
        }
    }
    let missing: Vec<&str> = (0..c).filter(|&k| col_of[k].is_none()).map(|k| ds.classes[k].as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::Dataset(format!("the scores have no column for the classes: {}", missing.join(", "))));
    }
    let index = PathIndex::new(ds);
    let width = t.classes.len();
    let mut row_of: Vec<Option<usize>> = vec![None; ds.items.len()];
    let (mut unknown_rows, mut duplicate_rows) = (Vec::new(), Vec::new());
    for (r, p) in t.paths.iter().enumerate() {
        match index.find(p) {
            Some(i) if row_of[i].is_some() => duplicate_rows.push(p.clone()),
            Some(i) => row_of[i] = Some(r),
            None => unknown_rows.push(p.clone()),
        }
    }
    let (mut items, mut scores, mut missing_rows) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in row_of.iter().enumerate() {
        match r {
            Some(r) => {
                items.push(i);
                let row = &t.scores[r * width..(r + 1) * width];
                scores.extend(col_of.iter().flatten().map(|&j| row[j]));
            }
            None => missing_rows.push(ds.items[i].rel.clone()),
        }
    }
    Ok(Matched { items, scores, missing_rows, unknown_rows, duplicate_rows, extra_columns })
}

impl Matched {
    /// One line per kind of mismatch (count and the first few paths), for people.
    pub fn describe(&self) -> Vec<String> {
        let kinds = [
            ("dataset images without a row (left out)", &self.missing_rows),
            ("rows matching no dataset image (ignored)", &self.unknown_rows),
            ("paths with several rows (first used)", &self.duplicate_rows),
            ("columns that are not dataset classes (ignored)", &self.extra_columns),
        ];
        kinds.iter().filter(|(_, list)| !list.is_empty()).map(|(what, list)| count_and_head(what, list)).collect()
    }
}

/// `what: N (a, b, c, d, e, ...)`.
pub fn count_and_head(what: &str, list: &[String]) -> String {
    let head: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
    format!("{what}: {} ({}{})", list.len(), head.join(", "), if list.len() > 5 { ", ..." } else { "" })
}

/// The dataset's images by every key a row's path may use.
struct PathIndex {
    /// The dataset root, canonical (None if it cannot be resolved).
    root: Option<std::path::PathBuf>,
    /// Relative and full paths, `/`-separated.
    by_path: HashMap<String, usize>,
    /// File name to image, None when several images share it.
    by_name: HashMap<String, Option<usize>>,
}

impl PathIndex {
    fn new(ds: &Dataset) -> PathIndex {
        let mut by_path = HashMap::with_capacity(ds.items.len() * 2);
        let mut by_name: HashMap<String, Option<usize>> = HashMap::with_capacity(ds.items.len());
        for (i, it) in ds.items.iter().enumerate() {
            by_path.insert(it.rel.clone(), i);
            by_path.insert(it.path.display().to_string().replace('\\', "/"), i);
            if let Some(name) = it.path.file_name().and_then(|n| n.to_str()) {
                by_name.entry(name.to_string()).and_modify(|v| *v = None).or_insert(Some(i));
            }
        }
        PathIndex { root: ds.root.canonicalize().ok(), by_path, by_name }
    }

    fn find(&self, p: &str) -> Option<usize> {
        let p = p.trim().replace('\\', "/");
        let p = p.trim_start_matches("./");
        if let Some(&i) = self.by_path.get(p) {
            return Some(i);
        }
        // An absolute path under the root, however the root was spelt.
        let abs = std::path::Path::new(p);
        if let (true, Some(root)) = (abs.is_absolute(), &self.root) {
            let canon = abs.canonicalize().unwrap_or_else(|_| abs.to_path_buf());
            if let Ok(rel) = canon.strip_prefix(root) {
                if let Some(&i) = self.by_path.get(rel.to_string_lossy().replace('\\', "/").as_str()) {
                    return Some(i);
                }
            }
        }
        let name = p.rsplit('/').next().unwrap_or(p);
        self.by_name.get(name).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_before_and_read_back() {
        let paths = ["a.jpg".to_string(), "dir/b, c.jpg".to_string()];
        let classes = ["cat".to_string(), "say \"hi\"".to_string(), "x,y".to_string()];
        let scores = [1.0, -0.25, 3.5e-8, 0.0, 1e30, -7.0];
        let text = to_csv(&paths, &classes, &scores);
        assert_eq!(
            text,
            "path,cat,\"say \"\"hi\"\"\",\"x,y\"\na.jpg,1e0,-2.5e-1,3.5e-8\n\"dir/b, c.jpg\",0e0,1e30,-7e0\n"
        );
        let file = std::env::temp_dir().join(format!("labelfree-scores-{}.csv", std::process::id()));
        let bad = "\nc.jpg,1,2\nd.jpg,1,x,3\n\"e.jpg,1,2,3\n";
        std::fs::write(&file, format!("\u{feff}{text}{bad}")).unwrap();
        let t = read(&file);
        std::fs::remove_file(&file).unwrap();
        let t = t.unwrap();
        assert_eq!(t.classes, classes);
        assert_eq!(t.paths, paths);
        assert_eq!(t.scores, scores);
        assert_eq!(t.lines, [2, 3]);
        assert_eq!(t.bad_lines.len(), 3, "{:?}", t.bad_lines);
        assert_eq!(t.bad_lines[0], "line 5: 3 fields, the header has 4");
        assert_eq!(t.bad_lines[1], "line 6: `x` is not a finite number");
        assert!(t.bad_lines[2].starts_with("line 7: unterminated quote"), "{}", t.bad_lines[2]);
    }
}
