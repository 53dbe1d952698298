//! Per-platform normalisation and SHA-256 hashing of personal data.
//!
//! The enricher is the last stage that sees raw personal data: it replaces it
//! with the hashes each platform matches on. A hash only matches when both
//! sides normalised the value the same way, so every rule here follows the
//! platform's own documentation (`reference/platform-apis.md` is the
//! authority; where it is silent, the platform's official SDK or API docs are
//! named next to the rule).
//!
//! Errors never carry the raw value: they end up in metrics, logs and dead
//! letters, which must stay free of personal data.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use phonenumber::country::Id as Region;
use phonenumber::Mode;
use postback_core::model::{PlatformIdentifiers, User};
use postback_core::Platform;
use sha2::{Digest, Sha256};
use unicode_normalization::{is_nfc, UnicodeNormalization};

/// An identifier field of a user record, named like the `User` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Email,
    Phone,
    FirstName,
    LastName,
    DateOfBirth,
    Gender,
    City,
    Region,
    PostalCode,
    Country,
    ExternalId,
}

impl Field {
    /// Every field, in the order of the `User` record.
    pub const ALL: [Field; 11] = [
        Field::Email,
        Field::Phone,
        Field::FirstName,
        Field::LastName,
        Field::DateOfBirth,
        Field::Gender,
        Field::City,
        Field::Region,
        Field::PostalCode,
        Field::Country,
        Field::ExternalId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Email => "email",
            Field::Phone => "phone",
            Field::FirstName => "first_name",
            Field::LastName => "last_name",
            Field::DateOfBirth => "date_of_birth",
            Field::Gender => "gender",
            Field::City => "city",
            Field::Region => "region",
            Field::PostalCode => "postal_code",
            Field::Country => "country",
            Field::ExternalId => "external_id",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value is not usable. Never holds (part of) the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("value is empty after normalisation")]
    Empty,
    #[error("not a usable email address")]
    InvalidEmail,
    /// The reason is a fixed text chosen here, so it cannot echo the number.
    #[error("phone number not usable: {0}")]
    InvalidPhone(&'static str),
    #[error("phone number has no country code and no country is known to complete it")]
    PhoneWithoutCountry,
    #[error("date of birth is not a valid YYYY-MM-DD date")]
    InvalidDate,
    #[error("gender is not one of f, m, female, male")]
    InvalidGender,
    #[error("country is not an ISO 3166-1 alpha-2 code")]
    InvalidCountry,
    #[error("the platform does not accept this field")]
    NotAccepted,
}

impl NormalizeError {
    /// Stable snake_case code for metrics labels and dead-letter reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            NormalizeError::Empty => "empty",
            NormalizeError::InvalidEmail => "invalid_email",
            NormalizeError::InvalidPhone(_) => "invalid_phone",
            NormalizeError::PhoneWithoutCountry => "phone_without_country",
            NormalizeError::InvalidDate => "invalid_date",
            NormalizeError::InvalidGender => "invalid_gender",
            NormalizeError::InvalidCountry => "invalid_country",
            NormalizeError::NotAccepted => "field_not_accepted",
        }
    }
}

/// Lowercase hex SHA-256 of the UTF-8 bytes.
pub fn sha256_hex(s: &str) -> String {
    postback_core::model::hex(&Sha256::digest(s.as_bytes()))
}

/// Whether `s` is exactly 64 hex digits (either case), i.e. already a SHA-256.
pub use postback_core::model::is_sha256_hex;

const META_FIELDS: &[Field] = &Field::ALL;
const GOOGLE_ADS_FIELDS: &[Field] = &[
    Field::Email,
    Field::Phone,
    Field::FirstName,
    Field::LastName,
];
const TIKTOK_FIELDS: &[Field] = &[Field::Email, Field::Phone, Field::ExternalId];

/// The fields a platform accepts hashed, in a stable order.
pub fn fields_for(platform: Platform) -> &'static [Field] {
    match platform {
        Platform::Meta => META_FIELDS,
        // Google's address fields other than the names go in plaintext and
        // are out of scope here.
        Platform::GoogleAds => GOOGLE_ADS_FIELDS,
        Platform::Tiktok => TIKTOK_FIELDS,
    }
}

