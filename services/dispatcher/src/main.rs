//! `postback-dispatcher --platform meta|google_ads|tiktok [--config FILE]`

use std::process::ExitCode;

use postback_core::config::{self, config_path_from_args};
use postback_core::service::ServiceConfig;
use postback_dispatcher::config::DispatcherConfig;
use tokio::net::TcpListener;

/// `--platform X` (or `--platform=X`), if given.
fn platform_from_args() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--platform" {
            return args.next();
        }
        if let Some(v) = a.strip_prefix("--platform=") {
            return Some(v.to_owned());
        }
    }
    None
}

#[tokio::main]
async fn main() -> ExitCode {
    let binary = "postback-dispatcher";
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(p) = platform_from_args() {
        // The flag wins over the file and the environment.
        env.push((format!("{}PLATFORM", config::ENV_PREFIX), p));
    }
    let path = config_path_from_args();
    let config: DispatcherConfig = match config::load_from(path.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    postback_core::telemetry::init(config.log());
    let listen = config.listen();
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = postback_core::shutdown::on_signal();
    match postback_dispatcher::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{binary} failed");
            ExitCode::FAILURE
        }
    }
}
