//! The plugin registry: YAML entry -> plugin instance.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Plugin, PluginSpec};

/// Why a plugin could not be built. `path` is relative to the plugin's config (`"audience"`,
/// `"keys[1].secret"`, or empty for the whole entry); the config compiler prefixes the entry's
/// own YAML path (`routes[2].plugins[0].jwt`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct BuildError {
    /// Path inside the plugin's config, or empty.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl BuildError {
    /// An error about the whole plugin entry.
    pub fn new(message: impl Into<String>) -> Self {
        BuildError {
            path: String::new(),
            message: message.into(),
        }
    }

    /// An error about one field of the plugin's config.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// What a plugin may know about where it is built.
#[derive(Debug, Clone, Default)]
pub struct BuildEnv {
    /// Directory of the config file; relative file names in plugin configs resolve against it.
    pub base_dir: PathBuf,
    /// The route the instance belongs to, or `None` for the top-level chain.
    pub route_id: Option<String>,
    /// Non-fatal findings (e.g. "cors after jwt") that the config compiler logs.
    pub warnings: Vec<String>,
}

impl BuildEnv {
    /// Resolves a file name from a plugin config against the config's directory.
    pub fn resolve(&self, file: &str) -> PathBuf {
        let p = PathBuf::from(file);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

type Factory = fn(serde_yaml::Value, &BuildEnv) -> std::result::Result<Arc<dyn Plugin>, BuildError>;

/// The known plugin kinds. Built once at startup; the config compiler looks each entry up by
/// its YAML key.
#[derive(Clone, Default)]
pub struct Registry {
    factories: HashMap<&'static str, Factory>,
}

fn build_spec<P: PluginSpec>(
    value: serde_yaml::Value,
    env: &BuildEnv,
) -> std::result::Result<Arc<dyn Plugin>, BuildError> {
    // `- kind:` with nothing after it reads as null: treat it as an empty config.
    let value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        v => v,
    };
    let config: P::Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        BuildError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    Ok(Arc::new(P::build(config, env)?))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with every built-in plugin.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register::<crate::access::Access>();
        r.register::<crate::cache::Cache>();
        r.register::<crate::cors::Cors>();
        r.register::<crate::headers::Headers>();
        r.register::<crate::jwt::Jwt>();
        r.register::<crate::rate_limit::RateLimit>();
        r
    }

    /// Registers `P` under `P::KIND`, replacing an earlier plugin of that kind.
    pub fn register<P: PluginSpec>(&mut self) -> &mut Self {
        self.factories.insert(P::KIND, build_spec::<P>);
        self
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.factories.contains_key(kind)
    }

    /// The registered kinds, sorted (for error messages).
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self.factories.keys().copied().collect();
        k.sort_unstable();
        k
    }

    /// Builds the plugin `kind` from its YAML config. `Err` names an unknown kind or what is
    /// wrong with the config (path relative to the entry).
    pub fn build(
        &self,
        kind: &str,
        config: serde_yaml::Value,
        env: &BuildEnv,
    ) -> std::result::Result<Arc<dyn Plugin>, BuildError> {
        match self.factories.get(kind) {
            Some(f) => f(config, env),
            None => Err(BuildError::new(format!(
                "unknown plugin kind `{kind}` (known: {})",
                self.kinds().join(", ")
            ))),
        }
    }
}
