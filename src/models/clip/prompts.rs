//! Prompt templates: one template, or the 85 of TagCLIP.
//!
//! The 80 ImageNet templates are those of the CLIP paper's prompt-engineering notebook, in its
//! order; TagCLIP (official `clip/clip.py`, `encode_text_with_prompt_ensemble`) uses them in
//! that order followed by five scene templates. `{}` marks where the class name goes.

/// The single template of plain CLIP zero-shot classification.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// The 80 ImageNet templates of the CLIP paper, in the notebook's order.
pub const IMAGENET_TEMPLATES: [&str; 80] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// TagCLIP's five extra scene templates, appended after the ImageNet ones.
pub const SCENE_TEMPLATES: [&str; 5] = [
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
];

/// TagCLIP's background words for PASCAL VOC (25), appended after the dataset classes.
pub const BACKGROUND_VOC: [&str; 25] = [
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
];

/// TagCLIP's background words for COCO (23): the VOC list without "keyboard" and "sign".
pub const BACKGROUND_COCO: [&str; 23] = [
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley", "bridge",
];

/// The 85 templates of TagCLIP: the 80 ImageNet templates, then the 5 scene templates.
pub fn tagclip_templates() -> Vec<&'static str> {
    IMAGENET_TEMPLATES.iter().chain(SCENE_TEMPLATES.iter()).copied().collect()
}

/// Puts `class_name` in place of the first `{}` of `template` (Python's `template.format(c)`).
/// A template without `{}` is returned unchanged.
pub fn fill(template: &str, class_name: &str) -> String {
    template.replacen("{}", class_name, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_fill() {
        let t = tagclip_templates();
        assert_eq!(t.len(), 85);
        assert!(t.iter().all(|s| s.matches("{}").count() == 1));
        assert_eq!(t[0], "a bad photo of a {}.");
        assert_eq!(t[84], "this is one {} in the scene.");
        assert_eq!(fill(DEFAULT_TEMPLATE, "dog"), "a photo of a dog.");
        assert_eq!(fill("a {} in a video game.", "tvmonitor"), "a tvmonitor in a video game.");
        assert!(!BACKGROUND_COCO.contains(&"keyboard") && !BACKGROUND_COCO.contains(&"sign"));
    }
}
