//! Strict validation of incoming conversions. Every problem is reported, each
//! with the path of the field it is about (`events[3].order.currency`), so a
//! client fixes a payload in one round trip. The output is the typed
//! `ConversionRaw` the rest of the pipeline reads.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate};
use postback_core::currency::is_iso4217;
use postback_core::model::{
    is_sha256_hex, ClickIds, Consent, ConversionRaw, FieldError, Item, Order, Page, Source, User,
};
use postback_core::Platform;

use crate::signed_ids::EventSigner;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// Limits a deployment may tune.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How far in the future an event_time may be (clock skew), in ms.
    pub max_future_ms: i64,
    /// Most characters in a free-text field without its own limit.
    pub max_text_chars: usize,
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_future_ms: 10 * 60 * 1000,
            max_text_chars: 1024,
            max_items: 500,
        }
    }
}

/// What the endpoint knows about an event besides its body.
pub struct EventContext<'a> {
    pub tenant: &'a str,
    /// The source assumed when the event does not say.
    pub default_source: Source,
    /// Set on the browser endpoint: the only source allowed there.
    pub required_source: Option<Source>,
    pub now_ms: i64,
    /// Set when the site key requires signed event ids: each event's
    /// `event_signature` must be this signer's for its name and id.
    pub signer: Option<&'a EventSigner>,
}

const ACTION_SOURCES: &[&str] = &[
    "website",
    "app",
    "physical_store",
    "email",
    "phone_call",
    "chat",
    "system_generated",
    "business_messaging",
    "other",
];

const TOP_LEVEL: &[&str] = &[
    "event_id",
    "event_name",
    "event_time",
    "source",
    "action_source",
    "order",
    "user",
    "click_ids",
    "page",
    "consent",
    "pixels",
    "event_signature",
];

struct Checker<'a> {
    prefix: &'a str,
    errors: Vec<FieldError>,
    limits: &'a Limits,
}

impl Checker<'_> {
    fn path(&self, field: &str) -> String {
        if self.prefix.is_empty() {
            field.to_string()
        } else if field.is_empty() {
            self.prefix.to_string()
        } else {
            format!("{}.{}", self.prefix, field)
        }
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        let path = self.path(field);
        self.errors.push(FieldError::new(path, message));
    }

    fn object<'v>(&mut self, field: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                self.error(field, format!("expected an object, got {}", kind(other)));
                None
            }
        }
    }

    fn unknown_fields(&mut self, field: &str, m: &Map<String, Value>, allowed: &[&str]) {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let f = if field.is_empty() {
                    k.clone()
                } else {
                    format!("{field}.{k}")
                };
                self.error(&f, "unknown field");
            }
        }
    }

    /// An optional string of at most `max` characters; empty counts as absent.
    fn string(&mut self, field: &str, v: Option<&Value>, max: usize) -> Option<String> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let s = s.trim();
                if s.is_empty() {
                    return None;
                }
                if s.chars().count() > max {
                    self.error(field, format!("longer than {max} characters"));
                    return None;
                }
                if s.chars().any(|c| c.is_control()) {
                    self.error(field, "contains control characters");
                    return None;
                }
                Some(s.to_string())
            }
            Some(other) => {
                self.error(field, format!("expected a string, got {}", kind(other)));
                None
            }
        }
    }

    fn required_string(&mut self, field: &str, v: Option<&Value>, max: usize) -> Option<String> {
        match v {
            None | Some(Value::Null) => {
                self.error(field, "is required");
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.error(field, "must not be empty");
                None
            }
            other => self.string(field, other, max),
        }
    }

    fn text(&mut self, field: &str, v: Option<&Value>) -> Option<String> {
        let max = self.limits.max_text_chars;
        self.string(field, v, max)
    }

    fn boolean(&mut self, field: &str, v: Option<&Value>) -> Option<bool> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.error(field, format!("expected a boolean, got {}", kind(other)));
                None
            }
        }
    }

    /// A non-negative decimal given as a string or a JSON number.
    fn decimal(&mut self, field: &str, v: Option<&Value>) -> Option<String> {
        let text = match v {
            None | Some(Value::Null) => return None,
            Some(Value::String(s)) => s.trim().to_string(),
            // serde_json keeps integers exact; a float prints in its
            // shortest round-trip form, which is what the client wrote for
            // any amount of up to 15 significant digits.
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                self.error(
                    field,
                    format!("expected a decimal number, got {}", kind(other)),
                );
                return None;
            }
        };
        let valid_syntax = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
            && text.chars().filter(|c| *c == '.').count() <= 1;
        let parsed = if valid_syntax {
            Decimal::from_str(&text).ok()
        } else {
            None
        };
        match parsed {
            None => {
                self.error(field, format!("`{}` is not a decimal number", clip(&text)));
                None
            }
            Some(d) if d.is_sign_negative() && !d.is_zero() => {
                self.error(field, "must not be negative");
                None
            }
            Some(d) if d.scale() > 6 => {
                self.error(field, "has more than 6 decimal places");
                None
            }
            Some(d) if d > Decimal::from(1_000_000_000_000_000i64) => {
                self.error(field, "is too large");
                None
            }
            Some(d) => Some(d.to_string()),
        }
    }

    /// One of `allowed`, exactly.
    fn one_of(&mut self, field: &str, v: Option<&Value>, allowed: &[&str]) -> Option<String> {
        let s = self.string(field, v, 64)?;
        if allowed.contains(&s.as_str()) {
            Some(s)
        } else {
            self.error(
                field,
                format!("`{}` is not one of {}", clip(&s), allowed.join(", ")),
            );
            None
        }
    }
}

