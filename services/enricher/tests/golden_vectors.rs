//! Golden vectors for the per-platform normalisation and hashing rules.
//!
//! Expected normalised values come from the platforms' documented examples
//! (reference/platform-apis.md) and the rules cited in `normalize.rs`. Every
//! expected SHA-256 was computed independently of the code under test, with
//! `printf '%s' 'value' | sha256sum`, and pasted here as a literal.

use postback_core::model::{hex, User};
use postback_core::Platform::{self, GoogleAds, Meta, Tiktok};
use postback_enricher::normalize::{
    fields_for, hash, identifiers, is_sha256_hex, normalize, sha256_hex, Field, NormalizeError,
};

struct Vector {
    platform: Platform,
    field: Field,
    input: &'static str,
    country: Option<&'static str>,
    normalized: &'static str,
    sha256: &'static str,
}

const fn v(
    platform: Platform,
    field: Field,
    input: &'static str,
    country: Option<&'static str>,
    normalized: &'static str,
    sha256: &'static str,
) -> Vector {
    Vector {
        platform,
        field,
        input,
        country,
        normalized,
        sha256,
    }
}

// sha256 of the normalised values (printf '%s' VALUE | sha256sum).
const H_16505551212: &str = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176";
const H_PLUS_16505551212: &str = "1e231c66011e7a2d867a9cfae267a6aff103cf4913640b6e71a99850fc0ffbc8";
const H_JOHN_DOE_EXAMPLE: &str = "836f82db99121b3481011f16b49dfa5fbc714a0d1b1b9f784a1ebbbf5b39577f";
const H_JDOE_GMAIL: &str = "910789803908d9ab8a57b28ff0af7ab81b9607356aef6f18d8499eb1489ed8ab";
const H_J_DOT_DOE_GMAIL: &str = "3ce6f3866c13320081cd44f40402527b94f4c2ef24ea1ee163e83650b8f04d01";
const H_JOHNDOE_GOOGLEMAIL: &str =
    "f07280f43150f779598094600662ad3c94d7c0a78c78b15c4056e4a38df260b9";
const H_HELENEMARIE: &str = "95e1cc74bc490f2fbfdcfe8d1fe93e94025f8f666a350a5931a0f3bff367eb6c";
const H_HELENE_DASH_MARIE: &str =
    "e494023dcaaacc4a4e1f033946d54ff338d37b31d7cdb96eae3bafe6a663d4ba";
const H_OBRIEN: &str = "b4cb6cb33fe4b865868de825023a1e2790dc12ac01ecc8d7c5afe8254071c8ba";
const H_MARYANN: &str = "16b3f07f0ec2f9dd127b71dc2e6c791b7d93116a1c3bc99d057eaa7a8a077e73";
const H_MARY_SPACE_ANN: &str = "343b97011010c3549fe7fcd6c226ed9431ea37b0b77ed78f6300a0098925faf1";
const H_SANFRANCISCOCA: &str = "04a5bc7a752897850faf78d33747b4280560e4e52fdb3ff3c4fbdc7ec0ac46de";
const H_SAINTETIENNE: &str = "bb35a91d6f2bd7ba807fdd240cc838bdd3b20fe1a6fdedba60d941fbe8d5c10f";
const H_CA: &str = "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126";
const H_NY: &str = "1b06e2003f8420d6fa42badd8f77ec0f706b976b7a48b13c567dc5a559681683";
const H_ILEDEFRANCE: &str = "7f2f97f2a36f4cae0d099b382c08f83ec00532733befa7a2831942ab70360a48";
const H_94025: &str = "b9a9cf3cd3723a2e91b7c23ecf68456e872b6e5d86e5cab7f3d45a7302da32c7";
const H_SW1A1AA: &str = "830e1d4b9838bab1f5c2acdb23e0b502ff13a9832c4632e8d67a1d43d3b7f614";
const H_33612345678: &str = "8a3e7886c9335e82e02299fa3e87b46e2de3b0c63d56003e30a5029394a47661";
const H_PLUS_33612345678: &str = "42d573cfc315801d4cd8eddd5416b416a0bf298b9b9e12d6b07442c91db42bd8";
const H_442079460958: &str = "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823";
const H_PLUS_442079460958: &str =
    "f0bf0228144d9fe2bdf1da2d8ca698f17bf1410ee688b075c27062e47b6f0b6d";
