//! Sample conversions for tests of the stages after the enricher.

use std::collections::BTreeMap;

use postback_core::model::{
    ClickIds, Client, ConversionEnriched, Order, Page, PlatformDecision, PlatformIdentifiers,
    Source,
};
use postback_core::Platform;

/// A report of `event_id` as the enricher writes it: eligible for every
/// platform, with hashes for all three. A browser report carries the
/// visit (ip, user agent, fbp/fbc, page, pixels); a server report the
/// customer (email, phone) and the order with its value.
pub fn enriched_report(
    tenant: &str,
    event_id: &str,
    event_name: &str,
    source: Source,
    event_time: i64,
) -> ConversionEnriched {
    let browser = source == Source::Browser;
    let digest = |seed: u8| Some(vec![seed; 32]);
    let identifiers = Platform::ALL
        .into_iter()
        .map(|p| PlatformIdentifiers {
            platform: p.as_str().into(),
            email: if browser { None } else { digest(0x5e) },
            phone: if browser { None } else { digest(0x50) },
            external_id: if browser { digest(0xb0) } else { None },
            ..Default::default()
        })
        .collect();
    ConversionEnriched {
        tenant: tenant.into(),
        event_id: event_id.into(),
        event_name: event_name.into(),
        event_time,
        received_at: event_time + 500,
        source,
        action_source: Some("website".into()),
        order: Some(Order {
            order_id: Some(format!("order-{event_id}")),
            value: Some(if browser { "99.00" } else { "129.90" }.into()),
            currency: Some("EUR".into()),
            items: vec![],
        }),
        click_ids: Some(if browser {
            ClickIds {
                fbp: Some("fb.1.1732270000000.1234567890".into()),
                fbc: Some("fb.1.1732270000000.IwAR-browser".into()),
                ttclid: Some("E.C.P.browser-ttclid".into()),
                ..Default::default()
            }
        } else {
            ClickIds {
                gclid: Some("Cj0KCQiA-server-gclid".into()),
                ..Default::default()
            }
        }),
        page: browser.then(|| Page {
            url: Some("https://shop.example/checkout/thank-you".into()),
            referrer: Some("https://shop.example/checkout".into()),
        }),
        client: Some(Client {
            ip: Some(if browser { "203.0.113.7" } else { "198.51.100.20" }.into()),
            user_agent: Some(
                if browser {
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/18.1 Safari/605.1.15"
                } else {
                    "shop-backend/2.3"
                }
                .into(),
            ),
            device_type: browser.then(|| "desktop".into()),
            os: browser.then(|| "Mac OS X".into()),
            browser: browser.then(|| "Safari".into()),
        }),
        consent: None,
        identifiers,
        decisions: Platform::ALL
            .into_iter()
            .map(|p| PlatformDecision {
                platform: p.as_str().into(),
                eligible: true,
                reason: None,
                send_user_data: true,
                send_click_ids: true,
                limited_data_use: false,
            })
            .collect(),
        pixels: if browser {
            BTreeMap::from([
                ("meta".to_string(), "fired".to_string()),
                ("google_ads".to_string(), "not_fired".to_string()),
            ])
        } else {
            BTreeMap::new()
        },
    }
}
