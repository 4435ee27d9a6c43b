//! Opening a GPU without panicking, one stream per device, kernel modules loaded once, and the
//! stream's work captured into a CUDA graph to replay ([`capture_graph`]).
//!
//! cudarc panics when `libcuda.so` cannot be loaded, so [`Gpu::open`] checks for the library
//! first and returns [`Error::NoDriver`]. Kernels come either as an nvcc fatbin embedded at build
//! time or as source compiled by NVRTC for this device on first use; both are cached per kernel
//! file for the life of the [`Gpu`].

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{
    CudaContext, CudaGraph, CudaModule, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr,
};
// What the launchers and the `launch!` and `kernel_set!` macros name, from one place.
pub use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::element::Element;
use crate::error::{Error, Result};

/// One kernel file from `kernels/`, as embedded by `build.rs`.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File stem, e.g. `bap`.
    pub name: &'static str,
    /// The source with its includes inlined, for NVRTC.
    pub source: &'static str,
    /// The nvcc fatbin (sm_80, sm_90 SASS and compute_90 PTX), when nvcc was found at build time.
    pub fatbin: Option<&'static [u8]>,
    /// nvcc's and ptxas's output for this file, when nvcc was used.
    pub ptxas_report: Option<&'static str>,
}

/// Set to `1` to compile with NVRTC even when a fatbin is embedded, so the fallback path can be
/// checked on a GPU machine.
pub const FORCE_NVRTC_ENV: &str = "C2F_FORCE_NVRTC";

/// The device name the CPU emulator (`tools/cuda-emu/driver.cpp`) reports.
pub const EMULATOR_DEVICE_NAME: &str = "c2f CPU emulator (not a GPU)";

/// An opened CUDA device with its stream and the kernel modules loaded on it so far.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

/// The CUDA devices the driver shows; 0 without a driver.
pub fn device_count() -> Result<usize> {
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Ok(0);
    }
    Ok(CudaContext::device_count()? as usize)
}

/// Whether [`FORCE_NVRTC_ENV`] is set.
fn nvrtc_forced() -> bool {
    std::env::var(FORCE_NVRTC_ENV).is_ok_and(|v| v == "1")
}

fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the NVRTC library; cudarc panics later if it is absent.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// `kernel`'s source compiled by NVRTC into a CUBIN for the device of compute capability
/// `(major, minor)`: the path a build without nvcc takes on first use. SASS rather than PTX, so
/// that the driver loads it without a JIT and an NVRTC newer than the driver works (CUDA's
/// minor-version compatibility); PTX from a newer NVRTC is refused with
/// `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`. Needs only libnvrtc, no driver or GPU, so the test
/// command compiles every kernel this way too.
pub fn compile_with_nvrtc(kernel: &KernelSource, (major, minor): (i32, i32)) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_present() {
        return Err(Error::NoNvrtc);
    }
    let failed = |log: String| Error::Compile {
        kernel: kernel.name,
        log,
    };
    let source = CString::new(kernel.source).map_err(|e| failed(e.to_string()))?;
    let name = CString::new(format!("{}.cu", kernel.name)).map_err(|e| failed(e.to_string()))?;
    /// Destroys the program however this function returns.
    struct Program(sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created by `create_program` and destroyed only here.
            let _ = unsafe { result::destroy_program(self.0) };
        }
    }
    let program =
        Program(result::create_program(&source, Some(&name)).map_err(|e| failed(e.to_string()))?);
    let options = [
        format!("--gpu-architecture=sm_{major}{minor}"),
        "--std=c++17".into(),
        "-lineinfo".into(),
    ];
    // SAFETY (every block below): `program` is live, and `source` and `name`, which it refers
    // to, outlive it; NVRTC's log is NUL-terminated, and `cubin` has the size NVRTC reports.
    if let Err(e) = unsafe { result::compile_program(program.0, &options) } {
        let log = unsafe { result::get_program_log(program.0) }.map_or_else(
            |_| String::new(),
            |log| {
                unsafe { CStr::from_ptr(log.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            },
        );
        return Err(failed(format!("{e:?} with {options:?}:\n{log}")));
    }
    let mut size = 0usize;
    unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }
        .result()
        .map_err(|e| failed(e.to_string()))?;
    let mut cubin = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| failed(e.to_string()))?;
    Ok(cubin)
}

