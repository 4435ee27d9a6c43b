//! Every numeric flag of every `c2f` command, found in clap's command so that a new one is not
//! forgotten, against bad values (NaN, infinities, negatives, fractions for whole numbers, text,
//! values past the type, 0 where it means nothing) and against the ends of the range its error
//! message states; the same through a `--config` file, named by key; a sample through the
//! binary, refused with status 1 before anything is written; `--weights` deciding the width.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use c2f_kernels::Error;
use c2f_train::cli::{command, parse, takes_number};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_values_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Each command with its required arguments (parsing reads none of them).
const BASES: [&[&str]; 6] = [
    &["train"],
    &["eval", "ck.safetensors"],
    &["predict", "--checkpoint", "ck.safetensors", "image.jpg"],
    &["pretrain-upsampler"],
    &["localize", "ck.safetensors"],
    &["visualize", "ck.safetensors"],
];

/// The numeric flags for which 0 means something (none, off, only at the end, the first).
const ZERO_ALLOWED: [&str; 13] = [
    "train --clutter",
    "train --warmup-epochs",
    "train --momentum",
    "train --weight-decay",
    "train --lambda",
    "train --center-warmup-epochs",
    "train --seed",
    "train --data-seed",
    "train --checkpoint-every",
    "train --eval-every",
    "pretrain-upsampler --seed",
    "localize --threshold",
    "visualize --index",
];

/// The numeric flags for which 0 means nothing: refused.
const ZERO_REFUSED: [&str; 28] = [
    "train --epochs",
    "train --log-every",
    "train --batch",
    "train --size",
    "train --width",
    "train --maps",
    "train --wsdan-maps",
    "train --classes",
    "train --train-images",
    "train --test-images",
    "train --object-scale",
    "train --lr",
    "train --classifier-lr-scale",
    "train --beta",
    "pretrain-upsampler --size",
    "pretrain-upsampler --pairs",
    "pretrain-upsampler --epochs",
    "pretrain-upsampler --batch",
    "pretrain-upsampler --lr",
    "localize --box-filter",
    "localize --limit",
    "visualize --count",
    "predict --top",
    "train --max-image-pixels",
    "eval --max-image-pixels",
    "predict --max-image-pixels",
    "localize --max-image-pixels",
    "visualize --max-image-pixels",
];

/// Refused by every numeric flag: none takes a negative, NaN, an infinity, text, or 1e23 (past
/// every upper bound, and past u64).
const ALWAYS_BAD: [&str; 10] = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "-0.5",
    "1e999",
    "99999999999999999999999",
    "ten",
    "",
];

/// A numeric flag: its command, long name, how many values it takes, and whether whole.
struct Flag {
    command: String,
    long: String,
    arity: usize,
    whole: bool,
}

impl Flag {
    fn name(&self) -> String {
        format!("{} --{}", self.command, self.long)
    }

    /// The command line with this flag given `value` (as many times as it takes values).
    fn argv(&self, value: &str) -> Vec<String> {
        let base = BASES
            .iter()
            .find(|b| b[0] == self.command)
            .unwrap_or_else(|| panic!("no base command line for `{}`", self.command));
        let mut argv: Vec<String> = std::iter::once("c2f")
            .chain(base.iter().copied())
            .map(String::from)
            .collect();
        argv.push(format!("--{}", self.long));
        argv.extend(std::iter::repeat_n(value.to_string(), self.arity));
        argv
    }
}

fn numeric_flags() -> Vec<Flag> {
    let mut cmd = command();
    cmd.build();
    let mut flags = Vec::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments().filter(|a| takes_number(a)) {
            let id = arg.get_value_parser().type_id();
            flags.push(Flag {
                command: sub.get_name().to_string(),
                long: arg.get_long().expect("numeric flags are long").to_string(),
                arity: arg.get_num_args().map_or(1, |r| r.min_values().max(1)),
                whole: id == std::any::TypeId::of::<usize>() || id == std::any::TypeId::of::<u64>(),
            });
        }
    }
    flags
}

/// Asserts `value` for `flag` is refused as an [`Error::Config`] naming the flag and value and
/// stating a range; the message.
fn refused(flag: &Flag, value: &str) -> String {
    let name = flag.name();
    match parse(flag.argv(value)) {
        Err(e @ Error::Config { .. }) => {
            let text = e.to_string();
            let Error::Config { key, value: v, .. } = &e else {
                unreachable!()
            };
            assert_eq!(key, &format!("--{}", flag.long), "{name} {value}: {text}");
            assert_eq!(v, value, "{name} {value}: {text}");
            assert!(text.contains(": must be "), "{name} {value}: {text}");
            text
        }
        Err(e) => panic!("{name} {value}: not a config error: {e}"),
        Ok(_) => panic!("{name} {value}: accepted"),
    }
}

fn accepted(flag: &Flag, value: &str) {
    if let Err(e) = parse(flag.argv(value)) {
        panic!("{} {value}: refused: {e}", flag.name());
    }
}

