//! The InceptionV3 runtime: the network written once as data ([`spec`]), its parameter tables
//! ([`table`]), and torchvision-compatible weights ([`weights`]); the graph's forward and backward
//! ([`network`]) over a [`backend::Backend`]: the CPU ([`cpu`]) or CUDA with cuDNN ([`cuda`]).

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod init;
pub mod liveness;
pub mod network;
pub mod precision;
pub mod spec;
pub mod table;
pub mod weights;

pub use precision::{Precision, Storage};
pub use spec::{Depth, Graph, InceptionConfig};
