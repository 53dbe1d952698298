//! What the fuzz targets share: the layout of a platform answer in a fuzz
//! input, and the properties every classified answer must keep whatever the
//! platform (or something pretending to be it) sends.

use std::sync::OnceLock;
use std::time::Duration;

use postback_collector::signed_ids::EventSigner;
use postback_collector::validate::EventContext;
use postback_core::model::Source;
use postback_dispatcher::adapters::{Answer, Reason, RowResult};

/// The collector_validate target's clock (2026-12-01T00:00:00Z), so its
/// seeds' event times stay in the accepted window.
pub const NOW_MS: i64 = 1_796_083_200_000;

/// The secret of the collector_validate target's signed site key.
pub const SIGNING_SECRET: &[u8] = b"fuzz-site-key-signing-secret-0123456789";

/// The endpoint a collector_validate input's first byte names: `s` the
/// server API, `b` the browser beacon, `k` the beacon of a site key that
/// requires signed ids (SIGNING_SECRET's); None for any other byte.
pub fn endpoint_context(endpoint: u8) -> Option<EventContext<'static>> {
    static SIGNER: OnceLock<EventSigner> = OnceLock::new();
    let signer = SIGNER.get_or_init(|| EventSigner::new(SIGNING_SECRET));
    let (required_source, signer) = match endpoint {
        b's' => (None, None),
        b'b' => (Some(Source::Browser), None),
        b'k' => (Some(Source::Browser), Some(signer)),
        _ => return None,
    };
    Some(EventContext {
        tenant: "acme",
        default_source: required_source.unwrap_or(Source::Server),
        required_source,
        now_ms: NOW_MS,
        signer,
    })
}

/// A platform's answer as a fuzz input: a first line `STATUS RETRY` (the
/// HTTP status, and the Retry-After seconds or `-`), then the body. Text,
/// so a seed is readable and a crash input can be pasted into a test.
pub struct PlatformAnswer<'a> {
    pub status: http::StatusCode,
    pub retry: Option<Duration>,
    pub body: &'a [u8],
}

impl<'a> PlatformAnswer<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let newline = data.iter().position(|b| *b == b'\n')?;
        let head = std::str::from_utf8(&data[..newline]).ok()?;
        let (status, retry) = head.split_once(' ')?;
        let status = http::StatusCode::from_u16(status.parse().ok()?).ok()?;
        let retry = match retry {
            "-" => None,
            secs => Some(Duration::from_secs(secs.parse().ok()?)),
        };
        Some(PlatformAnswer {
            status,
            retry,
            body: &data[newline + 1..],
        })
    }
}

/// The properties of a classified answer, whatever the body held.
pub fn check_answer(answer: &Answer, status: http::StatusCode) {
    match answer {
        Answer::Accepted { .. } | Answer::Rows { .. } => assert!(
            status.is_success(),
            "a {status} answer was read as a success: {answer:?}"
        ),
        Answer::Rejected { reason, .. }
        | Answer::Throttled { reason, .. }
        | Answer::Transient { reason, .. } => check_reason(reason),
    }
    if let Answer::Rows { rows, .. } = answer {
        for row in rows {
            if let RowResult::Rejected(r) | RowResult::Retry(r) | RowResult::Expired(r) = row {
                check_reason(r);
            }
        }
    }
}

/// A reason's code is a metric label: short and plain, whatever text the
/// platform put where a code belongs.
fn check_reason(reason: &Reason) {
    let code = &reason.code;
    assert!(
        !code.is_empty() && code.len() <= postback_dispatcher::adapters::MAX_REASON_CODE_LEN,
        "reason code of {} bytes: {code:?}",
        code.len()
    );
    assert!(
        code.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_/.-".contains(&b)),
        "reason code is not a plain label: {code:?}"
    );
    assert!(reason.describe().len() <= 500);
}
