//! Resizing, cropping and normalisation, pixel-compatible with PIL / torchvision.
