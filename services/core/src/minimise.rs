//! Data minimisation past `conversions.raw`: a conversion keeps a field of
//! personal data only while some platform that may receive it, under the
//! event's consent, needs it.
//!
//! "May receive" is decided by configuration and consent, not by whether
//! the platform can match the event yet: a browser report without an email
//! is not eligible for Meta on its own, but the server's report that merges
//! into it may make it so, and it needs the browser's user agent and page
//! then. So a platform the tenant configured whose consent allows user
//! data keeps the address for it; one whose consent allows click ids keeps
//! its own click ids; one whose consent allows anything keeps the user
//! agent and the page it sends (docs/enricher.md#data-minimisation).
//!
//! What each platform's adapter sends (`dispatcher/src/adapters/`):
//!
//! | field | Meta | Google Ads | TikTok |
//! |---|---|---|---|
//! | client ip | with user data | never | with user data |
//! | user agent | always | never | always |
//! | page url | always | never | always |
//! | page referrer | never | never | always |
//! | click ids | fbclid, fbc, fbp | gclid, gbraid, wbraid | ttclid, ttp |
//!
//! Shared because two stages apply it: the enricher to each report, and the
//! deduplicator to a merged conversion (consent may have narrowed) and to
//! each platform's dispatch record (only that platform's needs).

use crate::eligibility::PLATFORM_NOT_CONFIGURED;
use crate::model::{ClickIds, ConversionEnriched, PlatformDecision};
use crate::Platform;

/// What the platforms that may receive the conversion need of it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Needs {
    ip: bool,
    user_agent: bool,
    page_url: bool,
    referrer: bool,
    meta_clicks: bool,
    google_clicks: bool,
    tiktok_clicks: bool,
}

fn needs<'a>(decisions: impl IntoIterator<Item = &'a PlatformDecision>) -> Needs {
    let mut n = Needs::default();
    for d in decisions {
        if d.reason.as_deref() == Some(PLATFORM_NOT_CONFIGURED) {
            continue;
        }
        let Some(platform) = Platform::parse(&d.platform) else {
            continue;
        };
        let anything = d.send_user_data || d.send_click_ids;
        match platform {
            Platform::Meta => {
                n.ip |= d.send_user_data;
                n.user_agent |= anything;
                n.page_url |= anything;
                n.meta_clicks |= d.send_click_ids;
            }
            Platform::GoogleAds => n.google_clicks |= d.send_click_ids,
            Platform::Tiktok => {
                n.ip |= d.send_user_data;
                n.user_agent |= anything;
                n.page_url |= anything;
                n.referrer |= anything;
                n.tiktok_clicks |= d.send_click_ids;
            }
        }
    }
    n
}

/// Drops what no platform among the record's decisions may receive, and
/// the hashes of platforms without a decision.
pub fn minimise(record: &mut ConversionEnriched) {
    let n = needs(&record.decisions);
    apply(record, n);
    let decided: Vec<&str> = record
        .decisions
        .iter()
        .filter(|d| d.send_user_data && d.reason.as_deref() != Some(PLATFORM_NOT_CONFIGURED))
        .map(|d| d.platform.as_str())
        .collect();
    record
        .identifiers
        .retain(|i| decided.contains(&i.platform.as_str()));
}

/// The record `decision`'s platform's dispatcher gets: its own hashes,
/// decision and fields only.
pub fn for_platform(
    record: &ConversionEnriched,
    decision: &PlatformDecision,
) -> ConversionEnriched {
    let mut own = ConversionEnriched {
        identifiers: record
            .identifiers
            .iter()
            .filter(|i| i.platform == decision.platform)
            .cloned()
            .collect(),
        decisions: vec![decision.clone()],
        ..record.clone()
    };
    minimise(&mut own);
    own
}

fn apply(record: &mut ConversionEnriched, n: Needs) {
    if let Some(client) = &mut record.client {
        if !n.ip {
            client.ip = None;
        }
        if !n.user_agent {
            client.user_agent = None;
        }
    }
    if let Some(page) = &mut record.page {
        if !n.page_url {
            page.url = None;
        }
        if !n.referrer {
            page.referrer = None;
        }
        if page.url.is_none() && page.referrer.is_none() {
            record.page = None;
        }
    }
    if let Some(clicks) = &mut record.click_ids {
        keep_clicks(clicks, n);
        if *clicks == ClickIds::default() {
            record.click_ids = None;
        }
    }
}

