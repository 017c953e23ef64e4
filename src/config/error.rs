//! Config errors: every error names the YAML path it is about
//! (`routes[2].match.path_regex: invalid regex ...`).

use std::fmt;

/// One problem in the config, with the YAML path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `server.listen[0]`, `upstreams.users.backends[1]`, or empty for the whole file.
    pub path: String,
    /// What is wrong, in a sentence.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The config file, for the message.
    pub file: String,
    /// The errors, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} error(s)", self.file, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Collects the errors of one compile. Each part of the config is checked inside a [`Scope`]
/// that knows its YAML path, so a rule says only what is wrong and where below its scope:
///
/// ```ignore
/// let mut errs = Errors::default();
/// let mut s = errs.scope("server");
/// s.check(limits.max_headers <= 256, "limits.max_headers", "must be 1..=256");
/// ```
#[derive(Debug, Default)]
pub struct Errors {
    list: Vec<ConfigError>,
}

impl Errors {
    /// A scope at `path` (`""` for the whole file).
    pub fn scope(&mut self, path: impl Into<String>) -> Scope<'_> {
        let start = self.list.len();
        Scope {
            list: &mut self.list,
            path: path.into(),
            start,
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The errors, in the order found.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.list
    }
}

/// A part of the config being checked: errors pushed here carry its path (or a path below
/// it).
#[derive(Debug)]
pub struct Scope<'a> {
    list: &'a mut Vec<ConfigError>,
    path: String,
    start: usize,
}

fn join(base: &str, field: &str) -> String {
    match (base.is_empty(), field.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => field.to_string(),
        (false, false) if field.starts_with('[') => format!("{base}{field}"),
        (false, false) => format!("{base}.{field}"),
    }
}

impl Scope<'_> {
    /// This scope's YAML path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A scope below this one: `field` is a key (`"limits"`, `"health_check.http"`) or an
    /// index (`"[2]"`).
    pub fn child(&mut self, field: &str) -> Scope<'_> {
        let start = self.list.len();
        Scope {
            path: join(&self.path, field),
            list: self.list,
            start,
        }
    }

    /// A scope for item `i` of the list at `field` (`backends[1]`).
    pub fn item(&mut self, field: &str, i: usize) -> Scope<'_> {
        self.child(&format!("{field}[{i}]"))
    }

    /// An error about this scope as a whole.
    pub fn error(&mut self, message: impl Into<String>) {
        self.list.push(ConfigError::new(self.path.clone(), message));
    }

    /// An error about `field` below this scope.
    pub fn error_at(&mut self, field: &str, message: impl Into<String>) {
        self.list
            .push(ConfigError::new(join(&self.path, field), message));
    }

    /// Records `message` at `field` unless `ok`; returns `ok`.
    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> bool {
        if !ok {
            self.error_at(field, message);
        }
        ok
    }

    /// The value, or `None` with the error recorded at `field`.
    pub fn take<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.error_at(field, e)).ok()
    }

    /// Whether this scope (and every scope below it) found nothing so far.
    pub fn is_ok(&self) -> bool {
        self.list.len() == self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_build_paths() {
        let mut errs = Errors::default();
        {
            let mut root = errs.scope("");
            root.error_at("server", "a");
            let mut up = root.child("upstreams.users");
            let mut b = up.item("backends", 1);
            b.error_at("weight", "b");
            b.error("c");
            assert!(!b.is_ok());
            let mut l = up.child("[0]");
            assert!(l.is_ok());
            l.check(true, "x", "never");
            assert_eq!(l.take::<u8>("y", Err("d".into())), None);
            assert!(!l.is_ok());
        }
        let got: Vec<String> = errs.into_vec().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "server: a",
                "upstreams.users.backends[1].weight: b",
                "upstreams.users.backends[1]: c",
                "upstreams.users[0].y: d",
            ]
        );
    }
}
