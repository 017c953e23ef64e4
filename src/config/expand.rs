//! What a config with many services writes once, expanded before the config is typed:
//!
//! - top-level keys starting with `x-` are dropped (free for YAML anchors: `x-probe: &probe
//!   {...}`, then `health_check: *probe`); YAML merge keys (`<<: *base`) are applied;
//! - `upstream_defaults` is merged into every upstream, field by field and into nested
//!   mappings, the upstream's own values winning (a list is replaced, not merged);
//! - `chains` names plugin lists; `{ use: NAME }` in the top-level `plugins` or a route's
//!   `plugins` is replaced by that chain's entries, in order, mixed with ordinary entries; a
//!   chain may use another; a cycle or an unknown name is an error with its path.
//!
//! The result is the effective config (`gatehouse check --print`, `GET /config`). Each
//! inlined entry remembers where it came from ([`Origins`]), so an error in it is reported at
//! its place in `chains` (once, with the routes using it), not once per route.

use serde_yaml::{Mapping, Value};

use super::error::ConfigError;

/// Where inlined plugin entries came from: (effective path, source path, used at).
#[derive(Debug, Default, Clone)]
pub struct Origins(Vec<(String, String, String)>);

/// How many places an error lists before "and N more".
const PLACES: usize = 3;

impl Origins {
    /// Rewrites errors inside inlined entries to their source path, and merges errors of the
    /// same cause (same path and message) into one that names where it was used.
    pub fn rewrite(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        let mut out: Vec<(ConfigError, Vec<String>)> = Vec::new();
        for mut e in errors {
            let mut used = None;
            if let Some((at, src, by)) = self.0.iter().find(|(at, _, _)| {
                e.path == *at
                    || e.path
                        .strip_prefix(at.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            }) {
                e.path = format!("{src}{}", &e.path[at.len()..]);
                used = Some(by.clone());
            }
            match out.iter_mut().find(|(o, _)| *o == e) {
                Some((_, places)) => places.extend(used),
                None => out.push((e, used.into_iter().collect())),
            }
        }
        out.into_iter()
            .map(|(mut e, places)| {
                if !places.is_empty() {
                    e.message = format!("{} (in a chain used at {})", e.message, list(&places));
                }
                e
            })
            .collect()
    }
}

/// `a, b, c and 18 more`.
fn list(places: &[String]) -> String {
    let shown = places
        .iter()
        .take(PLACES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match places.len().saturating_sub(PLACES) {
        0 => shown,
        n => format!("{shown} and {n} more"),
    }
}

/// Merges errors with the same message at different paths (one cause, e.g. a missing
/// environment variable used in 21 places) into one, at the first path, naming the others.
pub fn merge_same_cause(errors: Vec<ConfigError>) -> Vec<ConfigError> {
    let mut out: Vec<(ConfigError, Vec<String>)> = Vec::new();
    for e in errors {
        match out.iter_mut().find(|(o, _)| o.message == e.message) {
            Some((o, others)) => {
                if o.path != e.path && !others.contains(&e.path) {
                    others.push(e.path);
                }
            }
            None => out.push((e, Vec::new())),
        }
    }
    out.into_iter()
        .map(|(mut e, others)| {
            if !others.is_empty() {
                e.message = format!("{} (also at {})", e.message, list(&others));
            }
            e
        })
        .collect()
}

/// Drops the `x-` keys and applies YAML merge keys: before variables are substituted, so a
/// template nobody uses needs none of its variables.
pub fn prepare(v: &mut Value) {
    if let Value::Mapping(top) = v {
        top.retain(|k, _| !k.as_str().is_some_and(|s| s.starts_with("x-")));
    }
    let _ = v.apply_merge();
}

/// Applies `upstream_defaults` and `chains` to `v` (removing both keys): the effective
/// config, and where inlined entries came from.
pub fn expand(v: &mut Value, errors: &mut Vec<ConfigError>) -> Origins {
    let mut origins = Origins::default();
    let Value::Mapping(top) = v else {
        return origins;
    };
    match top.remove("upstream_defaults") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(defaults)) => {
            if let Some(Value::Mapping(ups)) = top.get_mut("upstreams") {
                for (_, u) in ups.iter_mut() {
                    if let Value::Mapping(own) = u {
                        merge_under(own, &defaults);
                    }
                }
            }
        }
        Some(_) => errors.push(ConfigError::new(
            "upstream_defaults",
            "a mapping of upstream fields (health_check, timeouts, circuit_breaker, ...)",
        )),
    }
    let chains = match top.remove("chains") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            errors.push(ConfigError::new(
                "chains",
                "a mapping of names to plugin lists",
            ));
            Mapping::new()
        }
    };
    let mut cx = Chains {
        chains: &chains,
        errors: Vec::new(),
    };
    // every chain is checked where it is defined, used or not
    for (name, list) in &chains {
        let name = name.as_str().unwrap_or("");
        if !list.is_sequence() {
            cx.errors.push(ConfigError::new(
                format!("chains.{name}"),
                "a list of plugin entries",
            ));
            continue;
        }
        let (mut scratch, mut none) = (Vec::new(), Origins::default());
        let at = format!("chains.{name}");
        let mut t = Target {
            path: "",
            used_at: "",
            out: &mut scratch,
            origins: &mut none,
        };
        cx.inline(name, &at, &mut vec![], &mut t);
    }
    if let Some(Value::Sequence(list)) = top.get_mut("plugins") {
        *list = cx.expand_list(list, "plugins", &mut origins);
    }
    if let Some(Value::Sequence(routes)) = top.get_mut("routes") {
        for (i, r) in routes.iter_mut().enumerate() {
            if let Some(Value::Sequence(list)) = r.get_mut("plugins") {
                *list = cx.expand_list(list, &format!("routes[{i}].plugins"), &mut origins);
            }
        }
    }
    // the same unknown name or cycle, met from every route using it, is one error
    let mut seen = Vec::new();
    for e in cx.errors {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    errors.extend(seen);
    origins
}