/// Validates one event. `prefix` is its path in the request (`events[3]`, or
/// empty for a single event).
pub fn validate_event(
    value: &Value,
    prefix: &str,
    ctx: &EventContext<'_>,
    limits: &Limits,
) -> Result<ConversionRaw, Vec<FieldError>> {
    let mut c = Checker {
        prefix,
        errors: Vec::new(),
        limits,
    };
    let Value::Object(m) = value else {
        c.error("", format!("expected an event object, got {}", kind(value)));
        return Err(c.errors);
    };
    c.unknown_fields("", m, TOP_LEVEL);

    let event_id = c.required_string("event_id", m.get("event_id"), 256);
    let event_name = c.required_string("event_name", m.get("event_name"), 100);
    let event_time = event_time(&mut c, m.get("event_time"), ctx);
    let source = source(&mut c, m.get("source"), ctx);
    let action_source = c.one_of("action_source", m.get("action_source"), ACTION_SOURCES);
    let order = m.get("order").and_then(|v| order(&mut c, v));
    let user = m.get("user").and_then(|v| user(&mut c, v));
    let click_ids = m.get("click_ids").and_then(|v| click_ids(&mut c, v));
    let page = m.get("page").and_then(|v| page(&mut c, v));
    let consent = m.get("consent").and_then(|v| consent(&mut c, v));
    let pixels = m
        .get("pixels")
        .map(|v| pixels(&mut c, v))
        .unwrap_or_default();
    signature(&mut c, m, ctx, event_id.as_deref(), event_name.as_deref());

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    match (event_id, event_name, source) {
        (Some(event_id), Some(event_name), Some(source)) => Ok(ConversionRaw {
            tenant: ctx.tenant.to_string(),
            event_id,
            event_name,
            event_time: event_time.unwrap_or(ctx.now_ms),
            received_at: ctx.now_ms,
            source,
            action_source,
            order,
            user,
            click_ids,
            page,
            consent,
            pixels,
        }),
        // Each None above pushed an error, so this arm is never reached.
        _ => Err(vec![FieldError::new(prefix, "invalid event")]),
    }
}

/// `event_signature` is checked where the site key asks for one, and
/// refused where it does not (a server's event has nothing to sign).
fn signature(
    c: &mut Checker<'_>,
    m: &Map<String, Value>,
    ctx: &EventContext<'_>,
    event_id: Option<&str>,
    event_name: Option<&str>,
) {
    const FIELD: &str = "event_signature";
    let given = m.get(FIELD);
    let Some(signer) = ctx.signer else {
        if given.is_some() && ctx.required_source.is_none() {
            c.error(FIELD, "only browser reports carry a signature");
        }
        return;
    };
    let signature = match given {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            c.error(FIELD, format!("expected a string, got {}", kind(other)));
            return;
        }
    };
    // Without a valid id and name there is nothing to check it against;
    // their own errors say why.
    if let (Some(id), Some(name)) = (event_id, event_name) {
        if let Err(e) = signer.verify(name, id, signature) {
            c.error(FIELD, e.to_string());
        }
    }
}

