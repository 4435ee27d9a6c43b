//! The synthetic set written to disk in the CUB-200-2011 layout.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use c2f_kernels::{Error, Result};
use rayon::prelude::*;

use super::{class_name, Split, SyntheticConfig, SyntheticSet};
use crate::data::BBox;

/// The class directory of `label` in the CUB layout, e.g. `003.pairs3`.
pub fn class_dir(label: usize) -> String {
    format!("{:03}.{}", label + 1, class_name(label))
}

/// An [`Error::Io`] for an I/O failure of the encoder, else an [`Error::File`].
fn encode_error(path: &Path, e: image::ImageError) -> Error {
    match e {
        image::ImageError::IoError(e) => Error::io(path, e),
        other => Error::File {
            path: path.display().to_string(),
            message: format!("cannot encode JPEG: {other}"),
        },
    }
}

/// Writes `n_train` training images (`SyntheticSet` train split, indices `0..n_train`) and
/// `n_test` test images (test split) under `dir` in the CUB-200-2011 layout: `classes.txt`,
/// `images.txt`, `image_class_labels.txt` (1-based), `train_test_split.txt` (1 = train),
/// `bounding_boxes.txt` (`id x y w h`) and `images/<NNN.class>/syn_<split>_<NNNNNN>.jpg`
/// (JPEG quality 95). Image ids are 1-based: the training images first, then the test images.
/// Images are generated and encoded in parallel.
pub fn write_cub_layout(
    dir: &Path,
    config: &SyntheticConfig,
    n_train: usize,
    n_test: usize,
) -> Result<()> {
    let train = SyntheticSet::new(config.clone(), Split::Train, n_train)?;
    let test = SyntheticSet::new(config.clone(), Split::Test, n_test)?;
    let entries: Vec<(&SyntheticSet, usize)> = (0..n_train)
        .map(|i| (&train, i))
        .chain((0..n_test).map(|i| (&test, i)))
        .collect();
    for label in 0..config.classes {
        let d = dir.join("images").join(class_dir(label));
        fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let rel = |set: &SyntheticSet, i: usize| {
        format!(
            "{}/syn_{}_{i:06}.jpg",
            class_dir(set.label(i)),
            set.split().name()
        )
    };
    let boxes: Vec<BBox> = entries
        .par_iter()
        .map(|&(set, i)| -> Result<BBox> {
            let s = set.get(i);
            let path = dir.join("images").join(rel(set, i));
            let file = fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut w = BufWriter::new(file);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 95)
                .encode_image(&s.image)
                .map_err(|e| encode_error(&path, e))?;
            w.flush().map_err(|e| Error::io(&path, e))?;
            Ok(s.bbox)
        })
        .collect::<Result<_>>()?;

    let write = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    let mut classes = String::new();
    for label in 0..config.classes {
        classes += &format!("{} {}\n", label + 1, class_dir(label));
    }
    write("classes.txt", classes)?;
    let (mut images, mut labels, mut split, mut bbs) =
        (String::new(), String::new(), String::new(), String::new());
    for (k, (&(set, i), bb)) in entries.iter().zip(&boxes).enumerate() {
        let id = k + 1;
        images += &format!("{id} {}\n", rel(set, i));
        labels += &format!("{id} {}\n", set.label(i) + 1);
        split += &format!("{id} {}\n", u8::from(set.split() == Split::Train));
        bbs += &format!("{id} {:.1} {:.1} {:.1} {:.1}\n", bb.x, bb.y, bb.w, bb.h);
    }
    write("images.txt", images)?;
    write("image_class_labels.txt", labels)?;
    write("train_test_split.txt", split)?;
    write("bounding_boxes.txt", bbs)?;
    Ok(())
}