/// Loads libphonenumber's metadata (it is decoded lazily on the first parse,
/// tens of milliseconds) and the region table, so that the first event after
/// start-up does not pay for it. Optional; call it before reporting ready.
pub fn warm_up() {
    let _ = e164("+16502530000", Context::new(Some("US")).region);
}

/// `value` normalised the way `platform` documents it for `field`, NOT hashed.
/// `country` is the ISO alpha-2 country to complete phone numbers and to apply
/// US zip rules (event's user.country, else tenant default), any case.
/// An input that already is 64-hex is returned lowercased as is.
pub fn normalize(
    platform: Platform,
    field: Field,
    value: &str,
    country: Option<&str>,
) -> Result<String, NormalizeError> {
    normalize_in(platform, field, value, Context::new(country))
}

/// normalize + sha256 (pass-through for values that already are hashes).
pub fn hash(
    platform: Platform,
    field: Field,
    value: &str,
    country: Option<&str>,
) -> Result<String, NormalizeError> {
    hash_in(platform, field, value, Context::new(country))
}

/// Every identifier `platform` accepts, hashed, from a raw user record.
/// `country` as above. Unusable values are left out of the result and listed
/// (field, error) in the second element — never with the raw value.
///
/// A field that is absent or blank (only whitespace) is simply absent: it was
/// not provided, so it is not reported as unusable.
pub fn identifiers(
    platform: Platform,
    user: &User,
    country: Option<&str>,
) -> (PlatformIdentifiers, Vec<(Field, NormalizeError)>) {
    // The country argument is parsed once per call, not once per field.
    let ctx = Context::new(country);
    let mut ids = PlatformIdentifiers {
        platform: platform.as_str().to_string(),
        ..PlatformIdentifiers::default()
    };
    let mut dropped = Vec::new();
    for &field in fields_for(platform) {
        let Some(raw) = user_value(user, field) else {
            continue;
        };
        if raw.trim().is_empty() {
            continue;
        }
        match digest_in(platform, field, raw, ctx) {
            Ok(d) => *slot(&mut ids, field) = Some(d.to_vec()),
            Err(e) => dropped.push((field, e)),
        }
    }
    (ids, dropped)
}

fn user_value(user: &User, field: Field) -> Option<&str> {
    match field {
        Field::Email => user.email.as_deref(),
        Field::Phone => user.phone.as_deref(),
        Field::FirstName => user.first_name.as_deref(),
        Field::LastName => user.last_name.as_deref(),
        Field::DateOfBirth => user.date_of_birth.as_deref(),
        Field::Gender => user.gender.as_deref(),
        Field::City => user.city.as_deref(),
        Field::Region => user.region.as_deref(),
        Field::PostalCode => user.postal_code.as_deref(),
        Field::Country => user.country.as_deref(),
        Field::ExternalId => user.external_id.as_deref(),
    }
}

fn slot(ids: &mut PlatformIdentifiers, field: Field) -> &mut Option<Vec<u8>> {
    match field {
        Field::Email => &mut ids.email,
        Field::Phone => &mut ids.phone,
        Field::FirstName => &mut ids.first_name,
        Field::LastName => &mut ids.last_name,
        Field::DateOfBirth => &mut ids.date_of_birth,
        Field::Gender => &mut ids.gender,
        Field::City => &mut ids.city,
        Field::Region => &mut ids.region,
        Field::PostalCode => &mut ids.postal_code,
        Field::Country => &mut ids.country,
        Field::ExternalId => &mut ids.external_id,
    }
}

/// The event's country, parsed once: the libphonenumber region used to
/// complete national phone numbers, and whether US zip rules apply.
#[derive(Debug, Clone, Copy)]
struct Context {
    region: Option<Region>,
    us: bool,
}

impl Context {
    fn new(country: Option<&str>) -> Context {
        let mut code = [0u8; 2];
        let valid = match country.map(|c| c.trim().as_bytes()) {
            Some(&[a, b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
                true
            }
            _ => false,
        };
        if !valid {
            return Context {
                region: None,
                us: false,
            };
        }
        // An unknown code means "no region" rather than an error: the
        // country may still be usable for other fields, and a phone with '+'
        // needs no region.
        let region = region_table()[usize::from(code[0] - b'A') * 26 + usize::from(code[1] - b'A')];
        Context {
            region,
            us: &code == b"US",
        }
    }
}

/// Every two-letter code -> libphonenumber region, built once. The crate's
/// `FromStr` for regions is a long chain of string comparisons (about a
/// microsecond), which `identifiers` would otherwise pay once per platform
/// per event.
fn region_table() -> &'static [Option<Region>; 26 * 26] {
    static TABLE: OnceLock<[Option<Region>; 26 * 26]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [None; 26 * 26];
        for (i, slot) in table.iter_mut().enumerate() {
            // i < 676, so both letters are in 'A'..='Z'.
            let code = [b'A' + (i / 26) as u8, b'A' + (i % 26) as u8];
            *slot = std::str::from_utf8(&code)
                .ok()
                .and_then(|s| s.parse::<Region>().ok());
        }
        table
    })
}

