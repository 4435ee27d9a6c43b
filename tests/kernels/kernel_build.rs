//! Every kernel compiled by nvcc must be free of register spills, local-memory use and warnings.
//! `build.rs` keeps nvcc's and ptxas's output for each `kernels/*.cu`; without nvcc the kernels
//! are embedded as source for NVRTC and this check is skipped. NVRTC's own build of each kernel
//! is checked too, where libnvrtc can be loaded (no GPU needed).

use crate::common::skip::or_return;
use c2f_kernels::device::compile_with_nvrtc;
use c2f_kernels::testing::library_or_skip;
use c2f_kernels::KernelSource;

/// The kernels crate's files and the bench baselines' (`kernels/baselines/`).
fn all_sources() -> Vec<KernelSource> {
    let mut all = c2f_kernels::sources::all();
    all.extend(c2f_baselines::sources::all());
    all
}

#[test]
fn kernels_have_no_spills_or_warnings() {
    let all = all_sources();
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
    let names: Vec<&str> = all_sources().iter().map(|k| k.name).collect();
    for expected in [
        "axpby",
        "bap",
        "batch_norm",
        "center_loss",
        "center_loss_unfused",
        "concat",
        "conv_transpose",
        "dropout",
        "map_select",
        "mask",
        "pool",
        "relu",
        "resize",
        "sgd",
        "sigmoid_bce",
        "softmax_ce",
    ] {
        assert!(
            names.contains(&expected),
            "kernel {expected} missing from {names:?}"
        );
    }
    for kernel in all_sources() {
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

/// Names in `text` that follow `marker` up to `end`, sorted and without repeats.
fn names_after(text: &[u8], marker: &[u8], end: u8) -> Vec<String> {
    let mut names: Vec<String> = (0..text.len().saturating_sub(marker.len()))
        .filter(|&at| text[at..].starts_with(marker))
        .map(|at| {
            let rest = &text[at + marker.len()..];
            let len = rest.iter().position(|&b| b == end).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..len]).trim().to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A build without nvcc compiles each kernel with NVRTC on first use (`device::compile_with_nvrtc`).
/// NVRTC needs no GPU, so this runs that compile here for the architectures the fatbin covers, and
/// checks that each CUBIN holds code (a `.text.NAME` section) for exactly the entry points of
/// nvcc's build.
#[test]
fn every_kernel_compiles_with_nvrtc() {
    let test = "every_kernel_compiles_with_nvrtc";
    for kernel in all_sources() {
        for arch in [(8, 0), (9, 0)] {
            let cubin = or_return!(library_or_skip(test, compile_with_nvrtc(&kernel, arch)));
            let functions = names_after(&cubin, b".text.", 0);
            assert!(
                cubin.starts_with(b"\x7fELF") && !functions.is_empty(),
                "{}: NVRTC's CUBIN for sm_{}{} is not an ELF with code",
                kernel.name,
                arch.0,
                arch.1
            );
            if let Some(report) = kernel.ptxas_report {
                assert_eq!(
                    functions,
                    names_after(report.as_bytes(), b"Compiling entry function '", b'\''),
                    "{}: NVRTC's functions for sm_{}{} differ from nvcc's entry points",
                    kernel.name,
                    arch.0,
                    arch.1
                );
            }
        }
    }
}
