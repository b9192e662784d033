//! Prompt templates: one template, or the 85 of TagCLIP.
