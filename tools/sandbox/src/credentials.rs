//! Who may send what: Meta and TikTok access tokens per pixel, Google
//! developer tokens and the customers and conversion actions that exist.
//! Loaded from the configuration; the admin API can add more at run time.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use serde::Serialize;

use crate::config::SandboxConfig;

/// The answer to "may this token post to this account?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// The token is not known at all.
    UnknownToken,
    /// The token is known but not for this account, or the account does not exist.
    NotForAccount,
}

#[derive(Default)]
struct Inner {
    meta: HashMap<String, HashSet<String>>,
    tiktok: HashMap<String, HashSet<String>>,
    developer_tokens: HashSet<String>,
    customers: HashMap<String, HashSet<String>>,
    /// Customers that have not accepted the customer data terms.
    no_data_terms: HashSet<String>,
}

/// Account ids (never tokens) for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct AccountsView {
    pub meta_pixels: Vec<String>,
    pub tiktok_pixels: Vec<String>,
    pub google_customers: Vec<GoogleCustomerView>,
    pub google_developer_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GoogleCustomerView {
    pub customer_id: String,
    pub conversion_actions: Vec<String>,
}

pub struct Credentials {
    inner: RwLock<Inner>,
}

fn check(map: &HashMap<String, HashSet<String>>, account: &str, token: &str) -> Access {
    if map.get(account).is_some_and(|t| t.contains(token)) {
        Access::Granted
    } else if map.values().any(|t| t.contains(token)) {
        Access::NotForAccount
    } else {
        Access::UnknownToken
    }
}

impl Credentials {
    pub fn from_config(config: &SandboxConfig) -> Self {
        let mut inner = Inner::default();
        for p in &config.meta.pixels {
            inner
                .meta
                .entry(p.pixel_id.clone())
                .or_default()
                .extend(p.access_tokens.iter().cloned());
        }
        for p in &config.tiktok.pixels {
            inner
                .tiktok
                .entry(p.pixel_code.clone())
                .or_default()
                .extend(p.access_tokens.iter().cloned());
        }
        inner
            .developer_tokens
            .extend(config.google_ads.developer_tokens.iter().cloned());
        for c in &config.google_ads.customers {
            inner
                .customers
                .entry(c.customer_id.clone())
                .or_default()
                .extend(c.conversion_actions.iter().cloned());
            if !c.customer_data_terms_accepted {
                inner.no_data_terms.insert(c.customer_id.clone());
            }
        }
        Credentials {
            inner: RwLock::new(inner),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn meta(&self, pixel_id: &str, token: &str) -> Access {
        check(&self.read().meta, pixel_id, token)
    }

    pub fn tiktok(&self, pixel_code: &str, token: &str) -> Access {
        check(&self.read().tiktok, pixel_code, token)
    }

    pub fn developer_token_ok(&self, token: &str) -> bool {
        self.read().developer_tokens.contains(token)
    }

    pub fn customer_exists(&self, customer_id: &str) -> bool {
        self.read().customers.contains_key(customer_id)
    }

    pub fn conversion_action_exists(&self, customer_id: &str, action_id: &str) -> bool {
        self.read()
            .customers
            .get(customer_id)
            .is_some_and(|a| a.contains(action_id))
    }

    pub fn customer_data_terms_accepted(&self, customer_id: &str) -> bool {
        !self.read().no_data_terms.contains(customer_id)
    }

    pub fn add_meta(&self, pixel_id: String, token: String) {
        self.write().meta.entry(pixel_id).or_default().insert(token);
    }

    pub fn add_tiktok(&self, pixel_code: String, token: String) {
        self.write()
            .tiktok
            .entry(pixel_code)
            .or_default()
            .insert(token);
    }

    pub fn add_developer_token(&self, token: String) {
        self.write().developer_tokens.insert(token);
    }

    pub fn add_customer(
        &self,
        customer_id: String,
        actions: Vec<String>,
        data_terms_accepted: bool,
    ) {
        let mut inner = self.write();
        if data_terms_accepted {
            inner.no_data_terms.remove(&customer_id);
        } else {
            inner.no_data_terms.insert(customer_id.clone());
        }
        inner
            .customers
            .entry(customer_id)
            .or_default()
            .extend(actions);
    }

    pub fn view(&self) -> AccountsView {
        let inner = self.read();
        let sorted = |m: &HashMap<String, HashSet<String>>| {
            let mut v: Vec<String> = m.keys().cloned().collect();
            v.sort();
            v
        };
        let mut google_customers: Vec<GoogleCustomerView> = inner
            .customers
            .iter()
            .map(|(id, actions)| {
                let mut conversion_actions: Vec<String> = actions.iter().cloned().collect();
                conversion_actions.sort();
                GoogleCustomerView {
                    customer_id: id.clone(),
                    conversion_actions,
                }
            })
            .collect();
        google_customers.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
        AccountsView {
            meta_pixels: sorted(&inner.meta),
            tiktok_pixels: sorted(&inner.tiktok),
            google_customers,
            google_developer_tokens: inner.developer_tokens.len(),
        }
    }
}
