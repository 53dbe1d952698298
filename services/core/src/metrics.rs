//! Prometheus metrics. Every name is `postback_<service>_<noun>_<unit|total>`;
//! labels are low-cardinality (platform, outcome, reason, topic, partition),
//! never an event id, a key or a tenant's free text.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One service's registry; hands out metrics with the service's prefix.
#[derive(Clone)]
pub struct ServiceMetrics {
    service: &'static str,
    registry: Registry,
}

impl ServiceMetrics {
    pub fn new(service: &'static str) -> Self {
        ServiceMetrics {
            service,
            registry: Registry::new(),
        }
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn name(&self, noun_unit: &str) -> String {
        format!("postback_{}_{}", self.service, noun_unit)
    }

    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        // Registering the same name twice is a programming error in the
        // service; report it loudly in debug builds and keep running otherwise.
        if let Err(e) = self.registry.register(Box::new(c.clone())) {
            debug_assert!(false, "metric registration failed: {e}");
            tracing::error!(error = %e, "metric registration failed");
        }
        c
    }

    pub fn counter(&self, noun_total: &str, help: &str) -> IntCounter {
        let c = IntCounter::with_opts(Opts::new(self.name(noun_total), help))
            .expect("valid metric name");
        self.register(c)
    }

    pub fn counter_vec(&self, noun_total: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(self.name(noun_total), help), labels)
            .expect("valid metric name");
        self.register(c)
    }

    pub fn gauge(&self, noun_unit: &str, help: &str) -> IntGauge {
        let g =
            IntGauge::with_opts(Opts::new(self.name(noun_unit), help)).expect("valid metric name");
        self.register(g)
    }

    pub fn gauge_vec(&self, noun_unit: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(self.name(noun_unit), help), labels)
            .expect("valid metric name");
        self.register(g)
    }

    pub fn histogram(&self, noun_unit: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        let h =
            Histogram::with_opts(HistogramOpts::new(self.name(noun_unit), help).buckets(buckets))
                .expect("valid metric name");
        self.register(h)
    }

    pub fn histogram_vec(
        &self,
        noun_unit: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        let h = HistogramVec::new(
            HistogramOpts::new(self.name(noun_unit), help).buckets(buckets),
            labels,
        )
        .expect("valid metric name");
        self.register(h)
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Latency buckets in seconds, from 1 ms to 30 s.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

/// Size buckets (records per batch), 1 to 2,000.
pub fn batch_size_buckets() -> Vec<f64> {
    vec![
        1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0,
    ]
}
