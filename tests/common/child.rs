//! Tests that run one test of their own binary in a child process (`--exact NAME`).

/// The name `--exact` matches for test `test` of the module whose `module_path!()` is
/// `module_path`: within a test binary, tests are named by their module path without the
/// binary's own name.
pub fn exact_test_name(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    }
}
