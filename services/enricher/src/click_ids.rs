//! Click ids: keep the usable ones, drop the malformed ones with a reason,
//! and build Meta's fbc from fbclid when the page did not set the cookie.
//! Click ids are never hashed and never altered (fbclid is case-sensitive).

use postback_core::model::ClickIds;

/// A click id left out, and why (for metrics and logs; never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub kind: &'static str,
    pub reason: &'static str,
}

/// Google's click ids: URL-safe base64-ish tokens.
fn google_click_id(s: &str) -> bool {
    (10..=512).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `fb.<subdomain index>.<unix ms>.<payload>` (Meta's fbc and fbp format).
fn meta_cookie(s: &str) -> bool {
    let mut parts = s.splitn(4, '.');
    let (Some("fb"), Some(index), Some(ms), Some(rest)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    index.len() == 1
        && index.bytes().all(|b| b.is_ascii_digit())
        && (10..=13).contains(&ms.len())
        && ms.bytes().all(|b| b.is_ascii_digit())
        && !rest.is_empty()
}

fn printable_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Meta's fbc built server-side: subdomain index 1, the event time in ms,
/// fbclid untouched.
pub fn fbc_from_fbclid(fbclid: &str, event_time_ms: i64) -> String {
    format!("fb.1.{event_time_ms}.{fbclid}")
}

/// The usable click ids of an event, plus what was dropped.
pub fn clean(ids: Option<&ClickIds>, event_time_ms: i64) -> (Option<ClickIds>, Vec<Dropped>) {
    let Some(ids) = ids else {
        return (None, Vec::new());
    };
    let mut dropped = Vec::new();
    let mut keep = |kind: &'static str, v: &Option<String>, ok: fn(&str) -> bool| match v {
        Some(s) if ok(s) => Some(s.clone()),
        Some(_) => {
            dropped.push(Dropped {
                kind,
                reason: "malformed",
            });
            None
        }
        None => None,
    };
    let mut out = ClickIds {
        gclid: keep("gclid", &ids.gclid, google_click_id),
        gbraid: keep("gbraid", &ids.gbraid, google_click_id),
        wbraid: keep("wbraid", &ids.wbraid, google_click_id),
        fbclid: keep("fbclid", &ids.fbclid, printable_token),
        fbc: keep("fbc", &ids.fbc, meta_cookie),
        fbp: keep("fbp", &ids.fbp, meta_cookie),
        ttclid: keep("ttclid", &ids.ttclid, printable_token),
        ttp: keep("ttp", &ids.ttp, printable_token),
    };
    // Google refuses gbraid together with wbraid; gbraid (app) is kept.
    if out.gbraid.is_some() && out.wbraid.is_some() {
        out.wbraid = None;
        dropped.push(Dropped {
            kind: "wbraid",
            reason: "with_gbraid",
        });
    }
    if out.fbc.is_none() {
        if let Some(fbclid) = &out.fbclid {
            out.fbc = Some(fbc_from_fbclid(fbclid, event_time_ms));
        }
    }
    let empty = out == ClickIds::default();
    (if empty { None } else { Some(out) }, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fbc_is_built_from_fbclid_with_the_event_time() {
        let ids = ClickIds {
            fbclid: Some("IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk".into()),
            ..ClickIds::default()
        };
        let (out, dropped) = clean(Some(&ids), 1_732_270_000_123);
        assert!(dropped.is_empty());
        assert_eq!(
            out.unwrap().fbc.as_deref(),
            Some(
                "fb.1.1732270000123.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk"
            )
        );
    }

    #[test]
    fn a_given_fbc_is_kept_and_a_malformed_one_is_replaced() {
        let ids = ClickIds {
            fbc: Some("fb.1.1732270000123.AbC".into()),
            fbclid: Some("XyZ".into()),
            ..ClickIds::default()
        };
        assert_eq!(
            clean(Some(&ids), 5).0.unwrap().fbc.as_deref(),
            Some("fb.1.1732270000123.AbC")
        );
        let ids = ClickIds {
            fbc: Some("nonsense".into()),
            fbclid: Some("XyZ".into()),
            ..ClickIds::default()
        };
        let (out, dropped) = clean(Some(&ids), 5);
        assert_eq!(out.unwrap().fbc.as_deref(), Some("fb.1.5.XyZ"));
        assert_eq!(
            dropped,
            vec![Dropped {
                kind: "fbc",
                reason: "malformed"
            }]
        );
    }

    #[test]
    fn malformed_google_ids_and_braid_pairs_are_dropped() {
        let ids = ClickIds {
            gclid: Some("short".into()),
            gbraid: Some("0AAAAAoKb8zaGx8Zb".into()),
            wbraid: Some("CjkKCQiAx8WbBhCDARIsAB".into()),
            ..ClickIds::default()
        };
        let (out, dropped) = clean(Some(&ids), 0);
        let out = out.unwrap();
        assert_eq!(out.gclid, None);
        assert!(out.gbraid.is_some() && out.wbraid.is_none());
        assert_eq!(dropped.len(), 2);
    }
}