const H_19900215: &str = "36566fc0c3677614b27338b68dfc3b9d85a0814f37217e652665ef7d786a8d77";
const H_F: &str = "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111";
const H_M: &str = "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a";
const H_FR: &str = "67ad8f41a7bb0a18c45f3efd8f6a32bdcd832bcf8f3f2eb44006c03d53076e18";
const H_US: &str = "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621";
const H_EXTERNAL_ID: &str = "fcd7a02cabb04625c20e2ce458dc2f0afa57e7be03a0ebf3894d1490342a7b93";

/// H_JOHN_DOE_EXAMPLE in upper case: a client that hashed itself.
const PREHASHED_UPPER: &str = "836F82DB99121B3481011F16B49DFA5FBC714A0D1B1B9F784A1EBBBF5B39577F";

/// "Hélène-Marie" decomposed (NFD): e + U+0301, e + U+0300.
const HELENE_NFD: &str = "  He\u{301}le\u{300}ne-Marie ";
/// "Hélène-Marie" precomposed (NFC).
const HELENE_NFC: &str = "  H\u{e9}l\u{e8}ne-Marie ";

#[rustfmt::skip]
const VECTORS: &[Vector] = &[
    // Phone: Meta digits with country code, no '+'; Google/TikTok E.164 with '+'.
    v(Meta, Field::Phone, "(650)555-1212", Some("US"), "16505551212", H_16505551212),
    v(GoogleAds, Field::Phone, "(650)555-1212", Some("US"), "+16505551212", H_PLUS_16505551212),
    v(Tiktok, Field::Phone, "(650)555-1212", Some("us"), "+16505551212", H_PLUS_16505551212),
    v(Meta, Field::Phone, "+1 650-555-1212", None, "16505551212", H_16505551212),
    v(Meta, Field::Phone, "16505551212", Some("US"), "16505551212", H_16505551212),
    // National number completed from the event's country.
    v(Meta, Field::Phone, "06 12 34 56 78", Some("FR"), "33612345678", H_33612345678),
    v(GoogleAds, Field::Phone, "06 12 34 56 78", Some("FR"), "+33612345678", H_PLUS_33612345678),
    v(Tiktok, Field::Phone, "06.12.34.56.78", Some("fr"), "+33612345678", H_PLUS_33612345678),
    // Leading 00 international prefix, whatever the event's country.
    v(Meta, Field::Phone, "0033 6 12 34 56 78", Some("FR"), "33612345678", H_33612345678),
    v(Meta, Field::Phone, "0033 6 12 34 56 78", Some("US"), "33612345678", H_33612345678),
    v(GoogleAds, Field::Phone, "0033 6 12 34 56 78", None, "+33612345678", H_PLUS_33612345678),
    // '+' number on an event from another country; UK trunk "(0)" dropped.
    v(GoogleAds, Field::Phone, "+33 6 12 34 56 78", Some("US"), "+33612345678", H_PLUS_33612345678),
    v(Meta, Field::Phone, "+44 (0)20 7946 0958", Some("GB"), "442079460958", H_442079460958),
    v(Tiktok, Field::Phone, "020 7946 0958", Some("GB"), "+442079460958", H_PLUS_442079460958),
    // Email: trim + lowercase everywhere.
    v(Meta, Field::Email, "  John.Doe@Example.COM ", None, "john.doe@example.com", H_JOHN_DOE_EXAMPLE),
    v(GoogleAds, Field::Email, "  John.Doe@Example.COM ", None, "john.doe@example.com", H_JOHN_DOE_EXAMPLE),
    v(Tiktok, Field::Email, "  John.Doe@Example.COM ", None, "john.doe@example.com", H_JOHN_DOE_EXAMPLE),
    // Google: dots removed from gmail.com / googlemail.com local parts; Meta/TikTok keep them.
    v(GoogleAds, Field::Email, "J.Doe@gmail.com", None, "jdoe@gmail.com", H_JDOE_GMAIL),
    v(GoogleAds, Field::Email, "John.Doe@GoogleMail.com", None, "johndoe@googlemail.com", H_JOHNDOE_GOOGLEMAIL),
    v(Meta, Field::Email, "J.Doe@gmail.com", None, "j.doe@gmail.com", H_J_DOT_DOE_GMAIL),
    v(Tiktok, Field::Email, "J.Doe@gmail.com", None, "j.doe@gmail.com", H_J_DOT_DOE_GMAIL),
    // Already hashed: lowercased, never hashed again (any field, any platform).
    v(Meta, Field::Email, PREHASHED_UPPER, None, H_JOHN_DOE_EXAMPLE, H_JOHN_DOE_EXAMPLE),
    v(GoogleAds, Field::Phone, PREHASHED_UPPER, Some("US"), H_JOHN_DOE_EXAMPLE, H_JOHN_DOE_EXAMPLE),
    v(Tiktok, Field::ExternalId, PREHASHED_UPPER, None, H_JOHN_DOE_EXAMPLE, H_JOHN_DOE_EXAMPLE),
    v(Meta, Field::DateOfBirth, H_19900215, None, H_19900215, H_19900215),
    // Meta names: NFC, lowercase, no punctuation, no whitespace; accents kept.
    v(Meta, Field::FirstName, HELENE_NFC, None, "hélènemarie", H_HELENEMARIE),
    v(Meta, Field::FirstName, HELENE_NFD, None, "hélènemarie", H_HELENEMARIE),
    v(Meta, Field::LastName, " O'Brien ", None, "obrien", H_OBRIEN),
    v(Meta, Field::LastName, "O\u{2019}Brien.", None, "obrien", H_OBRIEN),
    v(Meta, Field::FirstName, "Mary Ann", None, "maryann", H_MARYANN),
    // Google names: first name keeps punctuation, last name drops it; spaces collapsed.
    v(GoogleAds, Field::FirstName, HELENE_NFD, None, "hélène-marie", H_HELENE_DASH_MARIE),
    v(GoogleAds, Field::FirstName, HELENE_NFC, None, "hélène-marie", H_HELENE_DASH_MARIE),
    v(GoogleAds, Field::FirstName, "  Mary   Ann ", None, "mary ann", H_MARY_SPACE_ANN),
    v(GoogleAds, Field::LastName, " O'Brien ", None, "obrien", H_OBRIEN),
    // Meta city: lowercase, no punctuation, spaces or digits.
    v(Meta, Field::City, " San Francisco, CA 94103 ", None, "sanfranciscoca", H_SANFRANCISCOCA),
    v(Meta, Field::City, "Saint-E\u{301}tienne (42)", Some("FR"), "saintétienne", H_SAINTETIENNE),
    // Meta state: US state names and codes -> 2-letter code; others cleaned.
    v(Meta, Field::Region, "California", Some("US"), "ca", H_CA),
    v(Meta, Field::Region, " CA ", Some("US"), "ca", H_CA),
    v(Meta, Field::Region, "New York", Some("US"), "ny", H_NY),
    v(Meta, Field::Region, "N.Y.", Some("US"), "ny", H_NY),
    v(Meta, Field::Region, "Île-de-France", Some("FR"), "îledefrance", H_ILEDEFRANCE),
    // Meta zip: US first 5 digits; elsewhere lowercase without spaces/dashes.
    v(Meta, Field::PostalCode, "94025-1234", Some("US"), "94025", H_94025),
    v(Meta, Field::PostalCode, "94025 1234", Some("us"), "94025", H_94025),
    v(Meta, Field::PostalCode, "SW1A 1AA", Some("GB"), "sw1a1aa", H_SW1A1AA),
    v(Meta, Field::PostalCode, "SW1A 1AA", Some("US"), "sw1a1aa", H_SW1A1AA),
    // Meta date of birth, gender, country.
    v(Meta, Field::DateOfBirth, "1990-02-15", None, "19900215", H_19900215),
    v(Meta, Field::DateOfBirth, "19900215", None, "19900215", H_19900215),
    v(Meta, Field::Gender, "Female", None, "f", H_F),
    v(Meta, Field::Gender, " F ", None, "f", H_F),
    v(Meta, Field::Gender, "MALE", None, "m", H_M),
    v(Meta, Field::Gender, "m", None, "m", H_M),
    v(Meta, Field::Country, "FR", None, "fr", H_FR),
    v(Meta, Field::Country, " us ", Some("US"), "us", H_US),
    // external_id: trimmed, case kept.
    v(Meta, Field::ExternalId, "  User-42AbC ", None, "User-42AbC", H_EXTERNAL_ID),
    v(Tiktok, Field::ExternalId, "User-42AbC", None, "User-42AbC", H_EXTERNAL_ID),
];

