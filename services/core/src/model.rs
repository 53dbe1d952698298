//! The conversion model shared by every stage. Field names and shapes mirror
//! the Avro schemas in `schemas/` one to one; a round-trip test per type keeps
//! them in step.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An ad platform postback delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Meta,
    GoogleAds,
    Tiktok,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Meta, Platform::GoogleAds, Platform::Tiktok];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Meta => "meta",
            Platform::GoogleAds => "google_ads",
            Platform::Tiktok => "tiktok",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kafka key of every record of one conversion, at every hop: tenant and
/// event id. Tenant ids cannot contain '/', so the key splits unambiguously.
pub fn conversion_key(tenant: &str, event_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 1 + event_id.len());
    key.extend_from_slice(tenant.as_bytes());
    key.push(b'/');
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// Who reported a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Browser,
    #[default]
    Server,
    Offline,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Browser => "browser",
            Source::Server => "server",
            Source::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "browser" => Some(Source::Browser),
            "server" => Some(Source::Server),
            "offline" => Some(Source::Offline),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Order {
    pub order_id: Option<String>,
    /// Decimal string, never a float.
    pub value: Option<String>,
    pub currency: Option<String>,
    #[serde(default)]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Item {
    pub id: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub quantity: Option<i64>,
    /// Decimal string, never a float.
    pub price: Option<String>,
}

/// Raw personal data as received. Exists only on conversions.raw.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct User {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub gender: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    pub external_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClickIds {
    pub gclid: Option<String>,
    pub gbraid: Option<String>,
    pub wbraid: Option<String>,
    pub fbclid: Option<String>,
    pub fbc: Option<String>,
    pub fbp: Option<String>,
    pub ttclid: Option<String>,
    pub ttp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Page {
    pub url: Option<String>,
    pub referrer: Option<String>,
}

/// Consent as the site reported it (Google Consent Mode v2 flags are
/// "granted" / "denied"; None means not given).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Consent {
    pub ad_storage: Option<String>,
    pub ad_user_data: Option<String>,
    pub ad_personalization: Option<String>,
    pub analytics_storage: Option<String>,
    pub tcf: Option<String>,
    pub limited_data_use: Option<bool>,
}

/// A conversion as accepted by the collector (schema conversion_raw).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionRaw {
    pub tenant: String,
    pub event_id: String,
    pub event_name: String,
    /// Unix milliseconds.
    pub event_time: i64,
    /// Unix milliseconds.
    pub received_at: i64,
    pub source: Source,
    pub action_source: Option<String>,
    pub order: Option<Order>,
    pub user: Option<User>,
    pub click_ids: Option<ClickIds>,
    pub page: Option<Page>,
    pub consent: Option<Consent>,
    /// platform -> "fired" | "not_fired", from browser reports.
    #[serde(default)]
    pub pixels: BTreeMap<String, String>,
}

impl ConversionRaw {
    pub fn key(&self) -> Vec<u8> {
        conversion_key(&self.tenant, &self.event_id)
    }
}

/// Fields sent to platforms verbatim (never hashed).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Client {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub device_type: Option<String>,
    pub os: Option<String>,
    pub browser: Option<String>,
}

/// One platform's normalised identifiers, each the 32-byte SHA-256 digest
/// of the normalised value (binary on the wire: half the size of hex, and
/// these are the bulk of an enriched record). `hex()` gives the form the
/// platforms' APIs take.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlatformIdentifiers {
    pub platform: String,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub email: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub phone: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub first_name: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub last_name: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub date_of_birth: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub gender: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub city: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub region: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub postal_code: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub country: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub external_id: Option<Vec<u8>>,
}

/// Whether `s` already is a SHA-256 digest in hex (either case): clients
/// may send identifiers pre-hashed, and those are never hashed again.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Lowercase hex of a digest, as the platforms' APIs want hashed values.
pub fn hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformDecision {
    pub platform: String,
    pub eligible: bool,
    pub reason: Option<String>,
    pub send_user_data: bool,
    pub send_click_ids: bool,
    pub limited_data_use: bool,
}

/// A conversion after the enricher (schema conversion_enriched).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionEnriched {
    pub tenant: String,
    pub event_id: String,
    pub event_name: String,
    pub event_time: i64,
    pub received_at: i64,
    pub source: Source,
    pub action_source: Option<String>,
    pub order: Option<Order>,
    pub click_ids: Option<ClickIds>,
    pub page: Option<Page>,
    pub client: Option<Client>,
    pub consent: Option<Consent>,
    #[serde(default)]
    pub identifiers: Vec<PlatformIdentifiers>,
    #[serde(default)]
    pub decisions: Vec<PlatformDecision>,
    #[serde(default)]
    pub pixels: BTreeMap<String, String>,
}

impl ConversionEnriched {
    pub fn key(&self) -> Vec<u8> {
        conversion_key(&self.tenant, &self.event_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontEndStatus {
    Fired,
    NotFired,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerSideStatus {
    Eligible,
    NotEligible,
    Duplicate,
    Delivered,
    Rejected,
    Retrying,
    Expired,
    Failed,
    Unknown,
}

/// One change of a conversion's state on one platform (schema delivery_status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    pub tenant: String,
    pub event_id: String,
    pub event_name: String,
    pub platform: String,
    pub stage: String,
    pub front_end: Option<FrontEndStatus>,
    pub server_side: ServerSideStatus,
    pub reason: Option<String>,
    pub attempt: Option<i32>,
    pub next_attempt_at: Option<i64>,
    pub duplicate_of: Option<String>,
    pub reported_by: Option<String>,
    pub platform_request_id: Option<String>,
    pub time: i64,
    /// The conversion itself, on the deduplicator's records (schema v2);
    /// None on the dispatchers' and on v1 records.
    #[serde(default)]
    pub conversion: Option<ConversionSummary>,
}

/// What the status service shows about a conversion (delivery_status v2).
/// Never personal data: the names of the match keys an upload carries, not
/// their values; click ids only as SHA-256 hashes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConversionSummary {
    pub event_time: i64,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub order_id: Option<String>,
    /// browser, server, offline: who reported it.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The identifiers this platform's upload carries (email, phone, gclid,
    /// fbp, ...).
    #[serde(default)]
    pub match_keys: Vec<String>,
    /// Hex SHA-256 of each click id it carried.
    #[serde(default)]
    pub click_id_hashes: Vec<String>,
}

/// The form a click id is kept and searched in (`click_id_hashes`): hex
/// SHA-256 of the id as received.
pub fn click_id_hash(id: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the problem is, e.g. `events[3].order.currency`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A record a stage could not process (schema dead_letter), kept with the
/// original bytes so it can be inspected and replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: String,
    pub reason: String,
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
    pub tenant: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub original_key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde_avro_bytes_opt", default)]
    pub original_value: Option<Vec<u8>>,
    pub time: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
