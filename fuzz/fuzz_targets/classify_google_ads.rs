//! Google Ads' uploadClickConversions answer, as the dispatcher reads it:
//! any status, Retry-After and body must classify without a panic, a
//! partial failure must say something of each row sent and of no other,
//! and every reason code must be a plain, bounded metric label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_dispatcher::adapters::{google_ads, Answer};
use postback_fuzz::{check_answer, PlatformAnswer};

fuzz_target!(|data: &[u8]| {
    // The first byte is the number of rows the request sent (1 to 16).
    let Some((sent, data)) = data.split_first() else {
        return;
    };
    let sent = usize::from(sent % 16) + 1;
    let Some(input) = PlatformAnswer::parse(data) else {
        return;
    };
    let answer = google_ads::classify(
        input.status,
        input.retry,
        Some("request-id".into()),
        sent,
        input.body,
    );
    check_answer(&answer, input.status);
    if let Answer::Rows { rows, .. } = &answer {
        assert_eq!(rows.len(), sent, "{answer:?}");
    }
});
