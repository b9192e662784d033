//! A generic multi-label CSV: `<root>/<split>.csv` (or `<root>/<split>` when that file
//! exists), one image a line, `path,labels`, the labels separated by `;` and written as class
//! names, the path relative to `root`. A first line `path,labels` is a header. The class list is
//! a text file with one name a line (default `<root>/classes.txt`); its order is the class order.
//!
//! Fields follow RFC 4180 as the `csv` crate reads it (quotes with `""` inside). A record that
//! does not fit (wrong field count, a class that is not in the list, a quote left open) is left
//! out and listed with its reason; the rest of the file is read.

use std::path::Path;

use crate::data::datasets::{first_existing, io_err, item, read_lines, RawDataset};
use crate::data::loader::Skipped;
use crate::error::{Error, Result};

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
    for (line, fields) in records(&text) {
        let bad = |reason: String| Skipped { path: format!("{}:{line}", list.display()), reason };
        let fields = match fields {
            Ok(f) => f,
            Err(e) => {
                skipped.push(bad(e));
                continue;
            }
        };
        if line == 1 && fields[0].trim() == "path" {
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
        let names = fields.get(1).map(String::as_str).unwrap_or("");
        for name in names.split(';').map(str::trim).filter(|s| !s.is_empty()) {
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

/// The records of a CSV text, as the `csv` crate reads them, each with the 1-based line it starts
/// on. Blank lines are left out; a byte-order mark opening a record is dropped. A field holding a
/// line break is an error: no path, label or score has one, so it is a quote left open that ran
/// on into the next lines.
pub(crate) fn records(text: &str) -> impl Iterator<Item = (usize, std::result::Result<Vec<String>, String>)> + '_ {
    let reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    // The crate's own line numbers go wrong after a blank line (rust-csv issue 208); its byte
    // offsets land at most on the line breaks before the record, so the line is counted here.
    let (mut counted_to, mut line) = (0usize, 1usize);
    let mut line_at = move |pos: Option<&csv::Position>| {
        let Some(pos) = pos else { return 0 };
        let at = (pos.byte() as usize).min(text.len());
        let start = at + text.as_bytes()[at..].iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
        if start >= counted_to {
            line += text.as_bytes()[counted_to..start].iter().filter(|&&b| b == b'\n').count();
            counted_to = start;
        }
        line
    };
    reader.into_records().filter_map(move |rec| {
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) => return Some((line_at(e.position()), Err(e.to_string()))),
        };
        let line = line_at(rec.position());
        let mut fields: Vec<String> = rec.iter().map(str::to_string).collect();
        if let Some(first) = fields.first_mut() {
            if first.starts_with('\u{feff}') {
                *first = first.trim_start_matches('\u{feff}').to_string();
            }
        }
        if fields.len() == 1 && fields[0].trim().is_empty() {
            return None;
        }
        if fields.iter().any(|f| f.contains(['\n', '\r'])) {
            return Some((line, Err("unterminated quote (a quoted field runs past the end of its line)".into())));
        }
        Some((line, Ok(fields)))
    })
}

#[cfg(test)]
mod tests {
    use super::records;

    fn read(text: &str) -> Vec<(usize, Result<Vec<String>, String>)> {
        records(text).collect()
    }

    #[test]
    fn records_and_lines() {
        let got = read("\n\u{feff}path,labels\r\n\n  \na,\"b,\"\"c\"\"\"\n\u{feff}d;e\n\r\n\n,\n\"x\ny\"\n\nz\n");
        let want: Vec<(usize, Result<Vec<String>, String>)> = vec![
            (2, Ok(vec!["path".into(), "labels".into()])),
            (5, Ok(vec!["a".into(), "b,\"c\"".into()])),
            (6, Ok(vec!["d;e".into()])),
            (9, Ok(vec!["".into(), "".into()])),
            (10, Err("unterminated quote (a quoted field runs past the end of its line)".into())),
            (13, Ok(vec!["z".into()])),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn an_open_quote_is_an_error_at_its_line() {
        let got = read("a,b\n\"c,d\ne,f\n");
        assert_eq!(got[0], (1, Ok(vec!["a".into(), "b".into()])));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].0, 2);
        assert!(got[1].1.as_ref().unwrap_err().contains("unterminated quote"), "{got:?}");
    }
}
