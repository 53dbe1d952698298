//! Enricher throughput on one core against a pass-through of the same
//! records through the same broker (consume, produce the bytes unchanged,
//! commit: the consumer loop with a handler that does nothing). The ratio is
//! what enrichment costs. Target: enriched >= 70% of pass-through.
//!
//! `scripts/bench.sh`, or `cargo bench --workspace --bench enricher_throughput`.
//! BENCH_EVENTS (default 100000).

use std::time::Instant;

use postback_core::dead_letter::DeadLetters;
use postback_core::eligibility::PlatformWindows;
use postback_core::metrics::ServiceMetrics;
use postback_core::model::*;
use postback_core::{Codec, Platform, SchemaKind};
use postback_enricher::config::{ConsentDefault, TenantConfig, TenantConsent};
use postback_enricher::enrich::Enricher;
use postback_enricher::handler::EnrichHandler;
use postback_enricher::metrics::EnricherMetrics;
use postback_testkit::bench::{fill, timed, PassThrough};
use postback_testkit::{unique, Broker};

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
];

fn raw(i: usize, now: i64) -> ConversionRaw {
    ConversionRaw {
        tenant: "bench".into(),
        event_id: format!("e-{i}"),
        event_name: "Purchase".into(),
        event_time: now - 60_000,
        received_at: now,
        source: Source::Server,
        action_source: Some("website".into()),
        order: Some(Order {
            order_id: Some(format!("o-{i}")),
            value: Some("129.90".into()),
            currency: Some("USD".into()),
            items: vec![],
        }),
        user: Some(User {
            email: Some(format!("Customer.{i}@Example.com")),
            phone: Some(format!("(650) 555-{:04}", i % 10_000)),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            city: Some("Menlo Park".into()),
            region: Some("CA".into()),
            postal_code: Some("94025".into()),
            country: Some("US".into()),
            external_id: Some(format!("cust-{i}")),
            ip: Some("203.0.113.7".into()),
            // A few hundred distinct user agents, as in real traffic.
            user_agent: Some(format!(
                "{} v/{}",
                USER_AGENTS[i % USER_AGENTS.len()],
                i % 300
            )),
            ..User::default()
        }),
        click_ids: Some(ClickIds {
            gclid: Some(format!("Cj0KCQiA-{i:010}")),
            fbclid: Some(format!("IwAR{i}")),
            ..ClickIds::default()
        }),
        page: Some(Page {
            url: Some("https://shop.example/thanks".into()),
            referrer: None,
        }),
        consent: Some(Consent {
            ad_storage: Some("granted".into()),
            ad_user_data: Some("granted".into()),
            ..Consent::default()
        }),
        pixels: Default::default(),
    }
}

// One core: the stage's own work runs on this one thread (librdkafka keeps
// its I/O threads either way, for both runs alike).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let broker = Broker::shared().await?;
    let input = unique("bench.raw");
    let (pass_out, enriched_out, rejected) = (
        unique("bench.pass"),
        unique("bench.enriched"),
        unique("bench.rejected"),
    );
    for t in [&input, &pass_out, &enriched_out, &rejected] {
        broker.create_topic(t, 6).await?;
    }
    let codec: Codec<ConversionRaw> = Codec::new(SchemaKind::ConversionRaw);
    let now = now_millis();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            let r = raw(i, now);
            Ok((r.key(), codec.encode(&r)?))
        })
        .collect::<Result<_, postback_core::CodecError>>()?;
    fill(&broker, &input, &records).await?;

    let tenants: std::collections::BTreeMap<String, TenantConfig> = [(
        "bench".to_string(),
        TenantConfig {
            id: "bench".into(),
            default_country: Some("US".into()),
            platforms: Platform::ALL.to_vec(),
            consent: TenantConsent {
                default: ConsentDefault::Granted,
                regions: vec![],
            },
        },
    )]
    .into_iter()
    .collect();
    // Each mode: the pass-through, the enricher, the pass-through again
    // (the better of the two is the baseline), on the same records.
    let mut figures = Vec::new();
    for exactly_once in [true, false] {
        let pass = |name: &'static str| {
            timed(
                &broker,
                &input,
                name,
                PassThrough {
                    topic: pass_out.clone(),
                },
                n,
                exactly_once,
            )
        };
        let first = pass("bench-pass").await?;
        let metrics = ServiceMetrics::new("enricher");
        let handler = EnrichHandler::new(
            Enricher::new(tenants.clone(), PlatformWindows::default()),
            enriched_out.clone(),
            DeadLetters::by_reference("enricher", rejected.clone()),
            EnricherMetrics::new(&metrics),
        );
        let enriched = timed(&broker, &input, "bench-enrich", handler, n, exactly_once).await?;
        let again = pass("bench-pass-2").await?;
        figures.push((exactly_once, first.max(again), first, again, enriched));
    }

    // Where a record's time goes, without the broker (same records).
    let sample = records.len().min(20_000);
    let mut enricher = Enricher::new(tenants, PlatformWindows::default());
    let enriched_codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
    let t = Instant::now();
    let decoded: Vec<ConversionRaw> = records[..sample]
        .iter()
        .map(|(_, p)| codec.decode(p))
        .collect::<Result<_, _>>()?;
    let decode_us = t.elapsed().as_secs_f64() * 1e6 / sample as f64;
    let t = Instant::now();
    let out: Vec<ConversionEnriched> = decoded
        .into_iter()
        .map(|r| enricher.enrich(r, now).record)
        .collect();
    let enrich_us = t.elapsed().as_secs_f64() * 1e6 / sample as f64;
    let t = Instant::now();
    let mut enriched_bytes = 0;
    for r in &out {
        enriched_bytes += enriched_codec.encode(r)?.len();
    }
    let encode_us = t.elapsed().as_secs_f64() * 1e6 / sample as f64;
    println!(
        "enricher benchmark: {n} raw conversions (~{} B each), one core, broker {}",
        records.iter().map(|(_, p)| p.len()).sum::<usize>() / n.max(1),
        broker.description()
    );
    for (exactly_once, baseline, first, again, enriched) in &figures {
        let mode = if *exactly_once {
            "exactly-once (transactions)"
        } else {
            "at-least-once (acks)"
        };
        println!("  {mode}:");
        println!("    pass-through consume+produce   {baseline:>10.0} events/s  (best of {first:.0} and {again:.0})");
        println!("    enricher                       {enriched:>10.0} events/s");
        println!(
            "    ratio enricher / pass-through  {:>10.2}",
            enriched / baseline
        );
    }
    if let [(true, _, _, _, with), (false, _, _, _, without)] = figures[..] {
        println!(
            "  ratio enricher with / without transactions: {:.2}",
            with / without
        );
    }
    println!(
        "  CPU per record, no broker: decode raw {decode_us:.1} us, enrich {enrich_us:.1} us, encode enriched {encode_us:.1} us; enriched record ~{} B",
        enriched_bytes / sample.max(1)
    );
    Ok(())
}
