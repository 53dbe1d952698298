//! The browser tag (`tag/postback.js`), served at `GET /v1/tag.js`.
//!
//! The source keeps its comments for readers; what is served drops comment
//! lines and indentation (a plain line filter: the source never starts a
//! line inside a string with `//`), gzipped once at first use. No
//! JavaScript toolchain is needed to build or run the collector.

use std::io::Write;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// The tag as written (docs/browser-tag.md describes it).
pub const SOURCE: &str = include_str!("../tag/postback.js");

/// The tag as served: its bytes, gzipped, and the ETag of both.
pub struct Served {
    pub plain: Vec<u8>,
    pub gzip: Vec<u8>,
    etag: String,
}

/// The source without comment lines, indentation or blank lines.
pub fn strip(source: &str) -> String {
    let mut out = String::with_capacity(source.len() / 2);
    for line in source.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let plain = strip(SOURCE).into_bytes();
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        // Writing into a Vec cannot fail.
        let gzip = gz
            .write_all(&plain)
            .and_then(|()| gz.finish())
            .unwrap_or_default();
        let digest = Sha256::digest(&plain);
        let etag = format!("\"{}\"", hex::encode(&digest[..12]));
        Served { plain, gzip, etag }
    })
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

pub async fn get_tag(headers: HeaderMap) -> Response {
    let tag = served();
    let etag = HeaderValue::from_str(&tag.etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag.etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(&headers) && !tag.gzip.is_empty() {
        let mut r = Body::from(tag.gzip.as_slice()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        Body::from(tag.plain.as_slice()).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    // An hour: a new tag reaches every page within one, and the ETag makes
    // the check after that a 304.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(header::ETAG, etag);
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Shops that isolate themselves (COEP) may still load it.
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_keeps_code_and_drops_comment_lines() {
        let s = strip("// head\n  var a = 1; // tail stays\n\n    // inner\n  b();\n");
        assert_eq!(s, "var a = 1; // tail stays\nb();\n");
    }

    #[test]
    fn gzip_is_refused_only_with_q_zero() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip, deflate, br"));
        assert!(h("br;q=1.0, gzip;q=0.8"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_served_tag_is_small() {
        let t = served();
        println!(
            "tag: source {} bytes, served {} bytes, gzipped {} bytes",
            SOURCE.len(),
            t.plain.len(),
            t.gzip.len()
        );
        // docs/browser-tag.md and the README state the size: keep it true.
        assert!(t.gzip.len() < 4096, "gzipped tag is {} bytes", t.gzip.len());
    }
}
