//! Eligibility, per platform the tenant configured: eligible, or
//! not_eligible with one reason (no_consent, no_identifiers, no_click_id,
//! too_old, platform_not_configured), checked in that order of precedence:
//! configuration, consent, age, then what the platform needs to match.

use postback_core::model::{ClickIds, Client, Page, PlatformDecision, PlatformIdentifiers};
use postback_core::Platform;

use crate::consent::ConsentDecision;

pub const PLATFORM_NOT_CONFIGURED: &str = "platform_not_configured";
pub const NO_CONSENT: &str = "no_consent";
pub const TOO_OLD: &str = "too_old";
pub const NO_CLICK_ID: &str = "no_click_id";
pub const NO_IDENTIFIERS: &str = "no_identifiers";

/// What the decision looks at, after consent was applied to it.
pub struct Evidence<'a> {
    pub configured: bool,
    pub consent: ConsentDecision,
    pub age_ms: i64,
    pub window_ms: i64,
    pub action_source: Option<&'a str>,
    /// Hashed identifiers for this platform (already emptied if consent
    /// withholds user data).
    pub identifiers: Option<&'a PlatformIdentifiers>,
    /// Usable click ids (all of them; consent is applied here).
    pub click_ids: Option<&'a ClickIds>,
    pub client: Option<&'a Client>,
    pub page: Option<&'a Page>,
}

fn has_any_identifier(ids: Option<&PlatformIdentifiers>) -> bool {
    ids.is_some_and(|i| {
        [
            &i.email,
            &i.phone,
            &i.first_name,
            &i.last_name,
            &i.date_of_birth,
            &i.gender,
            &i.city,
            &i.region,
            &i.postal_code,
            &i.country,
            &i.external_id,
        ]
        .iter()
        .any(|f| f.is_some())
    })
}

pub fn decide(platform: Platform, e: &Evidence<'_>) -> PlatformDecision {
    let reason = reason(platform, e);
    PlatformDecision {
        platform: platform.as_str().to_string(),
        eligible: reason.is_none(),
        reason: reason.map(str::to_string),
        send_user_data: e.consent.send_user_data,
        send_click_ids: e.consent.send_click_ids,
        limited_data_use: e.consent.limited_data_use,
    }
}

fn reason(platform: Platform, e: &Evidence<'_>) -> Option<&'static str> {
    if !e.configured {
        return Some(PLATFORM_NOT_CONFIGURED);
    }
    if !e.consent.allows_anything() {
        return Some(NO_CONSENT);
    }
    if e.age_ms > e.window_ms {
        return Some(TOO_OLD);
    }
    let clicks = if e.consent.send_click_ids {
        e.click_ids
    } else {
        None
    };
    let user_ids = e.consent.send_user_data && has_any_identifier(e.identifiers);
    let ua = e.client.and_then(|c| c.user_agent.as_deref()).is_some();
    let ip = e.client.and_then(|c| c.ip.as_deref()).is_some() && e.consent.send_user_data;
    match platform {
        Platform::GoogleAds => {
            let google_click = e
                .click_ids
                .is_some_and(|c| c.gclid.is_some() || c.gbraid.is_some() || c.wbraid.is_some());
            // Enhanced conversions for leads match on email/phone only.
            let matchable = e.consent.send_user_data
                && e.identifiers
                    .is_some_and(|i| i.email.is_some() || i.phone.is_some());
            if (google_click && e.consent.send_click_ids) || matchable {
                None
            } else if google_click {
                // The click is there, ad_storage consent is not.
                Some(NO_CONSENT)
            } else {
                Some(NO_CLICK_ID)
            }
        }
        Platform::Meta => {
            // A website event must carry the browser's user agent and the
            // page url (Meta rejects it otherwise).
            if e.action_source == Some("website")
                && (!ua || e.page.and_then(|p| p.url.as_deref()).is_none())
            {
                return Some(NO_IDENTIFIERS);
            }
            let cookie = clicks.is_some_and(|c| c.fbc.is_some() || c.fbp.is_some());
            if user_ids || cookie || (ip && ua) {
                None
            } else {
                Some(NO_IDENTIFIERS)
            }
        }
        Platform::Tiktok => {
            let click = clicks.is_some_and(|c| c.ttclid.is_some() || c.ttp.is_some());
            if user_ids || click || (ip && ua) {
                None
            } else {
                Some(NO_IDENTIFIERS)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(user_data: bool, clicks: bool) -> ConsentDecision {
        ConsentDecision {
            send_user_data: user_data,
            send_click_ids: clicks,
            limited_data_use: false,
        }
    }

    fn evidence<'a>(
        consent: ConsentDecision,
        ids: Option<&'a PlatformIdentifiers>,
        clicks: Option<&'a ClickIds>,
    ) -> Evidence<'a> {
        Evidence {
            configured: true,
            consent,
            age_ms: 1000,
            window_ms: 7 * 86_400_000,
            action_source: Some("system_generated"),
            identifiers: ids,
            click_ids: clicks,
            client: None,
            page: None,
        }
    }

    #[test]
    fn google_needs_a_usable_click_or_email_or_phone() {
        let gclid = ClickIds {
            gclid: Some("Cj0KCQiA-abcdef".into()),
            ..ClickIds::default()
        };
        let email = PlatformIdentifiers {
            email: Some(vec![0xaa; 32]),
            ..PlatformIdentifiers::default()
        };
        let names = PlatformIdentifiers {
            first_name: Some(vec![0xbb; 32]),
            ..PlatformIdentifiers::default()
        };
        let d = |e: &Evidence<'_>| decide(Platform::GoogleAds, e).reason;
        assert_eq!(d(&evidence(consent(true, true), None, Some(&gclid))), None);
        assert_eq!(d(&evidence(consent(true, true), Some(&email), None)), None);
        assert_eq!(
            d(&evidence(consent(true, true), Some(&names), None)).as_deref(),
            Some(NO_CLICK_ID)
        );
        // A click without ad_storage consent is a consent problem.
        assert_eq!(
            d(&evidence(consent(true, false), Some(&names), Some(&gclid))).as_deref(),
            Some(NO_CONSENT)
        );
    }

    #[test]
    fn precedence_is_configuration_consent_age() {
        let mut e = evidence(consent(false, false), None, None);
        e.configured = false;
        e.age_ms = i64::MAX;
        assert_eq!(
            decide(Platform::Meta, &e).reason.as_deref(),
            Some(PLATFORM_NOT_CONFIGURED)
        );
        e.configured = true;
        assert_eq!(
            decide(Platform::Meta, &e).reason.as_deref(),
            Some(NO_CONSENT)
        );
        e.consent = consent(true, true);
        assert_eq!(decide(Platform::Meta, &e).reason.as_deref(), Some(TOO_OLD));
    }

    #[test]
    fn meta_website_events_need_user_agent_and_page() {
        let fbp = ClickIds {
            fbp: Some("fb.1.1732270000000.1".into()),
            ..ClickIds::default()
        };
        let mut e = evidence(consent(true, true), None, Some(&fbp));
        assert_eq!(decide(Platform::Meta, &e).reason, None);
        e.action_source = Some("website");
        assert_eq!(
            decide(Platform::Meta, &e).reason.as_deref(),
            Some(NO_IDENTIFIERS)
        );
        let client = Client {
            user_agent: Some("Mozilla/5.0".into()),
            ..Client::default()
        };
        let page = Page {
            url: Some("https://shop.example/".into()),
            referrer: None,
        };
        e.client = Some(&client);
        e.page = Some(&page);
        assert_eq!(decide(Platform::Meta, &e).reason, None);
    }
}