fn event_time(c: &mut Checker<'_>, v: Option<&Value>, ctx: &EventContext<'_>) -> Option<i64> {
    const FIELD: &str = "event_time";
    let ms = match v {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s.trim()) {
            Ok(t) => t.timestamp_millis(),
            Err(_) => {
                c.error(
                    FIELD,
                    "expected RFC 3339 (2026-11-22T10:15:00Z) or Unix seconds",
                );
                return None;
            }
        },
        Some(Value::Number(n)) => {
            let Some(secs) = n.as_f64() else {
                c.error(FIELD, "is not a number of seconds");
                return None;
            };
            if secs >= 100_000_000_000.0 {
                c.error(FIELD, "looks like milliseconds; send Unix seconds");
                return None;
            }
            if secs <= 0.0 {
                c.error(FIELD, "must be after 1970-01-01");
                return None;
            }
            (secs * 1000.0).round() as i64
        }
        Some(other) => {
            c.error(
                FIELD,
                format!(
                    "expected RFC 3339 string or Unix seconds, got {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    if ms > ctx.now_ms + c.limits.max_future_ms {
        c.error(
            FIELD,
            format!(
                "is more than {} minutes in the future",
                c.limits.max_future_ms / 60_000
            ),
        );
        return None;
    }
    if ms <= 0 {
        c.error(FIELD, "must be after 1970-01-01");
        return None;
    }
    Some(ms)
}

fn source(c: &mut Checker<'_>, v: Option<&Value>, ctx: &EventContext<'_>) -> Option<Source> {
    let given = c.one_of("source", v, &["browser", "server", "offline"]);
    let source = match given {
        Some(s) => Source::parse(&s)?,
        None if matches!(v, None | Some(Value::Null)) => ctx.default_source,
        None => return None,
    };
    if let Some(required) = ctx.required_source {
        if source != required {
            c.error(
                "source",
                format!("must be {} on this endpoint", required.as_str()),
            );
            return None;
        }
    }
    Some(source)
}

fn order(c: &mut Checker<'_>, v: &Value) -> Option<Order> {
    let m = c.object("order", v)?;
    c.unknown_fields("order", m, &["order_id", "value", "currency", "items"]);
    let order_id = c.string("order.order_id", m.get("order_id"), 256);
    let value = c.decimal("order.value", m.get("value"));
    let currency = match c.string("order.currency", m.get("currency"), 16) {
        Some(cur) => {
            let upper = cur.to_ascii_uppercase();
            if is_iso4217(&upper) {
                Some(upper)
            } else {
                c.error(
                    "order.currency",
                    format!("`{}` is not an ISO 4217 currency code", clip(&cur)),
                );
                None
            }
        }
        None => None,
    };
    if m.get("value").is_some_and(|v| !v.is_null()) && m.get("currency").is_none_or(Value::is_null)
    {
        c.error("order.currency", "is required when order.value is set");
    }
    let mut items = Vec::new();
    match m.get("items") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > c.limits.max_items {
                c.error(
                    "order.items",
                    format!("more than {} items", c.limits.max_items),
                );
            } else {
                for (i, item) in list.iter().enumerate() {
                    if let Some(it) = order_item(c, &format!("order.items[{i}]"), item) {
                        items.push(it);
                    }
                }
            }
        }
        Some(other) => c.error(
            "order.items",
            format!("expected an array, got {}", kind(other)),
        ),
    }
    Some(Order {
        order_id,
        value,
        currency,
        items,
    })
}

fn order_item(c: &mut Checker<'_>, field: &str, v: &Value) -> Option<Item> {
    let m = c.object(field, v)?;
    c.unknown_fields(field, m, &["id", "name", "category", "quantity", "price"]);
    let quantity = match m.get("quantity") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(q) if (0..=1_000_000).contains(&q) => Some(q),
            _ => {
                c.error(
                    &format!("{field}.quantity"),
                    "must be a whole number from 0 to 1000000",
                );
                None
            }
        },
        Some(other) => {
            c.error(
                &format!("{field}.quantity"),
                format!("expected an integer, got {}", kind(other)),
            );
            None
        }
    };
    Some(Item {
        id: c.string(&format!("{field}.id"), m.get("id"), 256),
        name: c.string(&format!("{field}.name"), m.get("name"), 256),
        category: c.string(&format!("{field}.category"), m.get("category"), 256),
        quantity,
        price: c.decimal(&format!("{field}.price"), m.get("price")),
    })
}

