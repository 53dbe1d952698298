//! Device type, OS and browser from the user agent, with the ua-parser
//! project's patterns (data/uap-regexes.yaml, uap-core). The raw user agent
//! is kept as well: platforms want it verbatim.
//!
//! Matching a user agent against a thousand patterns costs tens of
//! microseconds; real traffic repeats a few hundred user agents, so results
//! are cached per consumer (bounded, cleared when full).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use uaparser::{Parser, UserAgentParser};

const PATTERNS: &[u8] = include_bytes!("../data/uap-regexes.yaml");
const CACHE_ENTRIES: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// desktop | mobile | tablet | bot | other
    pub device_type: &'static str,
    pub os: Option<String>,
    pub browser: Option<String>,
}

fn shared_parser() -> Option<Arc<UserAgentParser>> {
    static PARSER: OnceLock<Option<Arc<UserAgentParser>>> = OnceLock::new();
    PARSER
        .get_or_init(|| {
            match UserAgentParser::builder()
                .with_unicode_support(false)
                .build_from_bytes(PATTERNS)
            {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    // Compiled-in data, covered by tests: only a broken build
                    // gets here. Enrichment goes on without device fields.
                    tracing::error!(error = %e, "user-agent patterns do not load");
                    None
                }
            }
        })
        .clone()
}

pub struct DeviceParser {
    parser: Option<Arc<UserAgentParser>>,
    cache: HashMap<String, DeviceInfo>,
}

impl Default for DeviceParser {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceParser {
    pub fn new() -> Self {
        DeviceParser {
            parser: shared_parser(),
            cache: HashMap::new(),
        }
    }

    pub fn parse(&mut self, user_agent: &str) -> Option<DeviceInfo> {
        if let Some(hit) = self.cache.get(user_agent) {
            return Some(hit.clone());
        }
        let parser = self.parser.as_ref()?;
        let client = parser.parse(user_agent);
        let known = |s: &str| (s != "Other").then(|| s.to_string());
        let info = DeviceInfo {
            device_type: device_type(&client.device.family, &client.os.family, user_agent),
            os: known(&client.os.family),
            browser: known(&client.user_agent.family),
        };
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(user_agent.to_string(), info.clone());
        Some(info)
    }
}

fn device_type(device: &str, os: &str, ua: &str) -> &'static str {
    if device == "Spider" {
        return "bot";
    }
    let tablet = device.contains("iPad")
        || device.contains("Tablet")
        || device.contains("Kindle")
        || device.starts_with("Galaxy Tab");
    if tablet {
        return "tablet";
    }
    match os {
        "iOS" => "mobile",
        // Android tablets leave "Mobile" out of the user agent.
        "Android" if ua.contains("Mobile") => "mobile",
        "Android" => "tablet",
        "Windows" | "Mac OS X" | "macOS" | "Linux" | "Ubuntu" | "Fedora" | "Chrome OS"
        | "FreeBSD" | "OpenBSD" => "desktop",
        "Windows Phone" | "BlackBerry OS" | "KaiOS" => "mobile",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_user_agents() {
        let mut p = DeviceParser::new();
        let cases = [
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
             "mobile", "iOS", "Mobile Safari"),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
             "desktop", "Windows", "Chrome"),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
             "desktop", "Linux", "Firefox"),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
             "mobile", "Android", "Chrome Mobile"),
            ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
             "tablet", "iOS", "Mobile Safari"),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
             "bot", "", "Googlebot"),
        ];
        for (ua, kind, os, browser) in cases {
            let d = p.parse(ua).unwrap();
            assert_eq!(d.device_type, kind, "{ua}");
            if !os.is_empty() {
                assert_eq!(d.os.as_deref(), Some(os), "{ua}");
            }
            assert_eq!(d.browser.as_deref(), Some(browser), "{ua}");
        }
        // Garbage is "other", not a panic; and it is cached.
        assert_eq!(p.parse("\u{0}zzz").unwrap().device_type, "other");
        assert!(p.cache.contains_key("\u{0}zzz"));
    }
}
