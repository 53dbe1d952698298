#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-deduplicator", postback_deduplicator::run).await
}