fn user(c: &mut Checker<'_>, v: &Value) -> Option<User> {
    let m = c.object("user", v)?;
    c.unknown_fields(
        "user",
        m,
        &[
            "email",
            "phone",
            "first_name",
            "last_name",
            "date_of_birth",
            "gender",
            "city",
            "region",
            "postal_code",
            "country",
            "external_id",
            "ip",
            "user_agent",
        ],
    );
    let email = c.string("user.email", m.get("email"), 320);
    if let Some(e) = &email {
        // RFC 5321/5322 syntax (email_address), with a dotted domain: the
        // platforms match on real mailboxes, never on `user@localhost`.
        let plausible = email_address::EmailAddress::from_str(e)
            .is_ok_and(|a| a.domain().contains('.') && !a.domain().starts_with('['));
        if !plausible && !is_sha256_hex(e) {
            c.error("user.email", "is not an email address or a SHA-256 hash");
        }
    }
    let phone = c.string("user.phone", m.get("phone"), 64);
    if let Some(p) = &phone {
        let digits = p.chars().filter(char::is_ascii_digit).count();
        let allowed = p
            .chars()
            .all(|ch| ch.is_ascii_digit() || " +-().".contains(ch));
        if !is_sha256_hex(p) && (!allowed || !(5..=20).contains(&digits)) {
            c.error(
                "user.phone",
                "is not a phone number (5-20 digits, optionally + ( ) - . and spaces) or a SHA-256 hash",
            );
        }
    }
    let date_of_birth = c.string("user.date_of_birth", m.get("date_of_birth"), 64);
    if let Some(d) = &date_of_birth {
        if !is_sha256_hex(d) && NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() {
            c.error(
                "user.date_of_birth",
                "expected a date as YYYY-MM-DD or a SHA-256 hash",
            );
        }
    }
    let gender = c.string("user.gender", m.get("gender"), 64);
    if let Some(g) = &gender {
        let g = g.to_ascii_lowercase();
        if !is_sha256_hex(&g) && !["f", "m", "female", "male"].contains(&g.as_str()) {
            c.error(
                "user.gender",
                "expected f, m, female, male or a SHA-256 hash",
            );
        }
    }
    let country = c.string("user.country", m.get("country"), 64);
    if let Some(cc) = &country {
        let alpha2 = cc.len() == 2 && cc.chars().all(|ch| ch.is_ascii_alphabetic());
        if !alpha2 && !is_sha256_hex(cc) {
            c.error(
                "user.country",
                "expected an ISO 3166-1 alpha-2 code (e.g. US) or a SHA-256 hash",
            );
        }
    }
    let ip = c.string("user.ip", m.get("ip"), 64);
    if let Some(addr) = &ip {
        if IpAddr::from_str(addr).is_err() {
            c.error("user.ip", "is not an IPv4 or IPv6 address");
        }
    }
    Some(User {
        email,
        phone,
        first_name: c.string("user.first_name", m.get("first_name"), 128),
        last_name: c.string("user.last_name", m.get("last_name"), 128),
        date_of_birth,
        gender,
        city: c.string("user.city", m.get("city"), 128),
        region: c.string("user.region", m.get("region"), 128),
        postal_code: c.string("user.postal_code", m.get("postal_code"), 32),
        country,
        external_id: c.string("user.external_id", m.get("external_id"), 256),
        ip,
        user_agent: c.text("user.user_agent", m.get("user_agent")),
    })
}

fn click_ids(c: &mut Checker<'_>, v: &Value) -> Option<ClickIds> {
    let m = c.object("click_ids", v)?;
    const FIELDS: &[&str] = &[
        "gclid", "gbraid", "wbraid", "fbclid", "fbc", "fbp", "ttclid", "ttp",
    ];
    c.unknown_fields("click_ids", m, FIELDS);
    let mut get = |name: &str| {
        let field = format!("click_ids.{name}");
        let value = c.string(&field, m.get(name), 512)?;
        if value.chars().any(|ch| ch.is_whitespace() || !ch.is_ascii()) {
            c.error(&field, "must be printable ASCII without spaces");
            return None;
        }
        Some(value)
    };
    let ids = ClickIds {
        gclid: get("gclid"),
        gbraid: get("gbraid"),
        wbraid: get("wbraid"),
        fbclid: get("fbclid"),
        fbc: get("fbc"),
        fbp: get("fbp"),
        ttclid: get("ttclid"),
        ttp: get("ttp"),
    };
    Some(ids)
}

