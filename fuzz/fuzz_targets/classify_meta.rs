//! Meta's Conversions API answer, as the dispatcher reads it: any status,
//! Retry-After and body must classify without a panic into an answer whose
//! reason code is a plain, bounded metric label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_dispatcher::adapters::meta;
use postback_fuzz::{check_answer, PlatformAnswer};

fuzz_target!(|data: &[u8]| {
    let Some(input) = PlatformAnswer::parse(data) else {
        return;
    };
    let answer = meta::classify(input.status, input.retry, input.body);
    check_answer(&answer, input.status);
});
