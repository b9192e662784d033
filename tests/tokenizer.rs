//! The tokenizer against open_clip's `tokenize` (fixtures made by tools/make_fixtures.py).

use labelfree::models::clip::prompts::{self, fill, tagclip_templates, DEFAULT_TEMPLATE};
use labelfree::models::clip::tokenizer::{ClipTokenizer, EOT, SOT};
use labelfree::tensor::Storage;
use labelfree::DType;

fn read_fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/tokenizer/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("tokenizer fixture (run tools/make_fixtures.py)");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn fixture() -> serde_json::Value {
    read_fixture("openclip_tokenize.json")
}

/// Every case of the fixture tokenizes to open_clip's ids; returns the number of cases.
fn check_against(doc: &serde_json::Value) -> usize {
    let tok = ClipTokenizer::new().unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let n = case["context_length"].as_u64().unwrap() as usize;
        let want: Vec<i32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        let got = tok.encode(text, n);
        if got != want {
            failures.push(format!("{text:?} (n={n}):\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    cases.len()
}

#[test]
fn matches_open_clip() {
    assert!(check_against(&fixture()) >= 60);
}

/// Hangul, capitals with accents, full- and half-width forms, decomposed letters in and outside
/// Latin (NFC), HTML entities: the whole HTML5 table, ftfy's all-caps names, numeric references.
#[test]
fn matches_open_clip_on_unicode_and_entities() {
    assert!(check_against(&read_fixture("openclip_unicode.json")) >= 40);
}

#[test]
fn every_tagclip_template_is_in_the_fixture() {
    let doc = fixture();
    let texts: Vec<&str> = doc["cases"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    for t in tagclip_templates() {
        let prefix = &t[..t.find("{}").unwrap()];
        let suffix = &t[t.find("{}").unwrap() + 2..];
        assert!(texts.iter().any(|s| s.starts_with(prefix) && s.ends_with(suffix)), "template {t:?} not covered");
    }
}

#[test]
fn batch_shape_and_layout() {
    let tok = ClipTokenizer::new().unwrap();
    let texts: Vec<String> = ["dog", "traffic light", ""].iter().map(|c| fill(DEFAULT_TEMPLATE, c)).collect();
    let t = tok.encode_batch(&texts, 77);
    assert_eq!(t.shape(), &[3, 77]);
    assert_eq!(t.dtype(), DType::I32);
    let Storage::I32(v) = t.storage() else { panic!("not i32") };
    for (b, text) in texts.iter().enumerate() {
        let row = &v[b * 77..(b + 1) * 77];
        assert_eq!(row, tok.encode(text, 77).as_slice());
        assert_eq!(row[0], SOT);
        // the end token is the row's largest id and appears once
        let eot_at = row.iter().position(|&x| x == EOT).unwrap();
        assert_eq!(row.iter().filter(|&&x| x == EOT).count(), 1);
        assert!(row[eot_at + 1..].iter().all(|&x| x == 0));
    }
    // "a photo of a dog." = a, photo, of, a, dog, .
    assert_eq!(&v[..8], &[SOT, 320, 1125, 539, 320, 1929, 269, EOT]);
}

#[test]
fn truncation_keeps_end_token() {
    let tok = ClipTokenizer::new().unwrap();
    let long = "a photo of a dog ".repeat(40);
    let row = tok.encode(&long, 77);
    assert_eq!(row.len(), 77);
    assert_eq!(row[0], SOT);
    assert_eq!(row[76], EOT);
    assert!(row[1..76].iter().all(|&x| x != 0 && x != EOT));
    assert_eq!(tok.encode("", 2), vec![SOT, EOT]);
}

#[test]
fn templates() {
    let t = tagclip_templates();
    assert_eq!(t.len(), 85);
    assert_eq!(prompts::IMAGENET_TEMPLATES.len(), 80);
    assert_eq!(&t[80..], &prompts::SCENE_TEMPLATES);
    assert_eq!(prompts::BACKGROUND_VOC.len(), 25);
    assert_eq!(prompts::BACKGROUND_COCO.len(), 23);
    assert_eq!(fill("itap of a {}.", "cat"), "itap of a cat.");
}
