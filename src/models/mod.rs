pub mod clip;
pub mod resnet50;
pub mod resnet50_cuda;
