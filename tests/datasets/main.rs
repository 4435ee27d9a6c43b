//! The dataset readers, image decoding, transforms and the loader (c2f-train's data module).
//!
//! One test binary for the area, a module per op or concern: Cargo finds `tests/<area>/main.rs`
//! by itself, so a new module needs only its `mod` line here.

#[path = "../common"]
mod common {
    pub mod datasets;
    pub mod recorded;
    pub mod train;
}

mod data_aircraft;
mod data_cars;
mod data_celeba;
mod data_cub;
mod data_dogs;
mod data_image_io;
mod data_inat;
mod data_loader;
mod data_missing;
mod data_resize;
mod data_synthetic;
mod data_transform;
