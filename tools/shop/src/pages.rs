//! The shop's pages. The order of the head is the point: the consent
//! banner's defaults first, then the tag (so it sees the consent and the
//! pixels' snippets as they are created), then the pixels.

use serde_json::json;

use crate::config::ShopConfig;
use crate::orders::{Order, CURRENCY, PRICE_CENTS, PRODUCT, SKU};

pub const CONSENT_JS: &str = include_str!("../assets/consent.js");
pub const SHOP_CSS: &str = include_str!("../assets/shop.css");

/// The pixels' ids: those of the demo tenant's accounts in
/// config/dispatcher.local.toml.
const META_PIXEL_ID: &str = "1234567890123456";
const GOOGLE_ADS_ID: &str = "AW-1234567890";
const GOOGLE_ADS_LABEL: &str = "AW-1234567890/purchase";
const TIKTOK_PIXEL_ID: &str = "CSANDBOXPIXEL01";

/// Which kind of consent manager the visit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    ConsentMode,
    Tcf,
    Plain,
}

impl Cmp {
    pub fn parse(s: &str) -> Option<Cmp> {
        match s {
            "consent_mode" => Some(Cmp::ConsentMode),
            "tcf" => Some(Cmp::Tcf),
            "plain" => Some(Cmp::Plain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cmp::ConsentMode => "consent_mode",
            Cmp::Tcf => "tcf",
            Cmp::Plain => "plain",
        }
    }
}

pub struct Page<'a> {
    config: &'a ShopConfig,
    cmp: Cmp,
}

/// A value inside a <script>: JSON, with `</` broken so it cannot end the
/// element.
fn js(value: &serde_json::Value) -> String {
    value.to_string().replace("</", "<\\/")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

impl<'a> Page<'a> {
    pub fn new(config: &'a ShopConfig, cmp: Cmp) -> Page<'a> {
        Page { config, cmp }
    }

    fn layout(&self, title: &str, body: &str, script: &str) -> String {
        let collector = self.config.collector_url.trim_end_matches('/');
        let shop = json!({
            "cmp": self.cmp.as_str(),
            "pixels_url": self.config.pixels_url.trim_end_matches('/'),
            "meta_pixel_id": META_PIXEL_ID,
            "google_ads_id": GOOGLE_ADS_ID,
            "tiktok_pixel_id": TIKTOK_PIXEL_ID,
        });
        let init = json!({
            "collector": collector,
            "site_key": self.config.site_key,
            "platforms": ["meta", "google_ads", "tiktok"],
            "wait_for_consent": true,
        });
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} · Trail Shop</title>
<link rel="stylesheet" href="/assets/shop.css">
<script id="shop-config" type="application/json">{shop}</script>
<script src="/assets/consent.js"></script>
<script>
window.postback=window.postback||function(){{(postback.q=postback.q||[]).push(arguments)}};
postback('init', {init});
</script>
<script src="{tag}"></script>
</head>
<body>
<header><a href="/">Trail Shop</a><span class="note">a postback demo shop · consent manager: <code>{cmp}</code></span></header>
<main>
{body}
</main>
<div id="consent-banner" hidden>
<p>We and our ad partners (Meta, Google Ads, TikTok) use cookies and similar technologies to measure purchases.</p>
<button class="button" data-consent="granted" id="accept">Accept all</button>
<button class="button secondary" data-consent="denied" id="reject">Reject all</button>
</div>
{script}
</body>
</html>
"#,
            title = escape(title),
            shop = js(&shop),
            init = js(&init),
            tag = escape(&format!("{collector}/v1/tag.js")),
            cmp = self.cmp.as_str(),
        )
    }

    pub fn landing(&self) -> String {
        let price = format!("{}.{:02}", PRICE_CENTS / 100, PRICE_CENTS % 100);
        let body = format!(
            r#"<div class="product"><div class="shoe"></div><div>
<h1>{PRODUCT}</h1><p>{price} {CURRENCY} · <code>{SKU}</code></p>
<a class="button" id="buy" href="/checkout">Buy now</a></div></div>
<p class="note">Arrived from an ad? The tag keeps its click id (gclid, gbraid, wbraid, fbclid, ttclid) in a first-party cookie once consent allows it.</p>"#
        );
        self.layout(PRODUCT, &body, "")
    }

    pub fn checkout(&self) -> String {
        let body = r#"<h1>Checkout</h1>
<form method="post" action="/order">
<label>Quantity <input name="quantity" id="quantity" type="number" min="1" max="20" value="1"></label>
<label>E-mail (optional) <input name="email" id="email" type="email" autocomplete="email"></label>
<label><input name="server_report" id="server-report-box" type="checkbox" checked> The shop's server reports the order too (unticked: the browser tag alone)</label>
<button class="button" id="place-order" type="submit">Place order</button>
</form>"#;
        self.layout("Checkout", body, "")
    }

    pub fn thanks(&self, order: &Order) -> String {
        let event_id = order.event_id();
        let value = order.value();
        let purchase = json!({
            "event_id": event_id,
            "order": {"order_id": order.id, "value": value, "currency": CURRENCY},
            "value": value,
            "currency": CURRENCY,
            "google_ads_label": GOOGLE_ADS_LABEL,
        });
        let body = format!(
            r#"<h1>Thank you!</h1>
<p>Order <code id="order-id">{id}</code>: {quantity} × {PRODUCT}, {value} {CURRENCY}.</p>
<p class="note">Event id <code id="event-id">{event_id}</code>, given to every pixel and to the tag. Server report: <span id="server-report">{report}</span>.</p>"#,
            id = escape(&order.id),
            quantity = order.quantity,
            event_id = escape(&event_id),
            report = escape(order.server_report.as_deref().unwrap_or("not sent")),
        );
        // The purchase, as a shop fires it: each pixel that is on the page
        // gets the event id, and so does the tag.
        let script = format!(
            r#"<script>
(function (p) {{
  if (window.fbq) fbq('track', 'Purchase', {{value: Number(p.value), currency: p.currency}}, {{eventID: p.event_id}});
  gtag('event', 'conversion', {{send_to: p.google_ads_label, value: Number(p.value), currency: p.currency, transaction_id: p.event_id}});
  if (window.ttq) ttq.track('CompletePayment', {{value: Number(p.value), currency: p.currency}}, {{event_id: p.event_id}});
  postback('track', 'Purchase', {{event_id: p.event_id, order: p.order}});
}})({purchase});
</script>"#,
            purchase = js(&purchase),
        );
        self.layout("Thank you", &body, &script)
    }
}
