//! Decoding image files to 8-bit RGB, as PIL's `Image.open(p).convert("RGB")` does.