fn hash_in(
    platform: Platform,
    field: Field,
    value: &str,
    ctx: Context,
) -> Result<String, NormalizeError> {
    let normalized = normalize_in(platform, field, value, ctx)?;
    // A pre-hashed input comes back from normalize_in as its lowercase self:
    // hashing it again would make it unmatchable.
    if is_sha256_hex(&normalized) && is_sha256_hex(value.trim()) {
        return Ok(normalized);
    }
    Ok(sha256_hex(&normalized))
}

/// Like `hash_in`, as the 32 raw bytes of the digest.
fn digest_in(
    platform: Platform,
    field: Field,
    value: &str,
    ctx: Context,
) -> Result<[u8; 32], NormalizeError> {
    let normalized = normalize_in(platform, field, value, ctx)?;
    if is_sha256_hex(&normalized) && is_sha256_hex(value.trim()) {
        let mut out = [0u8; 32];
        for (i, pair) in normalized.as_bytes().chunks_exact(2).enumerate() {
            out[i] = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        return Ok(out);
    }
    Ok(Sha256::digest(normalized.as_bytes()).into())
}

/// The value of one (already validated) hex digit.
fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn normalize_in(
    platform: Platform,
    field: Field,
    value: &str,
    ctx: Context,
) -> Result<String, NormalizeError> {
    if !fields_for(platform).contains(&field) {
        return Err(NormalizeError::NotAccepted);
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(NormalizeError::Empty);
    }
    // platform-apis.md (Meta): "Values that already are 64-hex are not hashed
    // again". Applied to every platform: the collector accepts pre-hashed
    // identifiers and they must survive untouched (only lowercased, as every
    // platform wants lowercase hex).
    if is_sha256_hex(trimmed) {
        return Ok(trimmed.to_ascii_lowercase());
    }
    let out = match (platform, field) {
        (_, Field::Email) => email(trimmed, platform == Platform::GoogleAds)?,
        (Platform::Meta, Field::Phone) => {
            // Meta: digits only, country code included, no '+'.
            let mut e164 = e164_memoized(trimmed, ctx)?;
            e164.remove(0);
            e164
        }
        // Google Ads and TikTok: E.164 with the '+'.
        (_, Field::Phone) => e164_memoized(trimmed, ctx)?,
        (Platform::GoogleAds, Field::FirstName) => google_first_name(trimmed),
        (Platform::GoogleAds, Field::LastName) => google_last_name(trimmed),
        (_, Field::FirstName | Field::LastName) => meta_name(trimmed),
        (_, Field::DateOfBirth) => date_of_birth(trimmed)?,
        (_, Field::Gender) => gender(trimmed)?,
        (_, Field::City) => city(trimmed),
        (_, Field::Region) => region(trimmed),
        (_, Field::PostalCode) => postal_code(trimmed, ctx.us),
        (_, Field::Country) => country(trimmed)?,
        // Opaque id: trimmed only, case kept (ids are often case-sensitive).
        (_, Field::ExternalId) => trimmed.to_string(),
    };
    if out.is_empty() {
        return Err(NormalizeError::Empty);
    }
    Ok(out)
}

// ---------------------------------------------------------------- email ---

/// Trim + lowercase (all three platforms). For Google Ads, dots are removed
/// from the local part of gmail.com / googlemail.com addresses.
///
/// Documented choice: Google's docs say to remove those dots, while the
/// official code sample only trims and lowercases (platform-apis.md). We
/// follow the docs: Gmail ignores dots, so `j.doe@` and `jdoe@` are the same
/// mailbox and Google's own side is documented to be normalised that way.
/// Meta and TikTok keep the dots (their docs say trim + lowercase only).
/// `+tag` suffixes are kept everywhere: no platform documents removing them.
fn email(trimmed: &str, google: bool) -> Result<String, NormalizeError> {
    let mut out = lowercase(trimmed);
    let at = match out.rfind('@') {
        Some(at) => at,
        None => return Err(NormalizeError::InvalidEmail),
    };
    let (local, domain) = (&out[..at], &out[at + 1..]);
    // Deliberately loose (international addresses exist), but enough to
    // keep obvious junk such as "n/a" or "john doe@x" out of the hashes.
    let usable = !local.is_empty()
        && !local.contains('@')
        && domain.len() >= 3
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !out.chars().any(|c| c.is_whitespace() || c.is_control());
    if !usable {
        return Err(NormalizeError::InvalidEmail);
    }
    if google && (domain == "gmail.com" || domain == "googlemail.com") && local.contains('.') {
        let local: String = local.chars().filter(|&c| c != '.').collect();
        if local.is_empty() {
            return Err(NormalizeError::InvalidEmail);
        }
        out = format!("{local}@{}", &out[at + 1..]);
    }
    Ok(out)
}

// ---------------------------------------------------------------- phone ---

/// Longest input considered a phone number at all; bounds the work done on
/// junk before libphonenumber sees it.
const MAX_PHONE_INPUT: usize = 48;

struct PhoneMemo {
    input: String,
    region: Option<Region>,
    result: Result<String, NormalizeError>,
}

thread_local! {
    /// The last phone number parsed on this thread. The enricher calls
    /// `identifiers` once per platform for the same user, and all three
    /// platforms want the phone: this one-entry memo makes that one
    /// libphonenumber parse per event instead of three. It holds one raw
    /// number in this process's memory until the next event replaces it,
    /// which is no wider than the record being processed.
    static LAST_PHONE: RefCell<Option<PhoneMemo>> = const { RefCell::new(None) };
}

fn e164_memoized(trimmed: &str, ctx: Context) -> Result<String, NormalizeError> {
    let cached = LAST_PHONE.with(|memo| {
        memo.borrow()
            .as_ref()
            .filter(|m| m.region == ctx.region && m.input == trimmed)
            .map(|m| m.result.clone())
    });
    if let Some(result) = cached {
        return result;
    }
    let result = e164(trimmed, ctx.region);
    LAST_PHONE.with(|memo| {
        let mut memo = memo.borrow_mut();
        match memo.as_mut() {
            Some(m) => {
                m.input.clear();
                m.input.push_str(trimmed);
                m.region = ctx.region;
                m.result = result.clone();
            }
            None => {
                *memo = Some(PhoneMemo {
                    input: trimmed.to_string(),
                    region: ctx.region,
                    result: result.clone(),
                })
            }
        }
    });
    result
}

/// The number in E.164 (`+` and digits), parsed and validated by
/// libphonenumber.
///
/// - Separators (space, `-`, `.`, `/`, parentheses) are dropped; any other
///   character (letters, extensions, `#`, `*`) makes the number unusable:
///   an extension's digits would otherwise end up in the hash.
/// - A leading `00` is the international prefix (Meta: "no leading 00";
///   `0033 6 12 34 56 78` is +33 6 12 34 56 78), whatever the country.
/// - Without `+`/`00`, the number is read as dialled in `region` (national
///   format completed with its country code; libphonenumber also recognises
///   the region's own country code and IDD such as US `011`). If it is not a
///   valid number there, or no region is known, it is read as international
///   digits without the `+`, which is the format Meta asks for: this is what
///   makes Meta's own output re-normalise to the same number.
/// - libphonenumber must say the number is valid (not merely well formed).
fn e164(trimmed: &str, region: Option<Region>) -> Result<String, NormalizeError> {
    if trimmed.len() > MAX_PHONE_INPUT {
        return Err(NormalizeError::InvalidPhone("too long"));
    }
    // '+' then at most 17 digits fits any E.164 number with an IDD prefix.
    let mut buf = String::with_capacity(24);
    buf.push('+');
    let mut plus = false;
    for c in trimmed.chars() {
        match c {
            '0'..='9' => buf.push(c),
            '+' if !plus && buf.len() == 1 => plus = true,
            ' ' | '-' | '.' | '/' | '(' | ')' | '\t' | '\u{a0}' => {}
            _ => return Err(NormalizeError::InvalidPhone("unexpected character")),
        }
    }
    let digits = &buf[1..];
    if digits.is_empty() {
        return Err(NormalizeError::InvalidPhone("no digits"));
    }
    if digits.len() > 17 {
        return Err(NormalizeError::InvalidPhone("too long"));
    }
    if plus {
        return parse_valid(None, &buf);
    }
    if let Some(idd) = digits.strip_prefix("00") {
        let intl = format!("+{idd}");
        return parse_valid(None, &intl);
    }
    if let Some(region) = region {
        match parse_valid(Some(region), digits) {
            Ok(e164) => return Ok(e164),
            // A trunk '0' marks a national number: no international reading.
            Err(e) if digits.starts_with('0') => return Err(e),
            Err(_) => {}
        }
    } else if digits.starts_with('0') {
        return Err(NormalizeError::PhoneWithoutCountry);
    }
    parse_valid(None, &buf).map_err(|e| match (region, e) {
        (None, NormalizeError::InvalidPhone(_)) => NormalizeError::PhoneWithoutCountry,
        (_, e) => e,
    })
}

/// libphonenumber parse + validity check + E.164 formatting.
fn parse_valid(region: Option<Region>, number: &str) -> Result<String, NormalizeError> {
    // The Rust port has had panics on odd inputs (unwraps in its parser and
    // validator, e.g. whisperfish/rust-phonenumber#32, #43). Input here is
    // already reduced to digits and '+', but one bad record must never take
    // the partition down, so a panic is turned into "not usable".
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let parsed = phonenumber::parse(region, number).ok()?;
        if !parsed.is_valid() {
            return Some(Err("not a valid number"));
        }
        Some(Ok(parsed.format().mode(Mode::E164).to_string()))
    }));
    match outcome {
        Ok(Some(Ok(e164))) if e164.starts_with('+') && e164.len() > 1 => Ok(e164),
        Ok(Some(Ok(_))) => Err(NormalizeError::InvalidPhone("not a valid number")),
        Ok(Some(Err(reason))) => Err(NormalizeError::InvalidPhone(reason)),
        Ok(None) => Err(NormalizeError::InvalidPhone("not parseable")),
        Err(_) => Err(NormalizeError::InvalidPhone("not parseable")),
    }
}

