#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-enricher", postback_enricher::run).await
}
