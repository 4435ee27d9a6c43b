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
use c2f_kernels::device::{refuse_in_capture, ALLOCATES};
use c2f_kernels::dropout::DropoutGpu;
use c2f_kernels::layout::Layout;
use c2f_kernels::map_select::{MapSelectGpu, MapShape};
use c2f_kernels::mask::{MaskGpu, MaskShape};
use c2f_kernels::pool::{AvgPool2dGpu, GlobalAvgPoolGpu, MaxPool2dGpu, Pool2dParams, PoolShape};
use c2f_kernels::relu::ReluGpu;
use c2f_kernels::resize::{ResizeBilinearGpu, ResizeShape};
use c2f_kernels::sgd::SgdGpu;
use c2f_kernels::sigmoid_bce::{SigmoidBceGpu, SigmoidBceShape};
use c2f_kernels::softmax_ce::{SoftmaxCeGpu, SoftmaxCeShape};
use c2f_kernels::transpose::TransposeGpu;
use c2f_kernels::{Gpu, Result};
use half::bf16;

use super::memory::{DevRange, Memory, Operands, StoredAs};
use super::CudaBackend;
use crate::backend::{IndexTensor, Tensor};

/// A launcher the backend makes on first use of its key (the op's shape and parameters; `()`
/// for those that serve every shape) and keeps in [`Launchers`].
pub(super) trait Launcher: Sized {
    type Key: Copy + Hash + Eq;
    /// Whether the op takes channels-last operands (it reads their layouts itself); every
    /// other op is refused one, since its kernel indexes NCHW.
    const ANY_LAYOUT: bool = false;
    fn make(gpu: &Gpu, key: &Self::Key) -> Result<Self>;
    /// Where `launchers` keeps this kind.
    fn cache(launchers: &mut Launchers) -> &mut HashMap<Self::Key, Self>;
}