// ---------------------------------------------------------------- names ---

/// Meta fn / ln. platform-apis.md: "lowercase, no punctuation, UTF-8".
/// Letters with accents are kept (UTF-8, NFC so that a decomposed "é" and a
/// composed one hash the same). Whitespace is removed everywhere, internal
/// spaces included ("Mary Ann" -> "maryann"): that is what Meta's official
/// normaliser does (facebook/capi-param-builder `getNormalizedName`:
/// lowercase + strip `whitespace_and_punctuation`); the reference does not
/// say to keep them.
fn meta_name(trimmed: &str) -> String {
    clean(trimmed, is_space_or_punct)
}

/// Google Ads first name. Google Ads API `OfflineUserAddressInfo.hashed_first_name`:
/// "Lowercase all characters; Remove any extra spaces before, after, and in
/// between" -> lowercase, trimmed, internal whitespace runs collapsed to one
/// space; punctuation kept (the doc does not remove it for first names).
fn google_first_name(trimmed: &str) -> String {
    collapse_spaces(&clean(trimmed, |c| c.is_control()))
}

/// Google Ads last name. `OfflineUserAddressInfo.hashed_last_name`: "lower
/// case only and no punctuation" -> lowercase, punctuation removed, spaces
/// trimmed and collapsed as for the first name.
fn google_last_name(trimmed: &str) -> String {
    collapse_spaces(&clean(trimmed, |c| c.is_control() || is_punct(c)))
}

