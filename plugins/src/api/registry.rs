//! The plugin registry: YAML entry -> plugin instance.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{DecisionMetric, Plugin, PluginSpec};

/// What building a plugin returns.
pub type BuildResult<T> = std::result::Result<T, BuildError>;

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
    /// Non-fatal findings that the config compiler logs with the entry's YAML path.
    pub warnings: Vec<String>,
    /// The counters shared by every instance (the top-level `redis` section), when
    /// configured.
    pub global: Option<std::sync::Arc<dyn crate::api::GlobalCounters>>,
    /// Files the instance was built from ([`BuildEnv::depends_on`]).
    pub files: Vec<PathBuf>,
}

impl BuildEnv {
    /// Records a non-fatal finding about the plugin's config (logged as a warning with the
    /// entry's YAML path; the config is still applied).
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// Records that the instance is built from `file`'s contents: a reload rebuilds it when
    /// the file changed (size or modification time), even if its YAML entry did not.
    pub fn depends_on(&mut self, file: impl Into<PathBuf>) {
        self.files.push(file.into());
    }

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

type Factory = fn(serde_yaml::Value, &mut BuildEnv) -> BuildResult<Arc<dyn Plugin>>;

/// A built plugin with the kind it was registered under (the registry knows each plugin's
/// kind from [`PluginSpec::KIND`]; a plugin does not repeat it). Cheap to clone; derefs to the
/// plugin.
#[derive(Clone)]
pub struct PluginInstance {
    /// The YAML key it was built from (`jwt`, `cors`, ...).
    pub kind: &'static str,
    pub plugin: Arc<dyn Plugin>,
    /// The files it was built from, as they were ([`BuildEnv::depends_on`]).
    pub files: Arc<[(PathBuf, Option<FileStamp>)]>,
}

/// A file's size and modification time.
pub type FileStamp = (u64, std::time::SystemTime);

/// `path`'s [`FileStamp`], `None` when it cannot be read.
pub fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl PluginInstance {
    /// Whether every file it was built from is as it was.
    pub fn files_unchanged(&self) -> bool {
        self.files.iter().all(|(p, st)| file_stamp(p) == *st)
    }
}

impl std::ops::Deref for PluginInstance {
    type Target = dyn Plugin;
    fn deref(&self) -> &(dyn Plugin + 'static) {
        &*self.plugin
    }
}

/// The known plugin kinds. Built once at startup; the config compiler looks each entry up by
/// its YAML key. The built-in plugins are in `gatehouse_plugins::builtins()`.
#[derive(Clone, Default)]
pub struct Registry {
    factories: HashMap<&'static str, (Factory, Option<DecisionMetric>)>,
}

/// Parses a plugin's YAML config; errors carry the path inside it.
pub(crate) fn parse_config<P: PluginSpec>(value: serde_yaml::Value) -> BuildResult<P::Config> {
    // `- kind:` with nothing after it reads as null: treat it as an empty config.
    let value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        v => v,
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        BuildError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

fn build_spec<P: PluginSpec>(
    value: serde_yaml::Value,
    env: &mut BuildEnv,
) -> BuildResult<Arc<dyn Plugin>> {
    let config = parse_config::<P>(value)?;
    Ok(Arc::new(P::build(config, env)?))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `P` under `P::KIND`, replacing an earlier plugin of that kind.
    pub fn register<P: PluginSpec>(&mut self) -> &mut Self {
        self.factories
            .insert(P::KIND, (build_spec::<P>, P::DECISION_METRIC));
        self
    }

    /// The decision counters registered plugins declare, by kind.
    pub fn decision_metrics(&self) -> Vec<(&'static str, DecisionMetric)> {
        let mut v: Vec<_> = self
            .factories
            .iter()
            .filter_map(|(k, (_, m))| m.map(|m| (*k, m)))
            .collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v
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
        env: &mut BuildEnv,
    ) -> BuildResult<PluginInstance> {
        match self.factories.get_key_value(kind) {
            Some((kind, (f, _))) => {
                let plugin = f(config, env)?;
                let files = env
                    .files
                    .drain(..)
                    .map(|p| {
                        let st = file_stamp(&p);
                        (p, st)
                    })
                    .collect();
                Ok(PluginInstance {
                    kind,
                    plugin,
                    files,
                })
            }
            None => Err(BuildError::new(format!(
                "unknown plugin kind `{kind}` (known: {})",
                self.kinds().join(", ")
            ))),
        }
    }
}
