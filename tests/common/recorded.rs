//! Reading the tensors a tools script recorded with PyTorch into a safetensors golden file, and
//! naming ours to compare with them.

#![allow(dead_code)] // each test binary uses a part

use c2f_inception::table::TensorTable;
use safetensors::{Dtype, SafeTensors};

/// A flat buffer laid out as `table` (parameters, gradients), as its named tensors.
pub fn by_name(table: &TensorTable, whole: &[f64]) -> Vec<(String, Vec<f64>)> {
    table
        .entries()
        .iter()
        .map(|e| (e.name.clone(), whole[e.range()].to_vec()))
        .collect()
}

/// A recorded tensor (float64 or float32) as f64.
pub fn floats(file: &SafeTensors, name: &str) -> Vec<f64> {
    let view = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("golden file lacks {name}"));
    match view.dtype() {
        Dtype::F64 => view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("golden {name} is {other:?}"),
    }
}