/// Meta ct. platform-apis.md: "lowercase, no punctuation/spaces/digits".
/// Accented letters kept (UTF-8, NFC), like the names.
fn city(trimmed: &str) -> String {
    clean(trimmed, |c| is_space_or_punct(c) || c.is_numeric())
}

/// Meta st. platform-apis.md: "2-letter code lowercase". A US state or
/// Canadian province written out ("California", "New York", "Québec") is
/// mapped to its code, as Meta's official normaliser does
/// (facebook/capi-param-builder `getNormalizedState`, exact name matches
/// only here). Anything else: lowercase, punctuation/spaces/digits removed
/// (digits too: facebook-python-business-sdk strips `[0-9.\s\-()]` for st).
fn region(trimmed: &str) -> String {
    let cleaned = clean(trimmed, |c| is_space_or_punct(c) || c.is_numeric());
    match STATES.binary_search_by(|(name, _)| (*name).cmp(cleaned.as_str())) {
        Ok(i) => STATES[i].1.to_string(),
        Err(_) => cleaned,
    }
}

/// Full names (lowercase, no spaces/punctuation, accents kept) -> code.
/// US states, DC, and Canadian provinces/territories. Sorted for binary search
/// (a unit test checks the order).
static STATES: &[(&str, &str)] = &[
    ("alabama", "al"),
    ("alaska", "ak"),
    ("alberta", "ab"),
    ("arizona", "az"),
    ("arkansas", "ar"),
    ("britishcolumbia", "bc"),
    ("california", "ca"),
    ("colorado", "co"),
    ("connecticut", "ct"),
    ("delaware", "de"),
    ("districtofcolumbia", "dc"),
    ("florida", "fl"),
    ("georgia", "ga"),
    ("hawaii", "hi"),
    ("idaho", "id"),
    ("illinois", "il"),
    ("indiana", "in"),
    ("iowa", "ia"),
    ("kansas", "ks"),
    ("kentucky", "ky"),
    ("louisiana", "la"),
    ("maine", "me"),
    ("manitoba", "mb"),
    ("maryland", "md"),
    ("massachusetts", "ma"),
    ("michigan", "mi"),
    ("minnesota", "mn"),
    ("mississippi", "ms"),
    ("missouri", "mo"),
    ("montana", "mt"),
    ("nebraska", "ne"),
    ("nevada", "nv"),
    ("newbrunswick", "nb"),
    ("newfoundlandandlabrador", "nl"),
    ("newhampshire", "nh"),
    ("newjersey", "nj"),
    ("newmexico", "nm"),
    ("newyork", "ny"),
    ("northcarolina", "nc"),
    ("northdakota", "nd"),
    ("northwestterritories", "nt"),
    ("novascotia", "ns"),
    ("nunavut", "nu"),
    ("ohio", "oh"),
    ("oklahoma", "ok"),
    ("ontario", "on"),
    ("oregon", "or"),
    ("pennsylvania", "pa"),
    ("princeedwardisland", "pe"),
    ("quebec", "qc"),
    ("québec", "qc"),
    ("rhodeisland", "ri"),
    ("saskatchewan", "sk"),
    ("southcarolina", "sc"),
    ("southdakota", "sd"),
    ("tennessee", "tn"),
    ("texas", "tx"),
    ("utah", "ut"),
    ("vermont", "vt"),
    ("virginia", "va"),
    ("washington", "wa"),
    ("westvirginia", "wv"),
    ("wisconsin", "wi"),
    ("wyoming", "wy"),
    ("yukon", "yt"),
];

