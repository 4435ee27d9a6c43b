//! Coarse2Fine training. For now the input side: datasets (CUB-200-2011 and the built-in
//! synthetic fine-grained set), decoding, transforms and the prefetching loader ([`data`]).

pub mod data;