/// Merges `defaults` under `own`: keys `own` lacks are added; where both hold a mapping, the
/// merge goes on inside it; otherwise `own` wins.
fn merge_under(own: &mut Mapping, defaults: &Mapping) {
    for (k, d) in defaults {
        match own.get_mut(k) {
            None => {
                own.insert(k.clone(), d.clone());
            }
            Some(Value::Mapping(o)) => {
                if let Value::Mapping(dm) = d {
                    merge_under(o, dm);
                }
            }
            Some(_) => {}
        }
    }
}

struct Chains<'a> {
    chains: &'a Mapping,
    errors: Vec<ConfigError>,
}

/// The list chain entries are inlined into: its path, the entry that used the chain, the
/// entries so far, and where each inlined one came from.
struct Target<'t> {
    path: &'t str,
    used_at: &'t str,
    out: &'t mut Vec<Value>,
    origins: &'t mut Origins,
}

/// `Some(name)` when `e` is `{ use: name }`; an error when it is `use` gone wrong.
fn use_of(e: &Value, at: &str, errors: &mut Vec<ConfigError>) -> Option<String> {
    let m = e.as_mapping()?;
    let u = m.get("use")?;
    if m.len() != 1 {
        errors.push(ConfigError::new(
            at,
            "`use` names a chain and stands alone: `{ use: NAME }`",
        ));
        return None;
    }
    match u.as_str() {
        Some(n) => Some(n.to_string()),
        None => {
            errors.push(ConfigError::new(
                format!("{at}.use"),
                "the name of a chain under `chains`",
            ));
            None
        }
    }
}

