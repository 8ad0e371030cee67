//! NF parameters: how descriptor values become typed NF configuration, with
//! errors that name the field.

use serde::de::DeserializeOwned;

/// Raw NF parameters as written in the chain descriptor (`params:` mapping).
pub type Params = serde_yaml_ng::Value;

/// A configuration problem, located by a dotted field path relative to the
/// NF's `params` (e.g. `routes[3].prefix`). The descriptor layer turns the
/// path into a file line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct ConfigError {
    /// Dotted path below `params`, empty for the params mapping itself.
    pub field: String,
    /// What is wrong, and what would be accepted.
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

/// Documentation of one parameter, shown by `braid nfs`.
#[derive(Clone, Copy, Debug)]
pub struct ParamDoc {
    pub name: &'static str,
    /// Type and accepted values, e.g. `"u32, 1..=65535"` or `"list of CIDR"`.
    pub kind: &'static str,
    /// Default as written in YAML, `None` if required.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// Deserialize typed configuration from descriptor parameters. A missing or
/// null `params` is read as an empty mapping, so NFs whose fields all have
/// defaults need none. Errors carry the path of the offending field.
pub fn parse<T: DeserializeOwned>(params: &Params) -> Result<T, ConfigError> {
    let empty = Params::Mapping(Default::default());
    let value = if params.is_null() { &empty } else { params };
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ConfigError { field, message: e.into_inner().to_string() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        #[serde(default)]
        size: u32,
        items: Vec<Item>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        port: u16,
    }

    #[test]
    fn errors_name_the_field() {
        let p: Params = serde_yaml_ng::from_str("items:\n  - port: 1\n  - port: 70000\n").unwrap();
        let e = parse::<Cfg>(&p).unwrap_err();
        assert_eq!(e.field, "items[1].port");
        let p: Params = serde_yaml_ng::from_str("items: []\nsise: 3\n").unwrap();
        let e = parse::<Cfg>(&p).unwrap_err();
        assert!(e.message.contains("unknown field `sise`"), "{e}");
    }
}
