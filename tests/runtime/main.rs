//! The InceptionV3 runtime (c2f-inception): the graph against torchvision, weights, the CPU
//! convolution, the PyTorch golden case, training steps, the liveness plan, and every CUDA
//! backend op against the CPU backend.
//!
//! One test binary for the area, a module per op or concern: Cargo finds `tests/<area>/main.rs`
//! by itself, so a new module needs only its `mod` line here.

#[path = "../common"]
mod common {
    pub mod golden;
    pub mod graph;
    pub mod recorded;
    pub mod skip;
}

mod backend_ops;
mod cpu_conv;
mod cuda_graph;
mod cudnn_emulator;
mod inception_cuda;
mod inception_golden;
mod inception_spec;
mod inception_train;
mod inception_weights;
mod liveness;
mod staging;
