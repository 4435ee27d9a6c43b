//! The harness: a seeded, structure-unaware mutator over a corpus of real-format seed inputs
//! (libFuzzer's mutations without its coverage feedback), each execution under `catch_unwind`
//! and an allocation bound, every failure reported with the input's seed and saved to a file.
//!
//! Each input is a function of its seed alone (the corpus is fixed), so any failure replays
//! with `C2F_FUZZ_REPLAY=<seed>` (which also saves the input under `target/tmp/fuzz-failures`). `C2F_FUZZ_EXECS` sets the executions per target (default: each
//! target's own, a few seconds in a debug build), `C2F_FUZZ_SEED` the base seed (default 0).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, Once};
use std::time::Instant;

use c2f_kernels::rng::{splitmix64_output, SplitMix64};
use c2f_kernels::Error;

/// The largest single allocation an execution may ask for.
pub const MAX_ONE_ALLOCATION: usize = 256 << 20;
/// The most the whole process may hold while an execution runs.
pub const MAX_LIVE: usize = 512 << 20;
/// Inputs grow no larger than this.
const MAX_INPUT: usize = 1 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Whether an execution runs: the bounds apply and panics are recorded, not printed.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The largest allocation refused during the execution (0: none).
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static CURRENT_SEED: AtomicU64 = AtomicU64::new(0);
static CURRENT_TARGET: Mutex<&str> = Mutex::new("");
/// Panics during the execution, the ones the readers contain included.
static PANICS: AtomicUsize = AtomicUsize::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());
/// One target at a time: the allocation bound is the whole process's.
static ONE_TARGET: Mutex<()> = Mutex::new(());

/// The system allocator, counting live bytes and refusing (null) what is over the bounds while
/// an execution runs. A refusal is printed first (without allocating) with the input's seed,
/// since most callers then abort the process.
pub struct Bounded;

fn admit(size: usize, growth: usize) -> bool {
    if !ARMED.load(Relaxed) {
        return true;
    }
    let live = LIVE.load(Relaxed);
    if size <= MAX_ONE_ALLOCATION && live.saturating_add(growth) <= MAX_LIVE {
        return true;
    }
    REFUSED.fetch_max(size, Relaxed);
    let mut line = StackText::default();
    let target = CURRENT_TARGET.try_lock().map_or("?", |t| *t);
    let _ = writeln!(
        line,
        "fuzz {target}: refused an allocation of {size} bytes ({live} live) for \
         C2F_FUZZ_REPLAY={:#x}",
        CURRENT_SEED.load(Relaxed)
    );
    let _ = std::io::stderr().write_all(line.text());
    false
}

/// `allocate` (the system's `alloc` or `alloc_zeroed`) if the bounds admit `layout`, counted.
fn counted(layout: Layout, allocate: impl FnOnce() -> *mut u8) -> *mut u8 {
    if !admit(layout.size(), layout.size()) {
        return std::ptr::null_mut();
    }
    let p = allocate();
    if !p.is_null() {
        LIVE.fetch_add(layout.size(), Relaxed);
    }
    p
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout, || unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout, || unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !admit(new_size, new_size.saturating_sub(layout.size())) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

/// A line formatted on the stack: the allocator must not allocate to report.
struct StackText {
    buf: [u8; 200],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 200],
            len: 0,
        }
    }
}

impl StackText {
    fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// While an execution runs, a panic is recorded (the harness reports it with the seed) rather
/// than printed: the MAT reader's contained panics would flood the log.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ARMED.load(Relaxed) {
                PANICS.fetch_add(1, Relaxed);
                if let Ok(mut last) = LAST_PANIC.try_lock() {
                    *last = info.to_string();
                }
            } else {
                default(info);
            }
        }));
    });
}

/// What an execution did with its input.
#[derive(Debug)]
pub enum Outcome {
    /// Read it.
    Accepted,
    /// Refused it with an error of the kind the reader promises.
    Refused,
    /// Anything else: an untyped error, one that names the wrong file.
    Wrong(String),
}

/// [`Outcome::Refused`] for an error that names a file under `root` (the data, image or
/// checkpoint read: [`Error::Data`], [`Error::File`], [`Error::Io`]); [`Outcome::Wrong`] for any
/// other error.
pub fn named_under<T>(result: c2f_kernels::Result<T>, root: &Path) -> Outcome {
    match result {
        Ok(_) => Outcome::Accepted,
        Err(Error::Data { path, .. } | Error::File { path, .. } | Error::Io { path, .. })
            if Path::new(&path).starts_with(root) =>
        {
            Outcome::Refused
        }
        Err(e) => Outcome::Wrong(format!("not an error naming a file under {root:?}: {e:?}")),
    }
}

