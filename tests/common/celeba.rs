//! A small CelebA tree whose two attributes can be seen in the pixels: `Red` (a red rather
//! than a blue face) and `Striped` (light and dark bands 4 pixels high), over a random
//! texture, so a model can learn them.

use std::path::Path;

use c2f_kernels::testing::SplitMix64;

use super::datasets::write_jpeg;

pub const ATTRIBUTES: [&str; 2] = ["Red", "Striped"];

/// Writes `train` training, 4 validation and `test` test images under `dir` and returns each
/// test image's attributes, in file order.
pub fn write_faces(dir: &Path, train: usize, test: usize) -> Vec<[bool; 2]> {
    let partitions: Vec<u8> = (0..train)
        .map(|_| 0)
        .chain((0..4).map(|_| 1))
        .chain((0..test).map(|_| 2))
        .collect();
    let mut attrs = format!("{}\n{}\n", partitions.len(), ATTRIBUTES.join(" "));
    let mut parts = String::new();
    let mut test_attributes = Vec::new();
    for (i, &p) in partitions.iter().enumerate() {
        let file = format!("{:06}.jpg", i + 1);
        let (red, striped) = (i % 2 == 0, (i / 2) % 2 == 0);
        let mut rng = SplitMix64(i as u64);
        let noise: Vec<u8> = (0..32 * 32).map(|_| rng.below(40) as u8).collect();
        write_jpeg(&dir.join("img_align_celeba").join(&file), 32, 32, |x, y| {
            let light = if striped && (y / 4) % 2 == 0 { 90 } else { 0 };
            let n = noise[(y * 32 + x) as usize];
            let (r, b) = if red { (110, 20) } else { (20, 110) };
            [r + light + n, 40 + light + n, b + light + n]
        });
        let value = |v: bool| if v { " 1" } else { "-1" };
        attrs += &format!("{file} {} {}\n", value(red), value(striped));
        parts += &format!("{file} {p}\n");
        if p == 2 {
            test_attributes.push([red, striped]);
        }
    }
    std::fs::write(dir.join("list_attr_celeba.txt"), attrs).unwrap();
    std::fs::write(dir.join("list_eval_partition.txt"), parts).unwrap();
    test_attributes
}
