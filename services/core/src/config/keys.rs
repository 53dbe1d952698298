//! Keys that decide a tenant: the collector's API keys (who may write a
//! tenant's conversions) and the status service's read keys (who may see
//! them). Both are given inline or as the name of an environment variable
//! (which keeps them out of the file), and both are checked the same way.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A secret key that stands for one tenant.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKey {
    pub tenant: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_env: Option<String>,
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey")
            .field("tenant", &self.tenant)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field("key_env", &self.key_env)
            .finish()
    }
}

/// The shortest key accepted: long enough not to be guessed.
pub const MIN_KEY_LEN: usize = 16;

impl TenantKey {
    /// The key's value, from the file or its environment variable.
    pub fn resolve(&self) -> Option<String> {
        self.key.clone().or_else(|| {
            self.key_env
                .as_ref()
                .and_then(|name| std::env::var(name).ok())
        })
    }
}

/// A tenant name: 1-64 of a-z 0-9 - _ (it is a label, a path and a key).
pub fn validate_tenant(key: &str, tenant: &str) -> Result<(), ConfigError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("tenant `{tenant}` must be 1-64 of a-z 0-9 - _"),
        ))
    }
}

/// Checks the keys of `section` (`api_keys`, `read_keys`): a valid tenant,
/// exactly one of `key` and `key_env`, the variable set, at least
/// [`MIN_KEY_LEN`] characters, no key used twice. Errors name the key's
/// place, never its value.
pub fn validate_keys(section: &str, keys: &[TenantKey]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        validate_tenant(&format!("{section}[{i}].tenant"), &k.tenant)?;
        let key = match (&k.key, &k.key_env) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ConfigError::invalid(
                    format!("{section}[{i}]"),
                    "set exactly one of `key` and `key_env`",
                ))
            }
            (_, Some(name)) => k.resolve().ok_or_else(|| {
                ConfigError::invalid(
                    format!("{section}[{i}].key_env"),
                    format!("environment variable {name} is not set"),
                )
            })?,
            (Some(key), None) => key.clone(),
        };
        if key.len() < MIN_KEY_LEN {
            return Err(ConfigError::invalid(
                format!("{section}[{i}].key"),
                format!("must be at least {MIN_KEY_LEN} characters"),
            ));
        }
        if !seen.insert(key) {
            return Err(ConfigError::invalid(
                format!("{section}[{i}].key"),
                "is used twice",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, key: &str) -> TenantKey {
        TenantKey {
            tenant: tenant.into(),
            key: Some(key.into()),
            key_env: None,
        }
    }

    #[test]
    fn errors_name_the_place_and_never_the_key() {
        let short = validate_keys("read_keys", &[key("acme", "rk_short")]).unwrap_err();
        assert!(short.to_string().contains("read_keys[0].key"), "{short}");
        assert!(!short.to_string().contains("rk_short"));
        let twice = validate_keys(
            "read_keys",
            &[
                key("a", "rk_0123456789abcdef"),
                key("b", "rk_0123456789abcdef"),
            ],
        )
        .unwrap_err();
        assert!(twice.to_string().contains("read_keys[1].key"), "{twice}");
        assert!(!twice.to_string().contains("rk_0123456789abcdef"));
        let tenant = validate_keys("api_keys", &[key("Acme!", "rk_0123456789abcdef")]).unwrap_err();
        assert!(
            tenant.to_string().contains("api_keys[0].tenant"),
            "{tenant}"
        );
        assert!(!format!("{:?}", key("a", "rk_0123456789abcdef")).contains("rk_0123"));
    }
}