fn page(c: &mut Checker<'_>, v: &Value) -> Option<Page> {
    let m = c.object("page", v)?;
    c.unknown_fields("page", m, &["url", "referrer"]);
    let mut url = |name: &str| {
        let field = format!("page.{name}");
        let value = c.string(&field, m.get(name), 2048)?;
        let parsed = url::Url::parse(&value).ok();
        let ok = parsed.is_some_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            c.error(&field, "expected an absolute http(s) URL");
            return None;
        }
        Some(value)
    };
    Some(Page {
        url: url("url"),
        referrer: url("referrer"),
    })
}

fn consent(c: &mut Checker<'_>, v: &Value) -> Option<Consent> {
    let m = c.object("consent", v)?;
    c.unknown_fields(
        "consent",
        m,
        &[
            "ad_storage",
            "ad_user_data",
            "ad_personalization",
            "analytics_storage",
            "tcf",
            "limited_data_use",
        ],
    );
    const STATES: &[&str] = &["granted", "denied"];
    let tcf = c.string("consent.tcf", m.get("tcf"), 8192);
    if let Some(t) = &tcf {
        if !t
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            c.error(
                "consent.tcf",
                "is not a TCF consent string (base64url segments)",
            );
        }
    }
    Some(Consent {
        ad_storage: c.one_of("consent.ad_storage", m.get("ad_storage"), STATES),
        ad_user_data: c.one_of("consent.ad_user_data", m.get("ad_user_data"), STATES),
        ad_personalization: c.one_of(
            "consent.ad_personalization",
            m.get("ad_personalization"),
            STATES,
        ),
        analytics_storage: c.one_of(
            "consent.analytics_storage",
            m.get("analytics_storage"),
            STATES,
        ),
        tcf,
        limited_data_use: c.boolean("consent.limited_data_use", m.get("limited_data_use")),
    })
}

