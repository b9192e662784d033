//! CLIP's BPE tokenizer: 77 tokens with start/end tokens and truncation.
//!
//! Semantics follow open_clip's `tokenize` (its `SimpleTokenizer` with the default `lower`
//! cleaning), which is OpenAI CLIP's `tokenize(..., truncate=True)`:
//!
//! 1. clean: `ftfy.fix_text`, then `html.unescape` twice, strip; collapse whitespace runs to one
//!    space; lowercase;
//! 2. split into words with CLIP's pattern and encode each word with byte-level BPE (the OpenAI
//!    vocabulary of 49,408 tokens, shipped by `instant-clip-tokenizer`);
//! 3. row = [49406] + tokens + [49407], zero padded to `context_len`; a row that is too long is
//!    cut to `context_len` and its last entry set to 49407.
//!
//! ftfy is a large heuristic library. The cleaning here reproduces the parts of `fix_text` that
//! touch ordinary text: HTML entities (named ones from a table of common entities, numeric ones
//! in full), C1 control characters read as Windows-1252, Latin ligatures, full-width ASCII and
//! symbols, curly quotes, line breaks, terminal escapes, control characters, and NFC
//! composition of Latin letters with one or two combining marks. Not reproduced: mojibake
//! repair (`fix_encoding`), all-caps entity names (`&EACUTE;`), half-width katakana/hangul, and
//! NFC outside the Latin ranges. ASCII text, and Unicode text that is already NFC and free of
//! mojibake, tokenizes exactly as open_clip does (see tests/tokenizer.rs).

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// `<start_of_text>` id.
pub const SOT: i32 = 49406;
/// `<end_of_text>` id (also the largest id: text pooling may use argmax).
pub const EOT: i32 = 49407;
/// Vocabulary size of the OpenAI CLIP tokenizer.
pub const VOCAB_SIZE: usize = 49408;
/// Context length of every released CLIP text tower.
pub const CONTEXT_LEN: usize = 77;

pub struct ClipTokenizer {
    bpe: instant_clip_tokenizer::Tokenizer,
}

impl ClipTokenizer {
    /// Builds the tokenizer from the bundled OpenAI vocabulary (a few tens of ms: build once).
    pub fn new() -> Result<Self> {
        let bpe = std::panic::catch_unwind(instant_clip_tokenizer::Tokenizer::new)
            .map_err(|_| Error::Tokenizer("bundled BPE vocabulary failed to load".into()))?;
        let sot = i32::from(bpe.start_of_text().to_u16());
        let eot = i32::from(bpe.end_of_text().to_u16());
        if sot != SOT || eot != EOT {
            return Err(Error::Tokenizer(format!(
                "unexpected special tokens: start {sot}, end {eot} (expected {SOT}, {EOT})"
            )));
        }
        Ok(ClipTokenizer { bpe })
    }

    /// Token ids of the cleaned text, without start/end tokens and without truncation.
    pub fn encode_raw(&self, text: &str) -> Vec<i32> {
        let cleaned = clean(text);
        let mut toks = Vec::with_capacity(cleaned.len() + 2);
        self.bpe.encode(&cleaned, &mut toks);
        toks.into_iter().map(|t| i32::from(t.to_u16())).collect()
    }

    /// One row of `context_len` ids: start, text, end, zero padding; truncated like open_clip.
    pub fn encode(&self, text: &str, context_len: usize) -> Vec<i32> {
        let mut row = Vec::with_capacity(context_len.max(2));
        row.push(SOT);
        row.extend(self.encode_raw(text));
        row.push(EOT);
        if row.len() > context_len {
            row.truncate(context_len);
            if let Some(last) = row.last_mut() {
                *last = EOT;
            }
        }
        row.resize(context_len, 0);
        row
    }

    /// (B, context_len) I32 tensor of rows as [`ClipTokenizer::encode`] makes them.
    pub fn encode_batch(&self, texts: &[String], context_len: usize) -> Tensor {
        let mut v = Vec::with_capacity(texts.len() * context_len);
        for t in texts {
            v.extend(self.encode(t, context_len));
        }
        Tensor::new(&[texts.len(), context_len], Storage::I32(v))
            .expect("rows have exactly context_len ids")
    }
}

/// open_clip's default text cleaning: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let collapsed: Vec<&str> = unescaped
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .collect();
    collapsed.join(" ").to_lowercase()
}

/// Python's `str.isspace` (what `str.split()` and `str.strip()` use).
fn is_py_space(c: char) -> bool {
    matches!(c,
        '\u{09}'..='\u{0D}' | '\u{1C}'..='\u{1F}' | ' ' | '\u{85}' | '\u{A0}' | '\u{1680}'
        | '\u{2000}'..='\u{200A}' | '\u{2028}' | '\u{2029}' | '\u{202F}' | '\u{205F}' | '\u{3000}')
}

// ---------------------------------------------------------------------------------------------
// ftfy.fix_text (the parts that matter for ordinary text)

/// ftfy works line by line (segments end after '\n') and repeats its fixes until the segment
/// stops changing.
fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for seg in text.split_inclusive('\n') {
        // ftfy's `unescape_html="auto"` turns itself off for a segment that contains '<'.
        let unescape = !seg.contains('<');
        let mut cur = seg.to_string();
        loop {
            let mut next = if unescape {
                ftfy_unescape(&cur)
            } else {
                cur.clone()
            };
            next = fix_c1_controls(&next);
            next = fix_chars(&next);
            next = fix_line_breaks(&next);
            next = remove_terminal_escapes(&next);
            next.retain(|c| !is_removed_control(c));
            next = nfc_latin(&next);
            if next == cur {
                break;
            }
            cur = next;
        }
        out.push_str(&cur);
    }
    out
}

/// Windows-1252 reading of the bytes 0x80..=0x9F; undefined ones map to themselves.
fn cp1252(c: u32) -> char {
    const TABLE: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x192, 0x201E, 0x2026, 0x2020, 0x2021, 0x2C6, 0x2030, 0x160, 0x2039,
        0x152, 0x8D, 0x17D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
        0x2DC, 0x2122, 0x161, 0x203A, 0x153, 0x9D, 0x17E, 0x178,
    ];
    char::from_u32(TABLE[(c - 0x80) as usize]).unwrap()
}

fn fix_c1_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if ('\u{80}'..='\u{9F}').contains(&c) {
                cp1252(c as u32)
            } else {
                c
            }
        })
        .collect()
}

/// Ligatures, character width and curly quotes: one char in, zero or more chars out.
fn fix_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let rep: &str = match c {
            // fix_latin_ligatures
            '\u{132}' => "IJ",
            '\u{133}' => "ij",
            '\u{149}' => "\u{2BC}n",
            '\u{1F1}' => "DZ",
            '\u{1F2}' => "Dz",
            '\u{1F3}' => "dz",
            '\u{1C4}' => "D\u{17D}",
            '\u{1C5}' => "D\u{17E}",
            '\u{1C6}' => "d\u{17E}",
            '\u{1C7}' => "LJ",
            '\u{1C8}' => "Lj",
            '\u{1C9}' => "lj",
            '\u{1CA}' => "NJ",
            '\u{1CB}' => "Nj",
            '\u{1CC}' => "nj",
            '\u{FB00}' => "ff",
            '\u{FB01}' => "fi",
            '\u{FB02}' => "fl",
            '\u{FB03}' => "ffi",
            '\u{FB04}' => "ffl",
            '\u{FB05}' => "\u{17F}t",
            '\u{FB06}' => "st",
            // fix_character_width (ideographic space, full-width forms, half-width symbols)
            '\u{3000}' => " ",
            '\u{FF01}'..='\u{FF5E}' => {
                out.push(char::from_u32(c as u32 - 0xFEE0).unwrap());
                continue;
            }
            '\u{FF5F}' => "\u{2985}",
            '\u{FF60}' => "\u{2986}",
            '\u{FFE0}' => "\u{A2}",
            '\u{FFE1}' => "\u{A3}",
            '\u{FFE2}' => "\u{AC}",
            '\u{FFE3}' => " \u{304}",
            '\u{FFE4}' => "\u{A6}",
            '\u{FFE5}' => "\u{A5}",
            '\u{FFE6}' => "\u{20A9}",
            '\u{FFE8}' => "\u{2502}",
            '\u{FFE9}' => "\u{2190}",
            '\u{FFEA}' => "\u{2191}",
            '\u{FFEB}' => "\u{2192}",
            '\u{FFEC}' => "\u{2193}",
            '\u{FFED}' => "\u{25A0}",
            '\u{FFEE}' => "\u{25CB}",
            // uncurl_quotes
            '\u{2BC}' | '\u{2018}'..='\u{201B}' => "'",
            '\u{201C}'..='\u{201F}' => "\"",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(rep);
    }
    out
}

