//! The enricher's configuration: which platforms each tenant uses, what
//! missing consent means for it, and each platform's acceptance window.

use std::collections::{BTreeMap, HashSet};

use postback_core::config::{ConfigError, Stage, StageConfig, Validate};
use postback_core::Platform;
use serde::{Deserialize, Serialize};

/// The enricher's file: the sections every stage shares and these.
pub type EnricherConfig = StageConfig<EnricherSections>;

/// The enricher's own sections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnricherSections {
    pub tenants: Vec<TenantConfig>,
    pub privacy: PrivacyConfig,
}

/// What personal data the enricher lets through (docs/enricher.md#data-minimisation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Query parameters a page URL or referrer keeps (exact names, or a
    /// prefix ending in `*`); every other parameter is dropped.
    pub url_query_allowlist: Vec<String>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            url_query_allowlist: ["utm_*", "gclid", "gbraid", "wbraid", "fbclid", "ttclid"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Stage for EnricherSections {
    const OPS_PORT: u16 = 9091;

    fn default_group_id(&self) -> String {
        "postback-enricher".into()
    }
}

/// What a consent flag that the event does not carry is taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentDefault {
    Granted,
    Denied,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConsent {
    /// ISO alpha-2 countries this rule covers (e.g. the EEA).
    pub countries: Vec<String>,
    pub default: ConsentDefault,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConsent {
    /// Missing consent outside the listed regions. Denied by default: a
    /// conversion is only uploaded with a positive signal unless the tenant
    /// says otherwise.
    pub default: ConsentDefault,
    pub regions: Vec<RegionConsent>,
}

impl Default for TenantConsent {
    fn default() -> Self {
        TenantConsent {
            default: ConsentDefault::Denied,
            regions: Vec::new(),
        }
    }
}

impl TenantConsent {
    /// The default that applies to an event from `country` (any case).
    pub fn default_for(&self, country: Option<&str>) -> ConsentDefault {
        if let Some(c) = country {
            for r in &self.regions {
                if r.countries.iter().any(|rc| rc.eq_ignore_ascii_case(c)) {
                    return r.default;
                }
            }
        }
        self.default
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Completes phone numbers without a country code and picks the consent
    /// region when the event has no user.country.
    #[serde(default)]
    pub default_country: Option<String>,
    /// The platforms this tenant uploads to.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    #[serde(default)]
    pub consent: TenantConsent,
}

impl EnricherSections {
    pub fn tenants(&self) -> BTreeMap<String, TenantConfig> {
        self.tenants
            .iter()
            .map(|t| (t.id.clone(), t.clone()))
            .collect()
    }
}

fn is_alpha2(s: &str) -> bool {
    s.len() == 2 && s.chars().all(|c| c.is_ascii_alphabetic())
}

impl Validate for EnricherSections {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.privacy.url_query_allowlist.iter().enumerate() {
            let name = p.strip_suffix('*').unwrap_or(p);
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("privacy.url_query_allowlist[{i}]"),
                    "must be a parameter name (letters, digits, _ - . [ ]), optionally ending in *",
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.id.is_empty() || !seen.insert(t.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("tenants[{i}].id"),
                    "must be set and unique",
                ));
            }
            if let Some(c) = &t.default_country {
                if !is_alpha2(c) {
                    return Err(ConfigError::invalid(
                        format!("tenants[{i}].default_country"),
                        format!("`{c}` is not an ISO 3166-1 alpha-2 code"),
                    ));
                }
            }
            for (j, r) in t.consent.regions.iter().enumerate() {
                for (k, c) in r.countries.iter().enumerate() {
                    if !is_alpha2(c) {
                        return Err(ConfigError::invalid(
                            format!("tenants[{i}].consent.regions[{j}].countries[{k}]"),
                            format!("`{c}` is not an ISO 3166-1 alpha-2 code"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
