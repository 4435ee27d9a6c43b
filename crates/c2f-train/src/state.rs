//! A model's state as named tensors: what a checkpoint holds, each tensor with its name in the
//! file, its shape, and where it lives on the backend. The models list theirs; the checkpoint
//! reads and writes them.

use c2f_inception::backend::Tensor;
use c2f_inception::network::Network;
use c2f_inception::table::TensorTable;

/// One tensor of a model's state: its name in the file, its shape, and where it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub shape: Vec<usize>,
    pub tensor: Tensor,
}

/// The tensors of `table`, laid out in `whole`, named `prefix` + the table's names.
pub fn table_state(table: &TensorTable, whole: Tensor, prefix: &str) -> Vec<Named> {
    table
        .entries()
        .iter()
        .map(|e| Named {
            name: format!("{prefix}{}", e.name),
            shape: e.shape.clone(),
            tensor: whole.slice(e.offset, e.len()),
        })
        .collect()
}

/// A backbone's state: parameters and running statistics with torchvision's names, and the
/// parameters' momentum under `momentum.`.
pub fn network_state(net: &Network) -> Vec<Named> {
    let mut state = table_state(&net.graph.params, net.params, "");
    state.extend(table_state(&net.graph.buffers, net.buffers, ""));
    state.extend(table_state(&net.graph.params, net.momentum, "momentum."));
    state
}
