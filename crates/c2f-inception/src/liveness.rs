//! Activation gradients packed by liveness into one buffer.
//!
//! In backward (the graph's ops in reverse), the gradient of an activation is live from the
//! backward of its last reader in forward order, the first op to write it, to the backward of
//! the op that produced it, the last to read it. Gradients whose lifetimes do not meet can share
//! memory; holding every one at once would double the memory the activations take. The output's
//! gradient is live from before backward (the caller writes it) and the input's until after
//! (the caller reads it).
//!
//! Placement is first fit, largest gradient first: each goes to the lowest offset not taken by
//! a gradient whose lifetime meets its own.

use crate::spec::{Graph, Op};

/// Every placed gradient starts at a multiple of this many elements (256 bytes in f32), so
/// libraries and vector loads see aligned tensors.
pub const ALIGN: usize = 64;

/// Where each activation's gradient sits in the shared buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradLayout {
    /// One per activation, in elements.
    pub offsets: Vec<usize>,
    /// Each gradient's length in elements (`batch` times the activation's).
    pub lens: Vec<usize>,
    /// Each gradient's lifetime `(first, last)` in backward time: 0 is before backward, op `o`
    /// runs its backward at time `ops − o`, and `ops + 1` is after backward.
    pub lifetimes: Vec<(usize, usize)>,
    /// The buffer's length in elements.
    pub total: usize,
}

fn op_io(op: &Op) -> (Vec<usize>, usize) {
    match op {
        Op::Conv { input, output, .. }
        | Op::MaxPool { input, output }
        | Op::AvgPool { input, output }
        | Op::Head { input, output, .. } => (vec![*input], *output),
        Op::Concat { inputs, output } => (inputs.clone(), *output),
    }
}

/// The layout of `graph`'s activation gradients at `batch`.
pub fn plan(graph: &Graph, batch: usize) -> GradLayout {
    let n = graph.ops.len();
    let acts = graph.activations.len();
    let time = |op: usize| n - op;
    // (first, last) time; start from "never written" and narrow.
    let mut first = vec![usize::MAX; acts];
    let mut last = vec![n + 1; acts];
    for (o, op) in graph.ops.iter().enumerate() {
        let (inputs, output) = op_io(op);
        for a in inputs {
            first[a] = first[a].min(time(o));
        }
        last[output] = time(o);
    }
    first[graph.output] = 0;
    let lifetimes: Vec<(usize, usize)> = first
        .into_iter()
        .zip(last)
        // An activation nothing reads is never written: give it an instant of its own.
        .map(|(f, l)| (f.min(l), l))
        .collect();
    let lens: Vec<usize> = graph.activations.iter().map(|s| batch * s.len()).collect();
    let mut order: Vec<usize> = (0..acts).collect();
    order.sort_by_key(|&a| (std::cmp::Reverse(lens[a]), a));
    let mut offsets = vec![0; acts];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for a in order {
        let (f, l) = lifetimes[a];
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&p| lifetimes[p].0 <= l && f <= lifetimes[p].1)
            .map(|&p| (offsets[p], offsets[p] + lens[p]))
            .collect();
        taken.sort_unstable();
        let mut at = 0;
        for (start, end) in taken {
            if at + lens[a] <= start {
                break;
            }
            at = at.max(end.next_multiple_of(ALIGN));
        }
        offsets[a] = at;
        total = total.max(at + lens[a]);
        placed.push(a);
    }
    GradLayout {
        offsets,
        lens,
        lifetimes,
        total,
    }
}
