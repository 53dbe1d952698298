//! The one loader: merge the file and the environment, read them into a
//! [`Configuration`], validate it, and turn every error into one that names
//! its key and never repeats a value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use super::{ConfigError, Validate};

pub const ENV_PREFIX: &str = "POSTBACK_";

/// A service's configuration as the loader builds it. A plain struct that
/// denies unknown fields is a [`PlainConfiguration`] and reads itself with
/// [`Sources::extract`]; a [`super::StageConfig`] reads its shared and its
/// own sections apart.
pub trait Configuration: Sized + Validate {
    fn extract(sources: &Sources) -> Result<Self, ConfigError>;
}

/// A configuration read whole by its one `Deserialize` derive, which denies
/// unknown keys (the collector's, the sandbox's; a tool that reads only part
/// of a service's file leaves them to be ignored). Implementing this marker
/// makes it a [`Configuration`] read with [`Sources::extract`].
pub trait PlainConfiguration: DeserializeOwned + Validate {}

impl<T: PlainConfiguration> Configuration for T {
    fn extract(sources: &Sources) -> Result<Self, ConfigError> {
        sources.extract()
    }
}

/// The merged file and environment, before they are read into a configuration.
pub struct Sources {
    figment: Figment,
    file: Option<PathBuf>,
}

impl Sources {
    /// The file (when given) overridden by the `POSTBACK_` variables of `env`.
    pub fn new(file: Option<&Path>, env: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    message: "does not exist".into(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(Sources {
            figment: figment.merge(EnvSnapshot(env)),
            file: file.map(Path::to_owned),
        })
    }

    /// TOML text instead of a file (tests, tools).
    pub fn toml(text: &str, env: Vec<(String, String)>) -> Self {
        Sources {
            figment: Figment::from(Toml::string(text)).merge(EnvSnapshot(env)),
            file: None,
        }
    }

    /// `value` at `key` (dotted) unless the file or the environment sets it.
    pub fn with_default(&self, key: &str, value: impl Serialize) -> Sources {
        Sources {
            figment: self.figment.clone().join(Serialized::default(key, value)),
            file: self.file.clone(),
        }
    }

    /// Reads `T` from the whole of the sources.
    pub fn extract<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.figment.extract().map_err(|e| self.error(e))
    }

    /// Refuses a top-level key that is not in `known`, naming it.
    pub fn refuse_unknown_keys<'a>(
        &self,
        known: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        let known: Vec<&str> = known.into_iter().collect();
        let present: BTreeMap<String, IgnoredAny> = self.extract()?;
        match present.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) => Err(ConfigError::invalid(
                key.clone(),
                format!("unknown key, expected one of {}", quoted(&known)),
            )),
        }
    }

    /// Reads and validates a configuration.
    pub fn load<C: Configuration>(&self) -> Result<C, ConfigError> {
        let config = C::extract(self)?;
        config.validate()?;
        Ok(config)
    }

    fn error(&self, error: figment::Error) -> ConfigError {
        let key = error.path.join(".");
        let message = describe(&error.kind);
        match (&self.file, key.is_empty()) {
            (Some(path), true) => ConfigError::File {
                path: path.clone(),
                message,
            },
            (None, true) => ConfigError::invalid("<root>", message),
            (_, false) => ConfigError::invalid(key, message),
        }
    }
}

/// Loads `C` from an optional TOML file and the process environment.
pub fn load<C: Configuration>(file: Option<&Path>) -> Result<C, ConfigError> {
    load_from(file, std::env::vars().collect())
}

/// Like [`load`], with the environment given explicitly (tests).
pub fn load_from<C: Configuration>(
    file: Option<&Path>,
    env: Vec<(String, String)>,
) -> Result<C, ConfigError> {
    Sources::new(file, env)?.load()
}

/// Like [`load_from`], from TOML text.
pub fn load_toml<C: Configuration>(
    text: &str,
    env: Vec<(String, String)>,
) -> Result<C, ConfigError> {
    Sources::toml(text, env).load()
}

/// What went wrong, without the value: a value refused under one key may be
/// a secret that belongs under another.
fn describe(kind: &Kind) -> String {
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {}", what(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("{} is not {expected}", what(actual))
        }
        Kind::UnknownVariant(_, expected) => {
            format!("unknown value, expected one of {}", quoted(expected))
        }
        Kind::UnknownField(_, expected) => {
            format!("unknown key, expected one of {}", quoted(expected))
        }
        Kind::Unsupported(actual) | Kind::UnsupportedKey(actual, _) => {
            format!("{} is not supported here", what(actual))
        }
        other => other.to_string(),
    }
}

