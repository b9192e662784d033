//! Images in: datasets (VOC, COCO, NUS-WIDE, CSV), decoding (any JPEG/PNG to RGB), the
//! transforms the methods use (colour jitter included) and the parallel loader that feeds the
//! models.

pub mod color_jitter;
pub mod datasets;
pub mod decode;
pub mod images;
pub mod loader;
pub mod transforms;
