//! The shop's orders, in memory: enough for a thank-you page and the
//! server report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const PRODUCT: &str = "Trail shoe";
pub const SKU: &str = "sku-42";
/// Cents, to keep the arithmetic exact.
pub const PRICE_CENTS: u64 = 12_990;
pub const CURRENCY: &str = "EUR";

#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub quantity: u32,
    pub email: Option<String>,
    pub server_report: Option<String>,
}

impl Order {
    /// The id the page gives the pixels and the tag, and the server report
    /// carries: what the platforms and the deduplicator match on.
    pub fn event_id(&self) -> String {
        format!("order-{}", self.id)
    }

    pub fn value(&self) -> String {
        let cents = PRICE_CENTS * u64::from(self.quantity);
        format!("{}.{:02}", cents / 100, cents % 100)
    }

    /// What the shop's server sends: the order and the customer, with the
    /// consent the visitor gave the shop's banner.
    pub fn server_report(&self, consent: Option<&str>, user_agent: Option<&str>) -> Value {
        let mut report = json!({
            "event_id": self.event_id(),
            "event_name": "Purchase",
            "action_source": "website",
            "order": {
                "order_id": self.id,
                "value": self.value(),
                "currency": CURRENCY,
                "items": [{"id": SKU, "name": PRODUCT, "quantity": self.quantity, "price": "129.90"}],
            },
        });
        let mut user = serde_json::Map::new();
        if let Some(e) = &self.email {
            user.insert("email".into(), json!(e));
        }
        if let Some(ua) = user_agent {
            user.insert("user_agent".into(), json!(ua));
        }
        if !user.is_empty() {
            report["user"] = Value::Object(user);
        }
        if let Some(state) = consent.filter(|c| *c == "granted" || *c == "denied") {
            report["consent"] = json!({
                "ad_storage": state,
                "ad_user_data": state,
                "ad_personalization": state,
            });
        }
        report
    }
}

pub struct Orders {
    /// Unique per start, so ids of two runs never meet in one tenant.
    prefix: String,
    next: AtomicU64,
    orders: Mutex<HashMap<String, Order>>,
}

impl Orders {
    pub fn new() -> Orders {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Orders {
            prefix: format!("{secs:x}"),
            next: AtomicU64::new(1001),
            orders: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Order>> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, quantity: u32, email: Option<String>) -> Order {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let order = Order {
            id: format!("{}-{n}", self.prefix),
            quantity,
            email,
            server_report: None,
        };
        self.lock().insert(order.id.clone(), order.clone());
        order
    }

    pub fn set_report(&self, id: &str, answer: String) {
        if let Some(o) = self.lock().get_mut(id) {
            o.server_report = Some(answer);
        }
    }

    pub fn get(&self, id: &str) -> Option<Order> {
        self.lock().get(id).cloned()
    }
}
