//! Fuzzing every reader of outside data: the datasets' annotation files, image decoding,
//! safetensors weights and checkpoints, the TOML config file, the distributed launcher's
//! rendezvous messages (docs/reliability.md, "Fuzzing").
//!
//! Each target mutates a corpus of real-format seeds written here ([`harness`]); an execution
//! must read its input or refuse it with a typed error naming the file, and must not panic or
//! allocate past a bound (this binary's allocator counts and refuses). Runs under `cargo test`
//! on stable Rust, a few seconds a target; `C2F_FUZZ_EXECS=N` runs longer.

#[path = "../common"]
mod common {
    pub mod datasets;
}

mod fuzz_config;
mod fuzz_datasets;
mod fuzz_images;
mod fuzz_rendezvous;
mod fuzz_safetensors;
mod harness;

#[global_allocator]
static ALLOCATOR: harness::Bounded = harness::Bounded;
