use std::process::ExitCode;

use postback_enricher::config::EnricherConfig;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let path = postback_core::config::config_path_from_args();
    let config: EnricherConfig = match postback_core::config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postback-enricher: {e}");
            return ExitCode::from(2);
        }
    };
    postback_core::telemetry::init(&config.log);
    let listener = match TcpListener::bind(config.ops.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.ops.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = postback_core::shutdown::on_signal();
    match postback_enricher::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "enricher failed");
            ExitCode::FAILURE
        }
    }
}
