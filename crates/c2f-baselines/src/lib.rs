//! The library baselines the kernels crate's benches time its kernels against, and its tests hold
//! to the same CPU references: cuDNN and cuBLAS calls, and the unfused center loss
//! (`kernels/baselines/*.cu`). Nothing in training uses them, so they live outside the
//! production crates. Most are f32 only, as the libraries' calls are.
//!
//! One module per op of [`c2f_kernels`], named as there: [`axpby::AxpbyCublas`],
//! [`bap::BapCublas`], [`batch_norm::BatchNormCudnn`], [`cast::CastCudnn`], [`center_loss::CenterLossUnfused`],
//! [`conv_transpose::CudnnConvTranspose`], [`relu::ReluCudnn`], [`pool::Pool2dCudnn`],
//! [`sgd::SgdCublas`], [`sigmoid_bce::SigmoidBceCudnn`], [`softmax_ce::LogSoftmaxCudnn`],
//! [`transpose::TransposeCudnn`].

pub mod axpby;
pub mod bap;
pub mod batch_norm;
pub mod cast;
pub mod center_loss;
pub mod conv_transpose;
mod cublas;
mod cudnn;
pub mod pool;
pub mod relu;
pub mod sgd;
pub mod sigmoid_bce;
pub mod softmax_ce;
pub mod transpose;

/// The kernel files from `kernels/baselines/`, as `build.rs` embedded them.
pub mod sources {
    use c2f_kernels::KernelSource;
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

    /// Every embedded kernel file, for checks that go over all of them.
    pub fn all() -> Vec<KernelSource> {
        ALL.to_vec()
    }
}
