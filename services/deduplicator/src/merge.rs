//! Two reports of one conversion become one record.
//!
//! Each side is trusted for what it knows best. The retailer's server knows
//! the order and the customer: it wins for the conversion's time, source and
//! order fields and for user identifiers. The browser knows the visit: it
//! wins for ip, user agent (and the device parsed from it), the Meta cookies
//! fbp/fbc and the page. Everything else is united: any click id either side
//! has, any identifier either side has, and a pixel that fired on either.
//! Two reports from the same side fill each other's gaps, the first one
//! winning where both have a value.
//!
//! Consent is the one thing that never widens: an explicit flag beats a
//! missing one (it was defaulted by the tenant), and where the two reports
//! state different choices the denial holds. Eligibility is then decided
//! again on the merged record, by the same rules the enricher applies, and
//! the merged record keeps only the personal data those decisions allow
//! (`core::minimise`).

use std::collections::BTreeMap;

use postback_core::eligibility::{self, ConsentDecision, Evidence, PlatformWindows};
use postback_core::model::{
    ClickIds, Client, Consent, ConversionEnriched, Order, Page, PlatformDecision,
    PlatformIdentifiers, Source,
};
use postback_core::Platform;

/// `held` and `incoming` are reports of the same dedup key; `now` is when
/// the merged record's age is judged.
pub fn merge(
    held: ConversionEnriched,
    incoming: ConversionEnriched,
    windows: &PlatformWindows,
    now: i64,
) -> ConversionEnriched {
    // (first, second): who wins each group of fields.
    let incoming_is_server_side_of_browser =
        held.source == Source::Browser && incoming.source != Source::Browser;
    let incoming_is_browser_side_of_server =
        held.source != Source::Browser && incoming.source == Source::Browser;
    let (server_first, browser_first) = if incoming_is_server_side_of_browser {
        ((&incoming, &held), (&held, &incoming))
    } else if incoming_is_browser_side_of_server {
        ((&held, &incoming), (&incoming, &held))
    } else {
        ((&held, &incoming), (&held, &incoming))
    };

    let consent = merge_consent(held.consent.as_ref(), incoming.consent.as_ref());
    let mut merged = ConversionEnriched {
        tenant: held.tenant.clone(),
        event_id: held.event_id.clone(),
        event_name: held.event_name.clone(),
        event_time: server_first.0.event_time,
        received_at: held.received_at.min(incoming.received_at),
        source: server_first.0.source,
        action_source: or_clone(&server_first.0.action_source, &server_first.1.action_source),
        order: merge_order(server_first.0.order.as_ref(), server_first.1.order.as_ref()),
        click_ids: merge_click_ids(
            browser_first.0.click_ids.as_ref(),
            browser_first.1.click_ids.as_ref(),
        ),
        page: merge_page(browser_first.0.page.as_ref(), browser_first.1.page.as_ref()),
        client: merge_client(
            browser_first.0.client.as_ref(),
            browser_first.1.client.as_ref(),
        ),
        consent,
        identifiers: merge_identifiers(&server_first.0.identifiers, &server_first.1.identifiers),
        decisions: Vec::new(),
        pixels: merge_pixels(&held.pixels, &incoming.pixels),
    };
    merged.decisions = Platform::ALL
        .into_iter()
        .filter_map(|p| decide(p, &held, &incoming, &mut merged, windows, now))
        .collect();
    // Consent may have narrowed: what no platform may receive now goes.
    postback_core::minimise::minimise(&mut merged);
    merged
}

fn or_clone<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
    a.clone().or_else(|| b.clone())
}

fn merge_order(a: Option<&Order>, b: Option<&Order>) -> Option<Order> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Order {
            order_id: or_clone(&a.order_id, &b.order_id),
            value: or_clone(&a.value, &b.value),
            // A value and its currency belong together.
            currency: if a.value.is_some() {
                or_clone(&a.currency, &b.currency)
            } else {
                or_clone(&b.currency, &a.currency)
            },
            items: if a.items.is_empty() {
                b.items.clone()
            } else {
                a.items.clone()
            },
        }),
        (a, b) => a.or(b).cloned(),
    }
}

