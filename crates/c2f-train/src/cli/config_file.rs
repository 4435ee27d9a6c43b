//! `c2f train --config FILE`: a TOML file holding any of `train`'s flags by name.

use std::path::PathBuf;

use c2f_kernels::{Error, Result};
use clap::CommandFactory;

use super::args::Cli;

/// For `c2f train --config FILE`: the command line with the file's keys put in front of the
/// user's flags as flags (so the user's come later and win), each key checked against the
/// flags `train` has.
pub fn with_config_file(argv: Vec<String>) -> Result<Vec<String>> {
    let position = argv.iter().position(|a| a == "--config");
    let path = match position {
        Some(i) if argv.get(1).map(String::as_str) == Some("train") => match argv.get(i + 1) {
            Some(p) => PathBuf::from(p),
            None => return Ok(argv),
        },
        _ => return Ok(argv),
    };
    let file_error = |message: String| Error::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| file_error(format!("not valid TOML: {e}")))?;
    let command = Cli::command();
    let train = command.find_subcommand("train").expect("train exists");
    let known: Vec<String> = train
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| l.replace('-', "_")))
        .filter(|l| l != "config" && l != "help")
        .collect();
    let mut flags = Vec::new();
    for (key, value) in &table {
        if !known.contains(key) {
            return Err(file_error(format!(
                "unknown key `{key}` (known: {})",
                known.join(", ")
            )));
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(file_error(format!("`{key}`: unsupported value {other}"))),
        };
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                flags.push(flag);
                for item in items {
                    flags.push(scalar(item)?);
                }
            }
            v => {
                flags.push(flag);
                flags.push(scalar(v)?);
            }
        }
    }
    let mut out = argv[..2].to_vec();
    out.extend(flags);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}
