//! Prompt templates: one template, or the 85 of TagCLIP.
// Temporary minimal version; replaced by the tokenizer branch.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";
pub fn fill(template: &str, class_name: &str) -> String {
    template.replace("{}", class_name)
}
