// A batch folds thousands of conversions' rows, each a clone of a few
// dozen small strings, and drops them again; with glibc's allocator the
// projection benchmark folded a fifth slower (perf showed malloc, free and
// their consolidation), as the deduplicator and the dispatchers did.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-status", postback_status::run).await
}
