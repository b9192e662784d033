//! Images in: decoding (any JPEG/PNG to RGB), the transforms the methods use and the
//! parallel loader that feeds the models.

pub mod decode;
pub mod images;
pub mod loader;
pub mod transforms;
