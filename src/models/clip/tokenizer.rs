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
//! touch ordinary text: HTML entities (the full HTML5 table, numeric references, and ftfy's
//! all-caps spellings such as `&EACUTE;`), C1 control characters read as Windows-1252, Latin
//! ligatures, full-width and half-width forms, curly quotes, line breaks, terminal escapes,
//! control characters, and NFC. The entity table and the WHATWG rules for references without
//! `;` come from `htmlize`, normalization from `unicode-normalization`; what is left here is
//! what ftfy and Python do differently from those. Not reproduced: mojibake repair
//! (`fix_encoding`). Text free of mojibake tokenizes exactly as open_clip does (see
//! tests/tokenizer.rs), up to the Unicode versions: Python 3.11 normalizes by Unicode 14,
//! `unicode-normalization` 0.1.26 by Unicode 18, which differs only on characters added since.

use unicode_normalization::UnicodeNormalization;

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
        Tensor::new(&[texts.len(), context_len], Storage::I32(v)).expect("rows have exactly context_len ids")
    }
}

/// open_clip's default text cleaning: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let collapsed: Vec<&str> = unescaped.split(is_py_space).filter(|w| !w.is_empty()).collect();
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
    // ftfy's `unescape_html="auto"` turns itself off at the first segment that contains '<', and
    // stays off for the segments after it.
    let mut unescape = true;
    for seg in text.split_inclusive('\n') {
        unescape &= !seg.contains('<');
        let mut cur = seg.to_string();
        loop {
            let mut next = if unescape { ftfy_unescape(&cur) } else { cur.clone() };
            next = fix_c1_controls(&next);
            next = fix_chars(&next);
            next = fix_line_breaks(&next);
            next = remove_terminal_escapes(&next);
            next.retain(|c| !is_removed_control(c));
            next = next.nfc().collect();
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
        0x20AC, 0x81, 0x201A, 0x192, 0x201E, 0x2026, 0x2020, 0x2021, 0x2C6, 0x2030, 0x160, 0x2039, 0x152, 0x8D, 0x17D,
        0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x2DC, 0x2122, 0x161, 0x203A, 0x153, 0x9D,
        0x17E, 0x178,
    ];
    char::from_u32(TABLE[(c - 0x80) as usize]).unwrap()
}

fn fix_c1_controls(s: &str) -> String {
    s.chars().map(|c| if ('\u{80}'..='\u{9F}').contains(&c) { cp1252(c as u32) } else { c }).collect()
}

/// Ligatures, character width and curly quotes: one char in, zero or more chars out.
fn fix_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let rep: &str = match c {
            // fix_latin_ligatures (ftfy's own list, not NFKC: it keeps ſt's long s)
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
            // fix_character_width: the ideographic space, and NFKC of the half-width and
            // full-width forms block U+FF01..U+FFEF (full-width ASCII, half-width katakana and
            // hangul, symbols)
            '\u{3000}' => " ",
            '\u{FF01}'..='\u{FFEF}' => {
                out.extend(std::iter::once(c).nfkc());
                continue;
            }
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
    s.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
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

// ---------------------------------------------------------------------------------------------
// HTML references: the table and the WHATWG parsing are htmlize's; Python's and ftfy's
// departures from them are here.

/// Decodes a numeric character reference as Python's `html.unescape` does. Unlike WHATWG (and
/// htmlize), Python drops references to control characters and noncharacters.
fn numeric_ref(digits: &str, hex: bool) -> String {
    let radix = if hex { 16 } else { 10 };
    // Python's int() has no limit; everything past 0x10FFFF decodes alike.
    let num = digits.chars().fold(0u64, |n, d| {
        n.saturating_mul(radix).saturating_add(u64::from(d.to_digit(radix as u32).expect("checked digit")))
    });
    match num {
        0 => "\u{FFFD}".to_string(),
        0x0D => "\r".to_string(),
        0x80..=0x9F => cp1252(num as u32).to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".to_string(),
        n if n > 0x10FFFF => "\u{FFFD}".to_string(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
        n if n & 0xFFFE == 0xFFFE => String::new(),
        n => char::from_u32(n as u32).expect("not a surrogate, at most 0x10FFFF").to_string(),
    }
}

/// The numeric reference at the start of `after` (the text after '&'), as Python matches it
/// (`#[0-9]+;?` or `#[xX][0-9a-fA-F]+;?`): its decoding and its length in bytes.
fn numeric_at(after: &str) -> Option<(String, usize)> {
    let b = after.as_bytes();
    if b.first() != Some(&b'#') {
        return None;
    }
    let hex = matches!(b.get(1), Some(b'x' | b'X'));
    let start = if hex { 2 } else { 1 };
    let len = b[start..].iter().take_while(|c| if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() }).count();
    if len == 0 {
        return None;
    }
    let end = start + len;
    let used = end + usize::from(b.get(end) == Some(&b';'));
    Some((numeric_ref(&after[start..end], hex), used))
}

/// Python's `html.unescape`. Named references (with or without `;`, the longest legacy name
/// without `;` winning) are htmlize's `unescape`, which follows the same WHATWG table and rule;
/// numeric references are decoded here, the Python way.
fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    // `s[done..]` is still to be written; named references never contain '&' or '#', so the
    // text between two numeric references unescapes on its own exactly as inside `s`.
    let mut done = 0;
    let mut from = 0;
    while let Some(p) = s[from..].find("&#").map(|p| from + p) {
        match numeric_at(&s[p + 1..]) {
            Some((rep, used)) => {
                out.push_str(&htmlize::unescape(&s[done..p]));
                out.push_str(&rep);
                done = p + 1 + used;
                from = done;
            }
            None => from = p + 2,
        }
    }
    out.push_str(&htmlize::unescape(&s[done..]));
    out
}

