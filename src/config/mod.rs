//! The YAML config: read -> `${VAR}` substitution -> typed [`raw::RawConfig`] -> compiled
//! [`crate::state::Snapshot`]. Every error carries its YAML path.

pub mod compile;
pub mod env;
pub mod error;
pub mod raw;
pub mod units;

use std::path::Path;

pub use compile::{compile, CompileEnv};
pub use error::{ConfigError, ConfigErrors};
use raw::RawConfig;

/// A config file as loaded: typed, the substituted YAML tree (for `GET /config`), and the
/// SHA-256 of its text.
pub struct Loaded {
    pub raw: RawConfig,
    pub tree: serde_yaml::Value,
    pub hash: String,
}

/// Reads, substitutes and types a config file.
pub fn load_full(path: &Path) -> Result<Loaded, ConfigErrors> {
    use sha2::Digest;
    let file = path.display().to_string();
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.clone(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(vec![ConfigError::new(
            "",
            format!("cannot read the file: {e}"),
        )])
    })?;
    let hash = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (raw, tree) = parse_tree(&text, &|name| std::env::var(name).ok()).map_err(fail)?;
    Ok(Loaded { raw, tree, hash })
}

/// Parses config text with a given variable lookup: the substituted YAML tree and the typed
/// config.
pub fn parse_tree(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawConfig, serde_yaml::Value), Vec<ConfigError>> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        vec![ConfigError::new("", format!("invalid YAML{at}: {e}"))]
    })?;
    if value.is_null() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    let mut errors = Vec::new();
    env::substitute(&mut value, "", lookup, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let tree = value.clone();
    serde_path_to_error::deserialize(value)
        .map(|raw| (raw, tree))
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            vec![ConfigError::new(path, e.into_inner().to_string())]
        })
}