/// Meta zp. platform-apis.md: "lowercase, no spaces or dash, US first 5
/// digits". US rule applied when the event's country is US and the value
/// starts with 5 digits (zip or zip+4); otherwise, and for every other
/// country, only the generic rule (a foreign postcode on a US-default tenant
/// must not be cut).
fn postal_code(trimmed: &str, us: bool) -> String {
    let cleaned = clean(trimmed, |c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '-' | '\u{2010}'..='\u{2015}' | '\u{2212}')
    });
    if us {
        let b = cleaned.as_bytes();
        if b.len() >= 5 && b.iter().all(u8::is_ascii_digit) {
            return cleaned[..5].to_string();
        }
    }
    cleaned
}

// ------------------------------------------------------- other fields ---

/// Meta db. platform-apis.md: YYYYMMDD. Input YYYY-MM-DD (what the collector
/// validates) or already YYYYMMDD; the date must exist in the calendar.
fn date_of_birth(trimmed: &str) -> Result<String, NormalizeError> {
    let b = trimmed.as_bytes();
    let (y, m, d) = match b.len() {
        10 if b[4] == b'-' && b[7] == b'-' => (&b[0..4], &b[5..7], &b[8..10]),
        8 => (&b[0..4], &b[4..6], &b[6..8]),
        _ => return Err(NormalizeError::InvalidDate),
    };
    let num = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (Some(year), Some(month), Some(day)) = (num(y), num(m), num(d)) else {
        return Err(NormalizeError::InvalidDate);
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(NormalizeError::InvalidDate),
    };
    if year < 1000 || day == 0 || day > days {
        return Err(NormalizeError::InvalidDate);
    }
    let mut out = String::with_capacity(8);
    out.extend(
        [y, m, d]
            .iter()
            .flat_map(|p| p.iter().map(|&c| char::from(c))),
    );
    Ok(out)
}

