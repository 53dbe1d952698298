//! `postback-dispatcher --platform meta|google_ads|tiktok [--config FILE]`

// Every request builds and drops thousands of small JSON values, strings and
// Avro buffers; glibc's allocator took a fifth of the benchmark's CPU
// (perf, scripts/bench.sh), as it did in the deduplicator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--platform X` (or `--platform=X`), if given.
fn platform_from_args() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--platform" {
            return args.next();
        }
        if let Some(v) = a.strip_prefix("--platform=") {
            return Some(v.to_owned());
        }
    }
    None
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The flag wins over the file and the environment.
    let overrides = platform_from_args()
        .map(|p| vec![("PLATFORM", p)])
        .unwrap_or_default();
    postback_core::service::main_with_overrides(
        "postback-dispatcher",
        overrides,
        postback_dispatcher::run,
    )
    .await
}
