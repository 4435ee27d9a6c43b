//! coarse2fine: fine-grained image classification with the Coarse2Fine method, in hand-written
//! CUDA kernels and Rust. This package is the facade over the workspace's crates (dependencies
//! point down only):
//!
//! - [`train`] (`c2f-train`): datasets, the Coarse2Fine model, the trainer, checkpoints, the CLI;
//! - [`dist`] (`c2f-dist`): data-parallel training, NCCL and the launcher;
//! - [`inception`] (`c2f-inception`): the InceptionV3 runtime, its CPU and CUDA backends;
//! - [`kernels`] (`c2f-kernels`): the custom CUDA kernels beside their CPU references, and the
//!   device plumbing.
//!
//! It also owns the `c2f` binary and the top-level `tests/` and `benches/`.

pub use c2f_dist as dist;
pub use c2f_inception as inception;
pub use c2f_kernels as kernels;
pub use c2f_train as train;
