// The store and the Avro codecs allocate and free many small buffers per
// report; glibc's allocator spent a third of the deduplicator's CPU on them
// (perf, scripts/bench.sh). mimalloc keeps per-thread free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    postback_core::service::main("postback-deduplicator", postback_deduplicator::run).await
}
