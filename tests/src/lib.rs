//! Fixtures for postback's integration tests: the Apache Kafka broker they
//! share (or a private one, for tests that stop it), free ports, unique
//! names, and what the stages' benchmarks share.

pub mod bench;
mod binaries;
mod broker;
mod browser;
pub mod fixtures;
mod kafka_process;
mod postgres;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use binaries::{service_command, workspace_binary};
pub use broker::Broker;
pub use browser::browser_tools;
pub use kafka_process::SaslSslListener;
pub use postgres::TestDatabase;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on loopback")
}

/// `N` ports nobody listens on right now, all different: each is held
/// until all are chosen, where `free_port` twice may answer one port
/// twice (the kernel hands a released port out again).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on loopback"))
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .map(|a| a.port())
            .expect("an ephemeral port's address")
    })
}

/// A name no other test (or earlier run against a shared broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}.{}.{}.{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The repository's root (scripts/, config/).
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `[kafka]` section of a service's TOML configuration for `kafka`
/// (with its TLS and SASL settings), for services a test runs from a file.
pub fn kafka_toml(kafka: &postback_core::config::KafkaConfig) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = format!(
        "[kafka]\nbootstrap_servers = {}\nsecurity_protocol = \"{}\"\ncompression = \"{}\"\n\
         transaction_timeout_ms = {}\ndelivery_timeout_ms = {}\n",
        quote(&kafka.bootstrap_servers),
        kafka.security_protocol.as_str(),
        kafka.compression.as_str(),
        kafka.transaction_timeout_ms,
        kafka.delivery_timeout_ms
    );
    if let Some(ca) = &kafka.ssl_ca_location {
        out.push_str(&format!(
            "ssl_ca_location = {}\n",
            quote(&ca.to_string_lossy())
        ));
    }
    for (table, properties) in [
        ("properties", &kafka.properties),
        ("producer_properties", &kafka.producer_properties),
        ("consumer_properties", &kafka.consumer_properties),
    ] {
        if !properties.is_empty() {
            out.push_str(&format!("[kafka.{table}]\n"));
            for (k, v) in properties {
                out.push_str(&format!("{} = {}\n", quote(k), quote(v)));
            }
        }
    }
    if let Some(sasl) = &kafka.sasl {
        out.push_str(&format!(
            "[kafka.sasl]\nmechanism = \"{}\"\nusername = {}\npassword = {}\n",
            sasl.mechanism.as_str(),
            quote(&sasl.username),
            quote(sasl.password.expose())
        ));
    }
    out.push('\n');
    out
}
