//! The NVTX range module: ranges nest and close in order, an unbalanced log is refused, and
//! NVIDIA's NVTX library, where it is on the loader's path, turns each call into a no-op when
//! no profiler is attached.

use c2f_kernels::nvtx::{self, Event};

#[test]
fn ranges_nest_and_close_in_order() {
    let ((), log) = nvtx::record(|| {
        let _step = nvtx::range("step");
        for layer in ["a", "b"] {
            let _layer = nvtx::range(format_args!("{layer} forward"));
        }
        let _loss = nvtx::range("loss");
    });
    assert_eq!(
        nvtx::nested_paths(&log).unwrap(),
        ["step", "step/a forward", "step/b forward", "step/loss"]
    );
}

#[test]
fn unbalanced_logs_are_refused() {
    let open = [Event::Push("a".into()), Event::Push("b".into()), Event::Pop];
    assert_eq!(
        nvtx::nested_paths(&open).unwrap_err(),
        "ranges left open: a"
    );
    let extra = [Event::Push("a".into()), Event::Pop, Event::Pop];
    assert_eq!(
        nvtx::nested_paths(&extra).unwrap_err(),
        "event 2 closes a range when none is open"
    );
}

/// Where `libnvtx3interop.so.1` can be loaded (`tools/test.sh` puts the pinned wheel's on the
/// path and sets `C2F_REQUIRE_NVTX=1`, which makes its absence a failure): with no profiler's
/// injection library named, a push reaches NVTX and returns "no tool", and ranges then run
/// through the library without error.
#[test]
fn nvtx_library_calls_are_no_ops_without_a_profiler() {
    if let Err(e) = nvtx::enable() {
        assert!(
            std::env::var_os("C2F_REQUIRE_NVTX").is_none(),
            "C2F_REQUIRE_NVTX is set: {e}"
        );
        assert!(e.to_string().contains(nvtx::LIBRARY), "{e}");
        println!("skipped: {e}");
        return;
    }
    assert!(
        std::env::var_os("NVTX_INJECTION64_PATH").is_none(),
        "run this test without a profiler attached"
    );
    assert_eq!(nvtx::probe_library().unwrap(), nvtx::NO_TOOL);
    let ((), log) = nvtx::record(|| drop(nvtx::range("through the library")));
    assert_eq!(nvtx::nested_paths(&log).unwrap(), ["through the library"]);
}
