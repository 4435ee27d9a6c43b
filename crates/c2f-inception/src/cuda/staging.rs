//! Batches staged for the device ([`Buffers::stage`], [`Buffers::take_staged`]): written into
//! page-locked host buffers, copied to the device on a copy stream of their own, two slots used
//! in turn, then copied on the backend's stream into their destinations.
//!
//! The order, by events on the two streams, without a host wait per batch:
//! - staging into slot `s`: the host fills the slot's page-locked buffer once its last copy to
//!   the device has run (`copied[s]`; the slot was last filled two batches ago, so this wait is
//!   normally over at once, and it is the only host wait). Not cudarc's own event on the
//!   buffer: cudarc records it only in a context that manages stream synchronisation, which
//!   `Gpu::open` turns off, so relying on it refilled buffers still being copied (the
//!   emulator's late copies showed it: `tests/runtime/staging.rs`); the copy stream
//!   waits for `consumed[s]` (the backend's stream has copied the slot's device buffer out),
//!   copies the page-locked buffer to the slot's device buffer and records `copied[s]`;
//! - taking: the backend's stream waits for `copied[s]`, copies the slot's device buffer into
//!   each destination and records `consumed[s]`.
//!
//! Why a device-to-device copy at the end, and not the copy stream writing the destination
//! itself: the destination (the network's input) is read by the step still running, so a
//! direct copy would have to wait for that whole step and could not overlap it; the device copy
//! (about 25 µs for a batch of 64 at 299² at an H200's 3 TB/s) leaves the destination's address
//! fixed, which a captured CUDA graph needs, and comes before the step in stream order.
//!
//! [`Buffers::stage`]: crate::backend::Buffers::stage
//! [`Buffers::take_staged`]: crate::backend::Buffers::take_staged

use std::sync::Arc;

use c2f_kernels::Result;
use cudarc::driver::{sys::CUdeviceptr, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

/// Each part of a staged batch starts at a multiple of this many bytes in a slot, as a device
/// allocation does.
const PART_ALIGN: usize = 256;

/// One destination of a staged batch: where it goes on the device, and its bytes.
pub(super) struct Part<'a> {
    pub(super) dst: CUdeviceptr,
    pub(super) bytes: &'a [u8],
}

/// The page-locked and device buffers of one slot, and the events that order their reuse.
struct Slot {
    pinned: PinnedHostSlice<u8>,
    device: CudaSlice<u8>,
    /// The destinations of the batch the slot holds and where each starts in the slot.
    parts: Vec<(CUdeviceptr, usize, usize)>,
    copied: CudaEvent,
    consumed: CudaEvent,
}

/// The copy stream and the two slots (made at the first batch, remade when a batch's size
/// changes).
pub(super) struct Staging {
    copy: Arc<CudaStream>,
    slots: [Option<Slot>; 2],
    /// The slot the next batch goes to.
    next: usize,
    /// The slot staged and not taken yet.
    waiting: Option<usize>,
}

impl Staging {
    /// Staging for `stream` (the backend's), with a copy stream of its own.
    pub(super) fn new(stream: &Arc<CudaStream>) -> Result<Staging> {
        Ok(Staging {
            copy: stream.context().new_stream()?,
            slots: [None, None],
            next: 0,
            waiting: None,
        })
    }

    /// Writes `parts` into the next slot and queues its copy to the device on the copy stream.
    /// A batch staged before and not taken is dropped: the last one staged is the one taken.
    pub(super) fn stage(&mut self, parts: &[Part<'_>]) -> Result<()> {
        let mut layout = Vec::with_capacity(parts.len());
        let mut size = 0;
        for p in parts {
            layout.push((p.dst, size, p.bytes.len()));
            size += p.bytes.len().div_ceil(PART_ALIGN) * PART_ALIGN;
        }
        let s = self.next;
        // Both slots at once, so that the second batch allocates nothing (a training step
        // allocates nothing after the first); a batch waiting in the other slot is dropped, as
        // this one replaces it anyway.
        let size = size.max(1);
        let stale: Vec<usize> = (0..2)
            .filter(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_none_or(|slot| slot.pinned.len() != size)
            })
            .collect();
        for i in stale {
            self.remake(i, size)?;
        }
        let slot = self.slots[s].as_mut().expect("made above");
        // The only host wait: for this buffer's last copy to the device.
        slot.copied.synchronize()?;
        let host = slot.pinned.as_mut_slice()?;
        for (p, &(_, at, len)) in parts.iter().zip(&layout) {
            host[at..at + len].copy_from_slice(p.bytes);
        }
        slot.parts = layout;
        self.copy.wait(&slot.consumed)?;
        self.copy.memcpy_htod(&slot.pinned, &mut slot.device)?;
        slot.copied.record(&self.copy)?;
        self.waiting = Some(s);
        self.next = 1 - s;
        Ok(())
    }

    /// Queues on `stream` the copies of the staged batch into its destinations, after its copy
    /// to the device; nothing when no batch waits.
    pub(super) fn take(&mut self, stream: &CudaStream) -> Result<()> {
        let Some(s) = self.waiting.take() else {
            return Ok(());
        };
        let slot = self.slots[s].as_ref().expect("a staged slot exists");
        stream.wait(&slot.copied)?;
        let base = slot.device_ptr(stream);
        for &(dst, at, len) in &slot.parts {
            if len > 0 {
                // SAFETY: `dst` is a checked range of `len` bytes of one of the backend's live
                // buffers and `base + at` lies inside the slot's device buffer (`at + len` is
                // at most its size); the copy is ordered after the copy to the device by the
                // wait above and before any later use of the slot by `consumed`.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        dst,
                        base + at as CUdeviceptr,
                        len,
                        stream.cu_stream(),
                    )
                }?;
            }
        }
        slot.consumed.record(stream)?;
        Ok(())
    }

    /// (Re)makes slot `s` with `size` bytes. The old slot's page-locked buffer is freed once its
    /// copy has run, its device buffer on the copy stream after the backend's stream has copied
    /// out of it.
    fn remake(&mut self, s: usize, size: usize) -> Result<()> {
        if let Some(old) = self.slots[s].take() {
            old.copied.synchronize()?;
            self.copy.wait(&old.consumed)?;
        }
        let ctx = self.copy.context();
        // SAFETY: the buffer is zeroed before any use: its bytes are never read unset.
        let mut pinned = unsafe { ctx.alloc_pinned::<u8>(size) }?;
        pinned.as_mut_slice()?.fill(0);
        self.slots[s] = Some(Slot {
            pinned,
            device: self.copy.alloc_zeros::<u8>(size)?,
            parts: Vec::new(),
            copied: ctx.new_event(None)?,
            consumed: ctx.new_event(None)?,
        });
        Ok(())
    }
}

impl Slot {
    fn device_ptr(&self, stream: &CudaStream) -> CUdeviceptr {
        use cudarc::driver::DevicePtr;
        // Per-buffer event tracking is off (`Gpu::open`): the guard records nothing.
        self.device.device_ptr(stream).0
    }
}