fn fix_line_breaks(s: &str) -> String {
    s.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI escapes `ESC [ (digits|;)* letter`.
fn remove_terminal_escapes(s: &str) -> String {
    if !s.contains('\u{1B}') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1B}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{00}'..='\u{08}' | '\u{0B}' | '\u{0E}'..='\u{1F}' | '\u{7F}' | '\u{206A}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}')
}

/// NFC composition restricted to the Latin precomposed letters (U+00C0..U+024F,
/// U+1E00..U+1EFF): a letter followed by combining marks is composed pairwise.
fn nfc_latin(s: &str) -> String {
    if s.chars().all(|c| !('\u{300}'..='\u{36F}').contains(&c)) {
        return s.to_string();
    }
    let mut out: Vec<char> = Vec::with_capacity(s.len());
    for c in s.chars() {
        if ('\u{300}'..='\u{36F}').contains(&c) {
            if let Some(last) = out.last_mut() {
                if let Ok(i) = NFC_PAIRS.binary_search_by(|&(a, b, _)| (a, b).cmp(&(*last, c))) {
                    *last = NFC_PAIRS[i].2;
                    continue;
                }
            }
        }
        out.push(c);
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// HTML entities

/// Decodes a numeric character reference like Python's `html.unescape`; `None` when `digits`
/// is not a number.
fn numeric_ref(digits: &str, hex: bool) -> Option<String> {
    if digits.is_empty() {
        return None;
    }
    let radix = if hex { 16 } else { 10 };
    let mut num: u64 = 0;
    for d in digits.chars() {
        num = num
            .saturating_mul(radix)
            .saturating_add(u64::from(d.to_digit(radix as u32)?));
    }
    let s = match num {
        0 => "\u{FFFD}".to_string(),
        0x0D => "\r".to_string(),
        0x80..=0x9F => cp1252(num as u32).to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".to_string(),
        n if n > 0x10FFFF => "\u{FFFD}".to_string(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        n if n & 0xFFFE == 0xFFFE => String::new(),
        n => char::from_u32(n as u32)?.to_string(),
    };
    Some(s)
}

fn entity(name: &str) -> Option<(char, bool)> {
    ENTITIES
        .binary_search_by(|&(n, _, _)| n.cmp(name))
        .ok()
        .map(|i| (ENTITIES[i].1, ENTITIES[i].2))
}

/// Python's `html.unescape`, with named entities limited to the table below.
fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        let (rep, used) = unescape_one(after);
        match rep {
            Some(r) => {
                out.push_str(&r);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One reference after '&': the replacement and how many bytes of `after` it consumed.
fn unescape_one(after: &str) -> (Option<String>, usize) {
    let b = after.as_bytes();
    if b.first() == Some(&b'#') {
        let hex = matches!(b.get(1), Some(b'x') | Some(b'X'));
        let start = if hex { 2 } else { 1 };
        let len = after[start..]
            .bytes()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if len == 0 {
            return (None, 0);
        }
        let mut used = start + len;
        if b.get(used) == Some(&b';') {
            used += 1;
        }
        return (numeric_ref(&after[start..start + len], hex), used);
    }
    // [^\t\n\f <&#;]{1,32};?
    let mut name_end = 0;
    for (n, (i, c)) in after.char_indices().enumerate() {
        if n == 32 || matches!(c, '\t' | '\n' | '\u{0C}' | ' ' | '<' | '&' | '#' | ';') {
            break;
        }
        name_end = i + c.len_utf8();
    }
    if name_end == 0 {
        return (None, 0);
    }
    let name = &after[..name_end];
    let semi = b.get(name_end) == Some(&b';');
    let used = name_end + usize::from(semi);
    match entity(name) {
        Some((c, legacy)) if semi || legacy => return (Some(c.to_string()), used),
        _ => {}
    }
    // Longest legacy prefix (those may appear without ';'); the rest is kept verbatim.
    let s_len = used; // the matched text, ';' included
    let s = &after[..s_len];
    for x in (2..s_len).rev() {
        if !s.is_char_boundary(x) {
            continue;
        }
        if let Some((c, true)) = entity(&s[..x]) {
            let mut r = c.to_string();
            r.push_str(&s[x..]);
            return (Some(r), s_len);
        }
    }
    (None, 0)
}

/// ftfy's `unescape_html`: only `&name;` and `&#...;` with the semicolon, fully consumed.
fn ftfy_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        // &#?[0-9A-Za-z]{1,24};
        let numeric = after.starts_with('#');
        let body_start = usize::from(numeric);
        let body_len = after[body_start..]
            .bytes()
            .take(24)
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        let end = body_start + body_len;
        if body_len > 0 && after.as_bytes().get(end) == Some(&b';') {
            let body = &after[body_start..end];
            let rep = if numeric {
                let (hex, digits) = match body.as_bytes()[0] {
                    b'x' | b'X' => (true, &body[1..]),
                    _ => (false, body),
                };
                let valid = !digits.is_empty()
                    && digits.bytes().all(|c| {
                        if hex {
                            c.is_ascii_hexdigit()
                        } else {
                            c.is_ascii_digit()
                        }
                    });
                if valid {
                    numeric_ref(digits, hex)
                } else {
                    None
                }
            } else {
                entity(body).map(|(c, _)| c.to_string())
            };
            if let Some(r) = rep {
                out.push_str(&r);
                rest = &after[end + 1..];
                continue;
            }
        }
        out.push('&');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// (name, character, valid without ';' in HTML5). Sorted by name for binary search. The Latin-1
/// entities of HTML 4 (the only ones HTML5 accepts without ';') plus common typographic,
/// arrow, math and Greek entities.
const ENTITIES: &[(&str, char, bool)] = &[
    ("AElig", '\u{00C6}', true),
    ("AMP", '\u{0026}', true),
    ("Aacute", '\u{00C1}', true),
    ("Acirc", '\u{00C2}', true),
    ("Agrave", '\u{00C0}', true),
    ("Alpha", '\u{0391}', false),
    ("Aring", '\u{00C5}', true),
    ("Atilde", '\u{00C3}', true),
    ("Auml", '\u{00C4}', true),
    ("Beta", '\u{0392}', false),
    ("COPY", '\u{00A9}', true),
    ("Ccedil", '\u{00C7}', true),
    ("Chi", '\u{03A7}', false),
    ("Dagger", '\u{2021}', false),
    ("Delta", '\u{0394}', false),
    ("ETH", '\u{00D0}', true),
    ("Eacute", '\u{00C9}', true),
    ("Ecirc", '\u{00CA}', true),
    ("Egrave", '\u{00C8}', true),
    ("Epsilon", '\u{0395}', false),
    ("Eta", '\u{0397}', false),
    ("Euml", '\u{00CB}', true),
    ("GT", '\u{003E}', true),
    ("Gamma", '\u{0393}', false),
    ("Iacute", '\u{00CD}', true),
    ("Icirc", '\u{00CE}', true),
    ("Igrave", '\u{00CC}', true),
    ("Iota", '\u{0399}', false),
    ("Iuml", '\u{00CF}', true),
    ("Kappa", '\u{039A}', false),
    ("LT", '\u{003C}', true),
    ("Lambda", '\u{039B}', false),
    ("Mu", '\u{039C}', false),
    ("Ntilde", '\u{00D1}', true),
    ("Nu", '\u{039D}', false),
    ("OElig", '\u{0152}', false),
    ("Oacute", '\u{00D3}', true),
    ("Ocirc", '\u{00D4}', true),
    ("Ograve", '\u{00D2}', true),
    ("Omega", '\u{03A9}', false),
    ("Omicron", '\u{039F}', false),
    ("Oslash", '\u{00D8}', true),
    ("Otilde", '\u{00D5}', true),
    ("Ouml", '\u{00D6}', true),
    ("Phi", '\u{03A6}', false),
    ("Pi", '\u{03A0}', false),
    ("Prime", '\u{2033}', false),
    ("Psi", '\u{03A8}', false),
    ("QUOT", '\u{0022}', true),
    ("REG", '\u{00AE}', true),
    ("Rho", '\u{03A1}', false),
    ("Scaron", '\u{0160}', false),
    ("Sigma", '\u{03A3}', false),
    ("THORN", '\u{00DE}', true),
    ("Tau", '\u{03A4}', false),
    ("Theta", '\u{0398}', false),
    ("Uacute", '\u{00DA}', true),
    ("Ucirc", '\u{00DB}', true),
    ("Ugrave", '\u{00D9}', true),
    ("Upsilon", '\u{03A5}', false),
    ("Uuml", '\u{00DC}', true),
    ("Xi", '\u{039E}', false),
    ("Yacute", '\u{00DD}', true),
    ("Yuml", '\u{0178}', false),
    ("Zeta", '\u{0396}', false),
    ("aacute", '\u{00E1}', true),
    ("acirc", '\u{00E2}', true),
    ("acute", '\u{00B4}', true),
    ("aelig", '\u{00E6}', true),
    ("agrave", '\u{00E0}', true),
    ("alpha", '\u{03B1}', false),
    ("amp", '\u{0026}', true),
    ("apos", '\u{0027}', false),
    ("aring", '\u{00E5}', true),
    ("atilde", '\u{00E3}', true),
    ("auml", '\u{00E4}', true),
    ("bdquo", '\u{201E}', false),
    ("beta", '\u{03B2}', false),
    ("brvbar", '\u{00A6}', true),
    ("bull", '\u{2022}', false),
    ("ccedil", '\u{00E7}', true),
    ("cedil", '\u{00B8}', true),
    ("cent", '\u{00A2}', true),
    ("chi", '\u{03C7}', false),
    ("circ", '\u{02C6}', false),
    ("clubs", '\u{2663}', false),
    ("copy", '\u{00A9}', true),
    ("curren", '\u{00A4}', true),
    ("dagger", '\u{2020}', false),
    ("darr", '\u{2193}', false),
    ("deg", '\u{00B0}', true),
    ("delta", '\u{03B4}', false),
    ("diams", '\u{2666}', false),
    ("divide", '\u{00F7}', true),
    ("eacute", '\u{00E9}', true),
    ("ecirc", '\u{00EA}', true),
    ("egrave", '\u{00E8}', true),
    ("emsp", '\u{2003}', false),
    ("ensp", '\u{2002}', false),
    ("epsilon", '\u{03B5}', false),
    ("eta", '\u{03B7}', false),
    ("eth", '\u{00F0}', true),
    ("euml", '\u{00EB}', true),
    ("euro", '\u{20AC}', false),
    ("fnof", '\u{0192}', false),
    ("frac12", '\u{00BD}', true),
    ("frac14", '\u{00BC}', true),
    ("frac34", '\u{00BE}', true),
    ("gamma", '\u{03B3}', false),
    ("ge", '\u{2265}', false),
    ("gt", '\u{003E}', true),
    ("harr", '\u{2194}', false),
    ("hearts", '\u{2665}', false),
    ("hellip", '\u{2026}', false),
    ("iacute", '\u{00ED}', true),
    ("icirc", '\u{00EE}', true),
    ("iexcl", '\u{00A1}', true),
    ("igrave", '\u{00EC}', true),
    ("infin", '\u{221E}', false),
    ("iota", '\u{03B9}', false),
    ("iquest", '\u{00BF}', true),
    ("iuml", '\u{00EF}', true),
    ("kappa", '\u{03BA}', false),
    ("lambda", '\u{03BB}', false),
    ("laquo", '\u{00AB}', true),
    ("larr", '\u{2190}', false),
    ("ldquo", '\u{201C}', false),
    ("le", '\u{2264}', false),
    ("lrm", '\u{200E}', false),
    ("lsaquo", '\u{2039}', false),
    ("lsquo", '\u{2018}', false),
    ("lt", '\u{003C}', true),
    ("macr", '\u{00AF}', true),
    ("mdash", '\u{2014}', false),
    ("micro", '\u{00B5}', true),
    ("middot", '\u{00B7}', true),
    ("minus", '\u{2212}', false),
    ("mu", '\u{03BC}', false),
    ("nbsp", '\u{00A0}', true),
    ("ndash", '\u{2013}', false),
    ("ne", '\u{2260}', false),
    ("not", '\u{00AC}', true),
    ("ntilde", '\u{00F1}', true),
    ("nu", '\u{03BD}', false),
    ("oacute", '\u{00F3}', true),
    ("ocirc", '\u{00F4}', true),
    ("oelig", '\u{0153}', false),
    ("ograve", '\u{00F2}', true),
    ("omega", '\u{03C9}', false),
    ("omicron", '\u{03BF}', false),
    ("ordf", '\u{00AA}', true),
    ("ordm", '\u{00BA}', true),
    ("oslash", '\u{00F8}', true),
    ("otilde", '\u{00F5}', true),
    ("ouml", '\u{00F6}', true),
    ("para", '\u{00B6}', true),
    ("permil", '\u{2030}', false),
    ("phi", '\u{03C6}', false),
    ("pi", '\u{03C0}', false),
    ("plusmn", '\u{00B1}', true),
    ("pound", '\u{00A3}', true),
    ("prime", '\u{2032}', false),
    ("psi", '\u{03C8}', false),
    ("quot", '\u{0022}', true),
    ("raquo", '\u{00BB}', true),
    ("rarr", '\u{2192}', false),
    ("rdquo", '\u{201D}', false),
    ("reg", '\u{00AE}', true),
    ("rho", '\u{03C1}', false),
    ("rlm", '\u{200F}', false),
    ("rsaquo", '\u{203A}', false),
    ("rsquo", '\u{2019}', false),
    ("sbquo", '\u{201A}', false),
    ("scaron", '\u{0161}', false),
    ("sect", '\u{00A7}', true),
    ("shy", '\u{00AD}', true),
    ("sigma", '\u{03C3}', false),
    ("sigmaf", '\u{03C2}', false),
    ("spades", '\u{2660}', false),
    ("sup1", '\u{00B9}', true),
    ("sup2", '\u{00B2}', true),
    ("sup3", '\u{00B3}', true),
    ("szlig", '\u{00DF}', true),
    ("tau", '\u{03C4}', false),
    ("theta", '\u{03B8}', false),
    ("thinsp", '\u{2009}', false),
    ("thorn", '\u{00FE}', true),
    ("tilde", '\u{02DC}', false),
    ("times", '\u{00D7}', true),
    ("trade", '\u{2122}', false),
    ("uacute", '\u{00FA}', true),
    ("uarr", '\u{2191}', false),
    ("ucirc", '\u{00FB}', true),
    ("ugrave", '\u{00F9}', true),
    ("uml", '\u{00A8}', true),
    ("upsilon", '\u{03C5}', false),
    ("uuml", '\u{00FC}', true),
    ("xi", '\u{03BE}', false),
    ("yacute", '\u{00FD}', true),
    ("yen", '\u{00A5}', true),
    ("yuml", '\u{00FF}', true),
    ("zeta", '\u{03B6}', false),
    ("zwj", '\u{200D}', false),
    ("zwnj", '\u{200C}', false),
];

/// (letter, combining mark, composed) canonical compositions of the Latin ranges, sorted.
const NFC_PAIRS: &[(char, char, char)] = &[
    ('\u{0041}', '\u{0300}', '\u{00C0}'),
    ('\u{0041}', '\u{0301}', '\u{00C1}'),
    ('\u{0041}', '\u{0302}', '\u{00C2}'),
    ('\u{0041}', '\u{0303}', '\u{00C3}'),
    ('\u{0041}', '\u{0304}', '\u{0100}'),
    ('\u{0041}', '\u{0306}', '\u{0102}'),
    ('\u{0041}', '\u{0307}', '\u{0226}'),
    ('\u{0041}', '\u{0308}', '\u{00C4}'),
    ('\u{0041}', '\u{0309}', '\u{1EA2}'),
    ('\u{0041}', '\u{030A}', '\u{00C5}'),
    ('\u{0041}', '\u{030C}', '\u{01CD}'),
    ('\u{0041}', '\u{030F}', '\u{0200}'),
    ('\u{0041}', '\u{0311}', '\u{0202}'),
    ('\u{0041}', '\u{0323}', '\u{1EA0}'),
    ('\u{0041}', '\u{0325}', '\u{1E00}'),
    ('\u{0041}', '\u{0328}', '\u{0104}'),
    ('\u{0042}', '\u{0307}', '\u{1E02}'),
    ('\u{0042}', '\u{0323}', '\u{1E04}'),
    ('\u{0042}', '\u{0331}', '\u{1E06}'),
    ('\u{0043}', '\u{0301}', '\u{0106}'),
    ('\u{0043}', '\u{0302}', '\u{0108}'),
    ('\u{0043}', '\u{0307}', '\u{010A}'),
    ('\u{0043}', '\u{030C}', '\u{010C}'),
    ('\u{0043}', '\u{0327}', '\u{00C7}'),
    ('\u{0044}', '\u{0307}', '\u{1E0A}'),
    ('\u{0044}', '\u{030C}', '\u{010E}'),
    ('\u{0044}', '\u{0323}', '\u{1E0C}'),
    ('\u{0044}', '\u{0327}', '\u{1E10}'),
    ('\u{0044}', '\u{032D}', '\u{1E12}'),
    ('\u{0044}', '\u{0331}', '\u{1E0E}'),
    ('\u{0045}', '\u{0300}', '\u{00C8}'),
    ('\u{0045}', '\u{0301}', '\u{00C9}'),
    ('\u{0045}', '\u{0302}', '\u{00CA}'),
    ('\u{0045}', '\u{0303}', '\u{1EBC}'),
    ('\u{0045}', '\u{0304}', '\u{0112}'),
    ('\u{0045}', '\u{0306}', '\u{0114}'),
    ('\u{0045}', '\u{0307}', '\u{0116}'),
    ('\u{0045}', '\u{0308}', '\u{00CB}'),
    ('\u{0045}', '\u{0309}', '\u{1EBA}'),
    ('\u{0045}', '\u{030C}', '\u{011A}'),
    ('\u{0045}', '\u{030F}', '\u{0204}'),
    ('\u{0045}', '\u{0311}', '\u{0206}'),
    ('\u{0045}', '\u{0323}', '\u{1EB8}'),
    ('\u{0045}', '\u{0327}', '\u{0228}'),
    ('\u{0045}', '\u{0328}', '\u{0118}'),
    ('\u{0045}', '\u{032D}', '\u{1E18}'),
    ('\u{0045}', '\u{0330}', '\u{1E1A}'),
    ('\u{0046}', '\u{0307}', '\u{1E1E}'),
    ('\u{0047}', '\u{0301}', '\u{01F4}'),
    ('\u{0047}', '\u{0302}', '\u{011C}'),
    ('\u{0047}', '\u{0304}', '\u{1E20}'),
    ('\u{0047}', '\u{0306}', '\u{011E}'),
    ('\u{0047}', '\u{0307}', '\u{0120}'),
    ('\u{0047}', '\u{030C}', '\u{01E6}'),
    ('\u{0047}', '\u{0327}', '\u{0122}'),
    ('\u{0048}', '\u{0302}', '\u{0124}'),
    ('\u{0048}', '\u{0307}', '\u{1E22}'),
    ('\u{0048}', '\u{0308}', '\u{1E26}'),
    ('\u{0048}', '\u{030C}', '\u{021E}'),
    ('\u{0048}', '\u{0323}', '\u{1E24}'),
    ('\u{0048}', '\u{0327}', '\u{1E28}'),
    ('\u{0048}', '\u{032E}', '\u{1E2A}'),
    ('\u{0049}', '\u{0300}', '\u{00CC}'),
    ('\u{0049}', '\u{0301}', '\u{00CD}'),
    ('\u{0049}', '\u{0302}', '\u{00CE}'),
    ('\u{0049}', '\u{0303}', '\u{0128}'),
    ('\u{0049}', '\u{0304}', '\u{012A}'),
    ('\u{0049}', '\u{0306}', '\u{012C}'),
    ('\u{0049}', '\u{0307}', '\u{0130}'),
    ('\u{0049}', '\u{0308}', '\u{00CF}'),
    ('\u{0049}', '\u{0309}', '\u{1EC8}'),
    ('\u{0049}', '\u{030C}', '\u{01CF}'),
    ('\u{0049}', '\u{030F}', '\u{0208}'),
    ('\u{0049}', '\u{0311}', '\u{020A}'),
    ('\u{0049}', '\u{0323}', '\u{1ECA}'),
    ('\u{0049}', '\u{0328}', '\u{012E}'),
    ('\u{0049}', '\u{0330}', '\u{1E2C}'),
    ('\u{004A}', '\u{0302}', '\u{0134}'),
    ('\u{004B}', '\u{0301}', '\u{1E30}'),
    ('\u{004B}', '\u{030C}', '\u{01E8}'),
    ('\u{004B}', '\u{0323}', '\u{1E32}'),
    ('\u{004B}', '\u{0327}', '\u{0136}'),
    ('\u{004B}', '\u{0331}', '\u{1E34}'),
    ('\u{004C}', '\u{0301}', '\u{0139}'),
    ('\u{004C}', '\u{030C}', '\u{013D}'),
    ('\u{004C}', '\u{0323}', '\u{1E36}'),
    ('\u{004C}', '\u{0327}', '\u{013B}'),
    ('\u{004C}', '\u{032D}', '\u{1E3C}'),
    ('\u{004C}', '\u{0331}', '\u{1E3A}'),
    ('\u{004D}', '\u{0301}', '\u{1E3E}'),
    ('\u{004D}', '\u{0307}', '\u{1E40}'),
    ('\u{004D}', '\u{0323}', '\u{1E42}'),
    ('\u{004E}', '\u{0300}', '\u{01F8}'),
    ('\u{004E}', '\u{0301}', '\u{0143}'),
    ('\u{004E}', '\u{0303}', '\u{00D1}'),
    ('\u{004E}', '\u{0307}', '\u{1E44}'),
    ('\u{004E}', '\u{030C}', '\u{0147}'),
    ('\u{004E}', '\u{0323}', '\u{1E46}'),
    ('\u{004E}', '\u{0327}', '\u{0145}'),
    ('\u{004E}', '\u{032D}', '\u{1E4A}'),
    ('\u{004E}', '\u{0331}', '\u{1E48}'),
    ('\u{004F}', '\u{0300}', '\u{00D2}'),
    ('\u{004F}', '\u{0301}', '\u{00D3}'),
    ('\u{004F}', '\u{0302}', '\u{00D4}'),
    ('\u{004F}', '\u{0303}', '\u{00D5}'),
    ('\u{004F}', '\u{0304}', '\u{014C}'),
    ('\u{004F}', '\u{0306}', '\u{014E}'),
    ('\u{004F}', '\u{0307}', '\u{022E}'),
    ('\u{004F}', '\u{0308}', '\u{00D6}'),
    ('\u{004F}', '\u{0309}', '\u{1ECE}'),
    ('\u{004F}', '\u{030B}', '\u{0150}'),
    ('\u{004F}', '\u{030C}', '\u{01D1}'),
    ('\u{004F}', '\u{030F}', '\u{020C}'),
    ('\u{004F}', '\u{0311}', '\u{020E}'),
    ('\u{004F}', '\u{031B}', '\u{01A0}'),
    ('\u{004F}', '\u{0323}', '\u{1ECC}'),
    ('\u{004F}', '\u{0328}', '\u{01EA}'),
    ('\u{0050}', '\u{0301}', '\u{1E54}'),
    ('\u{0050}', '\u{0307}', '\u{1E56}'),
    ('\u{0052}', '\u{0301}', '\u{0154}'),
    ('\u{0052}', '\u{0307}', '\u{1E58}'),
    ('\u{0052}', '\u{030C}', '\u{0158}'),
    ('\u{0052}', '\u{030F}', '\u{0210}'),
    ('\u{0052}', '\u{0311}', '\u{0212}'),
    ('\u{0052}', '\u{0323}', '\u{1E5A}'),
    ('\u{0052}', '\u{0327}', '\u{0156}'),
    ('\u{0052}', '\u{0331}', '\u{1E5E}'),
    ('\u{0053}', '\u{0301}', '\u{015A}'),
    ('\u{0053}', '\u{0302}', '\u{015C}'),
    ('\u{0053}', '\u{0307}', '\u{1E60}'),
    ('\u{0053}', '\u{030C}', '\u{0160}'),
    ('\u{0053}', '\u{0323}', '\u{1E62}'),
    ('\u{0053}', '\u{0326}', '\u{0218}'),
    ('\u{0053}', '\u{0327}', '\u{015E}'),
    ('\u{0054}', '\u{0307}', '\u{1E6A}'),
    ('\u{0054}', '\u{030C}', '\u{0164}'),
    ('\u{0054}', '\u{0323}', '\u{1E6C}'),
    ('\u{0054}', '\u{0326}', '\u{021A}'),
    ('\u{0054}', '\u{0327}', '\u{0162}'),
    ('\u{0054}', '\u{032D}', '\u{1E70}'),
    ('\u{0054}', '\u{0331}', '\u{1E6E}'),
    ('\u{0055}', '\u{0300}', '\u{00D9}'),
    ('\u{0055}', '\u{0301}', '\u{00DA}'),
    ('\u{0055}', '\u{0302}', '\u{00DB}'),
    ('\u{0055}', '\u{0303}', '\u{0168}'),
    ('\u{0055}', '\u{0304}', '\u{016A}'),
    ('\u{0055}', '\u{0306}', '\u{016C}'),
    ('\u{0055}', '\u{0308}', '\u{00DC}'),
    ('\u{0055}', '\u{0309}', '\u{1EE6}'),
    ('\u{0055}', '\u{030A}', '\u{016E}'),
    ('\u{0055}', '\u{030B}', '\u{0170}'),
    ('\u{0055}', '\u{030C}', '\u{01D3}'),
    ('\u{0055}', '\u{030F}', '\u{0214}'),
    ('\u{0055}', '\u{0311}', '\u{0216}'),
    ('\u{0055}', '\u{031B}', '\u{01AF}'),
    ('\u{0055}', '\u{0323}', '\u{1EE4}'),
    ('\u{0055}', '\u{0324}', '\u{1E72}'),
    ('\u{0055}', '\u{0328}', '\u{0172}'),
    ('\u{0055}', '\u{032D}', '\u{1E76}'),
    ('\u{0055}', '\u{0330}', '\u{1E74}'),
    ('\u{0056}', '\u{0303}', '\u{1E7C}'),
    ('\u{0056}', '\u{0323}', '\u{1E7E}'),
    ('\u{0057}', '\u{0300}', '\u{1E80}'),
    ('\u{0057}', '\u{0301}', '\u{1E82}'),
    ('\u{0057}', '\u{0302}', '\u{0174}'),
    ('\u{0057}', '\u{0307}', '\u{1E86}'),
    ('\u{0057}', '\u{0308}', '\u{1E84}'),
    ('\u{0057}', '\u{0323}', '\u{1E88}'),
    ('\u{0058}', '\u{0307}', '\u{1E8A}'),
    ('\u{0058}', '\u{0308}', '\u{1E8C}'),
    ('\u{0059}', '\u{0300}', '\u{1EF2}'),
    ('\u{0059}', '\u{0301}', '\u{00DD}'),
    ('\u{0059}', '\u{0302}', '\u{0176}'),
    ('\u{0059}', '\u{0303}', '\u{1EF8}'),
    ('\u{0059}', '\u{0304}', '\u{0232}'),
    ('\u{0059}', '\u{0307}', '\u{1E8E}'),
    ('\u{0059}', '\u{0308}', '\u{0178}'),
    ('\u{0059}', '\u{0309}', '\u{1EF6}'),
    ('\u{0059}', '\u{0323}', '\u{1EF4}'),
    ('\u{005A}', '\u{0301}', '\u{0179}'),
    ('\u{005A}', '\u{0302}', '\u{1E90}'),
    ('\u{005A}', '\u{0307}', '\u{017B}'),
    ('\u{005A}', '\u{030C}', '\u{017D}'),
    ('\u{005A}', '\u{0323}', '\u{1E92}'),
    ('\u{005A}', '\u{0331}', '\u{1E94}'),
    ('\u{0061}', '\u{0300}', '\u{00E0}'),
    ('\u{0061}', '\u{0301}', '\u{00E1}'),
    ('\u{0061}', '\u{0302}', '\u{00E2}'),
    ('\u{0061}', '\u{0303}', '\u{00E3}'),
    ('\u{0061}', '\u{0304}', '\u{0101}'),
    ('\u{0061}', '\u{0306}', '\u{0103}'),
    ('\u{0061}', '\u{0307}', '\u{0227}'),
    ('\u{0061}', '\u{0308}', '\u{00E4}'),
    ('\u{0061}', '\u{0309}', '\u{1EA3}'),
    ('\u{0061}', '\u{030A}', '\u{00E5}'),
    ('\u{0061}', '\u{030C}', '\u{01CE}'),
    ('\u{0061}', '\u{030F}', '\u{0201}'),
    ('\u{0061}', '\u{0311}', '\u{0203}'),
    ('\u{0061}', '\u{0323}', '\u{1EA1}'),
    ('\u{0061}', '\u{0325}', '\u{1E01}'),
    ('\u{0061}', '\u{0328}', '\u{0105}'),
    ('\u{0062}', '\u{0307}', '\u{1E03}'),
    ('\u{0062}', '\u{0323}', '\u{1E05}'),
    ('\u{0062}', '\u{0331}', '\u{1E07}'),
    ('\u{0063}', '\u{0301}', '\u{0107}'),
    ('\u{0063}', '\u{0302}', '\u{0109}'),
    ('\u{0063}', '\u{0307}', '\u{010B}'),
    ('\u{0063}', '\u{030C}', '\u{010D}'),
    ('\u{0063}', '\u{0327}', '\u{00E7}'),
    ('\u{0064}', '\u{0307}', '\u{1E0B}'),
    ('\u{0064}', '\u{030C}', '\u{010F}'),
    ('\u{0064}', '\u{0323}', '\u{1E0D}'),
    ('\u{0064}', '\u{0327}', '\u{1E11}'),
    ('\u{0064}', '\u{032D}', '\u{1E13}'),
    ('\u{0064}', '\u{0331}', '\u{1E0F}'),
    ('\u{0065}', '\u{0300}', '\u{00E8}'),
    ('\u{0065}', '\u{0301}', '\u{00E9}'),
    ('\u{0065}', '\u{0302}', '\u{00EA}'),
    ('\u{0065}', '\u{0303}', '\u{1EBD}'),
    ('\u{0065}', '\u{0304}', '\u{0113}'),
    ('\u{0065}', '\u{0306}', '\u{0115}'),
    ('\u{0065}', '\u{0307}', '\u{0117}'),
    ('\u{0065}', '\u{0308}', '\u{00EB}'),
    ('\u{0065}', '\u{0309}', '\u{1EBB}'),
    ('\u{0065}', '\u{030C}', '\u{011B}'),
    ('\u{0065}', '\u{030F}', '\u{0205}'),
    ('\u{0065}', '\u{0311}', '\u{0207}'),
    ('\u{0065}', '\u{0323}', '\u{1EB9}'),
    ('\u{0065}', '\u{0327}', '\u{0229}'),
    ('\u{0065}', '\u{0328}', '\u{0119}'),
    ('\u{0065}', '\u{032D}', '\u{1E19}'),
    ('\u{0065}', '\u{0330}', '\u{1E1B}'),
    ('\u{0066}', '\u{0307}', '\u{1E1F}'),
    ('\u{0067}', '\u{0301}', '\u{01F5}'),
    ('\u{0067}', '\u{0302}', '\u{011D}'),
    ('\u{0067}', '\u{0304}', '\u{1E21}'),
    ('\u{0067}', '\u{0306}', '\u{011F}'),
    ('\u{0067}', '\u{0307}', '\u{0121}'),
    ('\u{0067}', '\u{030C}', '\u{01E7}'),
    ('\u{0067}', '\u{0327}', '\u{0123}'),
    ('\u{0068}', '\u{0302}', '\u{0125}'),
    ('\u{0068}', '\u{0307}', '\u{1E23}'),
    ('\u{0068}', '\u{0308}', '\u{1E27}'),
    ('\u{0068}', '\u{030C}', '\u{021F}'),
    ('\u{0068}', '\u{0323}', '\u{1E25}'),
    ('\u{0068}', '\u{0327}', '\u{1E29}'),
    ('\u{0068}', '\u{032E}', '\u{1E2B}'),
    ('\u{0068}', '\u{0331}', '\u{1E96}'),
    ('\u{0069}', '\u{0300}', '\u{00EC}'),
    ('\u{0069}', '\u{0301}', '\u{00ED}'),
    ('\u{0069}', '\u{0302}', '\u{00EE}'),
    ('\u{0069}', '\u{0303}', '\u{0129}'),
    ('\u{0069}', '\u{0304}', '\u{012B}'),
    ('\u{0069}', '\u{0306}', '\u{012D}'),
    ('\u{0069}', '\u{0308}', '\u{00EF}'),
    ('\u{0069}', '\u{0309}', '\u{1EC9}'),
    ('\u{0069}', '\u{030C}', '\u{01D0}'),
    ('\u{0069}', '\u{030F}', '\u{0209}'),
    ('\u{0069}', '\u{0311}', '\u{020B}'),
    ('\u{0069}', '\u{0323}', '\u{1ECB}'),
    ('\u{0069}', '\u{0328}', '\u{012F}'),
    ('\u{0069}', '\u{0330}', '\u{1E2D}'),
    ('\u{006A}', '\u{0302}', '\u{0135}'),
    ('\u{006A}', '\u{030C}', '\u{01F0}'),
    ('\u{006B}', '\u{0301}', '\u{1E31}'),
    ('\u{006B}', '\u{030C}', '\u{01E9}'),
    ('\u{006B}', '\u{0323}', '\u{1E33}'),
    ('\u{006B}', '\u{0327}', '\u{0137}'),
    ('\u{006B}', '\u{0331}', '\u{1E35}'),
    ('\u{006C}', '\u{0301}', '\u{013A}'),
    ('\u{006C}', '\u{030C}', '\u{013E}'),
    ('\u{006C}', '\u{0323}', '\u{1E37}'),
    ('\u{006C}', '\u{0327}', '\u{013C}'),
    ('\u{006C}', '\u{032D}', '\u{1E3D}'),
    ('\u{006C}', '\u{0331}', '\u{1E3B}'),
    ('\u{006D}', '\u{0301}', '\u{1E3F}'),
    ('\u{006D}', '\u{0307}', '\u{1E41}'),
    ('\u{006D}', '\u{0323}', '\u{1E43}'),
    ('\u{006E}', '\u{0300}', '\u{01F9}'),
    ('\u{006E}', '\u{0301}', '\u{0144}'),
    ('\u{006E}', '\u{0303}', '\u{00F1}'),
    ('\u{006E}', '\u{0307}', '\u{1E45}'),
    ('\u{006E}', '\u{030C}', '\u{0148}'),
    ('\u{006E}', '\u{0323}', '\u{1E47}'),
    ('\u{006E}', '\u{0327}', '\u{0146}'),
    ('\u{006E}', '\u{032D}', '\u{1E4B}'),
    ('\u{006E}', '\u{0331}', '\u{1E49}'),
    ('\u{006F}', '\u{0300}', '\u{00F2}'),
    ('\u{006F}', '\u{0301}', '\u{00F3}'),
    ('\u{006F}', '\u{0302}', '\u{00F4}'),
    ('\u{006F}', '\u{0303}', '\u{00F5}'),
    ('\u{006F}', '\u{0304}', '\u{014D}'),
    ('\u{006F}', '\u{0306}', '\u{014F}'),
    ('\u{006F}', '\u{0307}', '\u{022F}'),
    ('\u{006F}', '\u{0308}', '\u{00F6}'),
    ('\u{006F}', '\u{0309}', '\u{1ECF}'),
    ('\u{006F}', '\u{030B}', '\u{0151}'),
    ('\u{006F}', '\u{030C}', '\u{01D2}'),
    ('\u{006F}', '\u{030F}', '\u{020D}'),
    ('\u{006F}', '\u{0311}', '\u{020F}'),
    ('\u{006F}', '\u{031B}', '\u{01A1}'),
    ('\u{006F}', '\u{0323}', '\u{1ECD}'),
    ('\u{006F}', '\u{0328}', '\u{01EB}'),
    ('\u{0070}', '\u{0301}', '\u{1E55}'),
    ('\u{0070}', '\u{0307}', '\u{1E57}'),
    ('\u{0072}', '\u{0301}', '\u{0155}'),
    ('\u{0072}', '\u{0307}', '\u{1E59}'),
    ('\u{0072}', '\u{030C}', '\u{0159}'),
    ('\u{0072}', '\u{030F}', '\u{0211}'),
    ('\u{0072}', '\u{0311}', '\u{0213}'),
    ('\u{0072}', '\u{0323}', '\u{1E5B}'),
    ('\u{0072}', '\u{0327}', '\u{0157}'),
    ('\u{0072}', '\u{0331}', '\u{1E5F}'),
    ('\u{0073}', '\u{0301}', '\u{015B}'),
    ('\u{0073}', '\u{0302}', '\u{015D}'),
    ('\u{0073}', '\u{0307}', '\u{1E61}'),
    ('\u{0073}', '\u{030C}', '\u{0161}'),
    ('\u{0073}', '\u{0323}', '\u{1E63}'),
    ('\u{0073}', '\u{0326}', '\u{0219}'),
    ('\u{0073}', '\u{0327}', '\u{015F}'),
    ('\u{0074}', '\u{0307}', '\u{1E6B}'),
    ('\u{0074}', '\u{0308}', '\u{1E97}'),
    ('\u{0074}', '\u{030C}', '\u{0165}'),
    ('\u{0074}', '\u{0323}', '\u{1E6D}'),
    ('\u{0074}', '\u{0326}', '\u{021B}'),
    ('\u{0074}', '\u{0327}', '\u{0163}'),
    ('\u{0074}', '\u{032D}', '\u{1E71}'),
    ('\u{0074}', '\u{0331}', '\u{1E6F}'),
    ('\u{0075}', '\u{0300}', '\u{00F9}'),
    ('\u{0075}', '\u{0301}', '\u{00FA}'),
    ('\u{0075}', '\u{0302}', '\u{00FB}'),
    ('\u{0075}', '\u{0303}', '\u{0169}'),
    ('\u{0075}', '\u{0304}', '\u{016B}'),
    ('\u{0075}', '\u{0306}', '\u{016D}'),
    ('\u{0075}', '\u{0308}', '\u{00FC}'),
    ('\u{0075}', '\u{0309}', '\u{1EE7}'),
    ('\u{0075}', '\u{030A}', '\u{016F}'),
    ('\u{0075}', '\u{030B}', '\u{0171}'),
    ('\u{0075}', '\u{030C}', '\u{01D4}'),
    ('\u{0075}', '\u{030F}', '\u{0215}'),
    ('\u{0075}', '\u{0311}', '\u{0217}'),
    ('\u{0075}', '\u{031B}', '\u{01B0}'),
    ('\u{0075}', '\u{0323}', '\u{1EE5}'),
    ('\u{0075}', '\u{0324}', '\u{1E73}'),
    ('\u{0075}', '\u{0328}', '\u{0173}'),
    ('\u{0075}', '\u{032D}', '\u{1E77}'),
    ('\u{0075}', '\u{0330}', '\u{1E75}'),
    ('\u{0076}', '\u{0303}', '\u{1E7D}'),
    ('\u{0076}', '\u{0323}', '\u{1E7F}'),
    ('\u{0077}', '\u{0300}', '\u{1E81}'),
    ('\u{0077}', '\u{0301}', '\u{1E83}'),
    ('\u{0077}', '\u{0302}', '\u{0175}'),
    ('\u{0077}', '\u{0307}', '\u{1E87}'),
    ('\u{0077}', '\u{0308}', '\u{1E85}'),
    ('\u{0077}', '\u{030A}', '\u{1E98}'),
    ('\u{0077}', '\u{0323}', '\u{1E89}'),
    ('\u{0078}', '\u{0307}', '\u{1E8B}'),
    ('\u{0078}', '\u{0308}', '\u{1E8D}'),
    ('\u{0079}', '\u{0300}', '\u{1EF3}'),
    ('\u{0079}', '\u{0301}', '\u{00FD}'),
    ('\u{0079}', '\u{0302}', '\u{0177}'),
    ('\u{0079}', '\u{0303}', '\u{1EF9}'),
    ('\u{0079}', '\u{0304}', '\u{0233}'),
    ('\u{0079}', '\u{0307}', '\u{1E8F}'),
    ('\u{0079}', '\u{0308}', '\u{00FF}'),
    ('\u{0079}', '\u{0309}', '\u{1EF7}'),
    ('\u{0079}', '\u{030A}', '\u{1E99}'),
    ('\u{0079}', '\u{0323}', '\u{1EF5}'),
    ('\u{007A}', '\u{0301}', '\u{017A}'),
    ('\u{007A}', '\u{0302}', '\u{1E91}'),
    ('\u{007A}', '\u{0307}', '\u{017C}'),
    ('\u{007A}', '\u{030C}', '\u{017E}'),
    ('\u{007A}', '\u{0323}', '\u{1E93}'),
    ('\u{007A}', '\u{0331}', '\u{1E95}'),
    ('\u{00C2}', '\u{0300}', '\u{1EA6}'),
    ('\u{00C2}', '\u{0301}', '\u{1EA4}'),
    ('\u{00C2}', '\u{0303}', '\u{1EAA}'),
    ('\u{00C2}', '\u{0309}', '\u{1EA8}'),
    ('\u{00C4}', '\u{0304}', '\u{01DE}'),
    ('\u{00C5}', '\u{0301}', '\u{01FA}'),
    ('\u{00C6}', '\u{0301}', '\u{01FC}'),
    ('\u{00C6}', '\u{0304}', '\u{01E2}'),
    ('\u{00C7}', '\u{0301}', '\u{1E08}'),
    ('\u{00CA}', '\u{0300}', '\u{1EC0}'),
    ('\u{00CA}', '\u{0301}', '\u{1EBE}'),
    ('\u{00CA}', '\u{0303}', '\u{1EC4}'),
    ('\u{00CA}', '\u{0309}', '\u{1EC2}'),
    ('\u{00CF}', '\u{0301}', '\u{1E2E}'),
    ('\u{00D4}', '\u{0300}', '\u{1ED2}'),
    ('\u{00D4}', '\u{0301}', '\u{1ED0}'),
    ('\u{00D4}', '\u{0303}', '\u{1ED6}'),
    ('\u{00D4}', '\u{0309}', '\u{1ED4}'),
    ('\u{00D5}', '\u{0301}', '\u{1E4C}'),
    ('\u{00D5}', '\u{0304}', '\u{022C}'),
    ('\u{00D5}', '\u{0308}', '\u{1E4E}'),
    ('\u{00D6}', '\u{0304}', '\u{022A}'),
    ('\u{00D8}', '\u{0301}', '\u{01FE}'),
    ('\u{00DC}', '\u{0300}', '\u{01DB}'),
    ('\u{00DC}', '\u{0301}', '\u{01D7}'),
    ('\u{00DC}', '\u{0304}', '\u{01D5}'),
    ('\u{00DC}', '\u{030C}', '\u{01D9}'),
    ('\u{00E2}', '\u{0300}', '\u{1EA7}'),
    ('\u{00E2}', '\u{0301}', '\u{1EA5}'),
    ('\u{00E2}', '\u{0303}', '\u{1EAB}'),
    ('\u{00E2}', '\u{0309}', '\u{1EA9}'),
    ('\u{00E4}', '\u{0304}', '\u{01DF}'),
    ('\u{00E5}', '\u{0301}', '\u{01FB}'),
    ('\u{00E6}', '\u{0301}', '\u{01FD}'),
    ('\u{00E6}', '\u{0304}', '\u{01E3}'),
    ('\u{00E7}', '\u{0301}', '\u{1E09}'),
    ('\u{00EA}', '\u{0300}', '\u{1EC1}'),
    ('\u{00EA}', '\u{0301}', '\u{1EBF}'),
    ('\u{00EA}', '\u{0303}', '\u{1EC5}'),
    ('\u{00EA}', '\u{0309}', '\u{1EC3}'),
    ('\u{00EF}', '\u{0301}', '\u{1E2F}'),
    ('\u{00F4}', '\u{0300}', '\u{1ED3}'),
    ('\u{00F4}', '\u{0301}', '\u{1ED1}'),
    ('\u{00F4}', '\u{0303}', '\u{1ED7}'),
    ('\u{00F4}', '\u{0309}', '\u{1ED5}'),
    ('\u{00F5}', '\u{0301}', '\u{1E4D}'),
    ('\u{00F5}', '\u{0304}', '\u{022D}'),
    ('\u{00F5}', '\u{0308}', '\u{1E4F}'),
    ('\u{00F6}', '\u{0304}', '\u{022B}'),
    ('\u{00F8}', '\u{0301}', '\u{01FF}'),
    ('\u{00FC}', '\u{0300}', '\u{01DC}'),
    ('\u{00FC}', '\u{0301}', '\u{01D8}'),
    ('\u{00FC}', '\u{0304}', '\u{01D6}'),
    ('\u{00FC}', '\u{030C}', '\u{01DA}'),
    ('\u{0102}', '\u{0300}', '\u{1EB0}'),
    ('\u{0102}', '\u{0301}', '\u{1EAE}'),
    ('\u{0102}', '\u{0303}', '\u{1EB4}'),
    ('\u{0102}', '\u{0309}', '\u{1EB2}'),
    ('\u{0103}', '\u{0300}', '\u{1EB1}'),
    ('\u{0103}', '\u{0301}', '\u{1EAF}'),
    ('\u{0103}', '\u{0303}', '\u{1EB5}'),
    ('\u{0103}', '\u{0309}', '\u{1EB3}'),
    ('\u{0112}', '\u{0300}', '\u{1E14}'),
    ('\u{0112}', '\u{0301}', '\u{1E16}'),
    ('\u{0113}', '\u{0300}', '\u{1E15}'),
    ('\u{0113}', '\u{0301}', '\u{1E17}'),
    ('\u{014C}', '\u{0300}', '\u{1E50}'),
    ('\u{014C}', '\u{0301}', '\u{1E52}'),
    ('\u{014D}', '\u{0300}', '\u{1E51}'),
    ('\u{014D}', '\u{0301}', '\u{1E53}'),
    ('\u{015A}', '\u{0307}', '\u{1E64}'),
    ('\u{015B}', '\u{0307}', '\u{1E65}'),
    ('\u{0160}', '\u{0307}', '\u{1E66}'),
    ('\u{0161}', '\u{0307}', '\u{1E67}'),
    ('\u{0168}', '\u{0301}', '\u{1E78}'),
    ('\u{0169}', '\u{0301}', '\u{1E79}'),
    ('\u{016A}', '\u{0308}', '\u{1E7A}'),
    ('\u{016B}', '\u{0308}', '\u{1E7B}'),
    ('\u{017F}', '\u{0307}', '\u{1E9B}'),
    ('\u{01A0}', '\u{0300}', '\u{1EDC}'),
    ('\u{01A0}', '\u{0301}', '\u{1EDA}'),
    ('\u{01A0}', '\u{0303}', '\u{1EE0}'),
    ('\u{01A0}', '\u{0309}', '\u{1EDE}'),
    ('\u{01A0}', '\u{0323}', '\u{1EE2}'),
    ('\u{01A1}', '\u{0300}', '\u{1EDD}'),
    ('\u{01A1}', '\u{0301}', '\u{1EDB}'),
    ('\u{01A1}', '\u{0303}', '\u{1EE1}'),
    ('\u{01A1}', '\u{0309}', '\u{1EDF}'),
    ('\u{01A1}', '\u{0323}', '\u{1EE3}'),
    ('\u{01AF}', '\u{0300}', '\u{1EEA}'),
    ('\u{01AF}', '\u{0301}', '\u{1EE8}'),
    ('\u{01AF}', '\u{0303}', '\u{1EEE}'),
    ('\u{01AF}', '\u{0309}', '\u{1EEC}'),
    ('\u{01AF}', '\u{0323}', '\u{1EF0}'),
    ('\u{01B0}', '\u{0300}', '\u{1EEB}'),
    ('\u{01B0}', '\u{0301}', '\u{1EE9}'),
    ('\u{01B0}', '\u{0303}', '\u{1EEF}'),
    ('\u{01B0}', '\u{0309}', '\u{1EED}'),
    ('\u{01B0}', '\u{0323}', '\u{1EF1}'),
    ('\u{01B7}', '\u{030C}', '\u{01EE}'),
    ('\u{01EA}', '\u{0304}', '\u{01EC}'),
    ('\u{01EB}', '\u{0304}', '\u{01ED}'),
    ('\u{0226}', '\u{0304}', '\u{01E0}'),
    ('\u{0227}', '\u{0304}', '\u{01E1}'),
    ('\u{0228}', '\u{0306}', '\u{1E1C}'),
    ('\u{0229}', '\u{0306}', '\u{1E1D}'),
    ('\u{022E}', '\u{0304}', '\u{0230}'),
    ('\u{022F}', '\u{0304}', '\u{0231}'),
    ('\u{0292}', '\u{030C}', '\u{01EF}'),
    ('\u{1E36}', '\u{0304}', '\u{1E38}'),
    ('\u{1E37}', '\u{0304}', '\u{1E39}'),
    ('\u{1E5A}', '\u{0304}', '\u{1E5C}'),
    ('\u{1E5B}', '\u{0304}', '\u{1E5D}'),
    ('\u{1E62}', '\u{0307}', '\u{1E68}'),
    ('\u{1E63}', '\u{0307}', '\u{1E69}'),
    ('\u{1EA0}', '\u{0302}', '\u{1EAC}'),
    ('\u{1EA0}', '\u{0306}', '\u{1EB6}'),
    ('\u{1EA1}', '\u{0302}', '\u{1EAD}'),
    ('\u{1EA1}', '\u{0306}', '\u{1EB7}'),
    ('\u{1EB8}', '\u{0302}', '\u{1EC6}'),
    ('\u{1EB9}', '\u{0302}', '\u{1EC7}'),
    ('\u{1ECC}', '\u{0302}', '\u{1ED8}'),
    ('\u{1ECD}', '\u{0302}', '\u{1ED9}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted() {
        assert!(ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(NFC_PAIRS
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("  A  Photo\tof\n a DOG.  "), "a photo of a dog.");
        assert_eq!(clean("Fish &amp; Chips &lt;3"), "fish & chips <3");
        assert_eq!(clean("&amp;amp;amp;amp;"), "&");
        assert_eq!(clean("caf\u{65}\u{301}"), "caf\u{e9}");
        assert_eq!(
            clean("\u{201C}quoted\u{201D} \u{FB01}sh \u{FF21}\u{FF22}"),
            "\"quoted\" fish ab"
        );
        assert_eq!(
            clean("&#65;&#x42;&#0;&copy &notit;"),
            "ab\u{FFFD}\u{A9} \u{AC}it;"
        );
    }
}