impl Gpu {
    /// Opens device `ordinal`, or says why it cannot.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoDriver);
        }
        // Kernels that NVRTC must compile fail here, not at their first launch in mid-run.
        let needs_nvrtc = nvrtc_forced() || crate::sources::ALL.iter().any(|k| k.fatbin.is_none());
        if needs_nvrtc && !nvrtc_present() {
            return Err(Error::NoNvrtc);
        }
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream per device, so stream order already orders every use of a buffer; cudarc's
        // per-buffer event tracking would only add an event record to each launch argument.
        // SAFETY: buffers are only used on this one stream; other streams (NCCL) synchronise
        // with explicit events.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own rather than the legacy default stream, which cannot be captured
        // into a CUDA graph.
        let stream = ctx.new_stream()?;
        Ok(Gpu {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Whether this is the CPU emulator of `tools/cuda-emu` standing in for a GPU (a pass on it is
    /// not a pass on a GPU).
    pub fn is_emulator(&self) -> bool {
        self.ctx.name().is_ok_and(|n| n == EMULATOR_DEVICE_NAME)
    }

    /// Device name and compute capability, e.g. `NVIDIA H100 80GB HBM3 (sm_90)`.
    pub fn describe(&self) -> Result<String> {
        let (major, minor) = self.ctx.compute_capability()?;
        Ok(format!("{} (sm_{major}{minor})", self.ctx.name()?))
    }

    /// Entry point `name` of the kernel file `kernel`, loading the file on first use.
    pub fn function(&self, kernel: &KernelSource, name: &str) -> Result<CudaFunction> {
        let module = self.module(kernel)?;
        Ok(module.load_function(name)?)
    }

    /// Entry point `BASE_f32` or `BASE_bf16` for element type `T`.
    pub fn typed_function<T: Element>(
        &self,
        kernel: &KernelSource,
        base: &str,
    ) -> Result<CudaFunction> {
        self.function(kernel, &format!("{base}_{}", T::SUFFIX))
    }

    fn module(&self, kernel: &KernelSource) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(kernel.name) {
            return Ok(m.clone());
        }
        let image = match kernel.fatbin {
            Some(fatbin) if !nvrtc_forced() => Ptx::from_binary(fatbin.to_vec()),
            _ => Ptx::from_binary(compile_with_nvrtc(kernel, self.ctx.compute_capability()?)?),
        };
        let module = self.ctx.load_module(image)?;
        modules.insert(kernel.name, module.clone());
        Ok(module)
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies a device buffer back to the host, waiting for the stream.
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// A new buffer filled with NaN, so an element a kernel forgets to write shows up in a test.
    pub fn alloc_poisoned<T: Element>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.upload(&vec![T::from_f32(f32::NAN); len])
    }

    /// A new zeroed buffer.
    pub fn alloc_zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// Waits for the stream; refused while it is being captured ([`refuse_in_capture`]).
    pub fn synchronize(&self) -> Result<()> {
        refuse_in_capture(
            &self.stream,
            "synchronising the stream",
            WAITS_FOR_CAPTURED_WORK,
        )?;
        Ok(self.stream.synchronize()?)
    }
}

/// Why a host read or a synchronisation cannot run during a capture.
pub const WAITS_FOR_CAPTURED_WORK: &str =
    "it waits for the stream's work, which a capture records instead of running; do it after \
     launching the graph";
/// Why an allocation cannot run during a capture.
pub const ALLOCATES: &str = "it allocates device memory, which a captured graph must not hold \
     (the memory must outlive every replay); run the work once before capturing it, so that \
     everything it needs is allocated first";

/// Fails with [`Error::Capture`] naming `op` (and why it cannot be captured, `reason`) when
/// `stream` is being captured into a CUDA graph: the check before work that a graph cannot hold
/// (a host read or write, an allocation, a synchronisation), which would otherwise fail as a
/// bare driver error and invalidate the capture.
pub fn refuse_in_capture(stream: &CudaStream, op: &str, reason: &str) -> Result<()> {
    match stream.capture_status()? {
        CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE => Ok(()),
        _ => Err(Error::Capture {
            op: op.to_string(),
            reason: reason.to_string(),
        }),
    }
}

/// Work on a stream captured once into a CUDA graph by [`capture_graph`]: [`Self::launch`]
/// replays it, the same kernels and library calls with the same arguments (device addresses and
/// scalars as they were when captured), on whatever the device memory holds at the launch. The
/// memory it addresses must outlive every launch.
pub struct CapturedGraph {
    graph: CudaGraph,
}

impl CapturedGraph {
    /// Queues one replay of the captured work on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        Ok(self.graph.launch()?)
    }
}

