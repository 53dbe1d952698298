//! Page URLs and referrers lose what the platforms do not need: the query
//! keeps only the allowlisted parameters (campaign tags and click ids by
//! default: `privacy.url_query_allowlist`), and the fragment and any
//! user:password go. A query string is where an email, a name or a reset
//! token in a URL usually is; the path stays, it is what the page was.
//!
//! A URL that does not parse, or is not http(s), is dropped whole rather
//! than passed on unexamined.

use url::Url;

/// Query parameter names kept: exact names, or a prefix ending in `*`.
#[derive(Debug, Clone)]
pub struct QueryAllowlist {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl QueryAllowlist {
    pub fn new(patterns: &[String]) -> QueryAllowlist {
        let (prefixes, exact): (Vec<&String>, Vec<&String>) =
            patterns.iter().partition(|p| p.ends_with('*'));
        QueryAllowlist {
            exact: exact.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
            prefixes: prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('*').to_ascii_lowercase())
                .collect(),
        }
    }

    fn allows(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.exact.contains(&name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }

    /// `raw` with only the allowed query parameters, or None if it is not
    /// an http(s) URL.
    pub fn clean(&self, raw: &str) -> Option<String> {
        let mut url = Url::parse(raw).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        url.set_fragment(None);
        // Infallible for http(s) URLs, which always have a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| self.allows(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        Some(url.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> QueryAllowlist {
        QueryAllowlist::new(&crate::config::PrivacyConfig::default().url_query_allowlist)
    }

    #[test]
    fn the_query_keeps_campaign_tags_and_click_ids_only() {
        let a = default();
        assert_eq!(
            a.clean("https://shop.example/thanks?email=jane%40example.com&utm_source=news&gclid=Cj0&order=1001&UTM_Campaign=x#token=abc").as_deref(),
            Some("https://shop.example/thanks?utm_source=news&gclid=Cj0&UTM_Campaign=x")
        );
        assert_eq!(
            a.clean("https://jane:secret@shop.example/a/b?name=Jane")
                .as_deref(),
            Some("https://shop.example/a/b")
        );
        assert_eq!(
            a.clean("https://shop.example/").as_deref(),
            Some("https://shop.example/")
        );
    }

    #[test]
    fn what_is_not_an_http_url_is_dropped() {
        let a = default();
        for bad in [
            "mailto:jane@example.com",
            "javascript:alert(1)",
            "not a url",
            "",
        ] {
            assert_eq!(a.clean(bad), None, "{bad}");
        }
    }

    #[test]
    fn patterns_are_exact_or_prefixes() {
        let a = QueryAllowlist::new(&["ref".into(), "cmp_*".into()]);
        assert_eq!(
            a.clean("https://x.example/?ref=1&referrer=2&cmp_id=3&cmp=4")
                .as_deref(),
            Some("https://x.example/?ref=1&cmp_id=3")
        );
    }
}
