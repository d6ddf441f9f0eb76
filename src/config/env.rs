//! `GATEWAY_*` environment overrides, derived from the key table.
//!
//! Names come from walking the serialized defaults, never from splitting a
//! variable name on `_` (that would turn `hs_secret` into two keys). A value is
//! parsed by the type of the default it replaces; lists are comma-separated.

use toml::{Table, Value};

/// Prefix shared by every configuration variable.
pub(super) const PREFIX: &str = "GATEWAY_";

/// One overridable leaf of the configuration tree.
#[derive(Debug)]
pub(super) struct EnvKey {
    /// The environment variable, e.g. `GATEWAY_AUTH_HS_SECRET`.
    pub name: String,
    /// The key's path, e.g. `["auth", "hs_secret"]`.
    pub path: Vec<String>,
    /// The built-in default, whose type decides how the value is parsed.
    pub default: Value,
}

/// Every leaf of `schema` (nested tables included) with its variable name.
/// Keys in [`crate::config::FILE_ONLY`] are listed too, so that setting one
/// is reported rather than taken for a typo.
pub(super) fn keys(schema: &Table) -> Vec<EnvKey> {
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

fn walk(table: &Table, path: &mut Vec<String>, out: &mut Vec<EnvKey>) {
    for (key, value) in table {
        path.push(key.clone());
        match value {
            Value::Table(inner) => walk(inner, path, out),
            leaf => out.push(EnvKey {
                name: name(path),
                path: path.clone(),
                default: leaf.clone(),
            }),
        }
        path.pop();
    }
}

/// `["broker", "redis", "nodes"]` -> `GATEWAY_BROKER_REDIS_NODES`.
pub(super) fn name(path: &[String]) -> String {
    format!("{PREFIX}{}", path.join("_").to_ascii_uppercase())
}

/// Parses `raw` as a value of the same TOML type as `default`.
///
/// The error says what was expected; the caller adds the variable and key.
pub(super) fn parse(raw: &str, default: &Value) -> Result<Value, String> {
    match default {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer (got {raw:?})")),
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number (got {raw:?})")),
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true, false, 1 or 0 (got {raw:?})")),
        },
        // Every list in the tree is a list of strings; an empty variable is an
        // empty list, and blanks around commas are not part of an item.
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect(),
        )),
        Value::Datetime(_) | Value::Table(_) => {
            Err("this key cannot be set from the environment".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashSet;

    fn schema() -> Table {
        Table::try_from(Config::default()).unwrap()
    }

    #[test]
    fn names_keep_underscores_inside_keys_and_reach_nested_tables() {
        let names: Vec<String> = keys(&schema()).into_iter().map(|k| k.name).collect();
        for expected in [
            "GATEWAY_AUTH_HS_SECRET",
            "GATEWAY_AUTH_HS_SECRET_FILE",
            "GATEWAY_SERVER_LISTEN",
            "GATEWAY_BROKER_KIND",
            "GATEWAY_BROKER_REDIS_NODES",
            "GATEWAY_BROKER_REDIS_PUBSUB",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn every_key_has_a_distinct_variable() {
        // Two keys sharing a name (`a.b_c` and `a_b.c`) would make one of them
        // impossible to override; the tree must never grow such a pair.
        let all = keys(&schema());
        let distinct: HashSet<&str> = all.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(distinct.len(), all.len());
    }

    #[test]
    fn values_follow_the_type_of_the_default() {
        let list = Value::Array(Vec::new());
        assert_eq!(
            parse("a:1, b:2,", &list).unwrap(),
            Value::Array(vec![
                Value::String("a:1".into()),
                Value::String("b:2".into())
            ])
        );
        assert_eq!(parse("", &list).unwrap(), Value::Array(Vec::new()));
        assert_eq!(parse("42", &Value::Integer(0)).unwrap(), Value::Integer(42));
        assert!(parse("4k", &Value::Integer(0)).is_err());
        assert_eq!(
            parse("1", &Value::Boolean(false)).unwrap(),
            Value::Boolean(true)
        );
        assert_eq!(
            parse("FALSE", &Value::Boolean(true)).unwrap(),
            Value::Boolean(false)
        );
        assert!(parse("yes", &Value::Boolean(false)).is_err());
        assert_eq!(
            parse(" x ", &Value::String(String::new())).unwrap(),
            Value::String(" x ".into())
        );
    }
}