/// Captures the work `work` queues on `stream` into a CUDA graph instead of running it, for
/// [`CapturedGraph::launch`] to replay. The work may queue kernel launches, device-to-device
/// copies, memsets and cuDNN, cuBLAS and NCCL calls (other streams join by waiting on an event
/// recorded on `stream`, and must be joined back); a host read or write, a synchronisation or an
/// allocation on the stream fails, and fails the capture. The capture is thread-local: other
/// threads may allocate and synchronise meanwhile. It ends however `work` ends, so the stream
/// stays usable; `work`'s own error comes first.
pub fn capture_graph(
    stream: &Arc<CudaStream>,
    work: impl FnOnce() -> Result<()>,
) -> Result<CapturedGraph> {
    /// Ends the capture if `work` panics.
    struct Capturing<'a> {
        stream: &'a Arc<CudaStream>,
        ended: bool,
    }
    impl Capturing<'_> {
        fn end(mut self) -> std::result::Result<Option<CudaGraph>, cudarc::driver::DriverError> {
            self.ended = true;
            self.stream.end_capture(CUgraphInstantiate_flags(0))
        }
    }
    impl Drop for Capturing<'_> {
        fn drop(&mut self) {
            if !self.ended {
                let _ = self.stream.end_capture(CUgraphInstantiate_flags(0));
            }
        }
    }

    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| Error::Capture {
            op: "beginning a capture".into(),
            reason: format!("{e:?}"),
        })?;
    let capturing = Capturing {
        stream,
        ended: false,
    };
    let worked = work();
    let ended = capturing.end();
    worked?;
    match ended {
        Ok(Some(graph)) => Ok(CapturedGraph { graph }),
        Ok(None) => Err(Error::Capture {
            op: "ending the capture".into(),
            reason: "the driver returned no graph".into(),
        }),
        Err(e) => Err(Error::Capture {
            op: "ending the capture".into(),
            reason: format!(
                "{e:?}: the captured work did something a graph cannot hold (a host copy, a \
                 synchronisation, an allocation, a wait on an event recorded outside the \
                 capture) or left work on another stream unjoined"
            ),
        }),
    }
}

/// One entry point and the stream it launches on: what [`launch!`] takes.
#[derive(Clone)]
pub struct Kernel {
    pub stream: Arc<CudaStream>,
    pub function: CudaFunction,
}

impl Kernel {
    /// The entry point `name` of `kernel` ([`Gpu::function`]).
    pub fn new(gpu: &Gpu, kernel: &KernelSource, name: &str) -> Result<Self> {
        Ok(Kernel {
            stream: gpu.stream().clone(),
            function: gpu.function(kernel, name)?,
        })
    }

    /// The entry point `NAME_f32` or `NAME_bf16` of `kernel` for `T` ([`Gpu::typed_function`]).
    pub fn typed<T: Element>(gpu: &Gpu, kernel: &KernelSource, name: &str) -> Result<Self> {
        Ok(Kernel {
            stream: gpu.stream().clone(),
            function: gpu.typed_function::<T>(kernel, name)?,
        })
    }
}

/// The forward and backward entry points of an op for element type `T`: what the launchers of
/// one forward and one backward kernel (pooling, ReLU, resize) hold.
pub struct KernelPair<T: Element> {
    pub forward: Kernel,
    pub backward: Kernel,
    _storage: std::marker::PhantomData<T>,
}

impl<T: Element> KernelPair<T> {
    /// The entry points `forward` and `backward` of `kernel`, for `T` ([`Gpu::typed_function`]).
    pub fn new(gpu: &Gpu, kernel: &KernelSource, forward: &str, backward: &str) -> Result<Self> {
        Ok(KernelPair {
            forward: Kernel::typed::<T>(gpu, kernel, forward)?,
            backward: Kernel::typed::<T>(gpu, kernel, backward)?,
            _storage: std::marker::PhantomData,
        })
    }
}

