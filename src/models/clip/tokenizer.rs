//! CLIP's BPE tokenizer: 77 tokens with start/end tokens and truncation.
