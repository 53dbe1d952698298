#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-sandbox", postback_sandbox::run).await
}
