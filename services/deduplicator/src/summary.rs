//! The conversion as the status service shows it, attached to the
//! deduplicator's status records (delivery_status v2, `conversion`).
//!
//! The deduplicator is the one stage that sees the merged conversion and
//! writes a status for each platform, so it is where the panel's facts come
//! from. Nothing personal leaves here: the names of the match keys a
//! platform's upload will carry (a local stand-in for the platforms' match
//! quality), never their values, and click ids only as SHA-256 hashes, so
//! the panel can find a conversion by click id without keeping one.

use postback_core::model::{
    click_id_hash, ConversionEnriched, ConversionSummary, PlatformIdentifiers,
};
use postback_core::Platform;

use crate::state::Sources;

pub fn summary(
    record: &ConversionEnriched,
    platform: Platform,
    sources: Sources,
) -> ConversionSummary {
    let order = record.order.as_ref();
    ConversionSummary {
        event_time: record.event_time,
        value: order.and_then(|o| o.value.clone()),
        currency: order.and_then(|o| o.currency.clone()),
        order_id: order.and_then(|o| o.order_id.clone()),
        sources: sources.names(),
        match_keys: match_keys(record, platform),
        click_id_hashes: click_id_hashes(record),
    }
}

/// The identifiers `platform`'s upload carries, by name.
fn match_keys(record: &ConversionEnriched, platform: Platform) -> Vec<String> {
    let mut keys: Vec<&str> = Vec::new();
    if let Some(ids) = record
        .identifiers
        .iter()
        .find(|i| i.platform == platform.as_str())
    {
        keys.extend(hashed_keys(ids));
    }
    if let Some(c) = &record.click_ids {
        let platform_ids: &[(&str, &Option<String>)] = match platform {
            Platform::Meta => &[("fbc", &c.fbc), ("fbp", &c.fbp)],
            Platform::GoogleAds => &[
                ("gclid", &c.gclid),
                ("gbraid", &c.gbraid),
                ("wbraid", &c.wbraid),
            ],
            Platform::Tiktok => &[("ttclid", &c.ttclid), ("ttp", &c.ttp)],
        };
        keys.extend(
            platform_ids
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| *k),
        );
    }
    // Google's click uploads match on the click id and hashed user data;
    // Meta and TikTok also on the browser's address and user agent.
    if platform != Platform::GoogleAds {
        if let Some(client) = &record.client {
            if client.ip.is_some() {
                keys.push("ip");
            }
            if client.user_agent.is_some() {
                keys.push("user_agent");
            }
        }
    }
    keys.into_iter().map(String::from).collect()
}

fn hashed_keys(ids: &PlatformIdentifiers) -> impl Iterator<Item = &'static str> + '_ {
    [
        ("email", &ids.email),
        ("phone", &ids.phone),
        ("first_name", &ids.first_name),
        ("last_name", &ids.last_name),
        ("date_of_birth", &ids.date_of_birth),
        ("gender", &ids.gender),
        ("city", &ids.city),
        ("region", &ids.region),
        ("postal_code", &ids.postal_code),
        ("country", &ids.country),
        ("external_id", &ids.external_id),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some())
    .map(|(k, _)| k)
}

/// Hex SHA-256 of every click id of the conversion, whatever the platform:
/// a search by click id hashes what it is given the same way.
fn click_id_hashes(record: &ConversionEnriched) -> Vec<String> {
    let Some(c) = &record.click_ids else {
        return Vec::new();
    };
    [&c.gclid, &c.gbraid, &c.wbraid, &c.fbclid, &c.fbc, &c.ttclid]
        .into_iter()
        .flatten()
        .map(|id| click_id_hash(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postback_core::model::{ClickIds, Client, Order, Source};

    fn record() -> ConversionEnriched {
        ConversionEnriched {
            tenant: "acme".into(),
            event_id: "ord-1".into(),
            event_name: "Purchase".into(),
            event_time: 1_790_000_000_000,
            received_at: 1_790_000_000_100,
            source: Source::Server,
            action_source: None,
            order: Some(Order {
                order_id: Some("A-1".into()),
                value: Some("19.90".into()),
                currency: Some("EUR".into()),
                items: Vec::new(),
            }),
            click_ids: Some(ClickIds {
                gclid: Some("Cj0KCQ".into()),
                fbc: Some("fb.1.1.abc".into()),
                ..ClickIds::default()
            }),
            page: None,
            client: Some(Client {
                ip: Some("203.0.113.9".into()),
                user_agent: Some("Mozilla".into()),
                ..Client::default()
            }),
            consent: None,
            identifiers: vec![PlatformIdentifiers {
                platform: "meta".into(),
                email: Some(vec![1; 32]),
                ..PlatformIdentifiers::default()
            }],
            decisions: Vec::new(),
            pixels: Default::default(),
        }
    }

    #[test]
    fn names_the_keys_each_platform_gets_and_never_a_value() {
        let mut sources = Sources::of(Source::Server);
        sources.add(Source::Browser);
        let meta = summary(&record(), Platform::Meta, sources);
        assert_eq!(meta.match_keys, ["email", "fbc", "ip", "user_agent"]);
        assert_eq!(meta.sources, ["browser", "server"]);
        assert_eq!(meta.value.as_deref(), Some("19.90"));
        assert_eq!(meta.order_id.as_deref(), Some("A-1"));
        let google = summary(&record(), Platform::GoogleAds, sources);
        assert_eq!(google.match_keys, ["gclid"]);
        let text = format!("{meta:?}{google:?}");
        for value in ["Cj0KCQ", "fb.1.1.abc", "203.0.113.9", "Mozilla"] {
            assert!(!text.contains(value), "{value} leaked");
        }
        assert_eq!(
            meta.click_id_hashes,
            [click_id_hash("Cj0KCQ"), click_id_hash("fb.1.1.abc")]
        );
    }
}
