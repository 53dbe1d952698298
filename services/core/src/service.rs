//! The `main` every service binary shares: load and validate the
//! configuration (exit 2 naming the bad key), set up logging, bind the
//! listener, run until SIGINT/SIGTERM, and exit non-zero on failure.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Configuration, LogConfig};

/// What `main` needs to know about a service's configuration.
pub trait ServiceConfig: Configuration {
    fn log(&self) -> &LogConfig;
    /// Where the service's HTTP endpoints (at least the ops ones) listen.
    fn listen(&self) -> SocketAddr;
}

pub async fn main<C, F, Fut, E>(binary: &str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    main_with_overrides(binary, Vec::new(), run).await
}

/// Like [`main`], with configuration overrides from the command line
/// (`("PLATFORM", "meta")` for `--platform meta`) that win over the file and
/// the environment.
pub async fn main_with_overrides<C, F, Fut, E>(
    binary: &str,
    overrides: Vec<(&str, String)>,
    run: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let path = config::config_path_from_args();
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.extend(
        overrides
            .into_iter()
            .map(|(key, value)| (format!("{}{key}", config::ENV_PREFIX), value)),
    );
    let config: C = match config::load_from(path.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(config.log());
    let listen = config.listen();
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = crate::shutdown::on_signal();
    match run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{binary} failed");
            ExitCode::FAILURE
        }
    }
}
