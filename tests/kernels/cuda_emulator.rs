//! The CPU emulator of `tools/cuda-emu`, which the test command uses to run our kernels' GPU
//! tests without a GPU: it must compute what a GPU computes (barriers, shuffles) and report what
//! a GPU would refuse or corrupt, naming the kernel. Skipped on anything but the emulator.

use c2f_kernels::device::{capture_graph, compile_with_nvrtc};
use c2f_kernels::sources;
use c2f_kernels::testing::{gpu_or_skip, library_or_skip, SplitMix64};
use c2f_kernels::{Error, Gpu, KernelSource};
use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaFunction, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::process::Command;

/// `tools/cuda-emu/selftest.cu`. The emulator compiles it in and ignores the module image.
const SELFTEST: KernelSource = KernelSource {
    name: "cuda-emu selftest",
    source: include_str!("../../tools/cuda-emu/selftest.cu"),
    fatbin: Some(b"compiled into the emulator"),
    ptxas_report: None,
};
use crate::common::skip::or_return;

fn emulator_or_skip(test: &str) -> Option<Gpu> {
    let gpu = gpu_or_skip(test)?;
    if !gpu.is_emulator() {
        println!("{test}: skipped: not the CPU emulator");
        return None;
    }
    Some(gpu)
}

fn config(blocks: u32, threads: u32) -> LaunchConfig {
    config_with((blocks, 1, 1), threads, 0)
}

fn config_with(grid_dim: (u32, u32, u32), threads: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim,
        block_dim: (threads, 1, 1),
        shared_mem_bytes,
    }
}

fn kernel(gpu: &Gpu, name: &str) -> CudaFunction {
    gpu.function(&SELFTEST, name).unwrap()
}

fn launch_on_one_buffer(gpu: &Gpu, name: &str, len: usize, cfg: LaunchConfig) -> DriverError {
    let f = kernel(gpu, name);
    let mut y = gpu.alloc_zeros::<f32>(len).unwrap();
    let n = len as i32;
    let mut launch = gpu.stream().launch_builder(&f);
    launch.arg(&mut y);
    if name == "emu_selftest_write_past_end" {
        launch.arg(&n);
    }
    // SAFETY: the emulator checks the launch; these kernels are meant to break its rules.
    unsafe { launch.launch(cfg) }.expect_err(&format!("{name} should have failed"))
}

#[test]
fn emulator_computes_elementwise_and_block_reductions() {
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_computes_elementwise_and_block_reductions"
    ));
    let (blocks, threads) = (3usize, 256usize);
    let x: Vec<f32> = SplitMix64(1)
        .uniform_vec(blocks * threads, -1.0, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let x_d = gpu.upload(&x).unwrap();
    let mut y_d = gpu.alloc_poisoned::<f32>(x.len() - 5).unwrap();
    let mut sums_d = gpu.alloc_poisoned::<f32>(blocks).unwrap();
    let n = y_d.len() as i32;
    let (double, block_sum) = (
        kernel(&gpu, "emu_selftest_double"),
        kernel(&gpu, "emu_selftest_block_sum"),
    );
    // SAFETY: lengths match the kernels' indexing.
    unsafe {
        let mut launch = gpu.stream().launch_builder(&double);
        launch.arg(&x_d).arg(&mut y_d).arg(&n);
        launch
            .launch(config(blocks as u32, threads as u32))
            .unwrap();
        let mut launch = gpu.stream().launch_builder(&block_sum);
        launch.arg(&x_d).arg(&mut sums_d);
        launch
            .launch(config(blocks as u32, threads as u32))
            .unwrap();
    }
    let y = gpu.download(&y_d).unwrap();
    for (i, (&yi, &xi)) in y.iter().zip(&x).enumerate() {
        assert_eq!(yi, 2.0 * xi, "y[{i}]");
    }
    let sums = gpu.download(&sums_d).unwrap();
    for (b, &s) in sums.iter().enumerate() {
        let expected: f64 = x[b * threads..][..threads].iter().map(|&v| v as f64).sum();
        assert!(
            (s as f64 - expected).abs() < 1e-5,
            "block {b}: {s} vs {expected}"
        );
    }
}

