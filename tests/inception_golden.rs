//! The golden case written by `tools/make_golden.py` with PyTorch: the shared generator first.
//! (The CPU backend's forward and backward against the same file come with the graph executor.)

use c2f_inception::init::counter_uniform;
use safetensors::SafeTensors;

fn golden() -> SafeTensors<'static> {
    static BYTES: &[u8] = include_bytes!("data/inception_golden.safetensors");
    SafeTensors::deserialize(BYTES).expect("tests/data/inception_golden.safetensors is readable")
}

fn floats(file: &SafeTensors, name: &str) -> Vec<f32> {
    let view = file
        .tensor(name)
        .unwrap_or_else(|_| panic!("golden file lacks {name}"));
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn generator_matches_python_bit_for_bit() {
    let file = golden();
    for (name, lo, hi) in [
        (
            "Conv2d_1a_3x3.conv.weight",
            -1.0 / 27f64.sqrt(),
            1.0 / 27f64.sqrt(),
        ),
        ("input", -1.0, 1.0),
    ] {
        let expected = floats(&file, &format!("init/{name}"));
        let mut ours = vec![f32::NAN; expected.len()];
        counter_uniform(name, lo, hi, &mut ours);
        for (i, (o, e)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(o.to_bits(), e.to_bits(), "{name}[{i}]: {o} vs python {e}");
        }
    }
}
