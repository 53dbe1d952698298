//! The status service's configuration (docs/status.md lists every key):
//! where its API listens, where the projection is stored, and the read keys
//! that decide which tenant a request sees.

use std::net::SocketAddr;

use postback_core::config::{validate_keys, ConfigError, Stage, StageConfig, TenantKey, Validate};
use serde::{Deserialize, Serialize};

/// The status service's file: the sections every stage shares and these.
pub type StatusConfig = StageConfig<StatusSections>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusSections {
    pub http: HttpConfig,
    pub store: StoreConfig,
    /// Keys that read one tenant's conversions: `Authorization: Bearer <key>`.
    pub read_keys: Vec<TenantKey>,
}

impl Stage for StatusSections {
    const OPS_PORT: u16 = 9097;

    fn default_group_id(&self) -> String {
        "postback-status".into()
    }

    /// A batch is a database transaction, and SQLite's commit (an fsync of
    /// its log) was over a third of a 1,000-record batch's time; under a
    /// backlog batches fill at once, and with few records a batch is what
    /// arrived within `linger_ms` whatever this is.
    const MAX_BATCH: usize = 10_000;

    /// A bigger batch folds a backlog faster (each B-tree page written
    /// once for more rows), at about 4 KiB of memory per record held: at
    /// 100,000 records the service peaked at 680 MiB against 290 at the
    /// default (`status_throughput` bench), so bigger is for who sizes
    /// the memory for it.
    const LARGEST_MAX_BATCH: usize = 500_000;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// The query API and the panel (the ops endpoints are on `ops.listen`).
    pub listen: SocketAddr,
    /// The most conversions one page of the list returns.
    pub max_page: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8070)),
            max_page: 500,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (the default: a file under .postback/, nothing to
    /// install) or `postgres://user:password@host/db` for deployments that
    /// run several replicas against one database.
    pub url: String,
    /// Connections in the pool (SQLite: writes are serialised anyway).
    pub max_connections: u32,
    /// Seconds a write may keep failing (the database restarting) before
    /// the service stops; the batch is read again after a restart.
    pub write_retry_secs: u64,
    /// SQLite only: how many files the conversions spread over, each with
    /// a writer thread of its own (`shards.rs`); 0 = one per core, at
    /// most 8, for a new store, and an existing store's own number.
    /// Another number than the store's rebuilds it from the topic.
    pub shards: u32,
    /// SQLite only: a file's transaction stays open across the consumer's
    /// batches until it holds this many records or is `commit_within_ms`
    /// old, and the batches' offsets wait for its commit (`handler.rs`).
    /// 0 commits every batch.
    pub commit_every_records: usize,
    pub commit_within_ms: u64,
    /// SQLite only: the writers' page cache, MiB, shared out among the
    /// files (at least 1 MiB each).
    pub cache_mib: u32,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redacted_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("write_retry_secs", &self.write_retry_secs)
            .field("shards", &self.shards)
            .field("commit_every_records", &self.commit_every_records)
            .field("commit_within_ms", &self.commit_within_ms)
            .field("cache_mib", &self.cache_mib)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://.postback/status.db".into(),
            max_connections: 8,
            write_retry_secs: 60,
            shards: 0,
            commit_every_records: 100_000,
            commit_within_ms: 1_000,
            cache_mib: 64,
        }
    }
}

/// The URL without its password, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:[redacted]{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Validate for StatusSections {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "store.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.store.max_connections == 0 {
            return Err(ConfigError::invalid(
                "store.max_connections",
                "must be at least 1",
            ));
        }
        if self.store.shards > crate::shards::MAX_SHARDS {
            return Err(ConfigError::invalid(
                "store.shards",
                format!("must be at most {}", crate::shards::MAX_SHARDS),
            ));
        }
        if self.store.shards > 1 && !self.store.url.starts_with("sqlite:") {
            return Err(ConfigError::invalid(
                "store.shards",
                "applies to SQLite only: PostgreSQL's replicas share the writing",
            ));
        }
        if self.store.commit_within_ms > 60_000 {
            return Err(ConfigError::invalid(
                "store.commit_within_ms",
                "must be at most 60000: the panel shows nothing newer than the last commit",
            ));
        }
        if !(1..=4096).contains(&self.store.cache_mib) {
            return Err(ConfigError::invalid(
                "store.cache_mib",
                "must be between 1 and 4096",
            ));
        }
        if self.store.commit_every_records > 10_000_000 {
            return Err(ConfigError::invalid(
                "store.commit_every_records",
                "must be at most 10000000",
            ));
        }
        if self.http.max_page == 0 || self.http.max_page > 10_000 {
            return Err(ConfigError::invalid(
                "http.max_page",
                "must be between 1 and 10000",
            ));
        }
        validate_keys("read_keys", &self.read_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_password_is_never_shown() {
        let url = "postgres://status:s3cret@db.internal:5432/postback";
        assert_eq!(
            redacted_url(url),
            "postgres://status:[redacted]@db.internal:5432/postback"
        );
        let store = StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        };
        assert!(!format!("{store:?}").contains("s3cret"));
        assert_eq!(
            redacted_url("sqlite://.postback/status.db"),
            "sqlite://.postback/status.db"
        );
    }

    #[test]
    fn a_batch_is_ten_thousand_records_unless_the_file_says_otherwise() {
        let load = |text: &str, env: Vec<(String, String)>| {
            postback_core::config::load_toml::<StatusConfig>(text, env)
                .map(|c| c.consumer.max_batch)
        };
        assert_eq!(load("", vec![]).ok(), Some(10_000));
        assert_eq!(
            load("[consumer]\nlinger_ms = 20\n", vec![]).ok(),
            Some(10_000)
        );
        assert_eq!(
            load("[consumer]\nmax_batch = 500\n", vec![]).ok(),
            Some(500)
        );
        let env = vec![("POSTBACK_CONSUMER__MAX_BATCH".to_string(), "42".to_string())];
        assert_eq!(load("", env).ok(), Some(42));
        assert_eq!(
            StatusConfig::with_defaults(StatusSections::default())
                .consumer
                .max_batch,
            10_000
        );
    }

    #[test]
    fn a_batch_may_be_bigger_than_other_stages_but_not_unbounded() {
        let validate = |text: &str| {
            postback_core::config::load_toml::<StatusConfig>(text, vec![])
                .and_then(|c| c.validate().map(|()| c.consumer.max_batch))
        };
        assert_eq!(
            validate("[consumer]\nmax_batch = 200000\n").ok(),
            Some(200_000)
        );
        let err = validate("[consumer]\nmax_batch = 500001\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("consumer.max_batch") && err.contains("500000"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_store_setting_is_named() {
        for (text, key) in [
            ("[store]\nwrite_retry_secs = -1\n", "store.write_retry_secs"),
            ("[store]\nmax_connections = 0\n", "store.max_connections"),
            ("[store]\nurl = \"mysql://x\"\n", "store.url"),
            ("[store]\nshards = 65\n", "store.shards"),
            ("[store]\ncache_mib = 0\n", "store.cache_mib"),
            (
                "[store]\ncommit_within_ms = 60001\n",
                "store.commit_within_ms",
            ),
            (
                "[store]\ncommit_every_records = 10000001\n",
                "store.commit_every_records",
            ),
            (
                "[store]\nurl = \"postgres://db/x\"\nshards = 2\n",
                "store.shards",
            ),
        ] {
            let err = postback_core::config::load_toml::<StatusConfig>(text, vec![])
                .and_then(|c| c.validate().map(|()| c))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
