pub mod clip;
pub mod resnet50;
