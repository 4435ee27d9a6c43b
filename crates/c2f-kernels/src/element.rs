//! The storage types a kernel runs in: f32, and bf16 with f32 accumulation. Kernels export one
//! entry point per type, `NAME_f32` and `NAME_bf16`, picked by [`Element::SUFFIX`].

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::bf16;

pub trait Element:
    DeviceRepr + ValidAsZeroBits + bytemuck::Pod + Default + std::fmt::Debug + Send + Sync + 'static
{
    /// Suffix of the kernel entry points for this type.
    const SUFFIX: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    fn from_f64(v: f64) -> Self {
        Self::from_f32(v as f32)
    }
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
}

impl Element for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}