/// Draws from `rng` and changes `data` by one of libFuzzer's mutations; `corpus` is for
/// splicing.
fn mutate(rng: &mut SplitMix64, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let mut below = |n: usize| {
        if n == 0 {
            0
        } else {
            rng.below(n as u64) as usize
        }
    };
    let len = data.len();
    match below(10) {
        // A bit flipped.
        0 if len > 0 => data[below(len)] ^= 1 << below(8),
        // A byte set.
        1 if len > 0 => data[below(len)] = below(256) as u8,
        // Bytes inserted: random ones, or one repeated.
        2 => {
            let at = below(len + 1);
            let n = 1 + below(8);
            let repeated = below(2) == 0;
            let mut byte = below(256) as u8;
            let mut bytes = Vec::with_capacity(n);
            for _ in 0..n {
                bytes.push(byte);
                if !repeated {
                    byte = below(256) as u8;
                }
            }
            data.splice(at..at, bytes);
        }
        // A range deleted.
        3 if len > 0 => {
            let at = below(len);
            let n = 1 + below(16.min(len - at));
            data.drain(at..at + n);
        }
        // Truncated.
        4 => data.truncate(below(len + 1)),
        // An interesting integer written over bytes, 1, 2, 4 or 8 wide, either endianness.
        5 => {
            const VALUES: [u64; 14] = [
                0,
                1,
                0x7f,
                0x80,
                0xff,
                0x7fff,
                0x8000,
                0xffff,
                0x7fff_ffff,
                0x8000_0000,
                0xffff_ffff,
                0x1_0000_0000,
                i64::MAX as u64,
                u64::MAX,
            ];
            let width = 1 << below(4);
            if len >= width {
                let v = VALUES[below(VALUES.len())];
                let bytes = if below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    (v << (64 - 8 * width)).to_be_bytes()
                };
                let at = below(len - width + 1);
                data[at..at + width].copy_from_slice(&bytes[..width]);
            }
        }
        // A number written in text replaced by an interesting one (libFuzzer's
        // ChangeASCIIInteger, with floats' specials).
        6 => {
            const NUMBERS: [&str; 14] = [
                "0",
                "-1",
                "1",
                "255",
                "65536",
                "2147483648",
                "4294967296",
                "9007199254740993",
                "18446744073709551616",
                "1e308",
                "1e309",
                "-0.0",
                "NaN",
                "inf",
            ];
            let starts: Vec<usize> = (0..len)
                .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
                .collect();
            if !starts.is_empty() {
                let at = starts[below(starts.len())];
                let end = (at..len)
                    .find(|&i| !data[i].is_ascii_digit())
                    .unwrap_or(len);
                let number = NUMBERS[below(NUMBERS.len())];
                data.splice(at..end, number.bytes());
            }
        }
        // A chunk duplicated in place, or copied over another place.
        7 | 8 if len > 0 => {
            let from = below(len);
            let n = 1 + below((len - from).min(64));
            let chunk = data[from..from + n].to_vec();
            let to = below(len + 1);
            if below(2) == 0 {
                data.splice(to..to, chunk);
            } else {
                let n = n.min(len - to);
                data[to..to + n].copy_from_slice(&chunk[..n]);
            }
        }
        // Spliced: this input's head, another seed's tail.
        9 => {
            let other = &corpus[below(corpus.len())];
            let head = below(len + 1);
            let tail = below(other.len() + 1);
            data.truncate(head);
            data.extend_from_slice(&other[tail..]);
        }
        // A mutation that needed bytes met an empty input: grow it.
        _ => data.push(below(256) as u8),
    }
    data.truncate(MAX_INPUT);
}

/// The input of seed `seed`: one of the corpus's entries (its index), mutated 1 to 5 times.
fn input(seed: u64, corpus: &[Vec<u8>]) -> (usize, Vec<u8>) {
    let mut rng = SplitMix64(seed);
    let from = rng.below(corpus.len() as u64) as usize;
    let mut data = corpus[from].clone();
    for _ in 0..1 + rng.below(5) {
        mutate(&mut rng, &mut data, corpus);
    }
    (from, data)
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

/// One execution under the bounds: the outcome, or what went wrong (a panic, an allocation
/// refused).
fn execute(
    seed: u64,
    from: usize,
    data: &[u8],
    exec: &mut dyn FnMut(usize, &[u8]) -> Outcome,
) -> Outcome {
    CURRENT_SEED.store(seed, Relaxed);
    REFUSED.store(0, Relaxed);
    ARMED.store(true, Relaxed);
    let result = catch_unwind(AssertUnwindSafe(|| exec(from, data)));
    ARMED.store(false, Relaxed);
    let refused = REFUSED.load(Relaxed);
    match result {
        _ if refused > 0 => Outcome::Wrong(format!(
            "asked for {refused} bytes at once or beyond {MAX_LIVE} live (bounds: \
             {MAX_ONE_ALLOCATION} in one allocation)"
        )),
        Err(_) => Outcome::Wrong(format!(
            "panicked: {}",
            LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner())
        )),
        Ok(outcome) => outcome,
    }
}

/// Saves the input of `seed` for a look with other tools; where it went.
fn save(target: &str, seed: u64, data: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{target}-{seed:016x}.bin"));
    std::fs::write(&path, data).unwrap();
    path
}