#[test]
fn emulator_reports_what_a_gpu_would_refuse_or_corrupt() {
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_reports_what_a_gpu_would_refuse_or_corrupt"
    ));
    let cases = [
        // A write one element past a buffer: the guard bytes after it change.
        (
            "emu_selftest_write_past_end",
            100,
            config(1, 128),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        ),
        (
            "emu_selftest_shuffle_after_exit",
            64,
            config(1, 64),
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
        ),
        (
            "emu_selftest_warp_split",
            32,
            config(1, 32),
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
        ),
        // 128 threads against __launch_bounds__(64).
        (
            "emu_selftest_bounded",
            128,
            config(1, 128),
            CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
        ),
        // Grid y beyond 65535.
        (
            "emu_selftest_bounded",
            64,
            config_with((1, 65536, 1), 64, 0),
            CUresult::CUDA_ERROR_INVALID_VALUE,
        ),
        // Dynamic shared memory beyond the 48 KiB a kernel gets without opting in.
        (
            "emu_selftest_bounded",
            64,
            config_with((1, 1, 1), 64, 48 * 1024 + 4),
            CUresult::CUDA_ERROR_INVALID_VALUE,
        ),
    ];
    for (name, len, cfg, expected) in cases {
        let e = launch_on_one_buffer(&gpu, name, len, cfg);
        assert_eq!(e.0, expected, "{name} with {cfg:?}: {e}");
    }
    // The emulator keeps working after a refused launch, as a GPU does after these errors.
    let mut y = gpu.alloc_zeros::<f32>(64).unwrap();
    let f = kernel(&gpu, "emu_selftest_bounded");
    // SAFETY: 64 threads write 64 elements.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&mut y)
            .launch(config(1, 64))
            .unwrap();
    }
    assert_eq!(gpu.download(&y).unwrap(), vec![1.0f32; 64]);
}

/// A kernel that reads another thread's shared-memory write without a barrier in between gets
/// wrong values in one of the two orders the emulator runs a block's threads in, so its test
/// fails on the emulator (as it may on a GPU) instead of passing by luck.
/// A module from NVRTC (a CUBIN) or PTX text: the emulator finds in it only the kernels it
/// defines, so a launcher asking the wrong kernel file for a function fails here as on a GPU.
#[test]
fn emulator_finds_only_the_kernels_a_module_defines() {
    const TEST: &str = "cuda_emulator emulator_finds_only_the_kernels_a_module_defines";
    let gpu = or_return!(emulator_or_skip(TEST));
    let ptx = "//\n// as NVRTC writes it\n//\n\n.version 9.0\n.target sm_90\n\
               .visible .entry emu_selftest_double(\n\t.param .u64 x\n)\n{\n\tret;\n}\n";
    let from_ptx = gpu.context().load_module(Ptx::from_src(ptx)).unwrap();
    let modules = [(
        "PTX",
        from_ptx,
        "emu_selftest_double",
        "emu_selftest_block_sum",
    )];
    let cubin = library_or_skip(TEST, compile_with_nvrtc(&sources::AXPBY, (9, 0)));
    let from_cubin = cubin.map(|c| {
        let module = gpu.context().load_module(Ptx::from_binary(c)).unwrap();
        ("CUBIN", module, "axpby_f32", "bap_pool_f32")
    });
    for (kind, module, defined, other) in modules.into_iter().chain(from_cubin) {
        module
            .load_function(defined)
            .unwrap_or_else(|e| panic!("{kind}: {defined}: {e}"));
        let e = module.load_function(other).expect_err(&format!(
            "{kind}: {other}, which it does not define, was found"
        ));
        assert_eq!(e.0, CUresult::CUDA_ERROR_NOT_FOUND, "{kind}: {e}");
    }
    let e = gpu
        .context()
        .load_module(Ptx::from_src("// no kernels\n.version 9.0\n"))
        .expect_err("PTX without an entry point loaded");
    assert_eq!(e.0, CUresult::CUDA_ERROR_INVALID_IMAGE, "{e}");
}

#[test]
fn emulator_exposes_a_missing_barrier() {
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_exposes_a_missing_barrier"
    ));
    let (blocks, threads) = (2usize, 64usize);
    let mut y = gpu.alloc_poisoned::<f32>(blocks * threads).unwrap();
    let f = kernel(&gpu, "emu_selftest_shared_race");
    // SAFETY: one element per thread.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&mut y)
            .launch(config(blocks as u32, threads as u32))
            .unwrap();
    }
    let y = gpu.download(&y).unwrap();
    let race_free: Vec<f32> = (0..blocks * threads)
        .map(|i| ((i % threads + 1) % threads + 1000 * (i / threads)) as f32)
        .collect();
    assert_ne!(y, race_free, "the missing barrier went unnoticed");
}

/// Set in the child processes of the tests below, which do what the emulator ends a process for.
const FAULT_CHILD_ENV: &str = "C2F_EMU_FAULT_CHILD";

