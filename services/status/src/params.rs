//! The API's query parameters, checked one by one: an unknown, repeated or
//! malformed parameter is a 400 that names it (`query.limit`), never a
//! silent default.

use std::collections::BTreeMap;

use postback_core::model::click_id_hash;
use postback_core::Platform;

use crate::fold::{FRONT_END_NAMES, SERVER_SIDE_NAMES};
use crate::queries::{Cursor, ListFilter};

/// A parameter that is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam {
    /// `query.<name>`.
    pub field: String,
    pub message: String,
}

fn bad(name: &str, message: impl Into<String>) -> BadParam {
    BadParam {
        field: format!("query.{name}"),
        message: message.into(),
    }
}

/// The parameters of a query string, each at most once, all known.
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, BadParam> {
        let pairs: Vec<(String, String)> = match query {
            None | Some("") => Vec::new(),
            Some(q) => serde_urlencoded::from_str(q)
                .map_err(|e| bad("", format!("the query string does not parse: {e}")))?,
        };
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if !known.contains(&k.as_str()) {
                return Err(bad(
                    &k,
                    format!("unknown parameter; known: {}", known.join(", ")),
                ));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(bad(&k, "given more than once"));
            }
        }
        Ok(Params(map))
    }

    fn text(&self, name: &str, max_len: usize) -> Result<Option<String>, BadParam> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Err(bad(name, "is empty")),
            Some(v) if v.len() > max_len => {
                Err(bad(name, format!("is longer than {max_len} characters")))
            }
            Some(v) => Ok(Some(v.clone())),
        }
    }

    fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, BadParam> {
        match self.0.get(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v.as_str()) => Ok(Some(v.clone())),
            Some(_) => Err(bad(name, format!("must be one of {}", allowed.join(", ")))),
        }
    }

    /// RFC 3339 (`2026-12-01T12:00:00Z`) or Unix milliseconds.
    pub fn time(&self, name: &str) -> Result<Option<i64>, BadParam> {
        let Some(v) = self.0.get(name) else {
            return Ok(None);
        };
        if let Ok(ms) = v.parse::<i64>() {
            if (0..=253_402_300_799_999).contains(&ms) {
                return Ok(Some(ms));
            }
        }
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| {
                bad(
                    name,
                    "must be an RFC 3339 time (2026-12-01T12:00:00Z) or Unix milliseconds",
                )
            })
    }

    pub fn limit(&self, default: u32, max: u32) -> Result<u32, BadParam> {
        match self.0.get("limit") {
            None => Ok(default.min(max)),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(
                    "limit",
                    format!("must be a whole number from 1 to {max}"),
                )),
            },
        }
    }

    pub fn cursor(&self) -> Result<Option<Cursor>, BadParam> {
        match self.0.get("cursor") {
            None => Ok(None),
            Some(v) => Cursor::decode(v)
                .map(Some)
                .ok_or_else(|| bad("cursor", "is not a cursor this API gave out")),
        }
    }
}

pub const LIST_PARAMS: &[&str] = &[
    "from",
    "to",
    "event_name",
    "platform",
    "front_end",
    "server_side",
    "reason",
    "event_id",
    "order_id",
    "click_id",
    "limit",
    "cursor",
];

pub const SUMMARY_PARAMS: &[&str] = &["from", "to"];

const PLATFORMS: [&str; 3] = ["meta", "google_ads", "tiktok"];

/// The list's filters.
pub fn list_filter(p: &Params) -> Result<ListFilter, BadParam> {
    let filter = ListFilter {
        from: p.time("from")?,
        to: p.time("to")?,
        event_name: p.text("event_name", 100)?,
        platform: p.one_of("platform", &PLATFORMS)?,
        front_end: p.one_of("front_end", &FRONT_END_NAMES)?,
        server_side: p.one_of("server_side", &SERVER_SIDE_NAMES)?,
        reason: p.text("reason", 200)?,
        event_id: p.text("event_id", 200)?,
        order_id: p.text("order_id", 200)?,
        click_id_hash: p.text("click_id", 1000)?.map(|id| click_id_hash(&id)),
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(bad("to", "must be after `from`"));
        }
    }
    debug_assert!(PLATFORMS.iter().all(|p| Platform::parse(p).is_some()));
    Ok(filter)
}

/// The summary's range: `[from, to)`, by default the last 24 hours.
pub fn summary_range(p: &Params, now: i64) -> Result<(i64, i64), BadParam> {
    const DAY: i64 = 86_400_000;
    let to = p.time("to")?.unwrap_or(now + 1);
    let from = p.time("from")?.unwrap_or(to - DAY);
    if from >= to {
        return Err(bad("to", "must be after `from`"));
    }
    if to - from > 400 * DAY {
        return Err(bad("from", "the range may span at most 400 days"));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(q: &str) -> Result<ListFilter, BadParam> {
        list_filter(&Params::parse(Some(q), LIST_PARAMS)?)
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let field = |q: &str| list(q).unwrap_err().field;
        assert_eq!(field("colour=red"), "query.colour");
        assert_eq!(field("platform=myspace"), "query.platform");
        assert_eq!(field("platform=meta&platform=tiktok"), "query.platform");
        assert_eq!(field("server_side=sent"), "query.server_side");
        assert_eq!(field("front_end=maybe"), "query.front_end");
        assert_eq!(field("from=yesterday"), "query.from");
        assert_eq!(
            field("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z"),
            "query.to"
        );
        assert_eq!(field("event_id="), "query.event_id");
        let p = Params::parse(Some("limit=0"), LIST_PARAMS).unwrap();
        assert_eq!(p.limit(50, 500).unwrap_err().field, "query.limit");
        let p = Params::parse(Some("limit=501"), LIST_PARAMS).unwrap();
        assert_eq!(p.limit(50, 500).unwrap_err().field, "query.limit");
        let p = Params::parse(Some("cursor=abc"), LIST_PARAMS).unwrap();
        assert_eq!(p.cursor().unwrap_err().field, "query.cursor");
    }

    #[test]
    fn good_parameters_become_the_filter() {
        let f = list("platform=meta&server_side=delivered&from=1790000000000&click_id=Cj0&event_name=Purchase").unwrap();
        assert_eq!(f.platform.as_deref(), Some("meta"));
        assert_eq!(f.from, Some(1_790_000_000_000));
        assert_eq!(f.click_id_hash, Some(click_id_hash("Cj0")));
        let p = Params::parse(Some("from=2026-12-01T00:00:00Z"), SUMMARY_PARAMS).unwrap();
        let (from, to) = summary_range(&p, 1_796_086_800_000).unwrap();
        assert_eq!(from, 1_796_083_200_000);
        assert_eq!(to, 1_796_086_800_001);
        let p = Params::parse(Some("from=0"), SUMMARY_PARAMS).unwrap();
        assert_eq!(
            summary_range(&p, 1_796_086_800_000).unwrap_err().field,
            "query.from"
        );
    }
}