/// The device address of `buf`'s first element, to push as a kernel's `const T*` argument.
///
/// Every launcher takes its buffers as `impl DevicePtr<T>` (inputs) and `impl DevicePtrMut<T>`
/// (outputs), so a whole [`CudaSlice`], a [`cudarc::driver::CudaView`] /
/// [`cudarc::driver::CudaViewMut`] of part of one, or any other implementation (the runtime's
/// views into its flat buffers) can be passed. The launchers check `len()` before launching.
///
/// The guard cudarc returns with the pointer is dropped here: it records an event only when the
/// context tracks events per buffer, which [`Gpu::open`] turns off (one stream per device, so
/// stream order already orders every use).
pub fn device_addr<T>(buf: &impl DevicePtr<T>, stream: &CudaStream) -> u64 {
    debug_assert!(
        !stream.context().is_managing_stream_synchronization(),
        "launchers expect per-buffer event tracking off, as Gpu::open leaves it"
    );
    buf.device_ptr(stream).0
}

/// [`device_addr`] for an output, a `T*` argument the kernel writes.
pub fn device_addr_mut<T>(buf: &mut impl DevicePtrMut<T>, stream: &CudaStream) -> u64 {
    debug_assert!(
        !stream.context().is_managing_stream_synchronization(),
        "launchers expect per-buffer event tracking off, as Gpu::open leaves it"
    );
    buf.device_ptr_mut(stream).0
}

/// Launches `kernel` (a [`Kernel`]) with `cfg` and the kernel arguments in order: cudarc's
/// `stream.launch_builder(function).arg(..)…launch(cfg)` chain, written once for every launcher.
/// An argument is one of
///
/// - `in buf`: an input buffer (`&impl DevicePtr<T>`), pushed as its [`device_addr`];
/// - `out buf`: an output buffer (`&mut impl DevicePtrMut<T>`), pushed as its
///   [`device_addr_mut`];
/// - any other expression: a reference, as cudarc's `LaunchArgs::arg` takes it (`&n`,
///   `&mut self.scratch`).
///
/// Evaluates to `Result<(), DriverError>`. It calls the `unsafe` `LaunchArgs::launch`, so it
/// stands inside the caller's `unsafe` block, under the caller's SAFETY comment on why the
/// arguments fit the kernel. The arguments are written as the kernel's parameter list, several
/// to a line (rustfmt leaves the `in`/`out` forms alone).
#[macro_export]
macro_rules! launch {
    (@push $s:ident, $b:expr, $cfg:expr;) => {
        $b.launch($cfg).map(|_no_events| ())
    };
    (@push $s:ident, $b:expr, $cfg:expr; in $buf:expr $(, $($rest:tt)*)?) => {
        $crate::launch!(@push $s, $b.arg(&$crate::device::device_addr($buf, $s)), $cfg;
            $($($rest)*)?)
    };
    (@push $s:ident, $b:expr, $cfg:expr; out $buf:expr $(, $($rest:tt)*)?) => {
        $crate::launch!(@push $s, $b.arg(&$crate::device::device_addr_mut($buf, $s)), $cfg;
            $($($rest)*)?)
    };
    (@push $s:ident, $b:expr, $cfg:expr; $arg:expr $(, $($rest:tt)*)?) => {
        $crate::launch!(@push $s, $b.arg($arg), $cfg; $($($rest)*)?)
    };
    ($kernel:expr, $cfg:expr, [$($args:tt)*]) => {{
        #[allow(unused_imports)]
        use $crate::device::PushKernelArg as _;
        let kernel: &$crate::device::Kernel = &$kernel;
        let stream = &kernel.stream;
        $crate::launch!(@push stream, stream.launch_builder(&kernel.function), $cfg; $($args)*)
    }};
}

/// Declares the struct of a launcher's entry points in one kernel file, loaded once by its
/// `new(gpu)`: `stream`, and one [`Kernel`] field per entry point, named as the entry point
/// (private fields: the launcher's own module uses them).
/// Those listed under `typed` are the `NAME_f32` or `NAME_bf16` variant for the struct's
/// element type `T` ([`Gpu::typed_function`]); those under `plain` have one variant.
///
/// ```ignore
/// kernel_set! {
///     /// The mask entry points.
///     struct MaskKernels: crate::sources::MASK;
///     typed: mask_stats, mask_apply;
///     plain: mask_stats_finish;
/// }
/// ```
#[macro_export]
macro_rules! kernel_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident: $source:expr;
        typed: $($typed:ident),*;
        $(plain: $($plain:ident),*;)?
    ) => {
        $(#[$meta])*
        $vis struct $name<T: $crate::Element> {
            /// The stream they launch on, for the launcher's copies and reads.
            #[allow(dead_code)]
            stream: std::sync::Arc<$crate::device::CudaStream>,
            $($typed: $crate::device::Kernel,)*
            $($($plain: $crate::device::Kernel,)*)?
            _storage: std::marker::PhantomData<T>,
        }

        impl<T: $crate::Element> $name<T> {
            $vis fn new(gpu: &$crate::Gpu) -> $crate::Result<Self> {
                use $crate::device::Kernel;
                let source = &$source;
                Ok($name {
                    stream: gpu.stream().clone(),
                    $($typed: Kernel::typed::<T>(gpu, source, stringify!($typed))?,)*
                    $($($plain: Kernel::new(gpu, source, stringify!($plain))?,)*)?
                    _storage: std::marker::PhantomData,
                })
            }
        }
    };
}

