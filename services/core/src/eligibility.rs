//! Eligibility, per platform the tenant configured: eligible, or
//! not_eligible with one reason (no_consent, no_identifiers, no_click_id,
//! too_old, platform_not_configured), checked in that order of precedence:
//! configuration, consent, age, then what the platform needs to match.
//!
//! Shared because two stages decide it: the enricher for each report, and
//! the deduplicator again for a conversion merged from several reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate};
use crate::model::{ClickIds, Client, Page, PlatformDecision, PlatformIdentifiers};
use crate::Platform;

pub const PLATFORM_NOT_CONFIGURED: &str = "platform_not_configured";
pub const NO_CONSENT: &str = "no_consent";
pub const TOO_OLD: &str = "too_old";
pub const NO_CLICK_ID: &str = "no_click_id";
pub const NO_IDENTIFIERS: &str = "no_identifiers";

/// How old an event a platform still accepts (reference/platform-apis.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformWindows {
    /// Meta rejects events older than 7 days...
    pub meta_days: u32,
    /// ...except physical_store events, up to 62 days.
    pub meta_physical_store_days: u32,
    /// Google Ads click conversions: 90 days (EXPIRED_EVENT past it).
    pub google_ads_days: u32,
    /// TikTok does not document a limit; ttclid is valid 7 days, so 7 by default.
    pub tiktok_days: u32,
}

impl Default for PlatformWindows {
    fn default() -> Self {
        PlatformWindows {
            meta_days: 7,
            meta_physical_store_days: 62,
            google_ads_days: 90,
            tiktok_days: 7,
        }
    }
}

impl PlatformWindows {
    /// How long after its event_time `platform` still accepts an event.
    pub fn window(&self, platform: Platform, action_source: Option<&str>) -> Duration {
        let days = match platform {
            Platform::Meta if action_source == Some("physical_store") => {
                self.meta_physical_store_days
            }
            Platform::Meta => self.meta_days,
            Platform::GoogleAds => self.google_ads_days,
            Platform::Tiktok => self.tiktok_days,
        };
        Duration::from_secs(u64::from(days) * 86_400)
    }
}

impl Validate for PlatformWindows {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, days) in [
            ("platforms.meta_days", self.meta_days),
            (
                "platforms.meta_physical_store_days",
                self.meta_physical_store_days,
            ),
            ("platforms.google_ads_days", self.google_ads_days),
            ("platforms.tiktok_days", self.tiktok_days),
        ] {
            if days == 0 || days > 400 {
                return Err(ConfigError::invalid(key, "must be between 1 and 400 days"));
            }
        }
        Ok(())
    }
}

/// What consent allows for one platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsentDecision {
    pub send_user_data: bool,
    pub send_click_ids: bool,
    pub limited_data_use: bool,
}

impl ConsentDecision {
    pub fn allows_anything(&self) -> bool {
        self.send_user_data || self.send_click_ids
    }

    /// The consent a platform decision was made under.
    pub fn of(decision: &PlatformDecision) -> Self {
        ConsentDecision {
            send_user_data: decision.send_user_data,
            send_click_ids: decision.send_click_ids,
            limited_data_use: decision.limited_data_use,
        }
    }
}

/// What the decision looks at, after consent was applied to it.
pub struct Evidence<'a> {
    pub configured: bool,
    pub consent: ConsentDecision,
    /// Older than the platform accepts (its window for the action source).
    pub too_old: bool,
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
    if e.too_old {
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
            too_old: false,
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
        e.too_old = true;
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
