//! postback-shop: serves the sample shop on SHOP_LISTEN (default
//! 127.0.0.1:3000) until Ctrl-C or SIGTERM.

use postback_shop::ShopConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
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
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let term = async {
            #[cfg(unix)]
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        stop.cancel();
    });
    tracing::info!(%listen, "shop listening");
    postback_shop::run(config, listener, shutdown)
        .await
        .map_err(|e| e.to_string())
}