/// A launch of `grid_dim` blocks of `threads` threads, without dynamic shared memory.
pub fn grid(grid_dim: (u32, u32, u32), threads: u32) -> LaunchConfig {
    grid_with_shared(grid_dim, threads, 0)
}

/// A launch of `grid_dim` blocks of `threads` threads with `shared_mem_bytes` of dynamic shared
/// memory.
pub fn grid_with_shared(
    grid_dim: (u32, u32, u32),
    threads: u32,
    shared_mem_bytes: u32,
) -> LaunchConfig {
    LaunchConfig {
        grid_dim,
        block_dim: (threads, 1, 1),
        shared_mem_bytes,
    }
}

/// Blocks of `block` threads covering `n` items, as a grid dimension.
pub fn blocks_for(n: usize, block: u32) -> u32 {
    n.div_ceil(block as usize) as u32
}

/// Threads per block of the element-wise kernels.
const ELEMENTWISE_THREADS: u32 = 256;

/// The grid of an element-wise kernel: one thread per item of `n`.
pub fn elementwise(n: usize) -> LaunchConfig {
    grid(
        (blocks_for(n, ELEMENTWISE_THREADS), 1, 1),
        ELEMENTWISE_THREADS,
    )
}

/// Planes each thread of a plane-group kernel handles (`PLANES_PER_THREAD` in
/// `kernels/common.cuh`).
const PLANES_PER_THREAD: usize = 4;
/// Threads per block of a plane-group kernel: few, so that 17×17 planes waste little.
const PLANE_GROUP_THREADS: u32 = 128;

/// The grid of a plane-group kernel (pooling, resize): one thread per position of a plane of
/// `plane_len` positions and per group of [`PLANES_PER_THREAD`] of the `planes` planes (grid z,
/// capped at 65,535; the kernels stride over the rest).
pub fn plane_groups(plane_len: usize, planes: usize) -> LaunchConfig {
    let groups = planes.div_ceil(PLANES_PER_THREAD).min(65_535) as u32;
    let cfg = (blocks_for(plane_len, PLANE_GROUP_THREADS), 1, groups);
    grid(cfg, PLANE_GROUP_THREADS)
}

/// No step statistics slot, for a loss op's `stats` argument.
pub const NO_STATS: Option<&mut CudaSlice<f32>> = None;

/// Where a loss kernel also writes its step statistics (`[loss, correct answers]` as f32, or
/// just the loss): a caller's device slot, which stays on the device so that a captured step
/// need not read the host, or none.
pub fn stats_addr(
    stats: Option<&mut impl DevicePtrMut<f32>>,
    len: usize,
    stream: &CudaStream,
) -> Result<u64> {
    match stats {
        Some(out) => {
            crate::error::check_len("loss stats slot", out.len(), len)?;
            Ok(device_addr_mut(out, stream))
        }
        None => Ok(0),
    }
}

/// Reads the `[loss bits, status, label]` triple that the loss kernels (softmax cross-entropy,
/// center loss) leave for the host, waiting for the stream: the loss, or [`Error::Label`] when
/// the status says sample `batch − status` had the out-of-range `label`.
pub fn read_loss_status(
    stream: &Arc<CudaStream>,
    result: &cudarc::driver::CudaView<'_, i32>,
    batch: usize,
    classes: usize,
) -> Result<f32> {
    let mut triple = [0i32; 3];
    stream.memcpy_dtoh(result, &mut triple)?;
    stream.synchronize()?;
    let [loss_bits, bad, label] = triple;
    if bad != 0 {
        return Err(Error::Label {
            index: batch - bad as usize,
            label: label as i64,
            classes,
        });
    }
    Ok(f32::from_bits(loss_bits as u32))
}