/// Runs `target`: every seed of `corpus` as it is (none may go wrong, and at least one must be
/// read), then `C2F_FUZZ_EXECS` (else `default_execs`) mutated inputs. `exec` gets the index of
/// the seed an input grew from and the input. Panics listing the failing inputs' seeds.
pub fn fuzz(
    target: &'static str,
    default_execs: u64,
    corpus: &[Vec<u8>],
    mut exec: impl FnMut(usize, &[u8]) -> Outcome,
) {
    let _one = ONE_TARGET.lock().unwrap_or_else(|e| e.into_inner());
    *CURRENT_TARGET.lock().unwrap_or_else(|e| e.into_inner()) = target;
    install_panic_hook();
    if let Some(seed) = env_u64("C2F_FUZZ_REPLAY") {
        let (from, data) = input(seed, corpus);
        let outcome = execute(seed, from, &data, &mut exec);
        let path = save(target, seed, &data);
        eprintln!("fuzz {target}: input {seed:#x} (from seed {from}, in {path:?}): {outcome:?}");
        assert!(
            !matches!(outcome, Outcome::Wrong(_)),
            "fuzz {target}: {outcome:?}"
        );
        return;
    }
    let mut accepted_seeds = 0;
    for (k, seed) in corpus.iter().enumerate() {
        match execute(0, k, seed, &mut exec) {
            Outcome::Accepted => accepted_seeds += 1,
            Outcome::Refused => {}
            Outcome::Wrong(what) => panic!("fuzz {target}: seed {k} as it is: {what}"),
        }
    }
    assert!(
        accepted_seeds > 0,
        "fuzz {target}: no seed is read as it is"
    );

    let execs = env_u64("C2F_FUZZ_EXECS").unwrap_or(default_execs);
    let base = env_u64("C2F_FUZZ_SEED").unwrap_or(0);
    let panics_before = PANICS.load(Relaxed);
    let start = Instant::now();
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut failures = String::new();
    let mut failed = 0;
    // A few inputs on which a dependency panicked and the reader contained it, for the log.
    let mut contained = Vec::new();
    for k in 0..execs {
        let seed = splitmix64_output(base, k + 1);
        let (from, data) = input(seed, corpus);
        let panics = PANICS.load(Relaxed);
        let outcome = execute(seed, from, &data, &mut exec);
        if PANICS.load(Relaxed) > panics
            && contained.len() < 3
            && !matches!(outcome, Outcome::Wrong(_))
        {
            let last = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner());
            contained.push(format!("C2F_FUZZ_REPLAY={seed:#x}: {last}"));
        }
        match outcome {
            Outcome::Accepted => accepted += 1,
            Outcome::Refused => refused += 1,
            Outcome::Wrong(what) => {
                failed += 1;
                let path = save(target, seed, &data);
                let _ = writeln!(
                    failures,
                    "  C2F_FUZZ_REPLAY={seed:#x} (from seed {from}, input in {path:?}): {what}"
                );
                if failed == 10 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "fuzz {target}: {execs} executions in {:.1} s from base seed {base}: {accepted} read, \
         {refused} refused with a named error, {} panics contained by the reader, {failed} wrong",
        start.elapsed().as_secs_f64(),
        PANICS.load(Relaxed) - panics_before
    );
    for c in &contained {
        eprintln!("  contained: {c}");
    }
    assert!(
        failures.is_empty(),
        "fuzz {target}: {failed} inputs went wrong (replay one with its C2F_FUZZ_REPLAY and \
         `cargo test --test fuzz -- {target}`):\n{failures}"
    );
}

/// A scratch folder for `target`.
pub fn scratch(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz_{target}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A seed that is a file: the input is written to `file` before `read(root)` runs, and the
/// seed's bytes are put back after.
pub struct FileSeed {
    pub root: PathBuf,
    pub file: PathBuf,
    pub bytes: Vec<u8>,
}

impl FileSeed {
    /// Writes the seed's file (making its folder).
    pub fn new(root: &Path, file: &str, bytes: impl Into<Vec<u8>>) -> Self {
        let seed = FileSeed {
            root: root.to_path_buf(),
            file: root.join(file),
            bytes: bytes.into(),
        };
        std::fs::create_dir_all(seed.file.parent().unwrap()).unwrap();
        std::fs::write(&seed.file, &seed.bytes).unwrap();
        seed
    }
}

/// Fuzzes a reader of files: each input replaces one seed's file, and `read` on that seed's
/// root must read the data or refuse it with an error naming a file under the root.
pub fn fuzz_files<T>(
    target: &'static str,
    default_execs: u64,
    seeds: &[FileSeed],
    read: impl Fn(&Path) -> c2f_kernels::Result<T>,
) {
    let corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.bytes.clone()).collect();
    fuzz(target, default_execs, &corpus, |k, data| {
        let seed = &seeds[k];
        std::fs::write(&seed.file, data).unwrap();
        let outcome = named_under(read(&seed.root), &seed.root);
        std::fs::write(&seed.file, &seed.bytes).unwrap();
        outcome
    });
}
