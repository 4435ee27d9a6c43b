//! Data-parallel training (c2f-dist and the trainer's glue): collectives, NCCL, launch
//! variables, sharding, rendezvous, worker processes, and equivalence with one process.
//!
//! One test binary for the area, a module per op or concern: Cargo finds `tests/<area>/main.rs`
//! by itself, so a new module needs only its `mod` line here.

#[path = "../common"]
mod common {
    pub mod child;
    pub mod train;
}

mod dist_collective;
mod dist_equivalence;
mod dist_graph;
mod dist_launch;
mod dist_nccl;
mod dist_rendezvous;
mod dist_shard;
mod dist_train;
mod dist_workers;
mod dist_world_one;
