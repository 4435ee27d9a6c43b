//! The InceptionV3 runtime: the network written once as data ([`spec`]), its parameter tables
//! ([`table`]), and torchvision-compatible weights ([`weights`]).

pub mod backend;
pub mod cpu;
pub mod init;
pub mod network;
pub mod spec;
pub mod table;
pub mod weights;

pub use spec::{Depth, Graph, InceptionConfig};
