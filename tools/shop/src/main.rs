//! postback-shop: serves the sample shop on SHOP_LISTEN (default
//! 127.0.0.1:3000) until Ctrl-C or SIGTERM.

use postback_core::config::LogConfig;
use postback_shop::ShopConfig;

#[tokio::main]
async fn main() {
    postback_core::telemetry::init(&LogConfig::default());
    if let Err(e) = serve().await {
        eprintln!("postback-shop: {e}");
        std::process::exit(1);
    }
}

async fn serve() -> Result<(), String> {
    let config = ShopConfig::from_env().map_err(|e| e.to_string())?;
    let listen = std::env::var("SHOP_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "shop listening");
    postback_shop::run(config, listener, postback_core::shutdown::on_signal())
        .await
        .map_err(|e| e.to_string())
}