/// The bounds a message states (`must be a number > 0 and <= 10`): each as (operator, value).
fn stated_bounds(message: &str) -> Vec<(String, f64)> {
    let range = message.split(" number").nth(1).unwrap_or_default();
    range
        .split(" and ")
        .filter_map(|part| {
            let (op, v) = part.trim().split_once(' ')?;
            Some((op.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Every numeric flag refuses the values no flag takes, 0 where it means nothing, and
/// fractions where it counts; and takes exactly the range its message states, ends included or
/// not as stated.
#[test]
fn every_numeric_flag_is_refused_outside_its_stated_range() {
    let flags = numeric_flags();
    // The tables cover exactly the numeric flags clap has: a new one must be added to one.
    let mut found: Vec<String> = flags.iter().map(Flag::name).collect();
    let mut listed: Vec<String> = ZERO_ALLOWED
        .iter()
        .chain(&ZERO_REFUSED)
        .map(|s| s.to_string())
        .collect();
    found.sort();
    listed.sort();
    assert_eq!(found, listed, "the numeric flags and the tables differ");
    let mut cases = 0;
    for flag in &flags {
        let name = flag.name();
        let message = refused(flag, "nan");
        let range = message.split_once("nan: ").unwrap().1;
        for bad in ALWAYS_BAD {
            let expected = format!("--{} {bad}: {range}", flag.long);
            assert_eq!(refused(flag, bad), expected, "{name}");
            cases += 1;
        }
        if flag.whole {
            refused(flag, "1.5");
            cases += 1;
        }
        if ZERO_REFUSED.contains(&name.as_str()) {
            refused(flag, "0");
        } else {
            accepted(flag, "0");
        }
        cases += 1;
        let bounds = stated_bounds(&message);
        assert!(
            bounds.iter().any(|(op, _)| op.starts_with('>')),
            "{name}: no lower bound stated: {message}"
        );
        for (op, v) in &bounds {
            let end = v.to_string();
            match op.as_str() {
                ">=" | "<=" => accepted(flag, &end),
                ">" | "<" => {
                    refused(flag, &end);
                }
                other => panic!("{name}: operator {other} in {message}"),
            }
            // Past the end: half way to zero below, twice and one above.
            let past = match op.as_str() {
                ">=" if *v > 0.0 && flag.whole => Some(v - 1.0),
                ">=" if *v > 0.0 => Some(v / 2.0),
                "<=" | "<" => Some(2.0 * v + 1.0),
                _ => None,
            };
            if let Some(past) = past {
                refused(flag, &past.to_string());
            }
            cases += 2;
        }
    }
    println!("{} numeric flags, {cases} values", flags.len());
    assert!(
        flags.len() >= 39,
        "only {} numeric flags found",
        flags.len()
    );
    assert!(cases > 400, "{cases} cases");
}

/// The same values through a `--config` file are refused naming the file and the key as it is
/// written there; so is a switch given a number.
#[test]
fn config_file_values_are_refused_naming_file_and_key() {
    let dir = scratch("config");
    let file = dir.join("run.toml");
    let check = |text: &str, key: &str, expected: &str| {
        std::fs::write(&file, text).unwrap();
        let argv = ["c2f", "train", "--config", file.to_str().unwrap()];
        match parse(argv.map(String::from).to_vec()) {
            Err(Error::File { path, message }) => {
                assert_eq!(path, file.display().to_string(), "{text}");
                assert!(
                    message.starts_with(&format!("`{key}` = ")) && message.contains(expected),
                    "{text}: {message}"
                );
            }
            Err(e) => panic!("{text}: not a file error: {e}"),
            Ok(_) => panic!("{text}: accepted"),
        }
    };
    let mut cases = 0;
    for flag in numeric_flags().iter().filter(|f| f.command == "train") {
        let key = flag.long.replace('-', "_");
        let mut values = vec!["nan", "inf", "-inf", "-1", "1e300", "\"ten\"", "true"];
        if ZERO_REFUSED.contains(&flag.name().as_str()) {
            values.push("0");
        }
        if flag.whole {
            values.push("2.5");
        }
        for v in values {
            let value = match flag.arity {
                1 => v.to_string(),
                n => format!("[{}]", vec![v; n].join(", ")),
            };
            check(&format!("{key} = {value}\n"), &key, ": must be ");
            cases += 1;
        }
    }
    println!("{cases} config-file values");
    assert!(cases > 150, "{cases} cases");
    check(
        "no_ortho_init = 3\n",
        "no_ortho_init",
        "must be true or false",
    );
    check(
        "schedule = \"fast\"\n",
        "schedule",
        "must be one of step, cosine",
    );
}

fn c2f(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `c2f`, asserts it failed with status 1 and no panic, saying `expected`; its stderr.
fn c2f_refused(args: &[&str], expected: &str) -> String {
    let out = c2f(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    stderr
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sample of the refusals through the binary: status 1, the flag or key named, no panic, and
/// no run folder, output file or picture folder made. `--epochs 0` is among them: a run that
/// trains nothing is refused rather than leaving empty run folders.
#[test]
fn the_binary_refuses_bad_numbers_with_status_one_writing_nothing() {
    let dir = scratch("binary");
    let run = dir.join("run");
    let upsampler = dir.join("upsampler.safetensors");
    let pictures = dir.join("pictures");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "momentum = 1.5\n").unwrap();
    let (r, u, p, c) = (path(&run), path(&upsampler), path(&pictures), path(&config));
    let cases: [(&[&str], &str); 9] = [
        (
            &["train", "--epochs", "0", "--run-dir", r],
            "c2f: --epochs 0: must be a whole number >= 1 and <= 100000",
        ),
        (
            &["train", "--lr", "nan", "--run-dir", r],
            "c2f: --lr nan: must be a number > 0 and <= 10",
        ),
        (
            &["train", "--config", c, "--run-dir", r],
            "bad.toml: `momentum` = 1.5: must be a number >= 0 and < 1",
        ),
        (
            &["train", "--batch", "-1", "--run-dir", r],
            "--batch -1: must",
        ),
        (
            &["train", "--wsdan-passes", "crop,drop", "--run-dir", r],
            "--wsdan-passes crop,drop: the raw pass always runs",
        ),
        (
            &["pretrain-upsampler", "--pairs", "inf", "--out", u],
            "--pairs inf: must",
        ),
        (
            &["localize", "ck", "--threshold", "2"],
            "--threshold 2: must",
        ),
        (
            &["predict", "--checkpoint", "ck", "a.jpg", "--top", "0"],
            "--top 0: must",
        ),
        (
            &["visualize", "ck", "--count", "0", "--out", p],
            "--count 0: must",
        ),
    ];
    for (args, expected) in cases {
        c2f_refused(args, expected);
        for made in [&run, &upsampler, &pictures] {
            assert!(!made.exists(), "{args:?} made {}", made.display());
        }
    }
}

/// A width-1.0 weights file as torchvision names it (this project's fresh draw, not ImageNet's).
fn width_one_weights(file: &Path) {
    use c2f_inception::spec::{Depth, Graph, InceptionConfig};
    let graph = Graph::new(InceptionConfig {
        input_size: 299,
        width: 1.0,
        depth: Depth::Full { classes: 1000 },
    })
    .unwrap();
    let mut params = vec![0.0; graph.params.total()];
    let mut buffers = vec![0.0; graph.buffers.total()];
    c2f_inception::init::golden_init(&graph, &mut params, &mut buffers);
    c2f_inception::weights::save(file, &graph, &params, &buffers).unwrap();
}

/// `--weights` sets the width to the weights' 1.0 (on the CPU too, where the default is 0.25)
/// and says so; an explicit other `--width` is refused naming both; a missing file and one that
/// is no safetensors file are named as such, before any run folder is made.
#[test]
fn weights_decide_the_width() {
    let dir = scratch("weights");
    let weights = dir.join("inception_v3.safetensors");
    width_one_weights(&weights);
    let tiny = [
        "train",
        "--device",
        "cpu",
        "--models",
        "baseline",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--size",
        "75",
        "--classes",
        "2",
        "--train-images",
        "2",
        "--test-images",
        "2",
        "--no-progress",
    ];
    let run = dir.join("run");
    let out = c2f(&[
        &tiny[..],
        &["--weights", path(&weights), "--run-dir", path(&run)],
    ]
    .concat());
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("width 1, batch 2")
            && log.contains(&format!(
                "width 1.0: the width of the --weights file {}",
                path(&weights)
            )),
        "{log}"
    );
    let meta =
        c2f_train::checkpoint::read_meta(&run.join("baseline/checkpoint.safetensors")).unwrap();
    assert_eq!(meta.config.width, 1.0);

    let argv = [
        "c2f",
        "train",
        "--weights",
        path(&weights),
        "--width",
        "0.5",
    ];
    let err = parse(argv.map(String::from).to_vec())
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "--width 0.5: conflicts with --weights {}: the weights fit width 1.0 only",
            weights.display()
        )
    );
    // The weights' own width, given, is no conflict.
    let argv = ["c2f", "train", "--weights", path(&weights), "--width", "1"];
    assert!(parse(argv.map(String::from).to_vec()).is_ok());

    let missing = dir.join("missing.safetensors");
    let other_run = dir.join("other");
    let refused_run = |weights: &Path, expected: &str| {
        let args = [
            &tiny[..],
            &["--weights", path(weights), "--run-dir", path(&other_run)],
        ];
        c2f_refused(&args.concat(), expected);
        assert!(!other_run.exists(), "{expected}");
    };
    refused_run(
        &missing,
        &format!("c2f: --weights {}: cannot open: ", missing.display()),
    );
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    refused_run(
        &garbage,
        &format!("c2f: {}: not a valid safetensors file", garbage.display()),
    );
}
