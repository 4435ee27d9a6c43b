//! The InceptionV3 graph at an input size, width and depth, for the runtime's tests.

use c2f_inception::spec::{Depth, Graph, InceptionConfig};

pub fn graph(input_size: usize, width: f64, depth: Depth) -> Graph {
    Graph::new(InceptionConfig {
        input_size,
        width,
        depth,
    })
    .unwrap()
}
