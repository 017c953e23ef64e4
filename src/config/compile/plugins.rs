//! Plugin chains: each `- <kind>: {config}` entry of the top-level `plugins:` and of every
//! route's `plugins:` becomes an instance from the [`Registry`]. An entry whose
//! [`PluginKey`] existed in the running snapshot keeps that instance, and with it its state
//! (rate-limit windows, JWKS key sets, caches).

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_plugins::api::GlobalCounters;
use gatehouse_plugins::{BuildEnv, PluginInstance};

use super::CompileEnv;
use crate::config::error::Scope;
use crate::config::raw::RawPlugin;
use crate::state::PluginKey;

/// Builds the chains of one compile and remembers every instance by its key.
pub(super) struct Chains<'e, 'a> {
    env: &'e CompileEnv<'a>,
    pub(super) built: HashMap<PluginKey, PluginInstance>,
    /// The shared counters plugins are built with.
    global: Option<Arc<dyn GlobalCounters>>,
    /// Whether the previous snapshot's instances may be kept (not when the shared counters
    /// changed: they hold the old ones).
    reuse: bool,
}

impl<'e, 'a> Chains<'e, 'a> {
    pub(super) fn new(
        env: &'e CompileEnv<'a>,
        global: Option<Arc<dyn GlobalCounters>>,
        reuse: bool,
    ) -> Self {
        Chains {
            env,
            built: HashMap::new(),
            global,
            reuse,
        }
    }

    /// The chain listed at scope `s` (a `plugins` list) for `route_id` (`None`: top level).
    pub(super) fn chain(
        &mut self,
        list: &[RawPlugin],
        route_id: Option<&str>,
        s: &mut Scope<'_>,
    ) -> Vec<PluginInstance> {
        let scope = route_id.map_or_else(|| "plugins".to_string(), |r| format!("routes:{r}"));
        list.iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                self.entry(entry, &scope, route_id, &mut s.child(&format!("[{i}]")))
            })
            .collect()
    }

    fn entry(
        &mut self,
        entry: &RawPlugin,
        scope: &str,
        route_id: Option<&str>,
        s: &mut Scope<'_>,
    ) -> Option<PluginInstance> {
        let mut it = entry.iter();
        let (kind, cfg) = match (it.next(), it.next()) {
            (Some((serde_yaml::Value::String(k), v)), None) => (k.as_str(), v),
            _ => {
                s.error("a plugin entry is a mapping with one key, its kind: `- headers: {...}`");
                return None;
            }
        };
        let mut s = s.child(kind);
        let registry = self.env.registry;
        if !registry.contains(kind) {
            s.error(format!(
                "unknown plugin kind `{kind}` (known: {})",
                registry.kinds().join(", ")
            ));
            return None;
        }
        let text = serde_yaml::to_string(cfg).unwrap_or_default();
        let occurrence = self
            .built
            .keys()
            .filter(|k| k.0 == scope && k.1 == kind && k.2 == text)
            .count();
        let key: PluginKey = (scope.to_string(), kind.to_string(), text, occurrence);
        let previous = self.env.previous.filter(|_| self.reuse);
        if let Some(prev) = previous
            .and_then(|p| p.plugins.get(&key))
            .filter(|p| p.files_unchanged())
        {
            self.built.insert(key, prev.clone());
            return Some(prev.clone());
        }
        let mut benv = BuildEnv {
            base_dir: self.env.base_dir.clone(),
            route_id: route_id.map(str::to_string),
            warnings: Vec::new(),
            global: self.global.clone(),
            files: Vec::new(),
        };
        let built = registry.build(kind, cfg.clone(), &mut benv);
        for w in benv.warnings.drain(..) {
            log::warn!("{}: {w}", s.path());
        }
        match built {
            Ok(p) => {
                self.built.insert(key, p.clone());
                Some(p)
            }
            Err(e) => {
                s.error_at(&e.path, e.message);
                None
            }
        }
    }
}