/// Declares [`Launchers`], one map per kind, and each kind's [`Launcher`] impl, from lines
/// `field: Launcher, keyed by Key = |gpu, key| make`; `field: Launcher [any layout], …` marks a
/// kind whose op reads its operands' layouts ([`Launcher::ANY_LAYOUT`]).
macro_rules! launchers {
    ($($field:ident: $launcher:ty $([$any:ident layout])?, keyed by $key_ty:ty = |$gpu:ident, $key:pat_param| $make:expr;)*) => {
        /// The launchers made so far.
        #[derive(Default)]
        pub(super) struct Launchers {
            $($field: HashMap<$key_ty, $launcher>,)*
        }

        $(impl Launcher for $launcher {
            type Key = $key_ty;
            $(const ANY_LAYOUT: bool = stringify!($any).len() > 0;)?
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
    batch_norm: BatchNormGpu<f32> [any layout], keyed by BnKey = |gpu, key| BatchNormGpu::with_layout(gpu, key.shape, key.params(), key.layout);
    batch_norm_bf16: BatchNormGpu<bf16> [any layout], keyed by BnKey = |gpu, key| BatchNormGpu::with_layout(gpu, key.shape, key.params(), key.layout);
    max_pool: MaxPool2dGpu<f32> [any layout], keyed by PoolKey = |gpu, (s, p, l)| MaxPool2dGpu::with_layout(gpu, *s, *p, *l);
    max_pool_bf16: MaxPool2dGpu<bf16> [any layout], keyed by PoolKey = |gpu, (s, p, l)| MaxPool2dGpu::with_layout(gpu, *s, *p, *l);
    avg_pool: AvgPool2dGpu<f32> [any layout], keyed by PoolKey = |gpu, (s, p, l)| AvgPool2dGpu::with_layout(gpu, *s, *p, *l);
    avg_pool_bf16: AvgPool2dGpu<bf16> [any layout], keyed by PoolKey = |gpu, (s, p, l)| AvgPool2dGpu::with_layout(gpu, *s, *p, *l);
    global_pool: GlobalAvgPoolGpu<f32> [any layout], keyed by (PoolShape, Layout) = |gpu, (s, l)| GlobalAvgPoolGpu::with_layout(gpu, *s, *l);
    global_pool_bf16: GlobalAvgPoolGpu<bf16> [any layout], keyed by (PoolShape, Layout) = |gpu, (s, l)| GlobalAvgPoolGpu::with_layout(gpu, *s, *l);
    channel_copy: ChannelCopyGpu<f32> [any layout], keyed by () = |gpu, _| ChannelCopyGpu::new(gpu);
    channel_copy_bf16: ChannelCopyGpu<bf16> [any layout], keyed by () = |gpu, _| ChannelCopyGpu::new(gpu);
    transpose: TransposeGpu [any layout], keyed by () = |gpu, _| TransposeGpu::new(gpu);
    softmax_ce: SoftmaxCeGpu<f32>, keyed by SoftmaxCeShape = |gpu, s| SoftmaxCeGpu::new(gpu, *s);
    sigmoid_bce: SigmoidBceGpu<f32>, keyed by SigmoidBceShape = |gpu, s| SigmoidBceGpu::new(gpu, *s);
    dropout: DropoutGpu<f32>, keyed by () = |gpu, _| DropoutGpu::new(gpu);
    dropout_bf16: DropoutGpu<bf16>, keyed by () = |gpu, _| DropoutGpu::new(gpu);
    sgd: SgdGpu, keyed by () = |gpu, _| SgdGpu::new(gpu);
    axpby: AxpbyGpu<f32>, keyed by () = |gpu, _| AxpbyGpu::new(gpu);
    axpby_bf16: AxpbyGpu<bf16>, keyed by () = |gpu, _| AxpbyGpu::new(gpu);
    bap: BapGpu<f32>, keyed by BapShape = |gpu, s| BapGpu::new(gpu, *s);
    bap_bf16: BapGpu<bf16>, keyed by BapShape = |gpu, s| BapGpu::new(gpu, *s);
    center_loss: CenterLossGpu<f32>, keyed by CenterLossShape = |gpu, s| CenterLossGpu::new(gpu, *s);
    center_loss_bf16: CenterLossGpu<bf16>, keyed by CenterLossShape = |gpu, s| CenterLossGpu::new(gpu, *s);
    conv_transpose: ConvTransposeGpu<f32>, keyed by ConvTransposeParams = |gpu, p| ConvTransposeGpu::new(gpu, *p);
    conv_transpose_bf16: ConvTransposeGpu<bf16>, keyed by ConvTransposeParams = |gpu, p| ConvTransposeGpu::new(gpu, *p);
    relu: ReluGpu<f32>, keyed by () = |gpu, _| ReluGpu::new(gpu);
    relu_bf16: ReluGpu<bf16>, keyed by () = |gpu, _| ReluGpu::new(gpu);
    map_select: MapSelectGpu<f32>, keyed by MapShape = |gpu, s| MapSelectGpu::new(gpu, *s);
    map_select_bf16: MapSelectGpu<bf16>, keyed by MapShape = |gpu, s| MapSelectGpu::new(gpu, *s);
    resize: ResizeBilinearGpu<f32>, keyed by ResizeShape = |gpu, s| ResizeBilinearGpu::new(gpu, *s);
    resize_bf16: ResizeBilinearGpu<bf16>, keyed by ResizeShape = |gpu, s| ResizeBilinearGpu::new(gpu, *s);
    mask: MaskGpu<f32>, keyed by MaskShape = |gpu, s| MaskGpu::new(gpu, *s);
    mask_bf16: MaskGpu<bf16>, keyed by MaskShape = |gpu, s| MaskGpu::new(gpu, *s);
    maps_by_mass: MapsByMassGpu<f32>, keyed by MapShape = |gpu, s| MapsByMassGpu::new(gpu, *s);
    maps_by_mass_bf16: MapsByMassGpu<bf16>, keyed by MapShape = |gpu, s| MapsByMassGpu::new(gpu, *s);
    augment: AugmentGpu<f32>, keyed by AugmentShape = |gpu, s| AugmentGpu::new(gpu, *s);
    augment_bf16: AugmentGpu<bf16>, keyed by AugmentShape = |gpu, s| AugmentGpu::new(gpu, *s);
}

/// A pooling launcher's key: the input's shape, the window and the layout.
pub(super) type PoolKey = (PoolShape, Pool2dParams, Layout);

/// [`BatchNormParams`] holds floats, so it is keyed by their bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct BnKey {
    shape: BatchNormShape,
    eps: u64,
    momentum: u64,
    relu: bool,
    layout: Layout,
}

impl BnKey {
    pub(super) fn new(shape: &BatchNormShape, p: &BatchNormParams, layout: Layout) -> Self {
        BnKey {
            shape: *shape,
            eps: p.eps.to_bits(),
            momentum: p.momentum.to_bits(),
            relu: p.relu,
            layout,
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

/// Runs `$body` with `$a` the Rust type of the [`Storage`] `$storage` (f32 or bf16), for an op
/// whose kernel is generic over its activations' storage.
macro_rules! per_storage {
    ($storage:expr, $a:ident => $body:expr) => {
        match $storage {
            $crate::precision::Storage::F32 => {
                type $a = f32;
                $body
            }
            $crate::precision::Storage::Bf16 => {
                type $a = half::bf16;
                $body
            }
        }
    };
}
pub(super) use per_storage;

/// The launcher `L` for `key` in `launchers`, made on `gpu` on its first use.
fn launcher<'a, L: Launcher>(
    launchers: &'a mut Launchers,
    gpu: &Gpu,
    key: L::Key,
) -> Result<&'a mut L> {
    Ok(match L::cache(launchers).entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let making = format!("making a {}", std::any::type_name::<L>());
            refuse_in_capture(gpu.stream(), &making, ALLOCATES)?;
            e.insert(L::make(gpu, &key)?)
        }
    })
}

/// Refuses a channels-last operand of an op through `L` unless it reads layouts
/// ([`Launcher::ANY_LAYOUT`]).
fn refuse_layout<L: Launcher>(mem: &Memory, inputs: &[Tensor], outputs: &[Tensor]) -> Result<()> {
    if L::ANY_LAYOUT {
        return Ok(());
    }
    let op = std::any::type_name::<L>();
    mem.refuse_channels_last(op, inputs)?;
    mem.refuse_channels_last(op, outputs)
}

impl CudaBackend {
    /// [`Self::launch_as`] for an op whose value operands are all f32.
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
        self.launch_as::<L, f32, T, I, O, X>(key, inputs, outputs, index, call)
    }

    /// Runs one op through launcher `L`: the launcher for `key` (made on first use), then the
    /// operands checked ([`super::memory::Memory::run_as`]; every value operand stored as `A`),
    /// then `call` with the launcher and the operands' device ranges, in the order of
    /// `inputs`, `outputs` and `index`.
    pub(super) fn launch_as<L, A, T, const I: usize, const O: usize, const X: usize>(
        &mut self,
        key: L::Key,
        inputs: [Tensor; I],
        outputs: [Tensor; O],
        index: [IndexTensor; X],
        call: impl FnOnce(
            &mut L,
            [DevRange<'_, A>; I],
            [DevRange<'_, A>; O],
            [DevRange<'_, i32>; X],
        ) -> Result<T>,
    ) -> Result<T>
    where
        L: Launcher,
        A: StoredAs,
    {
        refuse_layout::<L>(&self.mem, &inputs, &outputs)?;
        let launcher = launcher::<L>(&mut self.launchers, &self.gpu, key)?;
        self.mem
            .run_as(inputs, outputs, index, |inputs, outputs, index| {
                call(launcher, inputs, outputs, index)
            })
    }

    /// Runs one op through launcher `L` whose operands are of several storage types: `call`
    /// takes each operand's range from the checked [`Operands`] in the type its kernel takes.
    pub(super) fn launch_with<L: Launcher, T>(
        &mut self,
        key: L::Key,
        inputs: &[Tensor],
        outputs: &[Tensor],
        index: &[IndexTensor],
        call: impl FnOnce(&mut L, &Operands<'_>) -> Result<T>,
    ) -> Result<T> {
        refuse_layout::<L>(&self.mem, inputs, outputs)?;
        let launcher = launcher::<L>(&mut self.launchers, &self.gpu, key)?;
        call(launcher, &self.mem.operands(inputs, outputs, index)?)
    }

    /// [`Self::launch_as`] for an op of one input and one output and no index operand.
    pub(super) fn launch_unary<L: Launcher, A: StoredAs>(
        &mut self,
        key: L::Key,
        x: Tensor,
        y: Tensor,
        call: impl FnOnce(&mut L, &DevRange<'_, A>, &mut DevRange<'_, A>) -> Result<()>,
    ) -> Result<()> {
        self.launch_as(key, [x], [y], [], |op, [x], [mut y], []| {
            call(op, &x, &mut y)
        })
    }
}
