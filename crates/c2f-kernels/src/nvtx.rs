//! NVTX ranges, so that an Nsight Systems timeline of a step reads by layer, pass and phase.
//!
//! [`range`] opens a range that closes when its guard drops. Ranges are off until [`enable`]
//! (`c2f … --nvtx`): then each range is one relaxed atomic load and nothing else, so the
//! instrumented code costs nothing measurable. Once enabled, each range calls NVIDIA's NVTX 3
//! library, `libnvtx3interop.so.1` (the `nvidia-nvtx` wheel, which PyTorch's CUDA wheels
//! install), loaded at run time: it forwards the calls to the tool that Nsight Systems names in
//! `NVTX_INJECTION64_PATH`, and without one each call returns at once. Loading it at run time
//! keeps the build free of the CUDA toolkit, as CI has none.
//!
//! NVTX ranges are host-side: they mark when the host issued the work, which for a CUDA graph
//! is its capture, not its replay (`docs/perf.md`, Profiling).
//!
//! [`record`] logs the ranges one thread opens and closes, for tests that check their names and
//! nesting without a profiler.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The shared library of NVTX 3 that [`enable`] loads, by the loader's search path.
pub const LIBRARY: &str = "libnvtx3interop.so.1";

/// What `nvtxRangePushA` returns when no tool is attached: no range stack is kept.
pub const NO_TOOL: c_int = -2;

/// The two NVTX 3 entry points a range uses.
struct Api {
    push: unsafe extern "C" fn(*const c_char) -> c_int,
    pop: unsafe extern "C" fn() -> c_int,
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// How many reasons there are to open ranges: 1 once [`enable`] succeeded, plus each
/// [`record`] running. Zero is the fast path every range checks.
static USERS: AtomicUsize = AtomicUsize::new(0);
static ENABLE: OnceLock<()> = OnceLock::new();

thread_local! {
    static RECORDING: RefCell<Option<Vec<Event>>> = const { RefCell::new(None) };
}

fn load() -> std::result::Result<Api, String> {
    // SAFETY: loading NVIDIA's NVTX library runs only its (empty) initialisers; the symbols
    // are NVTX 3's C API with these signatures (nvToolsExt.h).
    unsafe {
        let library = libloading::Library::new(LIBRARY).map_err(|e| e.to_string())?;
        let push = *library
            .get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"nvtxRangePushA\0")
            .map_err(|e| e.to_string())?;
        let pop = *library
            .get::<unsafe extern "C" fn() -> c_int>(b"nvtxRangePop\0")
            .map_err(|e| e.to_string())?;
        // The entry points live as long as the process.
        std::mem::forget(library);
        Ok(Api { push, pop })
    }
}

/// Turns ranges on for the whole process, loading [`LIBRARY`]; an error names the library and
/// where it comes from. Idempotent.
pub fn enable() -> Result<()> {
    match API.get_or_init(load) {
        Ok(_) => {
            ENABLE.get_or_init(|| {
                USERS.fetch_add(1, Ordering::Relaxed);
            });
            Ok(())
        }
        Err(message) => Err(Error::Library {
            library: LIBRARY,
            message: format!(
                "--nvtx needs NVIDIA's NVTX 3 library on the loader's path (the nvidia-nvtx \
                 wheel, which PyTorch's CUDA wheels install; `eval \"$(tools/cuda-libs.sh)\"` \
                 links it): {message}"
            ),
        }),
    }
}

/// An open range; it closes when dropped. Ranges nest per thread, so drop them in reverse
/// order of opening (a guard per scope does).
#[must_use = "a range closes when its guard drops"]
pub struct Range {
    open: bool,
}

/// Opens a range named `name` on this thread. Off ([`enable`] not called, no [`record`]): the
/// name is not even formatted.
#[inline]
pub fn range(name: impl fmt::Display) -> Range {
    if USERS.load(Ordering::Relaxed) == 0 {
        return Range { open: false };
    }
    push(&name.to_string());
    Range { open: true }
}

/// Runs `f` inside a range named `name`.
#[inline]
pub fn within<T>(name: impl fmt::Display, f: impl FnOnce() -> T) -> T {
    let _range = range(name);
    f()
}

/// `items`, each `next` inside a range named `name`: the time a loop waits for its next item.
pub fn each<I: Iterator>(name: &'static str, items: I) -> Each<I> {
    Each { name, items }
}

/// The iterator [`each`] returns.
pub struct Each<I> {
    name: &'static str,
    items: I,
}

impl<I: Iterator> Iterator for Each<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        within(self.name, || self.items.next())
    }
}

#[cold]
fn push(name: &str) {
    if let Some(Ok(api)) = API.get() {
        // A name with a NUL byte is cut there rather than lost.
        let text = name.split('\0').next().unwrap_or_default();
        let text = CString::new(text).unwrap_or_default();
        // SAFETY: a NUL-terminated string that outlives the call; NVTX copies it.
        unsafe { (api.push)(text.as_ptr()) };
    }
    RECORDING.with(|r| {
        if let Some(log) = r.borrow_mut().as_mut() {
            log.push(Event::Push(name.to_string()));
        }
    });
}

impl Drop for Range {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if let Some(Ok(api)) = API.get() {
            // SAFETY: pops the range this guard pushed on this thread.
            unsafe { (api.pop)() };
        }
        RECORDING.with(|r| {
            if let Some(log) = r.borrow_mut().as_mut() {
                log.push(Event::Pop);
            }
        });
    }
}

/// Pushes a range through [`LIBRARY`] itself and pops it, returning what `nvtxRangePushA`
/// returned: [`NO_TOOL`] when no profiler is attached. For tests; an error if [`enable`] has
/// not loaded the library.
pub fn probe_library() -> Result<c_int> {
    match API.get() {
        Some(Ok(api)) => {
            // SAFETY: as in `push` and `Range::drop`.
            let pushed = unsafe { (api.push)(c"c2f probe".as_ptr()) };
            unsafe { (api.pop)() };
            Ok(pushed)
        }
        _ => Err(Error::Library {
            library: LIBRARY,
            message: "not loaded: call nvtx::enable first".into(),
        }),
    }
}

/// What [`record`] logs: a range opened with its name, or the innermost one closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Push(String),
    Pop,
}

/// Runs `f` with ranges on and returns the ranges this thread opened and closed meanwhile, in
/// order (whether or not [`enable`] was called, and without calling the library unless it
/// was). For tests of the ranges' names and nesting.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Vec<Event>) {
    /// Leaves recording off again even if `f` panics.
    struct Recording;
    impl Drop for Recording {
        fn drop(&mut self) {
            USERS.fetch_sub(1, Ordering::Relaxed);
        }
    }
    RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
    USERS.fetch_add(1, Ordering::Relaxed);
    let recording = Recording;
    let out = f();
    drop(recording);
    let log = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    (out, log)
}

/// The ranges of `log` as paths of nested names joined by `/`, one per range in the order
/// opened; an error if a range closes that was not open or one is left open.
pub fn nested_paths(log: &[Event]) -> std::result::Result<Vec<String>, String> {
    let mut stack: Vec<&str> = Vec::new();
    let mut paths = Vec::new();
    for (i, event) in log.iter().enumerate() {
        match event {
            Event::Push(name) => {
                stack.push(name);
                paths.push(stack.join("/"));
            }
            Event::Pop => {
                if stack.pop().is_none() {
                    return Err(format!("event {i} closes a range when none is open"));
                }
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("ranges left open: {}", stack.join("/")));
    }
    Ok(paths)
}
