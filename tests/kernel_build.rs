//! Every kernel compiled by nvcc must be free of register spills, local-memory use and warnings.
//! `build.rs` keeps nvcc's and ptxas's output for each `kernels/*.cu`; without nvcc the kernels
//! are embedded as source for NVRTC and this check is skipped.

use c2f_kernels::sources;

#[test]
fn kernels_have_no_spills_or_warnings() {
    let all = sources::all();
    assert!(!all.is_empty(), "build.rs embedded no kernels");
    let mut checked = 0;
    for kernel in &all {
        let Some(report) = kernel.ptxas_report else {
            println!(
                "{}: skipped: built without nvcc (NVRTC at run time)",
                kernel.name
            );
            continue;
        };
        assert!(
            kernel.fatbin.is_some(),
            "{}: report without fatbin",
            kernel.name
        );
        let entries = report.matches("Compiling entry function").count();
        assert!(
            entries > 0,
            "{}: the ptxas report lists no entry functions:\n{report}",
            kernel.name
        );
        for line in report.lines() {
            let lower = line.to_lowercase();
            assert!(
                !lower.contains("warning"),
                "{}: compiler warning: {line}",
                kernel.name
            );
            if line.contains("spill stores") {
                assert!(
                    line.contains("0 bytes spill stores, 0 bytes spill loads"),
                    "{}: register spill: {line}",
                    kernel.name
                );
                assert!(
                    line.trim_start().starts_with("0 bytes stack frame"),
                    "{}: stack frame (local memory): {line}",
                    kernel.name
                );
            }
        }
        checked += 1;
    }
    println!("checked {checked} kernel file(s) compiled by nvcc");
}

#[test]
fn every_kernel_file_is_embedded_with_source() {
    let names: Vec<&str> = sources::all().iter().map(|k| k.name).collect();
    for expected in [
        "axpby",
        "bap",
        "batch_norm",
        "center_loss",
        "conv_transpose",
        "mask",
        "pool",
        "sgd",
        "sigmoid_bce",
        "softmax_ce",
    ] {
        assert!(
            names.contains(&expected),
            "kernel {expected} missing from {names:?}"
        );
    }
    for kernel in sources::all() {
        assert!(
            !kernel.source.contains("#include \""),
            "{}: includes must be inlined for NVRTC",
            kernel.name
        );
        assert!(
            kernel.source.contains("extern \"C\" __global__"),
            "{}: no entry point",
            kernel.name
        );
    }
}
