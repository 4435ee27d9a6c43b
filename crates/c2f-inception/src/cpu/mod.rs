//! The CPU backend's own ops (the rest come from `c2f-kernels`' CPU references).

pub mod conv;
