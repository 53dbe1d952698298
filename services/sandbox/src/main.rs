use std::process::ExitCode;

use postback_sandbox::config::SandboxConfig;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let path = postback_core::config::config_path_from_args();
    let config: SandboxConfig = match postback_core::config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postback-sandbox: {e}");
            return ExitCode::from(2);
        }
    };
    postback_core::telemetry::init(&config.log);
    let listener = match TcpListener::bind(config.http.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.http.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = postback_core::shutdown::on_signal();
    match postback_sandbox::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sandbox failed");
            ExitCode::FAILURE
        }
    }
}
