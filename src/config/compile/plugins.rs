//! Plugin chains: each `- <kind>: {config}` entry of the top-level `plugins:` and of every
//! route's `plugins:` becomes an instance from the [`Registry`]. An entry whose
//! [`PluginKey`] existed in the running snapshot keeps that instance, and with it its state
//! (rate-limit windows, JWKS key sets, caches).

use std::collections::HashMap;

use gatehouse_plugins::{BuildEnv, PluginInstance};

use super::CompileEnv;
use crate::config::error::Scope;
use crate::config::raw::RawPlugin;
use crate::state::PluginKey;

/// Builds the chains of one compile and remembers every instance by its key.
pub(super) struct Chains<'e, 'a> {
    env: &'e CompileEnv<'a>,
    pub(super) built: HashMap<PluginKey, PluginInstance>,
}

impl<'e, 'a> Chains<'e, 'a> {
    pub(super) fn new(env: &'e CompileEnv<'a>) -> Self {
        Chains {
            env,
            built: HashMap::new(),
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
        if let Some(prev) = self.env.previous.and_then(|p| p.plugins.get(&key)) {
            self.built.insert(key, prev.clone());
            return Some(prev.clone());
        }
        let mut benv = BuildEnv {
            base_dir: self.env.base_dir.clone(),
            route_id: route_id.map(str::to_string),
            warnings: Vec::new(),
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
