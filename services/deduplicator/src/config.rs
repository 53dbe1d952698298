//! The deduplicator's configuration: its windows, where its state lives,
//! and its changelog topic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use postback_core::config::{
    validate_topic_name, ConfigError, ConsumerConfig, KafkaConfig, LogConfig, OpsConfig,
    TopicsConfig, Validate,
};
use postback_core::eligibility::PlatformWindows;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeduplicatorConfig {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default = "default_ops")]
    pub ops: OpsConfig,
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// How old an event each platform accepts: a merged conversion's
    /// eligibility is decided again, age included.
    #[serde(default)]
    pub platforms: PlatformWindows,
    #[serde(default)]
    pub dedup: DedupConfig,
    #[serde(default)]
    pub state: StateConfig,
}

fn default_ops() -> OpsConfig {
    OpsConfig {
        listen: SocketAddr::from(([0, 0, 0, 0], 9093)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a conversion is remembered after its first report: later
    /// reports within it are duplicates. 48 h by default (Meta's and
    /// TikTok's own window), at most 30 days.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// How long the first report of a conversion waits for the other side's
    /// report before it is sent on; 0 sends it at once.
    #[serde(default = "default_merge_window_ms")]
    pub merge_window_ms: u64,
}

fn default_window_secs() -> u64 {
    48 * 3600
}
fn default_merge_window_ms() -> u64 {
    10_000
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_secs: default_window_secs(),
            merge_window_ms: default_merge_window_ms(),
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Where the on-disk store lives. Losing it costs a restore from the
    /// changelog, never correctness; one directory per instance.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Compacted topic every state change is written to, with as many
    /// partitions as the input topic (created so if missing).
    #[serde(default = "default_changelog")]
    pub changelog_topic: String,
    /// Block cache of the store, shared by all partitions.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Memtable size per partition before it is flushed to disk.
    #[serde(default = "default_memtable_mb")]
    pub memtable_mb: u64,
    /// Longest a partition's restore may go without progress before the
    /// instance gives up (and leaves the group).
    #[serde(default = "default_restore_stall_secs")]
    pub restore_stall_secs: u64,
    /// More topic configs for the changelog when the deduplicator creates
    /// it (segment.bytes, min.cleanable.dirty.ratio, ...). cleanup.policy
    /// and retention.ms are the deduplicator's own: compacted, kept just
    /// past the dedup window.
    #[serde(default)]
    pub changelog_topic_configs: BTreeMap<String, String>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state/deduplicator")
}
fn default_changelog() -> String {
    "postback-deduplicator-state-changelog".into()
}
fn default_cache_mb() -> u64 {
    64
}
fn default_memtable_mb() -> u64 {
    8
}
fn default_restore_stall_secs() -> u64 {
    60
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
            changelog_topic: default_changelog(),
            cache_mb: default_cache_mb(),
            memtable_mb: default_memtable_mb(),
            restore_stall_secs: default_restore_stall_secs(),
            changelog_topic_configs: BTreeMap::new(),
        }
    }
}

const MAX_WINDOW_SECS: u64 = 30 * 86_400;

impl Validate for DeduplicatorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.topics.validate()?;
        self.consumer.validate()?;
        self.platforms.validate()?;
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

impl postback_core::service::ServiceConfig for DeduplicatorConfig {
    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> SocketAddr {
        self.ops.listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<DeduplicatorConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(&path, toml).unwrap();
        postback_core::config::load_from(Some(&path), vec![])
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = load("").unwrap();
        assert_eq!(c.dedup.window(), Duration::from_secs(48 * 3600));
        assert_eq!(c.dedup.merge_window(), Duration::from_secs(10));
        assert_eq!(
            c.state.changelog_topic,
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
