//! `${VAR}` and `${VAR:-default}` substitution in string values, done on the parsed YAML tree
//! before it is typed, so an unset variable is reported with the path of the value using it.
//! `$${` writes a literal `${`.

use serde_yaml::Value;

use super::error::ConfigError;

/// Replaces variables in every string value of `v` (keys are left alone), collecting an error
/// for each unset variable without a default.
pub fn substitute(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match v {
        Value::String(s) if s.contains('$') => match expand(s, lookup) {
            Ok(n) => *s = n,
            Err(msg) => errors.push(ConfigError::new(path, msg)),
        },
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), lookup, errors);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, &p, lookup, errors);
            }
        }
        Value::Tagged(t) => substitute(&mut t.value, path, lookup, errors),
        _ => {}
    }
}

/// Expands one string. `Err` names the first unset variable or a malformed reference.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name `{name}` in `${{{expr}}}`"));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                    ))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(n: &str) -> Option<String> {
        (n == "SET").then(|| "value".to_string())
    }

    #[test]
    fn expands() {
        assert_eq!(expand("a${SET}b", &look).unwrap(), "avalueb");
        assert_eq!(expand("${UNSET:-dflt}", &look).unwrap(), "dflt");
        assert_eq!(expand("${UNSET:-}", &look).unwrap(), "");
        assert_eq!(expand("$${SET} $5", &look).unwrap(), "${SET} $5");
        assert!(expand("${UNSET}", &look)
            .unwrap_err()
            .contains("`UNSET` is not set"));
        assert!(expand("${SET", &look).is_err());
        assert!(expand("${BAD-NAME}", &look).is_err());
    }

    #[test]
    fn reports_path() {
        let mut v: Value =
            serde_yaml::from_str("admin: { token: \"${NOPE}\" }\nlist: [a, \"${NOPE2}\"]").unwrap();
        let mut errs = Vec::new();
        substitute(&mut v, "", &look, &mut errs);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].path, "admin.token");
        assert_eq!(errs[1].path, "list[1]");
    }
}
