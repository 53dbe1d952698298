//! Consent, per platform: may this conversion be sent, and with which data.
//!
//! Google Consent Mode v2 is the signal sites send (ad_storage,
//! ad_user_data, ad_personalization). It is Google's vocabulary, but CMPs
//! set it from the visitor's one marketing choice, so postback applies it to
//! every ad platform the same way:
//! - ad_user_data denied: no user identifiers (hashes, ip) go to the platform;
//! - ad_storage denied: no click-id or cookie based matching (gclid/gbraid/
//!   wbraid, fbc/fbp, ttclid/ttp);
//! - both denied: nothing may be sent (not_eligible: no_consent).
//!
//! limited_data_use turns on Meta's LDU and TikTok's limited_data_use; it
//! restricts processing but does not forbid the upload. A flag the event does
//! not carry takes the tenant's default for the visitor's region.

use postback_core::eligibility::ConsentDecision;
use postback_core::model::Consent;

use crate::config::{ConsentDefault, TenantConsent};

fn granted(flag: Option<&str>, default: ConsentDefault) -> bool {
    match flag {
        Some("granted") => true,
        Some("denied") => false,
        // The collector only lets granted/denied through; anything else is
        // treated as not given.
        _ => default == ConsentDefault::Granted,
    }
}

/// The consent decision for an event from `country` (user's, else tenant's).
pub fn evaluate(
    consent: Option<&Consent>,
    tenant: &TenantConsent,
    country: Option<&str>,
) -> ConsentDecision {
    let default = tenant.default_for(country);
    let (ad_storage, ad_user_data, ldu) = match consent {
        Some(c) => (
            c.ad_storage.as_deref(),
            c.ad_user_data.as_deref(),
            c.limited_data_use,
        ),
        None => (None, None, None),
    };
    ConsentDecision {
        send_user_data: granted(ad_user_data, default),
        send_click_ids: granted(ad_storage, default),
        limited_data_use: ldu.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegionConsent;

    fn consent(storage: Option<&str>, user_data: Option<&str>) -> Consent {
        Consent {
            ad_storage: storage.map(str::to_string),
            ad_user_data: user_data.map(str::to_string),
            ..Consent::default()
        }
    }

    #[test]
    fn explicit_flags_win_over_defaults() {
        let tenant = TenantConsent {
            default: ConsentDefault::Granted,
            regions: vec![],
        };
        let d = evaluate(
            Some(&consent(Some("denied"), Some("granted"))),
            &tenant,
            None,
        );
        assert!(d.send_user_data && !d.send_click_ids);
        let d = evaluate(
            Some(&consent(Some("denied"), Some("denied"))),
            &tenant,
            None,
        );
        assert!(!d.allows_anything());
    }

    #[test]
    fn missing_flags_take_the_regional_default() {
        let tenant = TenantConsent {
            default: ConsentDefault::Granted,
            regions: vec![RegionConsent {
                countries: vec!["FR".into(), "DE".into()],
                default: ConsentDefault::Denied,
            }],
        };
        assert!(!evaluate(None, &tenant, Some("fr")).allows_anything());
        assert!(evaluate(None, &tenant, Some("US")).send_user_data);
        assert!(evaluate(None, &tenant, None).send_click_ids);
        // One flag given, the other defaulted.
        let d = evaluate(Some(&consent(Some("granted"), None)), &tenant, Some("DE"));
        assert!(d.send_click_ids && !d.send_user_data);
    }

    #[test]
    fn limited_data_use_is_carried() {
        let c = Consent {
            limited_data_use: Some(true),
            ..consent(Some("granted"), Some("granted"))
        };
        assert!(evaluate(Some(&c), &TenantConsent::default(), None).limited_data_use);
    }
}
