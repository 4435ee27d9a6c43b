//! Channel concat and split for the InceptionV3 runtime, NCHW contiguous: [`copy_channels_cpu`]
//! places a part `[N, C, H, W]` at a channel offset of a whole `[N, C_whole, H, W]` (one branch of
//! a block's concat); [`slice_channels_cpu`] copies it back out (the concat's backward, assigned).
//! Bit copies, no conversion. Kernel: `kernels/concat.cu`.

use cudarc::driver::{DevicePtr, DevicePtrMut};
use rayon::prelude::*;

use crate::device::{blocks_for, device_addr, device_addr_mut, grid};
use crate::element::Element;
use crate::error::{check_len, Error, Result};
use crate::launch;

/// Where a part `[N, channels, H, W]` sits in a whole `[N, whole_channels, H, W]`: its channels
/// `offset .. offset + channels`. One branch of an InceptionV3 block's concat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelSlice {
    pub batch: usize,
    pub channels: usize,
    pub whole_channels: usize,
    pub offset: usize,
    pub height: usize,
    pub width: usize,
}

impl ChannelSlice {
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    pub fn part_len(&self) -> usize {
        self.batch * self.channels * self.hw()
    }
    pub fn whole_len(&self) -> usize {
        self.batch * self.whole_channels * self.hw()
    }

    fn validate(&self) -> Result<()> {
        let dims = [
            self.batch,
            self.channels,
            self.whole_channels,
            self.height,
            self.width,
        ];
        if dims.contains(&0) {
            return Err(Error::Shape(format!(
                "channel slice has a zero dimension: {self:?}"
            )));
        }
        if self.offset + self.channels > self.whole_channels {
            return Err(Error::Shape(format!(
                "channel slice offset {} + {} channels exceeds the whole's {} channels",
                self.offset, self.channels, self.whole_channels
            )));
        }
        let whole = [self.batch, self.whole_channels, self.height, self.width];
        if whole
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none()
            || self.whole_len() > i32::MAX as usize
        {
            return Err(Error::Shape(format!(
                "channel slice too large for 32-bit indexing: {self:?}"
            )));
        }
        Ok(())
    }

    fn check(&self, part: usize, whole: usize) -> Result<()> {
        self.validate()?;
        check_len("channel slice part", part, self.part_len())?;
        check_len("channel slice whole", whole, self.whole_len())
    }
}

/// Concat forward, one part: copies `part` into its channels of `whole`; the other channels of
/// `whole` are left as they are.
pub fn copy_channels_cpu<T: Copy + Send + Sync>(
    s: &ChannelSlice,
    part: &[T],
    whole: &mut [T],
) -> Result<()> {
    s.check(part.len(), whole.len())?;
    let (run, at) = (s.channels * s.hw(), s.offset * s.hw());
    whole
        .par_chunks_mut(s.whole_channels * s.hw())
        .zip(part.par_chunks(run))
        .for_each(|(w, p)| w[at..][..run].copy_from_slice(p));
    Ok(())
}

/// Concat backward (split), one part: copies its channels of `whole` into `part` (assigned).
pub fn slice_channels_cpu<T: Copy + Send + Sync>(
    s: &ChannelSlice,
    whole: &[T],
    part: &mut [T],
) -> Result<()> {
    s.check(part.len(), whole.len())?;
    let (run, at) = (s.channels * s.hw(), s.offset * s.hw());
    part.par_chunks_mut(run)
        .zip(whole.par_chunks(s.whole_channels * s.hw()))
        .for_each(|(p, w)| p.copy_from_slice(&w[at..][..run]));
    Ok(())
}

const THREADS: u32 = 256;
/// Largest batch [`ChannelCopyGpu`] takes (the grid's y dimension).
pub const MAX_COPY_BATCH: usize = 65_535;

crate::kernel_set! {
    /// Channel concat and split on the GPU; one instance serves every [`ChannelSlice`].
    pub struct ChannelCopyGpu: crate::sources::CONCAT;
    typed: channel_copy;
}

impl<T: Element> ChannelCopyGpu<T> {
    /// Concat forward, one part: as [`copy_channels_cpu`].
    pub fn copy_channels(
        &self,
        s: &ChannelSlice,
        part: &impl DevicePtr<T>,
        whole: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        s.check(part.len(), whole.len())?;
        let hw = s.hw();
        self.launch(
            s,
            device_addr(part, &self.stream),
            [s.channels * hw, 0],
            device_addr_mut(whole, &self.stream),
            [s.whole_channels * hw, s.offset * hw],
        )
    }

    /// Concat backward (split), one part: as [`slice_channels_cpu`] (assigned).
    pub fn slice_channels(
        &self,
        s: &ChannelSlice,
        whole: &impl DevicePtr<T>,
        part: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        s.check(part.len(), whole.len())?;
        let hw = s.hw();
        self.launch(
            s,
            device_addr(whole, &self.stream),
            [s.whole_channels * hw, s.offset * hw],
            device_addr_mut(part, &self.stream),
            [s.channels * hw, 0],
        )
    }

    /// Copies `channels·H·W` elements per sample from `src` at `[stride, offset]` to `dst`
    /// (device addresses of buffers the caller checked against `s`).
    fn launch(
        &self,
        s: &ChannelSlice,
        src: u64,
        src_at: [usize; 2],
        dst: u64,
        dst_at: [usize; 2],
    ) -> Result<()> {
        if s.batch > MAX_COPY_BATCH {
            return Err(Error::Shape(format!(
                "channel slice batch {} is above the supported {MAX_COPY_BATCH}",
                s.batch
            )));
        }
        let chunk = s.channels * s.hw();
        // All fit an i32: at most the whole's element count, checked in `validate`.
        let [chunk_i, ss, so, ds, dso] =
            [chunk, src_at[0], src_at[1], dst_at[0], dst_at[1]].map(|v| v as i32);
        let cfg = grid((blocks_for(chunk, THREADS), s.batch as u32, 1), THREADS);
        // SAFETY: the caller checked both lengths against `s`, whose offset + channels fit in
        // the whole's channels, so every sample's run lies inside both buffers.
        unsafe {
            launch!(
                self.channel_copy,
                cfg,
                [&src, &dst, &chunk_i, &ss, &so, &ds, &dso]
            )?;
        }
        Ok(())
    }
}