fn pixels(c: &mut Checker<'_>, v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(m) = c.object("pixels", v) else {
        return out;
    };
    for (platform, state) in m {
        let field = format!("pixels.{platform}");
        if Platform::parse(platform).is_none() {
            c.error(&field, "unknown platform (meta, google_ads, tiktok)");
            continue;
        }
        if let Some(s) = c.one_of(&field, Some(state), &["fired", "not_fired"]) {
            out.insert(platform.clone(), s);
        }
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Echoes at most 32 characters of a bad value back, so an error message
/// never carries a whole field (which may be personal data) into logs.
fn clip(s: &str) -> String {
    if s.chars().count() <= 32 {
        s.to_string()
    } else {
        let head: String = s.chars().take(32).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_790_000_000_000;

    fn ctx() -> EventContext<'static> {
        EventContext {
            tenant: "acme",
            default_source: Source::Server,
            required_source: None,
            now_ms: NOW,
            signer: None,
        }
    }

    fn paths(v: Value) -> Vec<String> {
        validate_event(&v, "events[3]", &ctx(), &Limits::default())
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn emails_and_urls_are_checked_by_their_grammars() {
        let check = |user: Value, page: Value| {
            let ev = json!({"event_id": "a", "event_name": "Lead", "user": user, "page": page});
            validate_event(&ev, "", &ctx(), &Limits::default())
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.path)
                .collect::<Vec<_>>()
        };
        let fine = json!({"url": "https://shop.example/a?b=c", "referrer": "http://x.example"});
        for good in [
            "jane@example.com",
            "jane.doe+tag@mail.example.co.uk",
            &"a".repeat(64),
        ] {
            assert!(
                check(json!({"email": good}), fine.clone()).is_empty(),
                "{good}"
            );
        }
        for bad in [
            "jane",
            "jane@",
            "@example.com",
            "jane@localhost",
            "ja ne@example.com",
            "a@@b.com",
        ] {
            assert_eq!(
                check(json!({"email": bad}), fine.clone()),
                ["user.email"],
                "{bad}"
            );
        }
        for bad in [
            "https://",
            "ftp://shop.example/",
            "shop.example/thanks",
            "http://exa mple.com/",
        ] {
            assert_eq!(check(json!({}), json!({"url": bad})), ["page.url"], "{bad}");
        }
    }

    #[test]
    fn a_full_event_maps_onto_the_model() {
        let ev = json!({
            "event_id": "ord-1", "event_name": "Purchase", "event_time": "2026-09-21T10:00:00Z",
            "action_source": "website",
            "order": {"order_id": "1", "value": 129.9, "currency": "eur",
                      "items": [{"id": "sku", "quantity": 2, "price": "64.95"}]},
            "user": {"email": " Jane@Example.com ", "phone": "+1 (650) 555-1212", "country": "US",
                     "ip": "2001:db8::1", "date_of_birth": "1990-02-03", "gender": "f"},
            "click_ids": {"gclid": "abc", "fbp": "fb.1.1.2"},
            "page": {"url": "https://shop.example/thanks"},
            "consent": {"ad_storage": "granted", "limited_data_use": false},
            "pixels": {"meta": "fired"}
        });
        let raw = validate_event(&ev, "", &ctx(), &Limits::default()).unwrap();
        assert_eq!(raw.tenant, "acme");
        let expected = chrono::DateTime::parse_from_rfc3339("2026-09-21T10:00:00Z").unwrap();
        assert_eq!(raw.event_time, expected.timestamp_millis());
        let order = raw.order.unwrap();
        assert_eq!(order.value.as_deref(), Some("129.9"));
        assert_eq!(order.currency.as_deref(), Some("EUR"));
        assert_eq!(order.items[0].price.as_deref(), Some("64.95"));
        assert_eq!(raw.user.unwrap().email.as_deref(), Some("Jane@Example.com"));
        assert_eq!(raw.source, Source::Server);
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let p = paths(json!({
            "event_name": 5,
            "event_time": NOW / 1000 + 3600,
            "order": {"value": "-1", "currency": "EURO"},
            "user": {"email": "x".repeat(400), "ip": "nope"},
            "colour": "red"
        }));
        for want in [
            "events[3].event_id",
            "events[3].event_name",
            "events[3].event_time",
            "events[3].order.value",
            "events[3].order.currency",
            "events[3].user.email",
            "events[3].user.ip",
            "events[3].colour",
        ] {
            assert!(p.contains(&want.to_string()), "missing {want} in {p:?}");
        }
    }

    #[test]
    fn decimals_are_checked_not_floated() {
        for (value, ok) in [
            (json!("10.50"), true),
            (json!(0), true),
            (json!("1e3"), false),
            (json!("12,50"), false),
            (json!("-0.01"), false),
            (json!(true), false),
            (json!("0.1234567"), false),
        ] {
            let ev = json!({"event_id": "a", "event_name": "Purchase",
                            "order": {"value": value, "currency": "USD"}});
            let r = validate_event(&ev, "", &ctx(), &Limits::default());
            assert_eq!(r.is_ok(), ok, "{value}: {r:?}");
        }
    }

    #[test]
    fn milliseconds_are_caught() {
        let p = paths(json!({"event_id": "a", "event_name": "Lead", "event_time": NOW}));
        assert_eq!(p, vec!["events[3].event_time"]);
    }

    #[test]
    fn value_without_currency_is_an_error() {
        let p = paths(json!({"event_id": "a", "event_name": "Purchase", "order": {"value": "1"}}));
        assert_eq!(p, vec!["events[3].order.currency"]);
    }

    #[test]
    fn browser_endpoint_requires_browser_source() {
        let c = EventContext {
            required_source: Some(Source::Browser),
            default_source: Source::Browser,
            ..ctx()
        };
        let ok = validate_event(
            &json!({"event_id": "a", "event_name": "Lead"}),
            "",
            &c,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(ok.source, Source::Browser);
        let err = validate_event(
            &json!({"event_id": "a", "event_name": "Lead", "source": "server"}),
            "",
            &c,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err[0].path, "source");
    }

    #[test]
    fn bad_values_are_clipped_in_messages() {
        let err = validate_event(
            &json!({"event_id": "a", "event_name": "Lead", "order": {"currency": "x".repeat(15)}}),
            "",
            &ctx(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err[0].message.len() < 100, "{}", err[0].message);
    }
}