/// Meta ge. platform-apis.md: "f" | "m". Accepts f/m/female/male, any case.
fn gender(trimmed: &str) -> Result<String, NormalizeError> {
    let g = if trimmed.eq_ignore_ascii_case("f") || trimmed.eq_ignore_ascii_case("female") {
        "f"
    } else if trimmed.eq_ignore_ascii_case("m") || trimmed.eq_ignore_ascii_case("male") {
        "m"
    } else {
        return Err(NormalizeError::InvalidGender);
    };
    Ok(g.to_string())
}

/// Meta country. platform-apis.md: "ISO alpha-2 lowercase (hashed)". Only
/// assigned ISO 3166-1 alpha-2 codes (plus XK, which libphonenumber and CLDR
/// use for Kosovo); country names are not guessed.
fn country(trimmed: &str) -> Result<String, NormalizeError> {
    match trimmed.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            let code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
            // The list is sorted (a unit test checks it): binary search.
            let list = ISO_ALPHA2.as_bytes();
            let (mut lo, mut hi) = (0, list.len() / 2);
            let mut known = false;
            while lo < hi {
                let mid = (lo + hi) / 2;
                match list[2 * mid..2 * mid + 2].cmp(code.as_slice()) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => {
                        known = true;
                        break;
                    }
                }
            }
            if known {
                Ok(trimmed.to_ascii_lowercase())
            } else {
                Err(NormalizeError::InvalidCountry)
            }
        }
        _ => Err(NormalizeError::InvalidCountry),
    }
}

/// ISO 3166-1 alpha-2 officially assigned codes (249) + XK.
const ISO_ALPHA2: &str = concat!(
    "ADAEAFAGAIALAMAOAQARASATAUAWAXAZ",
    "BABBBDBEBFBGBHBIBJBLBMBNBOBQBRBSBTBVBWBYBZ",
    "CACCCDCFCGCHCICKCLCMCNCOCRCUCVCWCXCYCZ",
    "DEDJDKDMDODZ",
    "ECEEEGEHERESET",
    "FIFJFKFMFOFR",
    "GAGBGDGEGFGGGHGIGLGMGNGPGQGRGSGTGUGWGY",
    "HKHMHNHRHTHU",
    "IDIEILIMINIOIQIRISIT",
    "JEJMJOJP",
    "KEKGKHKIKMKNKPKRKWKYKZ",
    "LALBLCLILKLRLSLTLULVLY",
    "MAMCMDMEMFMGMHMKMLMMMNMOMPMQMRMSMTMUMVMWMXMYMZ",
    "NANCNENFNGNINLNONPNRNUNZ",
    "OM",
    "PAPEPFPGPHPKPLPMPNPRPSPTPWPY",
    "QA",
    "RERORSRURW",
    "SASBSCSDSESGSHSISJSKSLSMSNSOSRSSSTSVSXSYSZ",
    "TCTDTFTGTHTJTKTLTMTNTOTRTTTVTWTZ",
    "UAUGUMUSUYUZ",
    "VAVCVEVGVIVNVU",
    "WFWS",
    "XK",
    "YEYT",
    "ZAZMZW",
);

// -------------------------------------------------------------- helpers ---

