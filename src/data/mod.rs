//! Images in: decoding (any JPEG/PNG to RGB) and the transforms the methods use.

pub mod decode;
pub mod images;
pub mod transforms;
