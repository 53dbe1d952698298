//! Field checks every platform shares.

use serde_json::Value;

/// A SHA-256 digest as the platforms want it: 64 lowercase hex characters.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Looks like a digest (any case). Fields the platforms need in plain text
/// (IP, user agent, click ids) must not, or matching silently fails.
pub fn looks_hashed(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn is_currency(s: &str) -> bool {
    postback_core::currency::is_iso4217(s)
}

pub fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// `fb.{subdomain index}.{creation time ms}.{value}`, the shape of fbc and fbp.
pub fn is_fb_cookie(s: &str) -> bool {
    let mut parts = s.splitn(4, '.');
    let (Some(fb), Some(index), Some(ms), Some(value)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    fb == "fb"
        && !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && (10..=13).contains(&ms.len())
        && ms.bytes().all(|b| b.is_ascii_digit())
        && !value.is_empty()
}

/// An integer number of seconds; JSON floats and strings are not.
pub fn as_unix_secs(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A one-word description of a JSON value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let h = "a".repeat(64);
        assert!(is_sha256_hex(&h));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(looks_hashed(&"A".repeat(64)));
        assert!(!is_sha256_hex("abc"));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }

    #[test]
    fn fb_cookies() {
        assert!(is_fb_cookie("fb.1.1700000000000.IwAR2xyz"));
        assert!(is_fb_cookie("fb.1.1700000000000.Iw.AR"));
        assert!(!is_fb_cookie("fb.1.17000.IwAR"));
        assert!(!is_fb_cookie("fc.1.1700000000000.IwAR"));
        assert!(!is_fb_cookie("fb.1.1700000000000."));
        assert!(!is_fb_cookie("IwAR2xyz"));
    }
}