fn merge_click_ids(a: Option<&ClickIds>, b: Option<&ClickIds>) -> Option<ClickIds> {
    match (a, b) {
        (Some(a), Some(b)) => Some(ClickIds {
            gclid: or_clone(&a.gclid, &b.gclid),
            gbraid: or_clone(&a.gbraid, &b.gbraid),
            wbraid: or_clone(&a.wbraid, &b.wbraid),
            fbclid: or_clone(&a.fbclid, &b.fbclid),
            fbc: or_clone(&a.fbc, &b.fbc),
            fbp: or_clone(&a.fbp, &b.fbp),
            ttclid: or_clone(&a.ttclid, &b.ttclid),
            ttp: or_clone(&a.ttp, &b.ttp),
        }),
        (a, b) => a.or(b).cloned(),
    }
}

fn merge_page(a: Option<&Page>, b: Option<&Page>) -> Option<Page> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Page {
            url: or_clone(&a.url, &b.url),
            referrer: or_clone(&a.referrer, &b.referrer),
        }),
        (a, b) => a.or(b).cloned(),
    }
}

fn merge_client(a: Option<&Client>, b: Option<&Client>) -> Option<Client> {
    match (a, b) {
        (Some(a), Some(b)) => {
            // The device is parsed from the user agent: keep them together.
            let device = if a.user_agent.is_some() { a } else { b };
            Some(Client {
                ip: or_clone(&a.ip, &b.ip),
                user_agent: device.user_agent.clone(),
                device_type: device.device_type.clone(),
                os: device.os.clone(),
                browser: device.browser.clone(),
            })
        }
        (a, b) => a.or(b).cloned(),
    }
}

fn merge_identifiers(
    first: &[PlatformIdentifiers],
    second: &[PlatformIdentifiers],
) -> Vec<PlatformIdentifiers> {
    let mut out: Vec<PlatformIdentifiers> = first.to_vec();
    for other in second {
        match out.iter_mut().find(|i| i.platform == other.platform) {
            None => out.push(other.clone()),
            Some(mine) => {
                for (m, o) in [
                    (&mut mine.email, &other.email),
                    (&mut mine.phone, &other.phone),
                    (&mut mine.first_name, &other.first_name),
                    (&mut mine.last_name, &other.last_name),
                    (&mut mine.date_of_birth, &other.date_of_birth),
                    (&mut mine.gender, &other.gender),
                    (&mut mine.city, &other.city),
                    (&mut mine.region, &other.region),
                    (&mut mine.postal_code, &other.postal_code),
                    (&mut mine.country, &other.country),
                    (&mut mine.external_id, &other.external_id),
                ] {
                    if m.is_none() {
                        m.clone_from(o);
                    }
                }
            }
        }
    }
    out
}

fn merge_pixels(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = a.clone();
    for (platform, status) in b {
        let slot = out
            .entry(platform.clone())
            .or_insert_with(|| status.clone());
        if status == "fired" {
            *slot = status.clone();
        }
    }
    out
}

fn merge_flag(a: &Option<String>, b: &Option<String>) -> Option<String> {
    match (a.as_deref(), b.as_deref()) {
        (Some(x), Some(y)) if x != y => Some("denied".to_string()),
        _ => or_clone(a, b),
    }
}

fn merge_consent(a: Option<&Consent>, b: Option<&Consent>) -> Option<Consent> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Consent {
            ad_storage: merge_flag(&a.ad_storage, &b.ad_storage),
            ad_user_data: merge_flag(&a.ad_user_data, &b.ad_user_data),
            ad_personalization: merge_flag(&a.ad_personalization, &b.ad_personalization),
            analytics_storage: merge_flag(&a.analytics_storage, &b.analytics_storage),
            tcf: or_clone(&a.tcf, &b.tcf),
            limited_data_use: match (a.limited_data_use, b.limited_data_use) {
                (Some(x), Some(y)) => Some(x || y),
                (x, y) => x.or(y),
            },
        }),
        (a, b) => a.or(b).cloned(),
    }
}

