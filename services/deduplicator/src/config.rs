//! The deduplicator's configuration: its windows, where its state lives,
//! and its changelog topic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use postback_core::config::{validate_topic_name, ConfigError, Stage, StageConfig, Validate};
use serde::{Deserialize, Serialize};

/// The deduplicator's file: the sections every stage shares and these.
/// (Its `[platforms]` windows apply again to a merged conversion, age
/// included.)
pub type DeduplicatorConfig = StageConfig<DeduplicatorSections>;

/// The deduplicator's own sections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeduplicatorSections {
    pub dedup: DedupConfig,
    pub state: StateConfig,
}

impl Stage for DeduplicatorSections {
    const OPS_PORT: u16 = 9093;

    fn default_group_id(&self) -> String {
        "postback-deduplicator".into()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a conversion is remembered after its first report: later
    /// reports within it are duplicates. 48 h by default (Meta's and
    /// TikTok's own window), at most 30 days.
    pub window_secs: u64,
    /// How long the first report of a conversion waits for the other side's
    /// report before it is sent on; 0 sends it at once.
    pub merge_window_ms: u64,
    /// How long a conversion only the browser reported waits for the
    /// server's report (docs/deduplicator.md#browser-reports-wait). Anyone
    /// can post a beacon with a guessed event id: waiting this long lets
    /// the shop's own report arrive and win the order and identifiers
    /// before anything is uploaded. At least `merge_window_ms`.
    pub browser_wait_ms: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_secs: 48 * 3600,
            merge_window_ms: 10_000,
            browser_wait_ms: 300_000,
        }
    }
}

impl DedupConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    pub fn merge_window(&self) -> Duration {
        Duration::from_millis(self.merge_window_ms)
    }

    pub fn browser_wait(&self) -> Duration {
        Duration::from_millis(self.browser_wait_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Where the on-disk store lives. Losing it costs a restore from the
    /// changelog, never correctness; one directory per instance.
    pub dir: PathBuf,
    /// Compacted topic every state change is written to, with as many
    /// partitions as the input topic (created so if missing).
    pub changelog_topic: String,
    /// Block cache of the store, shared by all partitions.
    pub cache_mb: u64,
    /// Memtable size per partition before it is flushed to disk.
    pub memtable_mb: u64,
    /// Longest a partition's restore may go without progress before the
    /// instance gives up (and leaves the group).
    pub restore_stall_secs: u64,
    /// More topic configs for the changelog when the deduplicator creates
    /// it (segment.bytes, min.cleanable.dirty.ratio, ...). cleanup.policy
    /// and retention.ms are the deduplicator's own: compacted, kept just
    /// past the dedup window.
    pub changelog_topic_configs: BTreeMap<String, String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("state/deduplicator"),
            changelog_topic: "postback-deduplicator-state-changelog".into(),
            cache_mb: 64,
            memtable_mb: 8,
            restore_stall_secs: 60,
            changelog_topic_configs: BTreeMap::new(),
        }
    }
}

const MAX_WINDOW_SECS: u64 = 30 * 86_400;
/// A held conversion is a stored record: six hours of beacons is plenty.
const MAX_BROWSER_WAIT_MS: u64 = 6 * 3_600_000;

impl Validate for DeduplicatorSections {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.dedup.window_secs == 0 || self.dedup.window_secs > MAX_WINDOW_SECS {
            return Err(ConfigError::invalid(
                "dedup.window_secs",
                format!("must be between 1 and {MAX_WINDOW_SECS} (30 days)"),
            ));
        }
        if self.dedup.merge_window_ms >= self.dedup.window_secs * 1000 {
            return Err(ConfigError::invalid(
                "dedup.merge_window_ms",
                "must be shorter than dedup.window_secs",
            ));
        }
        if self.dedup.merge_window_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "dedup.merge_window_ms",
                "must be at most 3600000 (one hour)",
            ));
        }
        if self.dedup.browser_wait_ms < self.dedup.merge_window_ms
            || self.dedup.browser_wait_ms > MAX_BROWSER_WAIT_MS
            || self.dedup.browser_wait_ms >= self.dedup.window_secs * 1000
        {
            return Err(ConfigError::invalid(
                "dedup.browser_wait_ms",
                "must be at least dedup.merge_window_ms, at most 21600000 (six hours) and shorter than dedup.window_secs",
            ));
        }
        validate_topic_name("state.changelog_topic", &self.state.changelog_topic)?;
        if self.state.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("state.dir", "must be set"));
        }
        if !(1..=65_536).contains(&self.state.cache_mb) {
            return Err(ConfigError::invalid(
                "state.cache_mb",
                "must be between 1 and 65536",
            ));
        }
        if !(1..=256).contains(&self.state.memtable_mb) {
            return Err(ConfigError::invalid(
                "state.memtable_mb",
                "must be between 1 and 256",
            ));
        }
        for name in self.state.changelog_topic_configs.keys() {
            if name == "cleanup.policy" || name == "retention.ms" {
                return Err(ConfigError::invalid(
                    format!("state.changelog_topic_configs.{name}"),
                    "is set by the deduplicator (compact,delete; the dedup window + 1 h)",
                ));
            }
        }
        if self.state.restore_stall_secs == 0 {
            return Err(ConfigError::invalid(
                "state.restore_stall_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<DeduplicatorConfig, ConfigError> {
        postback_core::config::load_toml(toml, vec![])
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = load("").unwrap();
        assert_eq!(c.stage.dedup.window(), Duration::from_secs(48 * 3600));
        assert_eq!(c.stage.dedup.merge_window(), Duration::from_secs(10));
        assert_eq!(c.stage.dedup.browser_wait(), Duration::from_secs(300));
        assert_eq!(
            c.stage.state.changelog_topic,
            "postback-deduplicator-state-changelog"
        );
    }

    #[test]
    fn errors_name_the_bad_key() {
        for (toml, key) in [
            ("[dedup]\nwindow_secs = 2678400", "dedup.window_secs"),
            (
                "[dedup]\nwindow_secs = 5\nmerge_window_ms = 5000",
                "dedup.merge_window_ms",
            ),
            (
                "[dedup]\nmerge_window_ms = 20000\nbrowser_wait_ms = 10000",
                "dedup.browser_wait_ms",
            ),
            (
                "[dedup]\nbrowser_wait_ms = 86400000",
                "dedup.browser_wait_ms",
            ),
            (
                "[state]\nchangelog_topic = \"a b\"",
                "state.changelog_topic",
            ),
            ("[state]\nmemtable_mb = 0", "state.memtable_mb"),
            (
                "[state.changelog_topic_configs]\n\"cleanup.policy\" = \"delete\"",
                "state.changelog_topic_configs.cleanup.policy",
            ),
            ("[consumer]\nmax_batch = 0", "consumer.max_batch"),
        ] {
            let e = load(toml).unwrap_err();
            assert_eq!(e.key(), Some(key), "{toml}: {e}");
        }
    }
}