fn keep_clicks(c: &mut ClickIds, n: Needs) {
    if !n.meta_clicks {
        c.fbclid = None;
        c.fbc = None;
        c.fbp = None;
    }
    if !n.google_clicks {
        c.gclid = None;
        c.gbraid = None;
        c.wbraid = None;
    }
    if !n.tiktok_clicks {
        c.ttclid = None;
        c.ttp = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Client, Page, PlatformIdentifiers};

    fn decision(p: Platform, user_data: bool, clicks: bool) -> PlatformDecision {
        PlatformDecision {
            platform: p.as_str().into(),
            eligible: user_data || clicks,
            reason: (!(user_data || clicks)).then(|| "no_consent".into()),
            send_user_data: user_data,
            send_click_ids: clicks,
            limited_data_use: false,
        }
    }

    fn unconfigured(p: Platform) -> PlatformDecision {
        PlatformDecision {
            reason: Some(PLATFORM_NOT_CONFIGURED.into()),
            eligible: false,
            ..decision(p, true, true)
        }
    }

    fn full(decisions: Vec<PlatformDecision>) -> ConversionEnriched {
        ConversionEnriched {
            tenant: "acme".into(),
            event_id: "e".into(),
            event_name: "Purchase".into(),
            click_ids: Some(ClickIds {
                gclid: Some("g".into()),
                gbraid: Some("gb".into()),
                wbraid: Some("wb".into()),
                fbclid: Some("f".into()),
                fbc: Some("fbc".into()),
                fbp: Some("fbp".into()),
                ttclid: Some("t".into()),
                ttp: Some("ttp".into()),
            }),
            page: Some(Page {
                url: Some("https://shop.example/thanks".into()),
                referrer: Some("https://search.example/".into()),
            }),
            client: Some(Client {
                ip: Some("203.0.113.7".into()),
                user_agent: Some("Mozilla/5.0".into()),
                device_type: Some("desktop".into()),
                os: None,
                browser: None,
            }),
            identifiers: Platform::ALL
                .into_iter()
                .map(|p| PlatformIdentifiers {
                    platform: p.as_str().into(),
                    email: Some(vec![1; 32]),
                    ..Default::default()
                })
                .collect(),
            decisions,
            event_time: 0,
            received_at: 0,
            source: crate::model::Source::Browser,
            action_source: Some("website".into()),
            order: None,
            consent: None,
            pixels: Default::default(),
        }
    }

    #[test]
    fn everything_granted_keeps_what_some_platform_sends() {
        let mut r = full(Platform::ALL.map(|p| decision(p, true, true)).to_vec());
        let before = r.clone();
        minimise(&mut r);
        assert_eq!(r, before);
    }

    #[test]
    fn nothing_granted_keeps_nothing_personal() {
        let mut r = full(Platform::ALL.map(|p| decision(p, false, false)).to_vec());
        minimise(&mut r);
        assert_eq!(r.click_ids, None);
        assert_eq!(r.page, None);
        let c = r.client.unwrap();
        assert_eq!((c.ip, c.user_agent), (None, None));
        assert_eq!(c.device_type.as_deref(), Some("desktop"), "coarse, kept");
        assert!(r.identifiers.is_empty());
    }

    #[test]
    fn click_ids_only_keeps_no_address_and_each_platform_its_own_clicks() {
        let mut r = full(vec![
            decision(Platform::Meta, false, true),
            unconfigured(Platform::GoogleAds),
            decision(Platform::Tiktok, false, false),
        ]);
        minimise(&mut r);
        let c = r.click_ids.clone().unwrap();
        assert!(c.fbc.is_some() && c.fbp.is_some() && c.fbclid.is_some());
        assert!(c.gclid.is_none() && c.ttclid.is_none() && c.ttp.is_none());
        let client = r.client.clone().unwrap();
        assert_eq!(client.ip, None);
        assert!(client.user_agent.is_some());
        let page = r.page.clone().unwrap();
        assert!(
            page.url.is_some() && page.referrer.is_none(),
            "Meta sends no referrer"
        );
        assert!(
            r.identifiers.is_empty(),
            "no platform may receive user data"
        );
    }

    #[test]
    fn google_alone_needs_only_its_click_ids() {
        let mut r = full(vec![
            unconfigured(Platform::Meta),
            decision(Platform::GoogleAds, true, true),
            unconfigured(Platform::Tiktok),
        ]);
        minimise(&mut r);
        assert_eq!(r.page, None);
        let client = r.client.clone().unwrap();
        assert_eq!((client.ip, client.user_agent), (None, None));
        let c = r.click_ids.unwrap();
        assert!(c.gclid.is_some() && c.fbclid.is_none() && c.ttclid.is_none());
        let platforms: Vec<&str> = r.identifiers.iter().map(|i| i.platform.as_str()).collect();
        assert_eq!(platforms, ["google_ads"]);
    }

    #[test]
    fn a_platform_gets_only_its_own_fields() {
        let r = full(Platform::ALL.map(|p| decision(p, true, true)).to_vec());
        let google = for_platform(&r, &r.decisions[1].clone());
        assert_eq!(google.page, None);
        assert_eq!(google.client.as_ref().unwrap().ip, None);
        assert_eq!(google.identifiers.len(), 1);
        let tiktok = for_platform(&r, &r.decisions[2].clone());
        let c = tiktok.click_ids.unwrap();
        assert!(c.ttclid.is_some() && c.gclid.is_none() && c.fbc.is_none());
        assert!(tiktok.page.unwrap().referrer.is_some());
        assert_eq!(tiktok.client.unwrap().ip.as_deref(), Some("203.0.113.7"));
    }
}
