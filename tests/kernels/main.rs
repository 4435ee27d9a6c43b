//! The custom CUDA kernels (c2f-kernels): each op's CPU reference against float64 and finite
//! differences, its GPU launcher against the reference, the kernel build, and the CUDA emulator.
//!
//! One test binary for the area, a module per op or concern: Cargo finds `tests/<area>/main.rs`
//! by itself, so a new module needs only its `mod` line here.

#[path = "../common"]
mod common {
    pub mod child;
    pub mod gpu_tests;
    pub mod recorded;
    pub mod skip;
}

mod augment;
mod axpby;
mod bap;
mod batch_norm;
mod cast;
mod center_loss;
mod conv_transpose;
mod cuda_emulator;
mod cuda_graph;
mod kernel_build;
mod mask;
mod nvtx;
mod pool;
mod sgd;
mod sigmoid_bce;
mod softmax_ce;
mod transpose;
