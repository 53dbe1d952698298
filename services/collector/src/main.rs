#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-collector", postback_collector::run).await
}
