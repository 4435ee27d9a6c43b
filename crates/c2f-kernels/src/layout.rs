//! The memory order of an `[N, C, H, W]` activation: NCHW (PyTorch's default) or channels-last
//! NHWC (`torch.channels_last`, what cuDNN's tensor-core kernels read without a transpose).

/// Where element `(b, c, h, w)` of an `[N, C, H, W]` activation lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// `((b·C + c)·H + h)·W + w`: each channel's `H·W` plane contiguous.
    #[default]
    Nchw,
    /// `((b·H + h)·W + w)·C + c`: each pixel's `C` channels contiguous.
    Nhwc,
}

impl Layout {
    /// The offset of `(b, c, p)`, `p = h·W + w`, in a tensor of `channels` channels and `hw`
    /// pixels per plane.
    pub fn offset(self, channels: usize, hw: usize, b: usize, c: usize, p: usize) -> usize {
        match self {
            Layout::Nchw => (b * channels + c) * hw + p,
            Layout::Nhwc => (b * hw + p) * channels + c,
        }
    }

    /// `data` (in this layout) rewritten in `to`.
    pub fn convert<V: Copy>(self, to: Layout, data: &[V], channels: usize, hw: usize) -> Vec<V> {
        let mut out = data.to_vec();
        let batch = data.len().checked_div(channels * hw).unwrap_or(0);
        for b in 0..batch {
            for c in 0..channels {
                for p in 0..hw {
                    out[to.offset(channels, hw, b, c, p)] =
                        data[self.offset(channels, hw, b, c, p)];
                }
            }
        }
        out
    }
}

/// A shape and the layout of its activations, as the CPU references take them: a shape `S` alone
/// is NCHW, `(Layout, S)` names the layout.
pub trait LaidOut<S> {
    fn layout(&self) -> Layout;
    fn shape(&self) -> &S;
}

impl<S> LaidOut<S> for S {
    fn layout(&self) -> Layout {
        Layout::Nchw
    }
    fn shape(&self) -> &S {
        self
    }
}

impl<S> LaidOut<S> for (Layout, S) {
    fn layout(&self) -> Layout {
        self.0
    }
    fn shape(&self) -> &S {
        &self.1
    }
}

/// Channels per thread of the NHWC kernels (`kernels/channels_last.cuh`): a 16-byte vector of
/// `T` when `channels` is a multiple of it and every buffer address is 16-byte aligned, else 1.
pub fn nhwc_vector<T: crate::Element>(channels: usize, addresses: &[u64]) -> usize {
    let vec = 16 / std::mem::size_of::<T>();
    let aligned = addresses.iter().all(|a| a % 16 == 0);
    if channels.is_multiple_of(vec) && aligned {
        vec
    } else {
        1
    }
}
