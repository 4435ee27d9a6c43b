//! CUDA graph capture and replay on the GPU's stream (`c2f_kernels::device::capture_graph`):
//! captured launches, copies and memsets replay as they ran when launched one by one, on the
//! memory as it is at each replay, work forked to a second stream is captured once joined back,
//! and what a GPU refuses during a capture fails with the driver's error and fails the capture,
//! so that a capture that passes on the CPU emulator passes on a GPU.

use std::sync::Arc;

use c2f_kernels::axpby::AxpbyGpu;
use c2f_kernels::device::{capture_graph, CapturedGraph};
use c2f_kernels::sgd::{SgdGpu, SgdParams};
use c2f_kernels::testing::{assert_bit_identical, gpu_or_skip, SplitMix64};
use c2f_kernels::{Error, Gpu, Result};
use cudarc::driver::sys::{CUresult, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError};

use crate::common::skip::or_return;

const LEN: usize = 1000;
const STEPS: usize = 4;

fn random(rng: &mut SplitMix64, lo: f64, hi: f64) -> Vec<f32> {
    rng.uniform_vec(LEN, lo, hi)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// A small training loop's state: input, gradient, weights, momentum, and a copy of the
/// weights taken before each update.
struct State {
    x: CudaSlice<f32>,
    g: CudaSlice<f32>,
    w: CudaSlice<f32>,
    m: CudaSlice<f32>,
    before: CudaSlice<f32>,
    /// SGD's rate slot.
    lr: CudaSlice<f32>,
}

impl State {
    /// The same starting values on every call; the gradient and the copy start as NaN, which
    /// the step overwrites without reading.
    fn new(gpu: &Gpu) -> State {
        let mut rng = SplitMix64(0x6a9);
        State {
            x: gpu.upload(&random(&mut rng, -1.0, 1.0)).unwrap(),
            g: gpu.alloc_poisoned(LEN).unwrap(),
            w: gpu.upload(&random(&mut rng, -1.0, 1.0)).unwrap(),
            m: gpu.upload(&random(&mut rng, -0.1, 0.1)).unwrap(),
            before: gpu.alloc_poisoned(LEN).unwrap(),
            lr: gpu.upload(&[0.1f32]).unwrap(),
        }
    }

    fn download(&self, gpu: &Gpu) -> [Vec<f32>; 5] {
        [&self.x, &self.g, &self.w, &self.m, &self.before].map(|b| gpu.download(b).unwrap())
    }
}

/// One step: a copy of the weights, the gradient zeroed (a memset) and set to `x / 2` (axpby
/// adding to it), an SGD update, then `x = w + x / 4`, so that every step sees other values.
fn step(
    stream: &Arc<CudaStream>,
    axpby: &AxpbyGpu<f32>,
    sgd: &SgdGpu,
    s: &mut State,
) -> Result<()> {
    stream.memcpy_dtod(&s.w, &mut s.before)?;
    stream.memset_zeros(&mut s.g)?;
    axpby.run(0.5, &s.x, 1.0, &mut s.g)?;
    sgd.step(&SgdParams::new(0.9, 1e-4), &s.lr, &mut s.w, &s.g, &mut s.m)?;
    axpby.run(1.0, &s.w, 0.25, &mut s.x)
}

#[test]
fn gpu_captured_launches_replay_like_eager_ones() {
    let gpu = or_return!(gpu_or_skip(
        "cuda_graph gpu_captured_launches_replay_like_eager_ones"
    ));
    let stream = gpu.stream();
    let (axpby, sgd) = (
        AxpbyGpu::<f32>::new(&gpu).unwrap(),
        SgdGpu::new(&gpu).unwrap(),
    );
    let (mut eager, mut replayed) = (State::new(&gpu), State::new(&gpu));
    let start = replayed.download(&gpu);
    let graph = capture_graph(stream, || step(stream, &axpby, &sgd, &mut replayed)).unwrap();
    // Nothing ran: the values are the starting ones, NaN where poisoned.
    same_bits("after the capture", &replayed.download(&gpu), &start);
    // A new input written from the host halfway: each replay reads the memory as it is then.
    let fresh = random(&mut SplitMix64(0x51), -2.0, 2.0);
    for i in 0..STEPS {
        if i == STEPS / 2 {
            for s in [&mut eager, &mut replayed] {
                stream.memcpy_htod(&fresh, &mut s.x).unwrap();
            }
        }
        step(stream, &axpby, &sgd, &mut eager).unwrap();
        graph.launch().unwrap();
    }
    let (eager, replayed) = (eager.download(&gpu), replayed.download(&gpu));
    same_bits("replayed against eager", &replayed, &eager);
    assert!(
        eager.iter().flatten().all(|v| v.is_finite()),
        "a value is not finite"
    );
    assert!(eager[2] != start[2], "the weights never moved");
}

/// Asserts that every buffer of two [`State::download`]s has the same bits.
fn same_bits(what: &str, a: &[Vec<f32>; 5], b: &[Vec<f32>; 5]) {
    for (name, (a, b)) in ["x", "gradient", "weights", "momentum", "copy"]
        .into_iter()
        .zip(a.iter().zip(b))
    {
        assert_bit_identical(&format!("{what}: {name}"), a, b);
    }
}

/// A capture in which `inside` makes one call that a graph cannot hold: the call fails with
/// `expected`, and so does the capture; the stream works afterwards.
fn refused_in_capture(
    gpu: &Gpu,
    what: &str,
    expected: CUresult,
    inside: impl FnOnce() -> std::result::Result<(), DriverError>,
) {
    let outcome = capture_graph(gpu.stream(), || {
        let e = inside().expect_err(&format!("{what}: allowed during a capture"));
        assert_eq!(e.0, expected, "{what}: {e:?}");
        Ok(())
    });
    match outcome {
        Err(Error::Capture { op, reason }) => {
            assert_eq!(op, "ending the capture", "{what}");
            assert!(
                reason.contains("CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"),
                "{what}: {reason}"
            );
        }
        Err(e) => panic!("{what}: the capture failed otherwise: {e}"),
        Ok(_) => panic!("{what}: the capture succeeded after it"),
    }
    let ones = gpu.upload(&[1.0f32; 4]).unwrap();
    assert_eq!(
        gpu.download(&ones).unwrap(),
        [1.0; 4],
        "{what}: the stream after"
    );
}

#[test]
fn gpu_capture_refuses_what_a_graph_cannot_hold() {
    let gpu = or_return!(gpu_or_skip(
        "cuda_graph gpu_capture_refuses_what_a_graph_cannot_hold"
    ));
    let stream = gpu.stream().clone();
    let mut buf = gpu.upload(&[0.0f32; 16]).unwrap();
    let ptr = buf.device_ptr(&stream).0;
    let mut host = [0.0f32; 16];
    let before = stream.record_event(None).unwrap();
    use CUresult::*;
    let unsupported = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    refused_in_capture(&gpu, "synchronising the stream", unsupported, || {
        stream.synchronize()
    });
    refused_in_capture(&gpu, "a copy to host memory", unsupported, || {
        stream.memcpy_dtoh(&buf, &mut host)
    });
    refused_in_capture(&gpu, "a copy from host memory", unsupported, || {
        stream.memcpy_htod(&host, &mut buf)
    });
    // SAFETY (both): a plain allocation, freed at once, and a copy of 16 floats into `buf`.
    refused_in_capture(&gpu, "cuMemAlloc", unsupported, || {
        unsafe { cudarc::driver::result::malloc_sync(64) }
            .map(|p| unsafe { cudarc::driver::result::free_sync(p) }.unwrap())
    });
    refused_in_capture(&gpu, "a synchronous copy", unsupported, || unsafe {
        cudarc::driver::result::memcpy_htod_sync(ptr, &host)
    });
    refused_in_capture(
        &gpu,
        "waiting on an event recorded before the capture",
        CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
        || stream.wait(&before),
    );
    refused_in_capture(
        &gpu,
        "waiting for an event recorded in the capture",
        CUDA_ERROR_CAPTURED_EVENT,
        || stream.record_event(None)?.synchronize(),
    );
    // The legacy default stream cannot be captured at all.
    let legacy = gpu.context().default_stream();
    let e = legacy
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .expect_err("the legacy default stream was captured");
    assert_eq!(e.0, unsupported, "{e:?}");
    // The work's own error comes first, and the capture is ended.
    let e = capture_graph(&stream, || Err(Error::Shape("made up".into())))
        .err()
        .expect("a failing capture succeeded");
    assert!(matches!(e, Error::Shape(_)), "{e}");
    assert_eq!(gpu.download(&buf).unwrap(), [0.0; 16]);
}

/// Work forked onto a second stream (which joins the capture by waiting on an event recorded
/// in it) is captured once the capturing stream waits for it again; left unjoined, the capture
/// fails.
#[test]
fn gpu_capture_takes_in_work_forked_to_another_stream() {
    let gpu = or_return!(gpu_or_skip(
        "cuda_graph gpu_capture_takes_in_work_forked_to_another_stream"
    ));
    let stream = gpu.stream().clone();
    let side = gpu.context().new_stream().unwrap();
    let axpby = AxpbyGpu::<f32>::new(&gpu).unwrap();
    let x = gpu.upload(&[3.0f32; LEN]).unwrap();
    let mut y = gpu.upload(&[1.0f32; LEN]).unwrap();
    let mut z = gpu.alloc_poisoned::<f32>(LEN).unwrap();
    // y = x + 2y; then, on the side stream, z = y; then y = x + y.
    let mut fork_join = |join_back: bool| -> Result<CapturedGraph> {
        capture_graph(&stream, || {
            axpby.run(1.0, &x, 2.0, &mut y)?;
            side.join(&stream)?;
            side.memcpy_dtod(&y, &mut z)?;
            if join_back {
                stream.join(&side)?;
            }
            axpby.run(1.0, &x, 1.0, &mut y)
        })
    };
    match fork_join(false) {
        Err(Error::Capture { reason, .. }) => assert!(
            reason.contains("CUDA_ERROR_STREAM_CAPTURE_UNJOINED"),
            "{reason}"
        ),
        other => panic!("an unjoined fork: {:?}", other.err()),
    }
    let graph = fork_join(true).unwrap();
    graph.launch().unwrap();
    graph.launch().unwrap();
    // y: 1, then 5 (z = 5) and 8, then 19 (z = 19) and 22.
    for (name, buf, expected) in [("y", &y, 22.0), ("z", &z, 19.0)] {
        let values = gpu.download(buf).unwrap();
        assert!(
            values.iter().all(|&v| v == expected),
            "{name}: {:?}, not {expected}",
            &values[..4]
        );
    }
}
