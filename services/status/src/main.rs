#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-status", postback_status::run).await
}