/// Unicode lowercase, with an allocation-light path for ASCII.
fn lowercase(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// NFC, lowercase, and every char for which `drop` holds removed; the result
/// is NFC. ASCII input (most of the traffic) skips the Unicode work.
///
/// NFC comes first so that canonically equivalent inputs (decomposed "é" vs
/// composed) are identical before anything else, and so that singletons that
/// NFC maps onto punctuation (U+037E GREEK QUESTION MARK -> ';') are removed.
/// Removing a char can leave a base letter next to a combining mark that was
/// separated from it, so the result is re-composed when it is not NFC; that
/// keeps the function idempotent.
fn clean(s: &str, drop: impl Fn(char) -> bool) -> String {
    if s.is_ascii() {
        let mut out = String::with_capacity(s.len());
        out.extend(
            s.chars()
                .filter(|&c| !drop(c))
                .map(|c| c.to_ascii_lowercase()),
        );
        return out;
    }
    let composed: String = s.nfc().collect();
    let lower = composed.to_lowercase();
    let out: String = lower.chars().filter(|&c| !drop(c)).collect();
    if is_nfc(&out) {
        out
    } else {
        out.nfc().collect()
    }
}

/// Trim and collapse every whitespace run to one ASCII space.
fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn is_space_or_punct(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_punct(c)
}

/// Punctuation for the "no punctuation" rules: ASCII punctuation (the exact
/// set Meta's normaliser strips: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~), plus the
/// common non-ASCII punctuation that real names and cities carry (typographic
/// apostrophes and dashes, guillemets, inverted marks, CJK and full-width
/// punctuation) and invisible format characters that would silently change a
/// hash (soft hyphen, zero-width space, word joiner, BOM). Letters, marks and
/// digits of every script are kept.
fn is_punct(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    matches!(
        c,
        '\u{a1}'
            | '\u{a7}'
            | '\u{ab}'
            | '\u{ad}'
            | '\u{b4}'
            | '\u{b6}'
            | '\u{b7}'
            | '\u{bb}'
            | '\u{bf}'
            | '\u{200b}'
            | '\u{2010}'..='\u{2027}'
            | '\u{2030}'..='\u{205e}'
            | '\u{2060}'
            | '\u{2212}'
            | '\u{3001}'..='\u{3003}'
            | '\u{3008}'..='\u{3011}'
            | '\u{3014}'..='\u{301f}'
            | '\u{feff}'
            | '\u{ff01}'..='\u{ff0f}'
            | '\u{ff1a}'..='\u{ff20}'
            | '\u{ff3b}'..='\u{ff40}'
            | '\u{ff5b}'..='\u{ff65}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_sorted_for_binary_search() {
        assert!(STATES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn iso_list_has_every_assigned_code_once() {
        let codes: Vec<&[u8]> = ISO_ALPHA2.as_bytes().chunks_exact(2).collect();
        assert_eq!(codes.len(), 250, "249 ISO codes + XK");
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
    }

    #[test]
    fn field_names_match_user_fields() {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            [
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
                "external_id"
            ]
        );
    }

    #[test]
    fn memo_does_not_leak_across_countries() {
        let fr = Context::new(Some("FR"));
        let us = Context::new(Some("us"));
        assert_eq!(
            e164_memoized("06 12 34 56 78", fr).as_deref(),
            Ok("+33612345678")
        );
        // Same digits, different country: must not reuse the FR answer.
        assert!(e164_memoized("06 12 34 56 78", us).is_err());
        assert_eq!(
            e164_memoized("06 12 34 56 78", fr).as_deref(),
            Ok("+33612345678")
        );
    }

    #[test]
    fn phone_errors_never_echo_the_number() {
        for bad in ["12", "06 12 34 56 78 ext 9", "+1 555", "0612345678"] {
            let e = normalize(Platform::Meta, Field::Phone, bad, None).unwrap_err();
            let text = e.to_string();
            assert!(
                !text.contains(bad) && !text.chars().any(|c| c.is_ascii_digit()),
                "{text}"
            );
        }
    }

    #[test]
    fn clean_is_nfc_after_removing_a_separator() {
        // "e", "-", combining acute: removing the hyphen joins e + U+0301.
        let out = meta_name("e-\u{301}");
        assert_eq!(out, "\u{e9}");
        assert_eq!(meta_name(&out), out);
    }

    #[test]
    fn dob_rejects_impossible_dates() {
        for bad in [
            "1990-02-30",
            "1990-13-01",
            "1990-00-10",
            "19900230",
            "1990/02/03",
            "1990-2-3",
        ] {
            assert_eq!(
                date_of_birth(bad),
                Err(NormalizeError::InvalidDate),
                "{bad}"
            );
        }
        assert_eq!(date_of_birth("2000-02-29").as_deref(), Ok("20000229"));
        assert_eq!(
            date_of_birth("1900-02-29"),
            Err(NormalizeError::InvalidDate)
        );
    }
}