#[test]
fn golden_vectors_normalise_and_hash() {
    for (i, t) in VECTORS.iter().enumerate() {
        let ctx = format!("vector {i}: {} {:?}", t.platform, t.field);
        // The pasted hash really is the hash of the expected value (guards
        // against a copy/paste slip in this file, not the code under test).
        if !is_sha256_hex(t.input.trim()) {
            assert_eq!(sha256_hex(t.normalized), t.sha256, "{ctx}: table");
        }
        assert_eq!(
            normalize(t.platform, t.field, t.input, t.country).as_deref(),
            Ok(t.normalized),
            "{ctx}: normalize"
        );
        assert_eq!(
            hash(t.platform, t.field, t.input, t.country).as_deref(),
            Ok(t.sha256),
            "{ctx}: hash"
        );
    }
}

#[test]
fn sha256_hex_matches_sha256sum() {
    // printf '%s' '' | sha256sum ; printf '%s' 'abc' | sha256sum
    assert_eq!(
        sha256_hex(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(is_sha256_hex(PREHASHED_UPPER));
    assert!(is_sha256_hex(H_F));
    assert!(!is_sha256_hex(&H_F[1..]));
    assert!(!is_sha256_hex(&format!("{}g", &H_F[1..])));
}

#[test]
fn nfc_and_nfd_names_hash_the_same() {
    for platform in [Meta, GoogleAds] {
        for field in [Field::FirstName, Field::LastName] {
            assert_eq!(
                hash(platform, field, HELENE_NFD, None),
                hash(platform, field, HELENE_NFC, None),
                "{platform} {field:?}"
            );
        }
    }
}

fn reason(r: Result<String, NormalizeError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[test]
fn unusable_values_are_errors_with_a_reason() {
    let cases: &[(Platform, Field, &str, Option<&str>, &str)] = &[
        (Meta, Field::Phone, "12345", Some("US"), "invalid_phone"),
        (
            GoogleAds,
            Field::Phone,
            "+1 555",
            Some("US"),
            "invalid_phone",
        ),
        (Meta, Field::Phone, "555-1212", Some("US"), "invalid_phone"),
        (
            Tiktok,
            Field::Phone,
            "call me maybe",
            Some("US"),
            "invalid_phone",
        ),
        (
            Meta,
            Field::Phone,
            "650 555 1212 ext 12",
            Some("US"),
            "invalid_phone",
        ),
        (Meta, Field::Phone, "+999 1234567", None, "invalid_phone"),
        (Meta, Field::Phone, "--", Some("US"), "invalid_phone"),
        (Meta, Field::Phone, "+", Some("US"), "invalid_phone"),
        (
            Meta,
            Field::Phone,
            "1234567890123456789012",
            Some("US"),
            "invalid_phone",
        ),
        (
            Meta,
            Field::Phone,
            "06 12 34 56 78",
            None,
            "phone_without_country",
        ),
        (
            Meta,
            Field::Phone,
            "06 12 34 56 78",
            Some("ZZ"),
            "phone_without_country",
        ),
        (Meta, Field::Email, "john.doe@", None, "invalid_email"),
        (
            GoogleAds,
            Field::Email,
            "not-an-email",
            None,
            "invalid_email",
        ),
        (
            Tiktok,
            Field::Email,
            "john doe@example.com",
            None,
            "invalid_email",
        ),
        (Meta, Field::Email, "john@localhost", None, "invalid_email"),
        (
            GoogleAds,
            Field::Email,
            "...@gmail.com",
            None,
            "invalid_email",
        ),
        (Meta, Field::Email, "   ", None, "empty"),
        (Meta, Field::FirstName, " -'. ", None, "empty"),
        (Meta, Field::City, "75001", None, "empty"),
        (Meta, Field::DateOfBirth, "1990-02-30", None, "invalid_date"),
        (Meta, Field::DateOfBirth, "15/02/1990", None, "invalid_date"),
        (Meta, Field::Gender, "x", None, "invalid_gender"),
        (Meta, Field::Country, "France", None, "invalid_country"),
        (Meta, Field::Country, "ZZ", None, "invalid_country"),
        (GoogleAds, Field::City, "Paris", None, "field_not_accepted"),
        (Tiktok, Field::FirstName, "John", None, "field_not_accepted"),
    ];
    for &(platform, field, input, country, want) in cases {
        let got = reason(normalize(platform, field, input, country));
        assert_eq!(got, want, "{platform} {field:?}");
        let err = hash(platform, field, input, country).expect_err("hash must fail too");
        // Never the raw value in what ends up in logs and dead letters.
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains(input.trim()) || input.trim().len() < 3,
            "{text}"
        );
    }
}

fn full_user() -> User {
    User {
        email: Some("  John.Doe@Example.COM ".into()),
        phone: Some("(650)555-1212".into()),
        first_name: Some(HELENE_NFD.into()),
        last_name: Some(" O'Brien ".into()),
        date_of_birth: Some("1990-02-15".into()),
        gender: Some("Female".into()),
        city: Some(" San Francisco, CA 94103 ".into()),
        region: Some("California".into()),
        postal_code: Some("94025-1234".into()),
        country: Some("US".into()),
        external_id: Some("  User-42AbC ".into()),
        ip: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0".into()),
    }
}

#[test]
fn identifiers_meta_fills_every_meta_field() {
    let (ids, dropped) = identifiers(Meta, &full_user(), Some("US"));
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(ids.platform, "meta");
    assert_eq!(
        ids.email.as_deref().map(hex).as_deref(),
        Some(H_JOHN_DOE_EXAMPLE)
    );
    assert_eq!(
        ids.phone.as_deref().map(hex).as_deref(),
        Some(H_16505551212)
    );
    assert_eq!(
        ids.first_name.as_deref().map(hex).as_deref(),
        Some(H_HELENEMARIE)
    );
    assert_eq!(ids.last_name.as_deref().map(hex).as_deref(), Some(H_OBRIEN));
    assert_eq!(
        ids.date_of_birth.as_deref().map(hex).as_deref(),
        Some(H_19900215)
    );
    assert_eq!(ids.gender.as_deref().map(hex).as_deref(), Some(H_F));
    assert_eq!(
        ids.city.as_deref().map(hex).as_deref(),
        Some(H_SANFRANCISCOCA)
    );
    assert_eq!(ids.region.as_deref().map(hex).as_deref(), Some(H_CA));
    assert_eq!(
        ids.postal_code.as_deref().map(hex).as_deref(),
        Some(H_94025)
    );
    assert_eq!(ids.country.as_deref().map(hex).as_deref(), Some(H_US));
    assert_eq!(
        ids.external_id.as_deref().map(hex).as_deref(),
        Some(H_EXTERNAL_ID)
    );
}

#[test]
fn identifiers_google_ads_fills_exactly_its_fields() {
    let (ids, dropped) = identifiers(GoogleAds, &full_user(), Some("US"));
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(ids.platform, "google_ads");
    assert_eq!(
        ids.email.as_deref().map(hex).as_deref(),
        Some(H_JOHN_DOE_EXAMPLE)
    );
    assert_eq!(
        ids.phone.as_deref().map(hex).as_deref(),
        Some(H_PLUS_16505551212)
    );
    assert_eq!(
        ids.first_name.as_deref().map(hex).as_deref(),
        Some(H_HELENE_DASH_MARIE)
    );
    assert_eq!(ids.last_name.as_deref().map(hex).as_deref(), Some(H_OBRIEN));
    for v in [
        &ids.date_of_birth,
        &ids.gender,
        &ids.city,
        &ids.region,
        &ids.postal_code,
        &ids.country,
        &ids.external_id,
    ] {
        assert_eq!(v, &None);
    }
}

#[test]
fn identifiers_tiktok_fills_exactly_its_fields() {
    let (ids, dropped) = identifiers(Tiktok, &full_user(), Some("US"));
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(ids.platform, "tiktok");
    assert_eq!(
        ids.email.as_deref().map(hex).as_deref(),
        Some(H_JOHN_DOE_EXAMPLE)
    );
    assert_eq!(
        ids.phone.as_deref().map(hex).as_deref(),
        Some(H_PLUS_16505551212)
    );
    assert_eq!(
        ids.external_id.as_deref().map(hex).as_deref(),
        Some(H_EXTERNAL_ID)
    );
    for v in [
        &ids.first_name,
        &ids.last_name,
        &ids.date_of_birth,
        &ids.gender,
        &ids.city,
        &ids.region,
        &ids.postal_code,
        &ids.country,
    ] {
        assert_eq!(v, &None);
    }
}

#[test]
fn identifiers_reports_unusable_values_without_them() {
    let user = User {
        email: Some("not-an-email".into()),
        phone: Some("12345".into()),
        first_name: Some("   ".into()), // blank = not provided, not reported
        gender: Some("unknown".into()),
        external_id: Some("abc".into()),
        ..User::default()
    };
    let (ids, dropped) = identifiers(Meta, &user, Some("FR"));
    let fields: Vec<(Field, &str)> = dropped.iter().map(|(f, e)| (*f, e.reason())).collect();
    assert_eq!(
        fields,
        [
            (Field::Email, "invalid_email"),
            (Field::Phone, "invalid_phone"),
            (Field::Gender, "invalid_gender"),
        ]
    );
    assert_eq!(ids.email, None);
    assert_eq!(ids.phone, None);
    assert_eq!(ids.first_name, None);
    assert_eq!(ids.gender, None);
    assert!(ids.external_id.is_some());
    let debug = format!("{dropped:?}");
    assert!(!debug.contains("not-an-email") && !debug.contains("12345"));
}

#[test]
fn identifiers_of_an_empty_user_are_empty() {
    for platform in Platform::ALL {
        let (ids, dropped) = identifiers(platform, &User::default(), None);
        assert!(dropped.is_empty());
        assert_eq!(ids.platform, platform.as_str());
        assert_eq!(ids.email, None);
        assert_eq!(ids.phone, None);
    }
}

#[test]
fn fields_per_platform() {
    use Field::*;
    assert_eq!(
        fields_for(Meta),
        [
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
            ExternalId
        ]
    );
    assert_eq!(fields_for(GoogleAds), [Email, Phone, FirstName, LastName]);
    assert_eq!(fields_for(Tiktok), [Email, Phone, ExternalId]);
}

/// Property: normalising a normalised value changes nothing, for every field
/// each platform accepts, over varied inputs (the country is kept the same).
#[test]
fn normalize_is_idempotent() {
    let inputs: &[(Field, &[&str])] = &[
        (
            Field::Email,
            &[
                "  John.Doe@Example.COM ",
                "J.Doe+ads@GMAIL.com",
                "x.y.z@googlemail.com",
                "Ünïcödé@Exämple.de",
                PREHASHED_UPPER,
            ],
        ),
        (
            Field::Phone,
            &[
                "(650)555-1212",
                "+1 650 555 1212",
                "06 12 34 56 78",
                "0033 6 12 34 56 78",
                "+44 (0)20 7946 0958",
                "+39 06 6982 1234",
                "+81 3-1234-5678",
                "011 44 20 7946 0958",
            ],
        ),
        (
            Field::FirstName,
            &[
                HELENE_NFD,
                HELENE_NFC,
                "  Mary   Ann ",
                "ΟΔΥΣΣΕΥΣ",
                "Zoë-Ève",
                "e-\u{301}",
                "İlker",
                "José\u{a0}Luis",
            ],
        ),
        (
            Field::LastName,
            &[
                " O'Brien ",
                "O\u{2019}Brien",
                "van der Berg",
                "Müller-Lüdenscheidt",
                "Straße",
            ],
        ),
        (
            Field::DateOfBirth,
            &["1990-02-15", "2000-02-29", "19851231"],
        ),
        (Field::Gender, &["Female", "MALE", " f ", "m"]),
        (
            Field::City,
            &[
                " San Francisco, CA 94103 ",
                "Saint-E\u{301}tienne",
                "São Paulo",
                "Zürich 8001",
            ],
        ),
        (
            Field::Region,
            &[
                "California",
                " CA ",
                "New York",
                "Île-de-France",
                "Québec",
                "Bavaria",
            ],
        ),
        (
            Field::PostalCode,
            &[
                "94025-1234",
                "94025",
                "SW1A 1AA",
                "75001",
                "K1A 0B1",
                "9402",
            ],
        ),
        (Field::Country, &["FR", " us ", "gb"]),
        (
            Field::ExternalId,
            &["  User-42AbC ", "ABC", PREHASHED_UPPER],
        ),
    ];
    let countries = [Some("US"), Some("FR"), Some("GB"), None];
    let mut checked = 0;
    for platform in Platform::ALL {
        for &(field, values) in inputs {
            if !fields_for(platform).contains(&field) {
                continue;
            }
            for &value in values {
                for country in countries {
                    let Ok(once) = normalize(platform, field, value, country) else {
                        continue;
                    };
                    let twice = normalize(platform, field, &once, country);
                    assert_eq!(
                        twice.as_deref(),
                        Ok(once.as_str()),
                        "{platform} {field:?} {value:?} {country:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    // Most combinations must have produced a value (not vacuous).
    assert!(checked > 150, "only {checked} checked");
}