impl Chains<'_> {
    /// `list` (at `path`) with every `{ use: NAME }` replaced by the chain's entries.
    fn expand_list(&mut self, list: &[Value], path: &str, origins: &mut Origins) -> Vec<Value> {
        let mut out = Vec::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            let at = format!("{path}[{i}]");
            match use_of(e, &at, &mut self.errors) {
                None => out.push(e.clone()),
                Some(name) => {
                    let mut at_list = Target {
                        path,
                        used_at: &at,
                        out: &mut out,
                        origins,
                    };
                    self.inline(&name, &at, &mut Vec::new(), &mut at_list);
                }
            }
        }
        out
    }

    /// Appends chain `name`'s entries (named at `at`) to the target list.
    fn inline(&mut self, name: &str, at: &str, stack: &mut Vec<String>, t: &mut Target<'_>) {
        if stack.iter().any(|s| s == name) {
            stack.push(name.to_string());
            self.errors.push(ConfigError::new(
                format!("{at}.use"),
                format!("chains use each other in a cycle: {}", stack.join(" -> ")),
            ));
            stack.pop();
            return;
        }
        let Some(Value::Sequence(entries)) = self.chains.get(name) else {
            let mut known: Vec<&str> = self.chains.keys().filter_map(|k| k.as_str()).collect();
            known.sort_unstable();
            self.errors.push(ConfigError::new(
                format!("{at}.use"),
                format!(
                    "unknown chain `{name}` (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
            return;
        };
        stack.push(name.to_string());
        for (j, e) in entries.iter().enumerate() {
            let src = format!("chains.{name}[{j}]");
            match use_of(e, &src, &mut self.errors) {
                None => {
                    t.origins.0.push((
                        format!("{}[{}]", t.path, t.out.len()),
                        src,
                        t.used_at.to_string(),
                    ));
                    t.out.push(e.clone());
                }
                Some(inner) => self.inline(&inner, &src, stack, t),
            }
        }
        stack.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> (Value, Origins, Vec<String>) {
        let mut v: Value = serde_yaml::from_str(yaml).unwrap();
        prepare(&mut v);
        let mut errors = Vec::new();
        let o = expand(&mut v, &mut errors);
        (v, o, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn x_keys_go_and_their_anchors_work() {
        let (v, _, e) = run(
            "x-probe: &probe { interval: 5s }\nx-base: &base { timeouts: { connect: 1s } }\nupstreams:\n  a: { <<: *base, backends: [b], health_check: *probe }\n",
        );
        assert!(e.is_empty());
        assert!(v.get("x-probe").is_none());
        assert_eq!(v["upstreams"]["a"]["health_check"]["interval"], "5s");
        assert_eq!(v["upstreams"]["a"]["timeouts"]["connect"], "1s");
    }

    #[test]
    fn defaults_merge_field_by_field_and_the_upstream_wins() {
        let (v, _, e) = run(
            "upstream_defaults:\n  timeouts: { connect: 1s, read: 30s }\n  retry: { attempts: 2 }\n  backends: [never]\nupstreams:\n  a: { backends: [x], timeouts: { read: 5s } }\n  b: { backends: [y], retry: { attempts: 0 } }\n",
        );
        assert!(e.is_empty(), "{e:?}");
        assert!(v.get("upstream_defaults").is_none());
        let a = &v["upstreams"]["a"];
        assert_eq!(a["timeouts"]["read"], "5s");
        assert_eq!(a["timeouts"]["connect"], "1s");
        assert_eq!(a["retry"]["attempts"], 2);
        assert_eq!(a["backends"][0], "x", "a list is the upstream's own");
        assert_eq!(v["upstreams"]["b"]["retry"]["attempts"], 0);
        let (_, _, e) = run("upstream_defaults: [1]\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("upstream_defaults: a mapping"), "{e:?}");
    }

    #[test]
    fn chains_expand_in_order_nested_and_mixed() {
        let (v, o, e) = run(
            "chains:\n  auth: [{ jwt: { k: 1 } }, { use: base }]\n  base: [{ headers: {} }, { cors: {} }]\nplugins: [{ use: base }]\nroutes:\n  - id: r\n    plugins: [{ access: {} }, { use: auth }, { rate_limit: {} }]\n",
        );
        assert!(e.is_empty(), "{e:?}");
        assert!(v.get("chains").is_none());
        let kinds = |l: &Value| -> Vec<String> {
            l.as_sequence()
                .unwrap()
                .iter()
                .map(|p| {
                    p.as_mapping()
                        .unwrap()
                        .keys()
                        .next()
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(kinds(&v["plugins"]), ["headers", "cors"]);
        assert_eq!(
            kinds(&v["routes"][0]["plugins"]),
            ["access", "jwt", "headers", "cors", "rate_limit"]
        );
        // an error inside an inlined entry is reported where the entry is written
        let errs = o.rewrite(vec![
            ConfigError::new("routes[0].plugins[1].jwt.k", "bad"),
            ConfigError::new("routes[0].plugins[3].cors", "worse"),
            ConfigError::new("routes[0].plugins[4].rate_limit", "own"),
        ]);
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            [
                "chains.auth[0].jwt.k: bad (in a chain used at routes[0].plugins[1])",
                "chains.base[1].cors: worse (in a chain used at routes[0].plugins[1])",
                "routes[0].plugins[4].rate_limit: own",
            ]
        );
    }

    #[test]
    fn one_error_for_one_chain_used_by_many_routes() {
        let routes: String = (0..21)
            .map(|i| format!("  - {{ id: r{i}, plugins: [{{ use: authed }}] }}\n"))
            .collect();
        let (_, o, e) = run(&format!(
            "chains:\n  authed: [{{ jwt: {{ secret: x }} }}]\nroutes:\n{routes}"
        ));
        assert!(e.is_empty());
        let errs: Vec<ConfigError> = (0..21)
            .map(|i| ConfigError::new(format!("routes[{i}].plugins[0].jwt.secret"), "too short"))
            .collect();
        let errs = o.rewrite(errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "chains.authed[0].jwt.secret: too short (in a chain used at routes[0].plugins[0], routes[1].plugins[0], routes[2].plugins[0] and 18 more)"
        );
    }

    #[test]
    fn unknown_names_and_cycles_name_their_paths() {
        let (_, _, e) = run(
            "chains:\n  a: [{ use: b }]\n  b: [{ use: a }]\n  c: [{ use: nope }]\nroutes:\n  - { id: r, plugins: [{ use: missing }, { use: a, extra: 1 }] }\n",
        );
        assert!(
            e.contains(
                &"chains.b[0].use: chains use each other in a cycle: a -> b -> a".to_string()
            ),
            "{e:#?}"
        );
        assert!(e.contains(&"chains.c[0].use: unknown chain `nope` (defined: a, b, c)".to_string()));
        assert!(e.contains(
            &"routes[0].plugins[0].use: unknown chain `missing` (defined: a, b, c)".to_string()
        ));
        assert!(e.contains(
            &"routes[0].plugins[1]: `use` names a chain and stands alone: `{ use: NAME }`"
                .to_string()
        ));
        // each cause once, however many places meet it
        let mut sorted = e.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), e.len(), "{e:#?}");
    }

    #[test]
    fn one_missing_variable_is_one_error() {
        let errs: Vec<ConfigError> = (0..21)
            .map(|i| {
                ConfigError::new(
                    format!("routes[{i}].plugins[0].jwt.keys[0].secret"),
                    "environment variable `JWT_SECRET` is not set",
                )
            })
            .chain([ConfigError::new("admin.token", "other")])
            .collect();
        let merged = merge_same_cause(errs);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[0].to_string(),
            "routes[0].plugins[0].jwt.keys[0].secret: environment variable `JWT_SECRET` is not set (also at routes[1].plugins[0].jwt.keys[0].secret, routes[2].plugins[0].jwt.keys[0].secret, routes[3].plugins[0].jwt.keys[0].secret and 17 more)"
        );
    }
}
