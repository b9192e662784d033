//! The small subset of CSV the engine reads and writes: comma-separated fields, a field quoted
//! with `"` when it holds a comma or a quote (`""` inside quotes is one quote). Records are
//! single lines (a quoted field may not hold a line break).

/// A field as written: quoted only when it must be.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one line into its fields.
pub fn parse_record(line: &str) -> Result<Vec<String>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(ch) = chars.next() {
        if quoted {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                '"' => {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        return Err("text after a closing quote".into());
                    }
                }
                c => cur.push(c),
            }
        } else {
            match ch {
                ',' => {
                    fields.push(std::mem::take(&mut cur));
                    at_start = true;
                    continue;
                }
                '"' if at_start => quoted = true,
                c => cur.push(c),
            }
        }
        at_start = false;
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let fields = ["plain", "with,comma", "with \"quote\"", "", "a;b"];
        let line: Vec<String> = fields.iter().map(|f| field(f)).collect();
        assert_eq!(parse_record(&line.join(",")).unwrap(), fields);
        assert!(parse_record("\"open").is_err());
        assert!(parse_record("\"a\"b,c").is_err());
        assert_eq!(parse_record("a,b\r").unwrap(), ["a", "b"]);
    }
}
