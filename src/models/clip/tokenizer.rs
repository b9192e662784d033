//! CLIP's BPE tokenizer: 77 tokens with start/end tokens and truncation.
// Temporary minimal version; replaced by the tokenizer branch.
use crate::error::Result;
use crate::tensor::{Storage, Tensor};

pub struct ClipTokenizer(instant_clip_tokenizer::Tokenizer);

impl ClipTokenizer {
    pub fn new() -> Result<Self> {
        Ok(ClipTokenizer(instant_clip_tokenizer::Tokenizer::new()))
    }
    pub fn encode(&self, text: &str, context_len: usize) -> Vec<i32> {
        let mut toks = Vec::new();
        self.0.encode(text, &mut toks);
        let mut ids = vec![49406i32];
        ids.extend(toks.iter().map(|t| t.to_u16() as i32));
        ids.truncate(context_len - 1);
        ids.push(49407);
        ids.resize(context_len, 0);
        ids
    }
    pub fn encode_batch(&self, texts: &[String], context_len: usize) -> Tensor {
        let v: Vec<i32> = texts.iter().flat_map(|t| self.encode(t, context_len)).collect();
        Tensor::new(&[texts.len(), context_len], Storage::I32(v)).expect("sizes match")
    }
}
