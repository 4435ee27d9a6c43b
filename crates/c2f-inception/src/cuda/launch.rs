//! The one way the CUDA backend runs a `c2f-kernels` launcher: [`CudaBackend::launch`] finds
//! (or makes) the launcher for the op's key, checks the operands and hands their device ranges
//! to the op's call, so each op method is only its operand lists and that call.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

use c2f_kernels::augment::{AugmentGpu, AugmentShape, MapsByMassGpu};
use c2f_kernels::axpby::AxpbyGpu;
use c2f_kernels::bap::{BapGpu, BapShape};
use c2f_kernels::batch_norm::{BatchNormGpu, BatchNormParams, BatchNormShape};
use c2f_kernels::center_loss::{CenterLossGpu, CenterLossShape};
use c2f_kernels::concat::ChannelCopyGpu;
use c2f_kernels::conv_transpose::{ConvTransposeGpu, ConvTransposeParams};
use c2f_kernels::dropout::DropoutGpu;
use c2f_kernels::map_select::{MapSelectGpu, MapShape};
use c2f_kernels::mask::{MaskGpu, MaskShape};
use c2f_kernels::pool::{AvgPool2dGpu, GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams, PoolShape};
use c2f_kernels::relu::ReluGpu;
use c2f_kernels::resize::{ResizeBilinearGpu, ResizeShape};
use c2f_kernels::sgd::SgdGpu;
use c2f_kernels::sigmoid_bce::{SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::softmax_ce::{SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::{Gpu, Result};

use super::memory::DevRange;
use super::CudaBackend;
use crate::backend::{IndexTensor, Tensor};

/// A launcher the backend makes on first use of its key (the op's shape and parameters; `()`
/// for those that serve every shape) and keeps in [`Launchers`].
pub(super) trait Launcher: Sized {
    type Key: Copy + Hash + Eq;
    fn make(gpu: &Gpu, key: &Self::Key) -> Result<Self>;
    /// Where `launchers` keeps this kind.
    fn cache(launchers: &mut Launchers) -> &mut HashMap<Self::Key, Self>;
}

/// Declares [`Launchers`], one map per kind, and each kind's [`Launcher`] impl, from lines
/// `field: Launcher, keyed by Key = |gpu, key| make`.
macro_rules! launchers {
    ($($field:ident: $launcher:ty, keyed by $key_ty:ty = |$gpu:ident, $key:pat_param| $make:expr;)*) => {
        /// The launchers made so far.
        #[derive(Default)]
        pub(super) struct Launchers {
            $($field: HashMap<$key_ty, $launcher>,)*
        }

        $(impl Launcher for $launcher {
            type Key = $key_ty;
            fn make($gpu: &Gpu, $key: &$key_ty) -> Result<Self> {
                $make
            }
            fn cache(launchers: &mut Launchers) -> &mut HashMap<$key_ty, Self> {
                &mut launchers.$field
            }
        })*
    };
}

launchers! {
    batch_norm: BatchNormGpu<f32>, keyed by BnKey = |gpu, key| BatchNormGpu::new(gpu, key.shape, key.params());
    max_pool: MaxPool2dGpu<f32>, keyed by (PoolShape, Pool2dParams) = |gpu, (s, p)| MaxPool2dGpu::new(gpu, *s, *p);
    avg_pool: AvgPool2dGpu<f32>, keyed by (PoolShape, Pool2dParams) = |gpu, (s, p)| AvgPool2dGpu::new(gpu, *s, *p);
    global_pool: GlobalAvgPoolGpu<f32>, keyed by PoolShape = |gpu, s| GlobalAvgPoolGpu::new(gpu, *s);
    channel_copy: ChannelCopyGpu<f32>, keyed by () = |gpu, _| ChannelCopyGpu::new(gpu);
    softmax_ce: SoftmaxCeGpu<f32>, keyed by SoftmaxCeShape = |gpu, s| SoftmaxCeGpu::new(gpu, *s);
    sigmoid_bce: SigmoidBceGpu<f32>, keyed by SigmoidBceShape = |gpu, s| SigmoidBceGpu::new(gpu, *s);
    dropout: DropoutGpu<f32>, keyed by () = |gpu, _| DropoutGpu::new(gpu);
    sgd: SgdGpu, keyed by () = |gpu, _| SgdGpu::new(gpu);
    axpby: AxpbyGpu<f32>, keyed by () = |gpu, _| AxpbyGpu::new(gpu);
    bap: BapGpu<f32>, keyed by BapShape = |gpu, s| BapGpu::new(gpu, *s);
    center_loss: CenterLossGpu<f32>, keyed by CenterLossShape = |gpu, s| CenterLossGpu::new(gpu, *s);
    conv_transpose: ConvTransposeGpu<f32>, keyed by ConvTransposeParams = |gpu, p| ConvTransposeGpu::new(gpu, *p);
    relu: ReluGpu<f32>, keyed by () = |gpu, _| ReluGpu::new(gpu);
    map_select: MapSelectGpu<f32>, keyed by MapShape = |gpu, s| MapSelectGpu::new(gpu, *s);
    resize: ResizeBilinearGpu<f32>, keyed by ResizeShape = |gpu, s| ResizeBilinearGpu::new(gpu, *s);
    mask: MaskGpu<f32>, keyed by MaskShape = |gpu, s| MaskGpu::new(gpu, *s);
    maps_by_mass: MapsByMassGpu<f32>, keyed by MapShape = |gpu, s| MapsByMassGpu::new(gpu, *s);
    augment: AugmentGpu<f32>, keyed by AugmentShape = |gpu, s| AugmentGpu::new(gpu, *s);
}

/// [`BatchNormParams`] holds floats, so it is keyed by their bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct BnKey {
    shape: BatchNormShape,
    eps: u64,
    momentum: u64,
    relu: bool,
}

impl BnKey {
    pub(super) fn new(shape: &BatchNormShape, p: &BatchNormParams) -> Self {
        BnKey {
            shape: *shape,
            eps: p.eps.to_bits(),
            momentum: p.momentum.to_bits(),
            relu: p.relu,
        }
    }

    fn params(&self) -> BatchNormParams {
        BatchNormParams {
            eps: f64::from_bits(self.eps),
            momentum: f64::from_bits(self.momentum),
            relu: self.relu,
        }
    }
}

impl CudaBackend {
    /// Runs one op through launcher `L`: the launcher for `key` (made on first use), then the
    /// operands checked ([`super::memory::Memory::run`]), then `call` with the launcher and the
    /// operands' device ranges, in the order of `inputs`, `outputs` and `index`.
    pub(super) fn launch<L: Launcher, T, const I: usize, const O: usize, const X: usize>(
        &mut self,
        key: L::Key,
        inputs: [Tensor; I],
        outputs: [Tensor; O],
        index: [IndexTensor; X],
        call: impl FnOnce(
            &mut L,
            [DevRange<'_, f32>; I],
            [DevRange<'_, f32>; O],
            [DevRange<'_, i32>; X],
        ) -> Result<T>,
    ) -> Result<T> {
        let launcher = match L::cache(&mut self.launchers).entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(L::make(&self.gpu, &key)?),
        };
        self.mem
            .run(inputs, outputs, index, |inputs, outputs, index| {
                call(launcher, inputs, outputs, index)
            })
    }

    /// [`Self::launch`] for an op of one input and one output and no index operand.
    pub(super) fn launch_unary<L: Launcher>(
        &mut self,
        key: L::Key,
        x: Tensor,
        y: Tensor,
        call: impl FnOnce(&mut L, &DevRange<'_, f32>, &mut DevRange<'_, f32>) -> Result<()>,
    ) -> Result<()> {
        self.launch(key, [x], [y], [], |op, [x], [mut y], []| {
            call(op, &x, &mut y)
        })
    }
}
