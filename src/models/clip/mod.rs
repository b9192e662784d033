//! CLIP: weights (both naming schemes), ViT, ModifiedResNet, text encoder, tokenizer, prompts.

pub mod prompts;
pub mod tokenizer;