/// ftfy's `unescape_html`: only `&#?[0-9A-Za-z]{1,24};`, decoded whole or not at all. Names with
/// `;` come from the HTML5 table; numeric references from `html.unescape` unless what it gives
/// still holds a `;`; and an all-caps spelling of a lower-case name (`&EACUTE;`) gives the
/// upper case of that entity, unless `html.unescape` would itself decode the spelling.
fn ftfy_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        let numeric = after.starts_with('#');
        let body_start = usize::from(numeric);
        let body_len = after[body_start..].bytes().take(24).take_while(|c| c.is_ascii_alphanumeric()).count();
        let end = body_start + body_len;
        if body_len > 0 && after.as_bytes().get(end) == Some(&b';') {
            let text = &rest[p..p + end + 2]; // '&' .. ';'
            let rep = if let Some(exp) = htmlize::ENTITIES.get(text.as_bytes()) {
                Some(String::from_utf8_lossy(exp).into_owned())
            } else if numeric {
                Some(html_unescape(text)).filter(|u| !u.contains(';'))
            } else {
                all_caps_entity(text)
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

/// ftfy's all-caps entities: `text` (`&NAME;`, not in the table) is the upper case of a
/// lower-case entity name and `html.unescape` leaves it as it is.
fn all_caps_entity(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    if lower == text || text.bytes().any(|c| c.is_ascii_lowercase()) {
        return None;
    }
    let exp = htmlize::ENTITIES.get(lower.as_bytes())?;
    if html_unescape(text) != text {
        return None;
    }
    Some(String::from_utf8_lossy(exp).to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean("  A  Photo\tof\n a DOG.  "), "a photo of a dog.");
        assert_eq!(clean("Fish &amp; Chips &lt;3"), "fish & chips <3");
        assert_eq!(clean("&amp;amp;amp;amp;"), "&");
        assert_eq!(clean("caf\u{65}\u{301}"), "caf\u{e9}");
        assert_eq!(clean("\u{201C}quoted\u{201D} \u{FB01}sh \u{FF21}\u{FF22}"), "\"quoted\" fish ab");
        assert_eq!(clean("&#65;&#x42;&#0;&copy &notit;"), "ab\u{FFFD}\u{A9} \u{AC}it;");
    }

    /// Expected values from Python 3.11's `html.unescape` and ftfy 6.3's `unescape_html`.
    #[test]
    fn unescaping_as_python_and_ftfy() {
        let numeric = "<&#1;&#x81;&#xFDD0;&#65534;&#x7f;&#128;&#55296;&#1114112;&#0;&#13;&#9;>";
        assert_eq!(html_unescape(numeric), "<\u{81}\u{20ac}\u{fffd}\u{fffd}\u{fffd}\r\t>");
        assert_eq!(
            html_unescape("&notit; &ampx; &amp-x; &lt.gt; &timesb; &times &copy2 &#x; &#; &#abc"),
            "\u{ac}it; &x; &-x; <.gt; \u{22a0} \u{d7} \u{a9}2 &#x; &#; &#abc"
        );
        assert_eq!(html_unescape("&Jscr;ohn &CounterClockwiseContourIntegral; &fjlig;"), "\u{1d4a5}ohn \u{2233} fj");
        // ftfy: only `;`-terminated references, decoded whole; all-caps names of lower-case ones
        assert_eq!(ftfy_unescape("&copy &copy; &#59; &#12ab; &#x41;"), "&copy \u{a9} &#59; &#12ab; A");
        assert_eq!(
            ftfy_unescape("P&EACUTE;REZ STRA&SZLIG;E &nTILDE; &LTRI; &AMP;"),
            "P\u{c9}REZ STRASSE &nTILDE; &LTRI; &"
        );
    }
}