/// Whether a report stated consent itself (rather than getting the tenant's
/// default for its region from the enricher).
fn states_consent(c: Option<&Consent>) -> bool {
    c.is_some_and(|c| c.ad_storage.is_some() || c.ad_user_data.is_some())
}

fn decision_for(r: &ConversionEnriched, p: Platform) -> Option<&PlatformDecision> {
    r.decisions.iter().find(|d| d.platform == p.as_str())
}

/// The merged record's decision for `platform`; drops the platform's
/// identifiers from `merged` when consent no longer lets them go out.
fn decide(
    platform: Platform,
    held: &ConversionEnriched,
    incoming: &ConversionEnriched,
    merged: &mut ConversionEnriched,
    windows: &PlatformWindows,
    now: i64,
) -> Option<PlatformDecision> {
    let (h, i) = (
        decision_for(held, platform),
        decision_for(incoming, platform),
    );
    if h.is_none() && i.is_none() {
        return None;
    }
    let configured = [h, i]
        .into_iter()
        .flatten()
        .any(|d| d.reason.as_deref() != Some(eligibility::PLATFORM_NOT_CONFIGURED));
    let consent = match (h, i) {
        (Some(h), Some(i)) => match (
            states_consent(held.consent.as_ref()),
            states_consent(incoming.consent.as_ref()),
        ) {
            // Limited data use restricts, so it holds if either side asked.
            (true, false) => ConsentDecision {
                limited_data_use: h.limited_data_use || i.limited_data_use,
                ..ConsentDecision::of(h)
            },
            (false, true) => ConsentDecision {
                limited_data_use: h.limited_data_use || i.limited_data_use,
                ..ConsentDecision::of(i)
            },
            _ => {
                let (h, i) = (ConsentDecision::of(h), ConsentDecision::of(i));
                ConsentDecision {
                    send_user_data: h.send_user_data && i.send_user_data,
                    send_click_ids: h.send_click_ids && i.send_click_ids,
                    limited_data_use: h.limited_data_use || i.limited_data_use,
                }
            }
        },
        (Some(d), None) | (None, Some(d)) => ConsentDecision::of(d),
        (None, None) => return None,
    };
    if !consent.send_user_data {
        merged
            .identifiers
            .retain(|ids| ids.platform != platform.as_str());
    }
    let window = windows.window(platform, merged.action_source.as_deref());
    let evidence = Evidence {
        configured,
        consent,
        too_old: now - merged.event_time > window.as_millis() as i64,
        action_source: merged.action_source.as_deref(),
        identifiers: merged
            .identifiers
            .iter()
            .find(|ids| ids.platform == platform.as_str()),
        click_ids: merged.click_ids.as_ref(),
        client: merged.client.as_ref(),
        page: merged.page.as_ref(),
    };
    Some(eligibility::decide(platform, &evidence))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_732_270_000_000;

    fn decision(platform: Platform, eligible: bool, reason: Option<&str>) -> PlatformDecision {
        PlatformDecision {
            platform: platform.as_str().into(),
            eligible,
            reason: reason.map(str::to_string),
            send_user_data: true,
            send_click_ids: true,
            limited_data_use: false,
        }
    }

    fn ids(platform: Platform, email: Option<u8>, phone: Option<u8>) -> PlatformIdentifiers {
        PlatformIdentifiers {
            platform: platform.as_str().into(),
            email: email.map(|b| vec![b; 32]),
            phone: phone.map(|b| vec![b; 32]),
            ..Default::default()
        }
    }

    fn browser() -> ConversionEnriched {
        ConversionEnriched {
            tenant: "acme".into(),
            event_id: "order-1".into(),
            event_name: "Purchase".into(),
            event_time: NOW - 5_000,
            received_at: NOW - 4_000,
            source: Source::Browser,
            action_source: Some("website".into()),
            order: Some(Order {
                order_id: Some("A-1".into()),
                value: Some("10.00".into()),
                currency: Some("EUR".into()),
                items: vec![],
            }),
            click_ids: Some(ClickIds {
                fbp: Some("fb.1.1732269990000.111".into()),
                fbc: Some("fb.1.1732269990000.browserclick".into()),
                ttclid: Some("tt-browser".into()),
                ..Default::default()
            }),
            page: Some(Page {
                url: Some("https://shop.example/thanks".into()),
                referrer: None,
            }),
            client: Some(Client {
                ip: Some("203.0.113.9".into()),
                user_agent: Some("Mozilla/5.0 (browser)".into()),
                device_type: Some("desktop".into()),
                os: Some("Mac OS X".into()),
                browser: Some("Safari".into()),
            }),
            consent: None,
            identifiers: vec![ids(Platform::Meta, Some(0xb1), None)],
            decisions: Platform::ALL
                .into_iter()
                .map(|p| decision(p, true, None))
                .collect(),
            pixels: [
                ("meta".to_string(), "fired".to_string()),
                ("tiktok".into(), "not_fired".into()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn server() -> ConversionEnriched {
        ConversionEnriched {
            event_time: NOW - 6_000,
            received_at: NOW - 3_000,
            source: Source::Server,
            order: Some(Order {
                order_id: Some("A-1".into()),
                value: Some("12.50".into()),
                currency: Some("EUR".into()),
                items: vec![],
            }),
            click_ids: Some(ClickIds {
                gclid: Some("Cj0server".into()),
                fbc: Some("fb.1.1732269990000.serverclick".into()),
                ..Default::default()
            }),
            page: None,
            client: Some(Client {
                ip: Some("198.51.100.1".into()),
                user_agent: Some("shop-backend/1.0".into()),
                ..Default::default()
            }),
            identifiers: vec![
                ids(Platform::Meta, Some(0x51), Some(0x52)),
                ids(Platform::GoogleAds, Some(0x53), None),
            ],
            pixels: BTreeMap::new(),
            ..browser()
        }
    }

    fn check_merged(m: &ConversionEnriched) {
        // Server wins: time, source, order, identifiers.
        assert_eq!(m.event_time, NOW - 6_000);
        assert_eq!(m.received_at, NOW - 4_000);
        assert_eq!(m.source, Source::Server);
        assert_eq!(m.order.as_ref().unwrap().value.as_deref(), Some("12.50"));
        let meta = m.identifiers.iter().find(|i| i.platform == "meta").unwrap();
        assert_eq!(meta.email, Some(vec![0x51; 32]));
        assert_eq!(meta.phone, Some(vec![0x52; 32]));
        assert!(m.identifiers.iter().any(|i| i.platform == "google_ads"));
        // Browser wins: ip, ua + device, fbp/fbc, page.
        let c = m.client.as_ref().unwrap();
        assert_eq!(c.ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(c.user_agent.as_deref(), Some("Mozilla/5.0 (browser)"));
        assert_eq!(c.browser.as_deref(), Some("Safari"));
        let k = m.click_ids.as_ref().unwrap();
        assert_eq!(k.fbc.as_deref(), Some("fb.1.1732269990000.browserclick"));
        assert_eq!(k.fbp.as_deref(), Some("fb.1.1732269990000.111"));
        // United.
        assert_eq!(k.gclid.as_deref(), Some("Cj0server"));
        assert_eq!(k.ttclid.as_deref(), Some("tt-browser"));
        assert_eq!(
            m.page.as_ref().unwrap().url.as_deref(),
            Some("https://shop.example/thanks")
        );
        assert_eq!(m.pixels.get("meta").map(String::as_str), Some("fired"));
        assert_eq!(m.decisions.len(), 3);
        assert!(m.decisions.iter().all(|d| d.eligible), "{:?}", m.decisions);
    }

    #[test]
    fn browser_then_server_and_server_then_browser_agree() {
        let w = PlatformWindows::default();
        let a = merge(browser(), server(), &w, NOW);
        let b = merge(server(), browser(), &w, NOW);
        check_merged(&a);
        check_merged(&b);
        assert_eq!(a, b);
    }

    #[test]
    fn eligibility_is_decided_again_on_the_merged_record() {
        // Alone, the browser report has no Google click id nor email: not
        // eligible for Google. The server report brings the gclid.
        let mut b = browser();
        b.decisions[1] = decision(Platform::GoogleAds, false, Some(eligibility::NO_CLICK_ID));
        let mut s = server();
        s.identifiers.retain(|i| i.platform != "google_ads");
        s.decisions[1] = decision(Platform::GoogleAds, true, None);
        let m = merge(b, s, &PlatformWindows::default(), NOW);
        assert!(m.decisions[1].eligible);
    }

    #[test]
    fn a_stated_denial_beats_a_defaulted_grant_and_drops_hashes() {
        let mut b = browser();
        b.consent = Some(Consent {
            ad_user_data: Some("denied".into()),
            ad_storage: Some("granted".into()),
            ..Default::default()
        });
        for d in &mut b.decisions {
            d.send_user_data = false;
        }
        b.identifiers.clear();
        let m = merge(server(), b, &PlatformWindows::default(), NOW);
        assert!(m.identifiers.is_empty(), "{:?}", m.identifiers);
        assert!(m.decisions.iter().all(|d| !d.send_user_data));
        // Meta still matches on the browser's fbp/fbc.
        assert!(m.decisions[0].eligible);
    }

    #[test]
    fn conflicting_stated_consent_resolves_to_denied() {
        let mut b = browser();
        b.consent = Some(Consent {
            ad_storage: Some("granted".into()),
            ..Default::default()
        });
        let mut s = server();
        s.consent = Some(Consent {
            ad_storage: Some("denied".into()),
            limited_data_use: Some(true),
            ..Default::default()
        });
        for d in &mut s.decisions {
            d.send_click_ids = false;
            d.limited_data_use = true;
        }
        let m = merge(b, s, &PlatformWindows::default(), NOW);
        let c = m.consent.as_ref().unwrap();
        assert_eq!(c.ad_storage.as_deref(), Some("denied"));
        assert_eq!(c.limited_data_use, Some(true));
        assert!(m
            .decisions
            .iter()
            .all(|d| !d.send_click_ids && d.limited_data_use));
    }

    #[test]
    fn limited_data_use_from_either_side_holds() {
        // The server asks for LDU without stating consent flags; the browser
        // states a grant: the grant decides, LDU still applies.
        let mut s = server();
        s.consent = Some(Consent {
            limited_data_use: Some(true),
            ..Default::default()
        });
        for d in &mut s.decisions {
            d.limited_data_use = true;
        }
        let mut b = browser();
        b.consent = Some(Consent {
            ad_storage: Some("granted".into()),
            ad_user_data: Some("granted".into()),
            ..Default::default()
        });
        let m = merge(s, b, &PlatformWindows::default(), NOW);
        assert!(m.decisions.iter().all(|d| d.limited_data_use));
        assert_eq!(m.consent.unwrap().limited_data_use, Some(true));
    }

    #[test]
    fn unconfigured_platforms_stay_unconfigured_and_age_is_judged_now() {
        let mut b = browser();
        let mut s = server();
        for r in [&mut b, &mut s] {
            r.decisions[2] = decision(
                Platform::Tiktok,
                false,
                Some(eligibility::PLATFORM_NOT_CONFIGURED),
            );
        }
        let m = merge(b.clone(), s.clone(), &PlatformWindows::default(), NOW);
        assert_eq!(
            m.decisions[2].reason.as_deref(),
            Some(eligibility::PLATFORM_NOT_CONFIGURED)
        );
        let later = NOW + 8 * 86_400_000;
        let m = merge(b, s, &PlatformWindows::default(), later);
        assert_eq!(m.decisions[0].reason.as_deref(), Some(eligibility::TOO_OLD));
        assert!(m.decisions[1].eligible, "Google accepts 90 days");
    }

    #[test]
    fn two_reports_of_one_side_fill_gaps_first_wins() {
        let mut first = browser();
        first.page = None;
        let mut second = browser();
        second.client.as_mut().unwrap().ip = Some("192.0.2.7".into());
        let m = merge(first, second, &PlatformWindows::default(), NOW);
        assert_eq!(m.client.unwrap().ip.as_deref(), Some("203.0.113.9"));
        assert!(m.page.is_some());
    }
}
