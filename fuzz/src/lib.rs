//! What the fuzz targets share: the layout of a platform answer in a fuzz
//! input, and the properties every classified answer must keep whatever the
//! platform (or something pretending to be it) sends.

use std::time::Duration;

use postback_dispatcher::adapters::{Answer, Reason, RowResult};

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
