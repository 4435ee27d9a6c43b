//! `c2f train --config FILE`: the TOML file turned into flags, then the command line parsed.

use crate::harness::{fuzz, named_under, scratch, Outcome};
use c2f_train::cli::args::Cli;
use c2f_train::cli::config_file::with_config_file;
use clap::Parser;

#[test]
fn config_file() {
    let dir = scratch("config");
    let path = dir.join("run.toml");
    let corpus = vec![
        b"device = \"cpu\"\nepochs = 5\nbatch = 4\nsize = 75\nwidth = 0.125\nmaps = 2\n\
          classes = 3\ntrain_images = 8\ntest_images = 6\nobject_scale = [0.6, 0.9]\n\
          no_progress = true\nmodels = \"coarse2fine\"\nlr = 2e-2\nschedule = \"cosine\"\n\
          warmup_epochs = 0.5\nmax_image_pixels = 1000000\n"
            .to_vec(),
        b"# fine-tuning on CUB\ndataset = \"cub\"\ndata_root = \"/data/CUB_200_2011\"\n\
          weights = \"inception_v3.safetensors\"\nattributes = [\"Male\", \"Smiling\"]\n\
          center_rule = \"moving-average\"\nno_ortho_init = false\nseed = 18446744073709551615\n"
            .to_vec(),
    ];
    let argv = |p: &str| -> Vec<String> {
        ["c2f", "train", "--config", p, "--epochs", "1"]
            .map(String::from)
            .to_vec()
    };
    fuzz("config_file", 3000, &corpus, |_, data| {
        std::fs::write(&path, data).unwrap();
        match with_config_file(argv(path.to_str().unwrap())) {
            // A value of the wrong kind for its flag is clap's to refuse, as on the command line.
            Ok(args) => match Cli::try_parse_from(args) {
                Ok(_) => Outcome::Accepted,
                Err(_) => Outcome::Refused,
            },
            Err(e) => named_under::<()>(Err(e), &path),
        }
    });
}