/// Whether this process is such a child.
fn in_fault_child() -> bool {
    std::env::var_os(FAULT_CHILD_ENV).is_some()
}

/// Runs `test` of this binary in a child process that does the bad access, and checks that the
/// child failed saying each of `expected` on its standard error.
fn child_fails_saying(test: &str, expected: &[&str]) {
    let test = crate::common::child::exact_test_name(module_path!(), test);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([&test, "--exact", "--nocapture"])
        .env(FAULT_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "no {e:?} in: {stderr}");
    }
}

/// In a fault child: launches `name` with one thread on `x` (uploaded), a one-element output and
/// `n`, which must end the process.
fn launch_in_child(gpu: &Gpu, name: &str, x: &[f32], n: i32) -> ! {
    let x = gpu.upload(x).unwrap();
    let mut y = gpu.alloc_zeros::<f32>(1).unwrap();
    let f = kernel(gpu, name);
    // SAFETY: none; the bad access is the point, and the emulator ends the process.
    let _ = unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&x)
            .arg(&mut y)
            .arg(&n)
            .launch(config(1, 1))
    };
    panic!("{name}: the bad access went unnoticed");
}

/// A read beyond a buffer's guard bytes faults; the emulator names the kernel and ends the
/// process, as an illegal address ends a GPU context.
#[test]
fn emulator_ends_a_read_out_of_bounds() {
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_ends_a_read_out_of_bounds"
    ));
    if in_fault_child() {
        launch_in_child(&gpu, "emu_selftest_read_past_end", &[1.0; 100], 100);
    }
    child_fails_saying(
        "emulator_ends_a_read_out_of_bounds",
        &[
            "emu_selftest_read_past_end accessed",
            "outside every device buffer",
        ],
    );
}

/// A 16-byte vector load from an address that is not 16-byte aligned, which a GPU refuses with a
/// misaligned-address error, ends the process with the source line (the kernels are compiled
/// with g++'s alignment sanitizer).
#[test]
fn emulator_ends_a_misaligned_vector_load() {
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_ends_a_misaligned_vector_load"
    ));
    if in_fault_child() {
        launch_in_child(&gpu, "emu_selftest_misaligned", &[1.0; 8], 8);
    }
    child_fails_saying(
        "emulator_ends_a_misaligned_vector_load",
        &["selftest.cu", "misaligned address"],
    );
}

/// Stricter than a GPU, which records an allocation on a captured stream as a graph memory node:
/// the emulator refuses it as not emulated (the runtime allocates nothing during a capture).
#[test]
fn emulator_refuses_graph_memory_nodes() {
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_refuses_graph_memory_nodes"
    ));
    let stream = gpu.stream().clone();
    let outcome = capture_graph(&stream, || {
        let e = stream
            .alloc_zeros::<f32>(4)
            .expect_err("allocated during a capture");
        assert_eq!(
            e.0,
            CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
            "{e:?}"
        );
        Ok(())
    });
    assert!(matches!(outcome, Err(Error::Capture { .. })));
}

