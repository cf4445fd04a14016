//! The optional TOML configuration file of `paycore node`: `--config FILE` (or `PAYCORE_CONFIG`).
//!
//! Keys are the node's flag names with underscores, for example:
//!
//! ```toml
//! data_dir = "/var/lib/paycore"
//! listen = "0.0.0.0:7400"
//! shards = 4
//! durability = "fsync"
//! ```
//!
//! Precedence: command-line flags > `PAYCORE_*` environment variables > the file > built-in
//! defaults. It works by adding `--flag value` for each key whose flag is not on the command line
//! and whose environment variable is not set, before the command line is parsed, so clap
//! validates file values exactly like typed ones. An unknown key is an error (typos do not pass
//! silently).

/// Keys the file may hold: (key, flag, environment variable).
const KEYS: [(&str, &str, &str); 12] = [
    ("data_dir", "--data-dir", "PAYCORE_DATA_DIR"),
    ("listen", "--listen", "PAYCORE_LISTEN"),
    ("shards", "--shards", "PAYCORE_SHARDS"),
    ("durability", "--durability", "PAYCORE_DURABILITY"),
    (
        "ring_requests_max",
        "--ring-requests-max",
        "PAYCORE_RING_REQUESTS_MAX",
    ),
    (
        "batch_commands_max",
        "--batch-commands-max",
        "PAYCORE_BATCH_COMMANDS_MAX",
    ),
    (
        "snapshot_every_records",
        "--snapshot-every-records",
        "PAYCORE_SNAPSHOT_EVERY_RECORDS",
    ),
    (
        "snapshot_every_secs",
        "--snapshot-every-secs",
        "PAYCORE_SNAPSHOT_EVERY_SECS",
    ),
    ("snapshot_nice", "--snapshot-nice", "PAYCORE_SNAPSHOT_NICE"),
    ("cert", "--cert", "PAYCORE_CERT"),
    ("key", "--key", "PAYCORE_KEY"),
    ("ca", "--ca", "PAYCORE_CA"),
];

/// Largest configuration file read, in bytes.
const CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// `args` with the config file's settings added (see the module docs). Only the `node`
/// subcommand reads a file; other command lines come back unchanged.
pub fn with_config_file(args: Vec<String>) -> Result<Vec<String>, String> {
    if args.get(1).map(String::as_str) != Some("node") {
        return Ok(args);
    }
    let mut path = std::env::var("PAYCORE_CONFIG").ok();
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            path = Some(iter.next().ok_or("--config needs a file")?);
        } else if let Some(value) = arg.strip_prefix("--config=") {
            path = Some(value.to_string());
        } else {
            rest.push(arg);
        }
    }
    let Some(path) = path else { return Ok(rest) };
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("config {path}: {e}"))?
        .len();
    if size > CONFIG_BYTES_MAX {
        return Err(format!(
            "config {path}: {size} bytes is more than {CONFIG_BYTES_MAX}"
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("config {path}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("config {path}: {e}"))?;
    for (key, value) in table {
        let Some((_, flag, env)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _, _)| *k).collect();
            return Err(format!(
                "config {path}: unknown key `{key}` (known: {})",
                known.join(", ")
            ));
        };
        let on_command_line = rest
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if on_command_line || std::env::var_os(env).is_some() {
            continue;
        }
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            other => {
                return Err(format!(
                    "config {path}: `{key}` must be a string or an integer, not a {}",
                    other.type_str()
                ));
            }
        };
        rest.push(format!("{flag}={value}"));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn file_fills_in_what_flags_do_not_say() {
        let path = std::env::temp_dir().join(format!("paycore-config-{}.toml", std::process::id()));
        std::fs::write(&path, "shards = 4\nring_requests_max = 99\n").expect("write");
        let args = strings(&[
            "paycore",
            "node",
            "--shards",
            "2",
            "--config",
            path.to_str().expect("utf8"),
        ]);
        let out = with_config_file(args).expect("valid");
        assert!(out.contains(&"--shards".to_string()) && out.contains(&"2".to_string()));
        assert!(
            !out.iter().any(|a| a == "--shards=4"),
            "flags win over the file: {out:?}"
        );
        assert!(
            out.contains(&"--ring-requests-max=99".to_string()),
            "{out:?}"
        );
        std::fs::write(&path, "shard = 4\n").expect("write");
        let typo = with_config_file(strings(&[
            "paycore",
            "node",
            "--config",
            path.to_str().expect("utf8"),
        ]));
        assert!(typo.is_err_and(|e| e.contains("unknown key `shard`")));
        let _ = std::fs::remove_file(path);
        let untouched = strings(&["paycore", "demo"]);
        assert_eq!(with_config_file(untouched.clone()).expect("ok"), untouched);
    }
}
