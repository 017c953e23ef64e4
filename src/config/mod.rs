//! The YAML config: read -> `${VAR}` substitution -> typed [`raw::RawConfig`] -> compiled
//! [`crate::state::Snapshot`]. Every error carries its YAML path.

pub mod compile;
pub mod env;
pub mod error;
pub mod expand;
pub mod raw;
pub mod units;

use std::path::{Path, PathBuf};

use gatehouse_plugins::Registry;

pub use compile::{compile, CompileEnv};
pub use error::{ConfigError, ConfigErrors};
use raw::RawConfig;

use crate::metrics::Metrics;
use crate::state::Snapshot;

/// A config file as loaded: typed, the substituted YAML tree (for `GET /config`), and the
/// SHA-256 of its text.
pub struct Loaded {
    pub raw: RawConfig,
    /// The effective config: variables substituted, defaults merged, chains inlined.
    pub tree: serde_yaml::Value,
    pub hash: String,
    /// Where inlined chain entries came from (for error paths).
    pub origins: expand::Origins,
}

/// The directory relative file names in a config resolve against.
fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Compiles a loaded config file into a snapshot (version 1, or the one after `previous`,
/// whose unchanged parts it reuses). What `gatehouse check` and every reload run.
pub fn compile_loaded(
    path: &Path,
    loaded: Loaded,
    registry: &Registry,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    let env = CompileEnv {
        registry,
        metrics,
        base_dir: base_dir(path),
        previous,
        version: previous.map_or(1, |p| p.version + 1),
    };
    let origins = loaded.origins;
    let mut snap = compile(loaded.raw, &env).map_err(|errors| ConfigErrors {
        file: path.display().to_string(),
        errors: expand::merge_same_cause(origins.rewrite(errors)),
    })?;
    snap.source_hash = loaded.hash;
    snap.source = loaded.tree;
    Ok(snap)
}

/// Reads and compiles a config file ([`load_full`] then [`compile_loaded`]).
pub fn load(
    path: &Path,
    registry: &Registry,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigErrors> {
    compile_loaded(path, load_full(path)?, registry, metrics, previous)
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
    // an empty file is never taken for a config of no routes: an editor or deploy tool
    // that truncates the file before writing it would otherwise take every route down
    // for a reload
    let blank = |l: &str| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    };
    if text.lines().all(blank) {
        return Err(fail(vec![ConfigError::new(
            "",
            "the file holds no config (empty, or comments only; a write in progress?)",
        )]));
    }
    let hash = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (raw, tree, origins) =
        parse_tree_full(&text, &|name| std::env::var(name).ok()).map_err(fail)?;
    Ok(Loaded {
        raw,
        tree,
        hash,
        origins,
    })
}

/// Parses config text with a given variable lookup: the substituted YAML tree and the typed
/// config.
pub fn parse_tree(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawConfig, serde_yaml::Value), Vec<ConfigError>> {
    parse_tree_full(text, lookup).map(|(raw, tree, _)| (raw, tree))
}

/// [`parse_tree`], and where inlined chain entries came from.
pub fn parse_tree_full(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(RawConfig, serde_yaml::Value, expand::Origins), Vec<ConfigError>> {
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
    expand::prepare(&mut value);
    let mut errors = Vec::new();
    env::substitute(&mut value, "", lookup, &mut errors);
    if !errors.is_empty() {
        // one missing variable used in many places is one error
        return Err(expand::merge_same_cause(errors));
    }
    let origins = expand::expand(&mut value, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let tree = value.clone();
    serde_path_to_error::deserialize(value)
        .map(|raw| (raw, tree, origins.clone()))
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            origins.rewrite(vec![ConfigError::new(path, e.into_inner().to_string())])
        })
}
