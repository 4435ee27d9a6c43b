//! `c2f train --config FILE`: a TOML file holding any of `train`'s flags by name.

use std::path::PathBuf;

use c2f_kernels::{Error, Result};

use super::command;
use super::values::{reason, value_error};

/// For `c2f train --config FILE`: the command line with the file's keys put in front of the
/// user's flags as flags (so the user's come later and win), each key checked against the
/// flags `train` has and each value by its flag's parser, so that a bad one is named by its key
/// in the file.
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
    let mut command = command();
    command.build();
    let train = command.find_subcommand("train").expect("train exists");
    let known: Vec<&clap::Arg> = train
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "config" && l != "help"))
        .collect();
    let key_of = |a: &clap::Arg| a.get_long().unwrap_or_default().replace('-', "_");
    let mut flags = Vec::new();
    for (key, value) in &table {
        let Some(arg) = known.iter().find(|a| key_of(a) == *key) else {
            let names: Vec<String> = known.iter().map(|a| key_of(a)).collect();
            return Err(file_error(format!(
                "unknown key `{key}` (known: {})",
                names.join(", ")
            )));
        };
        let flag = format!("--{}", key.replace('_', "-"));
        // A switch (`no_ortho_init = true`) is on or off; any other key holds values.
        if !arg.get_action().takes_values() {
            match value {
                toml::Value::Boolean(true) => flags.push(flag),
                toml::Value::Boolean(false) => {}
                other => {
                    return Err(file_error(format!(
                        "`{key}` = {other}: must be true or false"
                    )))
                }
            }
            continue;
        }
        let items = match value {
            toml::Value::Array(items) => items.as_slice(),
            v => std::slice::from_ref(v),
        };
        flags.push(flag);
        for item in items {
            flags.push(match item {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(file_error(format!("`{key}`: unsupported value {other}"))),
            });
        }
    }
    // The file's flags alone through `train`'s parsers: a refused value is the file's.
    if let Err(e) = train
        .clone()
        .try_get_matches_from(std::iter::once("train".to_string()).chain(flags.clone()))
    {
        return Err(match value_error(&e) {
            Some((flag, value)) => {
                let key = flag.trim_start_matches("--").replace('-', "_");
                file_error(format!("`{key}` = {value}: {}", reason(&e)))
            }
            None => file_error(reason(&e)),
        });
    }
    let mut out = argv[..2].to_vec();
    out.extend(flags);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}