fn what(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value of another kind",
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct EnvSnapshot(Vec<(String, String)>);

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.is_empty() || rest == "CONFIG" || rest == "LOG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let parsed = figment::value::Value::from(value.as_str());
            let parsed = match value.parse::<figment::value::Value>() {
                Ok(v) => v,
                Err(_) => parsed,
            };
            insert_path(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry(head.clone())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// The path given with `--config PATH` or `POSTBACK_CONFIG`.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("POSTBACK_CONFIG").map(PathBuf::from)
}

/// A configuration of the shared sections only, for the loader's tests.
#[cfg(test)]
pub(super) mod test_sample {
    use serde::Deserialize;

    use crate::config::{ConfigError, KafkaConfig, OpsConfig, PlainConfiguration, Validate};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Sample {
        #[serde(default)]
        pub kafka: KafkaConfig,
        #[serde(default)]
        pub ops: OpsConfig,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.kafka.validate()
        }
    }

    impl PlainConfiguration for Sample {}
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::config::{Stage, StageConfig};

    use crate::config::test_sample::Sample;

    #[derive(Debug, Deserialize)]
    struct Own {
        #[serde(default)]
        own: OwnSection,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OwnSection {
        #[serde(default)]
        limit: u32,
    }

    impl Validate for Own {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.own.limit > 10 {
                return Err(ConfigError::invalid("own.limit", "must be at most 10"));
            }
            Ok(())
        }
    }

    impl Stage for Own {
        const OPS_PORT: u16 = 9199;
        fn default_group_id(&self) -> String {
            "own-group".into()
        }
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "[kafka]\nbootstrap_servers = \"a:1\"\n").unwrap();
        let cfg: Sample = load_from(
            Some(f.path()),
            vec![("POSTBACK_KAFKA__BOOTSTRAP_SERVERS".into(), "b:2,c:3".into())],
        )
        .unwrap();
        assert_eq!(cfg.kafka.bootstrap_servers, "b:2,c:3");
        let missing = load_from::<Sample>(Some(Path::new("/nonexistent/p.toml")), vec![]);
        assert!(matches!(missing, Err(ConfigError::File { .. })));
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let err = load_toml::<Sample>("[ops]\nlisten = 12\n", vec![]).unwrap_err();
        assert_eq!(err.key(), Some("ops.listen"), "{err}");
        let ok: Sample = load_toml("", vec![]).unwrap();
        assert_eq!(ok.ops.listen.port(), 9090);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = load_toml::<Sample>("[kafka]\nbootstrap_server = \"a:1\"\n", vec![]).unwrap_err();
        assert_eq!(err.key(), Some("kafka.bootstrap_server"), "{err}");
        let err = load_toml::<Sample>("[kafak]\nx = 1\n", vec![]).unwrap_err();
        assert_eq!(err.key(), Some("kafak"), "{err}");
    }

    #[test]
    fn no_error_repeats_the_value_it_refused() {
        let token = "EAAB-secret-token-value";
        for (toml, key) in [
            (format!("[ops]\nlisten = \"{token}\""), "ops.listen"),
            (
                format!("[kafka]\ncompression = \"{token}\""),
                "kafka.compression",
            ),
            (
                format!("[kafka]\ndelivery_timeout_ms = \"{token}\""),
                "kafka.delivery_timeout_ms",
            ),
            (
                format!("[kafka.sasl]\nmechanism = \"{token}\""),
                "kafka.sasl.mechanism",
            ),
        ] {
            let err = load_toml::<Sample>(&toml, vec![]).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(!format!("{err} {err:?}").contains(token), "{err}");
        }
        let err = load_toml::<Sample>("", vec![("POSTBACK_OPS__LISTEN".into(), token.into())])
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(token), "{err}");
    }

    #[test]
    fn a_stage_reads_shared_and_own_sections_from_one_file() {
        let cfg: StageConfig<Own> = load_toml(
            "[kafka]\nbootstrap_servers = \"k:1\"\n[own]\nlimit = 3\n[consumer]\nmax_batch = 7\n",
            vec![("POSTBACK_OWN__LIMIT".into(), "4".into())],
        )
        .unwrap();
        assert_eq!(cfg.kafka.bootstrap_servers, "k:1");
        assert_eq!(cfg.stage.own.limit, 4);
        assert_eq!(cfg.consumer.max_batch, 7);
        assert_eq!(cfg.ops.listen.port(), 9199, "the stage's own ops port");
        assert_eq!(cfg.group_id(), "own-group");
        let cfg: StageConfig<Own> =
            load_toml("[ops]\nlisten = \"127.0.0.1:1234\"\n", vec![]).unwrap();
        assert_eq!(cfg.ops.listen.port(), 1234);
    }

    #[test]
    fn a_stage_names_every_bad_key() {
        for (toml, key) in [
            ("[owm]\nlimit = 1", "owm"),
            ("[own]\nlimt = 1", "own.limt"),
            ("[own]\nlimit = \"x\"", "own.limit"),
            ("[own]\nlimit = 11", "own.limit"),
            ("[consumer]\nmax_batch = 0", "consumer.max_batch"),
            ("[consumer]\nmax_batch = 10001", "consumer.max_batch"),
            ("[topics]\nraw = \"a b\"", "topics.raw"),
            ("[platforms]\nmeta_dayz = 1", "platforms.meta_dayz"),
            (
                "[kafka]\nbootstrap_servers = \"nohost\"",
                "kafka.bootstrap_servers",
            ),
        ] {
            let err = load_toml::<StageConfig<Own>>(toml, vec![]).unwrap_err();
            assert_eq!(err.key(), Some(key), "{toml}: {err}");
        }
    }
}
