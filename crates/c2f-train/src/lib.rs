//! Coarse2Fine training: datasets (CUB-200-2011, FGVC-Aircraft, Stanford Cars and Dogs,
//! iNaturalist 2017, CelebA attributes, and the built-in synthetic fine-grained set),
//! decoding, transforms and the prefetching loader ([`data`]); the model's forward and backward
//! on any backend ([`model`]); WS-DAN, the method it is compared with ([`wsdan`]).

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod interpolate;
pub mod localize;
pub mod model;
mod pass;
pub mod predictor;
pub mod pretrain;
pub mod state;
pub mod task;
pub mod train;
pub mod upsampler;
pub mod visualize;
pub mod wsdan;
