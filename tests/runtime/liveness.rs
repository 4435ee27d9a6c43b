//! The activation gradients' shared buffer (`c2f_inception::liveness`) on the real graphs: two
//! gradients whose lifetimes in backward meet never share an element, every gradient is
//! aligned and inside the buffer, the lifetimes follow the graph (the output's from before
//! backward, the input's to after, each ending at its producer's backward), and the buffer is a
//! small fraction of holding every gradient at once.

use c2f_inception::liveness::{plan, ALIGN};
use c2f_inception::spec::{Depth, Graph, Op};

use crate::common::graph::graph;

/// Checks the layout of `g` at `batch` and returns its size over the sum of all gradients.
fn check(g: &Graph, batch: usize) -> f64 {
    let l = plan(g, batch);
    let n = g.ops.len();
    let acts = g.activations.len();
    assert_eq!(l.offsets.len(), acts);
    for a in 0..acts {
        assert_eq!(l.lens[a], batch * g.activations[a].len());
        assert_eq!(l.offsets[a] % ALIGN, 0, "activation {a} unaligned");
        assert!(
            l.offsets[a] + l.lens[a] <= l.total,
            "activation {a} outside"
        );
        let (first, last) = l.lifetimes[a];
        assert!(first <= last, "activation {a}: {first} > {last}");
    }
    assert_eq!(
        l.lifetimes[g.output].0, 0,
        "the caller writes the output's gradient"
    );
    assert_eq!(
        l.lifetimes[0].1,
        n + 1,
        "the caller reads the input's gradient"
    );
    for (o, op) in g.ops.iter().enumerate() {
        let output = match op {
            Op::Conv { output, .. }
            | Op::MaxPool { output, .. }
            | Op::AvgPool { output, .. }
            | Op::Concat { output, .. }
            | Op::Head { output, .. } => *output,
        };
        assert_eq!(
            l.lifetimes[output].1,
            n - o,
            "op {o} reads its output's gradient last"
        );
    }
    for a in 0..acts {
        for b in a + 1..acts {
            let (fa, la) = l.lifetimes[a];
            let (fb, lb) = l.lifetimes[b];
            let live_together = fa <= lb && fb <= la;
            let (sa, ea) = (l.offsets[a], l.offsets[a] + l.lens[a]);
            let (sb, eb) = (l.offsets[b], l.offsets[b] + l.lens[b]);
            assert!(
                !(live_together && sa < eb && sb < ea),
                "activations {a} and {b} are live together and share memory"
            );
        }
    }
    l.total as f64 / l.lens.iter().sum::<usize>() as f64
}

#[test]
fn live_gradients_never_share_memory() {
    for (size, width, depth) in [
        (299, 1.0, Depth::Mixed6e),
        (448, 1.0, Depth::Mixed6e),
        (299, 1.0, Depth::Full { classes: 200 }),
        (75, 0.125, Depth::Full { classes: 3 }),
    ] {
        let g = graph(size, width, depth);
        let fraction = check(&g, 2);
        println!(
            "{size}² width {width} {depth:?}: {:.1}% of all gradients",
            100.0 * fraction
        );
        assert!(fraction < 0.35, "{size}² {depth:?}: {fraction}");
    }
}