/// A copy from page-locked memory runs when its stream gets to it, after the call returned, as
/// on a GPU: a host that refills the buffer before waiting for the copy sends the new bytes,
/// here every time. Waiting on an event recorded after the copy, or on a stream that waits on
/// it, runs it first; a copy from pageable memory takes its bytes when issued.
#[test]
fn emulator_runs_copies_from_page_locked_memory_late() {
    use cudarc::driver::result::{free_host, malloc_host, memcpy_htod_async};
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_runs_copies_from_page_locked_memory_late"
    ));
    let (ctx, compute) = (gpu.context().clone(), gpu.stream().clone());
    let copy = ctx.new_stream().unwrap();
    let event = ctx.new_event(None).unwrap();
    let mut dev = copy.alloc_zeros::<f32>(4).unwrap();
    let read = |dev: &cudarc::driver::CudaSlice<f32>| compute.clone_dtoh(dev).unwrap();
    // SAFETY: a host buffer of 4 f32, written and read only through `host` below, freed last;
    // every copy from it is ordered before the free (which waits for all queued work).
    unsafe {
        let host = malloc_host(16, 0).unwrap() as *mut f32;
        let host = std::slice::from_raw_parts_mut(host, 4);
        let dst = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut dev, &copy).0;
        // Refilled before the copy ran: the device gets the refill.
        host.copy_from_slice(&[1.0; 4]);
        memcpy_htod_async(dst, &host[..], copy.cu_stream()).unwrap();
        host.copy_from_slice(&[2.0; 4]);
        copy.synchronize().unwrap();
        assert_eq!(read(&dev), [2.0; 4], "the copy ran when it was issued");
        // Waiting on an event recorded after the copy runs it before the refill.
        host.copy_from_slice(&[3.0; 4]);
        memcpy_htod_async(dst, &host[..], copy.cu_stream()).unwrap();
        event.record(&copy).unwrap();
        event.synchronize().unwrap();
        host.copy_from_slice(&[4.0; 4]);
        assert_eq!(read(&dev), [3.0; 4], "the event did not wait for the copy");
        // A stream that waits on the event runs behind the copy: the copy runs when that
        // stream is waited for, and not before.
        host.copy_from_slice(&[5.0; 4]);
        memcpy_htod_async(dst, &host[..], copy.cu_stream()).unwrap();
        event.record(&copy).unwrap();
        compute.wait(&event).unwrap();
        let mut out = compute.alloc_zeros::<f32>(4).unwrap();
        compute.memcpy_dtod(&dev, &mut out).unwrap();
        host.copy_from_slice(&[6.0; 4]);
        compute.synchronize().unwrap();
        assert_eq!(
            read(&out),
            [6.0; 4],
            "the copy ran before its stream was waited for"
        );
        // From pageable memory the bytes are taken when the copy is issued, even on a stream
        // whose work waits.
        host.copy_from_slice(&[7.0; 4]);
        memcpy_htod_async(dst, &host[..], copy.cu_stream()).unwrap();
        let mut pageable = vec![8.0f32; 4];
        let mut second = copy.alloc_zeros::<f32>(4).unwrap();
        copy.memcpy_htod(&pageable, &mut second).unwrap();
        pageable.fill(9.0);
        copy.synchronize().unwrap();
        assert_eq!(read(&second), [8.0; 4], "a pageable source was read late");
        free_host(host.as_mut_ptr().cast()).unwrap();
    }
}

/// One stream's operations run one at a time, in order, whichever threads wait for them: while
/// another thread runs a stream's work (it synchronised the context), waiting for the stream
/// here waits until that work has finished, not merely started. Emulated without this, a
/// wait returned while another thread was still running the stream's CUDA graph, and a test's
/// replayed step read the last step's losses whenever a test beside it synchronised
/// (docs/testing.md, "A flake that was the emulator's"). The work here is a host function that takes its time.
#[test]
fn emulator_waits_for_a_streams_work_another_thread_runs() {
    use cudarc::driver::result::{free_host, malloc_host, memcpy_htod_async, stream};
    use cudarc::driver::DevicePtrMut;
    use std::sync::atomic::{AtomicBool, Ordering};
    let gpu = or_return!(emulator_or_skip(
        "cuda_emulator emulator_waits_for_a_streams_work_another_thread_runs"
    ));
    unsafe extern "C" fn slow_then_done(done: *mut std::ffi::c_void) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        // SAFETY: `done` points at the test's flag, which outlives every wait below.
        unsafe { (*done.cast::<AtomicBool>()).store(true, Ordering::SeqCst) };
    }
    let ctx = gpu.context().clone();
    let compute = gpu.stream().clone();
    let mut dev = compute.alloc_zeros::<f32>(4).unwrap();
    compute.synchronize().unwrap();
    let done = AtomicBool::new(false);
    // SAFETY: a page-locked buffer of 4 f32, freed after the stream was waited for; `done`
    // outlives the host function, which runs before the waits below return.
    unsafe {
        let host = malloc_host(16, 0).unwrap() as *mut f32;
        let host = std::slice::from_raw_parts_mut(host, 4);
        host.fill(1.0);
        {
            // A late copy first, so that the host function queues behind it and the other
            // thread's synchronisation runs both.
            let (dst, _record) = dev.device_ptr_mut(&compute);
            memcpy_htod_async(dst, &host[..], compute.cu_stream()).unwrap();
        }
        let flag = std::ptr::from_ref(&done).cast_mut().cast();
        stream::launch_host_function(compute.cu_stream(), slow_then_done, flag).unwrap();
        let other = ctx.clone();
        let synchroniser = std::thread::spawn(move || other.synchronize());
        std::thread::sleep(std::time::Duration::from_millis(5));
        compute.synchronize().unwrap();
        assert!(
            done.load(Ordering::SeqCst),
            "the wait returned while another thread ran the stream's host function"
        );
        synchroniser.join().unwrap().unwrap();
        free_host(host.as_mut_ptr().cast()).unwrap();
    }
}
