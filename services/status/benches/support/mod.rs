//! The status records both benchmarks fold: a million conversions' worth
//! in the topic's time order, the same every run.

use postback_core::model::{
    click_id_hash, ConversionSummary, DeliveryStatus, FrontEndStatus, ServerSideStatus,
};
use postback_status::store::StatusRow;

pub const PLATFORMS: [&str; 3] = ["meta", "google_ads", "tiktok"];
pub const T0: i64 = 1_790_000_000_000;

/// The n-th conversion's event id: what the page gave the pixels, often a
/// random UUID, so ids in a batch are scattered over the key space
/// (POSTBACK_BENCH_IDS=ordered for order numbers, `ord-<n>`, which sort as
/// they come). Random but the same every run: n through SplitMix64.
pub fn event_id(n: usize) -> String {
    if std::env::var("POSTBACK_BENCH_IDS").as_deref() == Ok("ordered") {
        return format!("ord-{n}");
    }
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = (
        mix((n as u64).wrapping_add(0x9e37_79b9_7f4a_7c15)),
        mix(n as u64),
    );
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn record(
    n: usize,
    platform: &str,
    server_side: ServerSideStatus,
    time: i64,
    summary: bool,
) -> DeliveryStatus {
    DeliveryStatus {
        tenant: "acme".into(),
        event_id: event_id(n),
        event_name: "Purchase".into(),
        platform: platform.into(),
        stage: if summary {
            "deduplicator"
        } else {
            "dispatcher"
        }
        .into(),
        front_end: summary.then_some(if n % 3 == 0 {
            FrontEndStatus::Fired
        } else {
            FrontEndStatus::NotFired
        }),
        server_side,
        reason: (server_side == ServerSideStatus::Rejected).then(|| "invalid_parameter".into()),
        attempt: (!summary).then_some(1),
        next_attempt_at: None,
        duplicate_of: None,
        reported_by: summary.then(|| "server".into()),
        platform_request_id: (server_side == ServerSideStatus::Delivered)
            .then(|| format!("req-{n}")),
        time,
        conversion: summary.then(|| ConversionSummary {
            event_time: T0 + n as i64 * 100,
            value: Some("19.90".into()),
            currency: Some("EUR".into()),
            order_id: Some(format!("A-{n}")),
            sources: vec!["browser".into(), "server".into()],
            match_keys: vec!["email".into(), "phone".into(), "fbp".into()],
            click_id_hashes: vec![click_id_hash(&format!("gclid-{n}"))],
        }),
    }
}

/// Per conversion and platform: the deduplicator's `eligible`, then one in
/// ten retried once, then the outcome (one in twenty rejected), in time
/// order across conversions as the topic has them. A conversion every
/// 100 ms, its retry and its outcome as far behind as at the pipeline's
/// peak: there a second between the two is 25,000 conversions, 150,000
/// records, 2,500 s at this bench's pace. A batch of fewer records is then
/// the first records of some conversions and the updates of others; a
/// bigger one (a backlog of more than that second) holds both ends of
/// some conversions, as it would.
const RETRY_AFTER_MS: i64 = 1_250_000;
const OUTCOME_AFTER_MS: i64 = 2_500_000;

pub fn records(conversions: usize) -> Vec<StatusRow> {
    let mut out = Vec::with_capacity(conversions * 7);
    for n in 0..conversions {
        let t = T0 + n as i64 * 100;
        for p in PLATFORMS {
            out.push(record(n, p, ServerSideStatus::Eligible, t + 10, true));
            if n % 10 == 0 {
                out.push(record(
                    n,
                    p,
                    ServerSideStatus::Retrying,
                    t + RETRY_AFTER_MS,
                    false,
                ));
            }
            let outcome = if n % 20 == 0 {
                ServerSideStatus::Rejected
            } else {
                ServerSideStatus::Delivered
            };
            out.push(record(n, p, outcome, t + OUTCOME_AFTER_MS, false));
        }
    }
    out.sort_by_key(|s| s.time);
    out.into_iter()
        .enumerate()
        .map(|(i, status)| StatusRow {
            partition: (i % 6) as i32,
            offset: (i / 6) as i64,
            status,
        })
        .collect()
}
