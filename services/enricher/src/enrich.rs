//! Raw conversion in, enriched conversion out: hashes per platform, consent,
//! eligibility, click ids and device, and then only the personal data some
//! platform may receive under the event's consent (`core::minimise`), with
//! URLs cut to their allowlisted query (`urls.rs`). Pure apart from the
//! user-agent cache, so it is tested without a broker.

use std::collections::BTreeMap;

use postback_core::eligibility::{self, Evidence, PlatformWindows};
use postback_core::minimise::minimise;
use postback_core::model::{Client, ConversionEnriched, ConversionRaw, Page, PlatformIdentifiers};
use postback_core::Platform;

use crate::click_ids::{self, Dropped};
use crate::config::{TenantConfig, TenantConsent};
use crate::consent;
use crate::device::DeviceParser;
use crate::normalize::{self, is_sha256_hex, Field, NormalizeError};
use crate::urls::QueryAllowlist;

pub struct Enricher {
    tenants: BTreeMap<String, TenantConfig>,
    windows: PlatformWindows,
    devices: DeviceParser,
    unconfigured: TenantConsent,
    urls: QueryAllowlist,
}

/// The enriched record and what was left out on the way (for metrics).
pub struct Enrichment {
    pub record: ConversionEnriched,
    pub unknown_tenant: bool,
    pub dropped_identifiers: Vec<(Platform, Field, NormalizeError)>,
    pub dropped_click_ids: Vec<Dropped>,
}

impl Enricher {
    pub fn new(tenants: BTreeMap<String, TenantConfig>, windows: PlatformWindows) -> Self {
        Enricher {
            tenants,
            windows,
            devices: DeviceParser::new(),
            unconfigured: TenantConsent::default(),
            urls: QueryAllowlist::new(&crate::config::PrivacyConfig::default().url_query_allowlist),
        }
    }

    pub fn with_url_allowlist(mut self, urls: QueryAllowlist) -> Self {
        self.urls = urls;
        self
    }

    fn clean_page(&self, page: Option<Page>) -> Option<Page> {
        let page = page?;
        let clean = Page {
            url: page.url.and_then(|u| self.urls.clean(&u)),
            referrer: page.referrer.and_then(|u| self.urls.clean(&u)),
        };
        (clean.url.is_some() || clean.referrer.is_some()).then_some(clean)
    }

    pub fn enrich(&mut self, raw: ConversionRaw, now_ms: i64) -> Enrichment {
        let tenant = self.tenants.get(&raw.tenant);
        let user = raw.user.unwrap_or_default();
        // The event's own country, unless it came pre-hashed; else the tenant's.
        let country = user
            .country
            .as_deref()
            .filter(|c| !is_sha256_hex(c))
            .or(tenant.and_then(|t| t.default_country.as_deref()))
            .map(str::to_string);
        let consent_rules = tenant.map(|t| &t.consent).unwrap_or(&self.unconfigured);
        let consent = consent::evaluate(raw.consent.as_ref(), consent_rules, country.as_deref());
        let (click_ids, dropped_click_ids) =
            click_ids::clean(raw.click_ids.as_ref(), raw.event_time);

        let device = user
            .user_agent
            .as_deref()
            .and_then(|ua| self.devices.parse(ua));
        let client = if user.ip.is_some() || user.user_agent.is_some() {
            Some(Client {
                ip: user.ip.clone(),
                user_agent: user.user_agent.clone(),
                device_type: device.as_ref().map(|d| d.device_type.to_string()),
                os: device.as_ref().and_then(|d| d.os.clone()),
                browser: device.as_ref().and_then(|d| d.browser.clone()),
            })
        } else {
            None
        };

        let page = self.clean_page(raw.page);
        let mut identifiers: Vec<PlatformIdentifiers> = Vec::new();
        let mut decisions = Vec::with_capacity(Platform::ALL.len());
        let mut dropped_identifiers = Vec::new();
        for platform in Platform::ALL {
            let configured = tenant.is_some_and(|t| t.platforms.contains(&platform));
            // Data minimisation: hashes only for platforms that may get them.
            let ids = if configured && consent.send_user_data {
                let (ids, dropped) = normalize::identifiers(platform, &user, country.as_deref());
                dropped_identifiers.extend(dropped.into_iter().map(|(f, e)| (platform, f, e)));
                Some(ids)
            } else {
                None
            };
            let evidence = Evidence {
                configured,
                consent,
                too_old: now_ms - raw.event_time
                    > self
                        .windows
                        .window(platform, raw.action_source.as_deref())
                        .as_millis() as i64,
                action_source: raw.action_source.as_deref(),
                identifiers: ids.as_ref(),
                click_ids: click_ids.as_ref(),
                client: client.as_ref(),
                page: page.as_ref(),
            };
            decisions.push(eligibility::decide(platform, &evidence));
            if let Some(ids) = ids {
                identifiers.push(ids);
            }
        }

        let mut record = ConversionEnriched {
            tenant: raw.tenant,
            event_id: raw.event_id,
            event_name: raw.event_name,
            event_time: raw.event_time,
            received_at: raw.received_at,
            source: raw.source,
            action_source: raw.action_source,
            order: raw.order,
            click_ids,
            page,
            client,
            consent: raw.consent,
            identifiers,
            decisions,
            pixels: raw.pixels,
        };
        minimise(&mut record);
        Enrichment {
            record,
            unknown_tenant: tenant.is_none(),
            dropped_identifiers,
            dropped_click_ids,
        }
    }
}
