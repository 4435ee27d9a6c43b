//! The InceptionV3 graph against torchvision: every parameter and buffer name and shape, their
//! order, the parameter count, and the feature sizes Coarse2Fine relies on.

use c2f_inception::spec::{ActShape, Depth, Graph, InceptionConfig};

use crate::common::graph::graph;

/// `tests/data/inception_v3_state_dict.txt`, written by torchvision (see its first line).
fn torchvision_state_dict() -> Vec<(String, Vec<usize>)> {
    include_str!("../data/inception_v3_state_dict.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, shape) = l.split_once(' ').unwrap();
            let shape = shape.split('x').map(|d| d.parse().unwrap()).collect();
            (name.to_string(), shape)
        })
        .collect()
}

#[test]
fn names_shapes_and_order_match_torchvision() {
    let g = graph(299, 1.0, Depth::Full { classes: 1000 });
    let reference = torchvision_state_dict();
    let is_buffer = |n: &str| n.ends_with("running_mean") || n.ends_with("running_var");
    for (table, buffers) in [(&g.params, false), (&g.buffers, true)] {
        let ours: Vec<(String, Vec<usize>)> = table
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.shape.clone()))
            .collect();
        let theirs: Vec<(String, Vec<usize>)> = reference
            .iter()
            .filter(|(n, _)| is_buffer(n) == buffers)
            .cloned()
            .collect();
        assert_eq!(
            ours.len(),
            theirs.len(),
            "tensor count (buffers: {buffers})"
        );
        for (o, t) in ours.iter().zip(&theirs) {
            assert_eq!(o, t, "first difference from torchvision's state dict");
        }
    }
    // torchvision: sum(p.numel() for p in inception_v3(aux_logits=False).parameters()).
    assert_eq!(g.params.total(), 23_834_568);
}

#[test]
fn mixed_6e_sizes_at_299_and_448() {
    for (input, side) in [(299, 17), (448, 26)] {
        let g = graph(input, 1.0, Depth::Mixed6e);
        let expected = ActShape {
            channels: 768,
            height: side,
            width: side,
        };
        assert_eq!(g.activations[g.mixed_6e], expected, "input {input}");
        assert_eq!(g.output, g.mixed_6e);
    }
}

#[test]
fn backbone_only_builds_nothing_after_mixed_6e() {
    let g = graph(299, 1.0, Depth::Mixed6e);
    for e in g.params.entries().iter().chain(g.buffers.entries()) {
        assert!(
            !e.name.starts_with("Mixed_7") && !e.name.starts_with("fc."),
            "{} built for a backbone that stops at Mixed_6e",
            e.name
        );
    }
    assert!(g.params.get("Mixed_6e.branch_pool.conv.weight").is_some());
}

#[test]
fn smallest_input_is_75_and_smaller_is_a_clear_error() {
    let g = graph(75, 1.0, Depth::Full { classes: 10 });
    assert_eq!(g.activations[g.output].channels, 10);
    let err = Graph::new(InceptionConfig {
        input_size: 74,
        width: 1.0,
        depth: Depth::Mixed6e,
    })
    .unwrap_err();
    assert!(err.to_string().contains("input_size 74"), "{err}");
}

#[test]
fn width_multiplier_scales_every_block() {
    let g = graph(107, 0.25, Depth::Full { classes: 3 });
    let weight = |name: &str| g.params.get(name).unwrap().shape.clone();
    assert_eq!(weight("Conv2d_1a_3x3.conv.weight"), vec![8, 3, 3, 3]);
    assert_eq!(
        weight("Mixed_5b.branch5x5_1.conv.weight"),
        vec![12, 48, 1, 1]
    );
    // Mixed_6e concatenates 4 branches of round(192/4) = 48 channels.
    assert_eq!(g.activations[g.mixed_6e].channels, 192);
    assert_eq!(weight("fc.weight"), vec![3, 512]);
}
