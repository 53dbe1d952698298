//! A platform's error text goes into status records (kept 30 days, shown
//! in the panel) and dead letters, and platforms echo field values in it
//! ("Invalid parameter client_ip_address: 203.0.113.7"). Before it is kept,
//! every personal value the request carried for the event is replaced by
//! `[redacted]`, so is anything shaped like an e-mail address, and the
//! text is bounded.
//!
//! The values are taken from the event's request row, where each adapter
//! put them: under its user-data keys (Meta `user_data`, TikTok `user`,
//! Google `userIdentifiers` and the click ids) and the page's address.

use serde_json::Value;

/// Most characters of platform text a record keeps.
pub const MAX_REASON_CHARS: usize = 300;
const REDACTED: &str = "[redacted]";

/// Keys of a request row whose values (and everything under them) are
/// personal data.
const PERSONAL_KEYS: &[&str] = &[
    "user_data",
    "user",
    "page",
    "event_source_url",
    "gclid",
    "gbraid",
    "wbraid",
    "userIdentifiers",
];

/// `text` without the personal values of `row`, e-mail-shaped words, or
/// more than `MAX_REASON_CHARS` characters.
pub fn scrub(text: &str, row: &Value) -> String {
    let mut values = Vec::new();
    personal_values(row, false, &mut values);
    // Longest first, so a value inside another is not left half-replaced.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for v in values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), REDACTED);
        }
    }
    let out = redact_emails(&out);
    bounded(out)
}

fn personal_values(v: &Value, personal: bool, out: &mut Vec<String>) {
    match v {
        // Short strings ("1", "FR") are in every message; a value that
        // short identifies no one alone.
        Value::String(s) if personal && s.chars().count() >= 4 => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| personal_values(i, personal, out)),
        Value::Object(m) => {
            for (k, child) in m {
                personal_values(child, personal || PERSONAL_KEYS.contains(&k.as_str()), out);
            }
        }
        _ => {}
    }
}

/// Words with an `@` between non-empty parts and a dot after it.
fn redact_emails(text: &str) -> String {
    let is_email = |w: &str| {
        let w = w.trim_matches(|c: char| !c.is_alphanumeric());
        w.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
    };
    if !text.contains('@') {
        return text.to_string();
    }
    text.split(' ')
        .map(|w| if is_email(w) { REDACTED } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

fn bounded(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_REASON_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echoed_values_and_emails_are_redacted() {
        let row = json!({
            "event_name": "Purchase",
            "event_source_url": "https://shop.example/thanks?utm_source=x",
            "user_data": {"client_ip_address": "203.0.113.7", "client_user_agent": "Mozilla/5.0 (X11)",
                          "em": ["5e5e5e5e5e5e"], "fbc": "fb.1.1.IwAR-abc", "country": ["FR"]},
            "custom_data": {"currency": "EUR", "order_id": "order-1001"}
        });
        let text = "Invalid parameter client_ip_address: 203.0.113.7 (em 5e5e5e5e5e5e, fbc fb.1.1.IwAR-abc) \
                    from Mozilla/5.0 (X11) at https://shop.example/thanks?utm_source=x; contact jane.doe@example.com, order order-1001 in EUR";
        let s = scrub(text, &row);
        for gone in [
            "203.0.113.7",
            "5e5e5e5e5e5e",
            "IwAR-abc",
            "Mozilla/5.0",
            "shop.example",
            "jane.doe@example.com",
        ] {
            assert!(!s.contains(gone), "{gone} in {s}");
        }
        assert!(
            s.contains("order-1001") && s.contains("EUR") && s.contains("client_ip_address"),
            "{s}"
        );
    }

    #[test]
    fn long_text_is_bounded_on_a_character_boundary() {
        let s = scrub(&"é".repeat(1000), &json!({}));
        assert_eq!(s.chars().count(), MAX_REASON_CHARS + 1);
        assert!(s.ends_with('…'));
        assert_eq!(scrub("short", &json!({})), "short");
    }

    #[test]
    fn google_and_tiktok_rows_are_covered() {
        let google = json!({"gclid": "Cj0KCQiA-xyz", "userIdentifiers": [{"hashedEmail": "abcdef0123"}],
                            "orderId": "o-1"});
        let s = scrub("gclid Cj0KCQiA-xyz and abcdef0123 for o-1", &google);
        assert_eq!(s, "gclid [redacted] and [redacted] for o-1");
        let tiktok = json!({"user": {"ip": "198.51.100.9", "ttclid": "E.C.P.abc"}, "page": {"referrer": "https://r.example/?q=1"}});
        let s = scrub(
            "bad ip 198.51.100.9, ttclid E.C.P.abc, referrer https://r.example/?q=1",
            &tiktok,
        );
        assert_eq!(
            s,
            "bad ip [redacted], ttclid [redacted], referrer [redacted]"
        );
    }
}
