//! The deduplicator's decisions without a broker: reports in, outputs and
//! state out, on a real on-disk store, with time passed in.

use std::collections::HashMap;
use std::path::Path;

use postback_core::eligibility::PlatformWindows;
use postback_core::kafka::{Delivered, OutboundRecord};
use postback_core::metrics::ServiceMetrics;
use postback_core::model::{
    ConversionEnriched, DeliveryStatus, FrontEndStatus, ServerSideStatus, Source,
};
use postback_core::{Codec, SchemaKind};
use postback_deduplicator::dedup::{Deduplicator, Outcome, OutputTopics, Settings};
use postback_deduplicator::metrics::DedupMetrics;
use postback_deduplicator::store::{StateStore, StoreConfig};
use postback_testkit::fixtures::enriched_report;

const T0: i64 = 1_732_270_000_000;
const MERGE: i64 = 10_000;
const WINDOW: i64 = 48 * 3_600_000;

struct Harness {
    dedup: Deduplicator,
    out: Vec<OutboundRecord>,
    /// Every output acknowledged so far.
    sent: Vec<OutboundRecord>,
    next_input: HashMap<i32, i64>,
    next_changelog: HashMap<i32, i64>,
}

fn open(dir: &Path, merge_window_ms: i64) -> Harness {
    open_with_browser_wait(dir, merge_window_ms, merge_window_ms)
}

fn open_with_browser_wait(dir: &Path, merge_window_ms: i64, browser_wait_ms: i64) -> Harness {
    let store = StateStore::open(&StoreConfig {
        dir: dir.to_path_buf(),
        cache_bytes: 8 << 20,
        memtable_bytes: 4 << 20,
    })
    .unwrap();
    let mut dedup = Deduplicator::new(
        store,
        Settings {
            window_ms: WINDOW,
            merge_window_ms,
            browser_wait_ms,
            platforms: PlatformWindows::default(),
            max_emits_per_tick: 1000,
        },
        OutputTopics {
            status: "status".into(),
            changelog: "changelog".into(),
            dispatch: [
                "dispatch.meta".into(),
                "dispatch.google_ads".into(),
                "dispatch.tiktok".into(),
            ],
            rejected: "rejected".into(),
        },
        DedupMetrics::new(&ServiceMetrics::new("deduplicator")),
    );
    for p in 0..2 {
        dedup.adopt(p).unwrap();
    }
    Harness {
        dedup,
        out: Vec::new(),
        sent: Vec::new(),
        next_input: HashMap::new(),
        next_changelog: HashMap::new(),
    }
}

impl Harness {
    fn report(&mut self, partition: i32, r: ConversionEnriched, now: i64) -> Outcome {
        let offset = self.next_input.entry(partition).or_insert(0);
        *offset += 1;
        let o = self
            .dedup
            .report(partition, *offset, r, now, &mut self.out)
            .unwrap();
        self.ack();
        o
    }

    fn replay(&mut self, partition: i32, offset: i64, r: ConversionEnriched, now: i64) -> Outcome {
        let o = self
            .dedup
            .report(partition, offset, r, now, &mut self.out)
            .unwrap();
        self.ack();
        o
    }

    fn tick(&mut self, now: i64) -> usize {
        let n = self.dedup.tick(now, &mut self.out).unwrap();
        self.ack();
        n
    }

    fn ack(&mut self) {
        let deliveries: Vec<Delivered> = self
            .out
            .iter()
            .map(|o| {
                let partition = o.partition.unwrap_or(0);
                let next = self.next_changelog.entry(partition).or_insert(0);
                *next += 1;
                Delivered {
                    partition,
                    offset: *next - 1,
                }
            })
            .collect();
        self.dedup.acknowledged(&deliveries).unwrap();
        self.sent.append(&mut self.out);
    }

    fn dispatched(&self, platform: &str) -> Vec<ConversionEnriched> {
        let codec: Codec<ConversionEnriched> = Codec::new(SchemaKind::ConversionEnriched);
        self.sent
            .iter()
            .filter(|o| o.topic == format!("dispatch.{platform}"))
            .map(|o| codec.decode(&o.payload).unwrap())
            .collect()
    }

    fn statuses(&self) -> Vec<DeliveryStatus> {
        let codec: Codec<DeliveryStatus> = Codec::new(SchemaKind::DeliveryStatus);
        self.sent
            .iter()
            .filter(|o| o.topic == "status")
            .map(|o| codec.decode(&o.payload).unwrap())
            .collect()
    }
}

fn report(id: &str, name: &str, source: Source) -> ConversionEnriched {
    enriched_report("acme", id, name, source, T0 - 60_000)
}

#[test]
fn browser_and_server_reports_merge_into_one_emission_in_either_order() {
    for order in [
        [Source::Browser, Source::Server],
        [Source::Server, Source::Browser],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut h = open(dir.path(), MERGE);
        assert_eq!(
            h.report(0, report("o-1", "Purchase", order[0]), T0),
            Outcome::Held
        );
        assert_eq!(
            h.report(0, report("o-1", "Purchase", order[1]), T0 + 3_000),
            Outcome::Merged
        );
        assert_eq!(h.tick(T0 + MERGE - 1), 0, "window still open");
        assert!(h.dispatched("meta").is_empty());
        assert_eq!(h.tick(T0 + MERGE), 1);
        for platform in ["meta", "google_ads", "tiktok"] {
            let sent = h.dispatched(platform);
            assert_eq!(sent.len(), 1, "{platform}");
            let m = &sent[0];
            // Only this platform's hashes and decision travel on.
            assert_eq!(m.identifiers.len(), 1);
            assert_eq!(m.identifiers[0].platform, platform);
            assert_eq!(m.decisions.len(), 1);
            // The union: the server's email and phone, the browser's external id.
            let ids = &m.identifiers[0];
            assert!(ids.email.is_some() && ids.phone.is_some() && ids.external_id.is_some());
            // Server wins for the order, the browser for the visit; each
            // platform gets only the personal fields it sends
            // (core::minimise): Google no address, its own click ids only.
            assert_eq!(m.order.as_ref().unwrap().value.as_deref(), Some("129.90"));
            let ip = m.client.as_ref().unwrap().ip.as_deref();
            let clicks = m.click_ids.as_ref().unwrap();
            match platform {
                "google_ads" => {
                    assert_eq!(ip, None);
                    assert!(m.page.is_none());
                    assert!(
                        clicks.gclid.is_some() && clicks.fbc.is_none() && clicks.ttclid.is_none()
                    );
                }
                "meta" => {
                    assert_eq!(ip, Some("203.0.113.7"));
                    assert!(
                        clicks.fbc.is_some() && clicks.gclid.is_none() && clicks.ttclid.is_none()
                    );
                }
                _ => {
                    assert_eq!(ip, Some("203.0.113.7"));
                    assert!(
                        clicks.ttclid.is_some() && clicks.gclid.is_none() && clicks.fbc.is_none()
                    );
                }
            }
        }
        let statuses = h.statuses();
        assert_eq!(statuses.len(), 3);
        for s in &statuses {
            assert_eq!(s.server_side, ServerSideStatus::Eligible);
            assert_eq!(s.reported_by.as_deref(), Some("browser+server"));
        }
        let front = |p: &str| statuses.iter().find(|s| s.platform == p).unwrap().front_end;
        assert_eq!(front("meta"), Some(FrontEndStatus::Fired));
        assert_eq!(front("google_ads"), Some(FrontEndStatus::NotFired));
        assert_eq!(front("tiktok"), Some(FrontEndStatus::Unknown));
    }
}

/// A beacon is public: one with a guessed event id may come first. It waits
/// the browser's longer wait, so the shop's report, minutes later, still
/// merges in and wins the order and the customer's identifiers; a
/// conversion the browser alone reported goes out when that wait ends.
#[test]
fn a_browser_report_first_waits_for_the_server_and_the_server_wins() {
    const WAIT: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let mut h = open_with_browser_wait(dir.path(), MERGE, WAIT);
    let mut forged = report("o-9", "Purchase", Source::Browser);
    forged.order.as_mut().unwrap().value = Some("0.01".into());
    assert_eq!(h.report(0, forged, T0), Outcome::Held);
    assert_eq!(
        h.report(1, report("o-10", "Purchase", Source::Browser), T0),
        Outcome::Held
    );
    // Past the merge window, nothing went out.
    assert_eq!(h.tick(T0 + MERGE * 6), 0);
    assert!(h.dispatched("meta").is_empty() && h.statuses().is_empty());
    // The shop's report, a minute later: merged, and out at the next tick
    // (its merge window, counted from the first report, has passed).
    let server_at = T0 + 60_000;
    assert_eq!(
        h.report(0, report("o-9", "Purchase", Source::Server), server_at),
        Outcome::Merged
    );
    assert_eq!(h.tick(server_at), 1);
    for platform in ["meta", "google_ads", "tiktok"] {
        let sent = h.dispatched(platform);
        assert_eq!(sent.len(), 1, "{platform}");
        let m = &sent[0];
        assert_eq!(m.event_id, "o-9");
        assert_eq!(m.order.as_ref().unwrap().value.as_deref(), Some("129.90"));
        let ids = &m.identifiers[0];
        assert_eq!(ids.email.as_deref(), Some(&[0x5e; 32][..]), "{platform}");
        assert_eq!(ids.phone.as_deref(), Some(&[0x50; 32][..]), "{platform}");
    }
    // The browser-only one goes when its wait ends, and once.
    assert_eq!(h.tick(T0 + WAIT - 1), 0);
    assert_eq!(h.tick(T0 + WAIT), 1);
    assert_eq!(h.dispatched("meta").len(), 2);
    assert_eq!(h.tick(T0 + WAIT * 2), 0);
    // A server report first still waits the merge window only.
    h.report(0, report("o-11", "Purchase", Source::Server), T0 + WAIT);
    assert_eq!(h.tick(T0 + WAIT + MERGE), 1);
}

/// The moved timer survives a restart: the store's deadline is the
/// merged one, so a reopened instance emits at it, not at the browser's.
#[test]
fn a_shortened_wait_survives_a_reopen() {
    const WAIT: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut h = open_with_browser_wait(dir.path(), MERGE, WAIT);
        h.report(0, report("o-12", "Purchase", Source::Browser), T0);
        h.report(0, report("o-12", "Purchase", Source::Server), T0 + 2_000);
    }
    let mut h = open_with_browser_wait(dir.path(), MERGE, WAIT);
    assert_eq!(h.tick(T0 + MERGE - 1), 0);
    assert_eq!(h.tick(T0 + MERGE), 1);
    assert_eq!(h.dispatched("google_ads").len(), 1);
}

#[test]
fn a_report_after_emission_is_a_duplicate_that_updates_the_front_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    h.report(1, report("o-2", "Purchase", Source::Server), T0);
    h.tick(T0 + MERGE);
    let before = h.statuses().len();
    let mut late = report("o-2", "Purchase", Source::Browser);
    late.pixels.insert("tiktok".into(), "fired".into());
    assert_eq!(h.report(1, late, T0 + 60_000), Outcome::Duplicate);
    assert_eq!(h.tick(T0 + 120_000), 0);
    assert_eq!(h.dispatched("meta").len(), 1, "never emitted twice");
    let dups: Vec<_> = h.statuses().into_iter().skip(before).collect();
    assert_eq!(dups.len(), 3);
    for d in &dups {
        assert_eq!(d.server_side, ServerSideStatus::Duplicate);
        assert_eq!(d.reported_by.as_deref(), Some("browser"));
        assert!(d
            .duplicate_of
            .as_deref()
            .unwrap()
            .starts_with("server report"));
    }
    let tiktok = dups.iter().find(|d| d.platform == "tiktok").unwrap();
    assert_eq!(tiktok.front_end, Some(FrontEndStatus::Fired));
}

#[test]
fn one_event_id_under_two_event_names_is_two_conversions() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    assert_eq!(
        h.report(0, report("o-3", "Lead", Source::Server), T0),
        Outcome::Held
    );
    assert_eq!(
        h.report(0, report("o-3", "Purchase", Source::Server), T0),
        Outcome::Held
    );
    h.tick(T0 + MERGE);
    let names: Vec<String> = h
        .dispatched("meta")
        .into_iter()
        .map(|c| c.event_name)
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"Lead".to_string()) && names.contains(&"Purchase".to_string()));
}

#[test]
fn five_reloads_of_the_thank_you_page_upload_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    let outcomes: Vec<Outcome> = [0, 2_000, 30_000, 3_600_000, 40 * 3_600_000]
        .into_iter()
        .map(|dt| {
            h.tick(T0 + dt);
            h.report(0, report("o-4", "Purchase", Source::Browser), T0 + dt)
        })
        .collect();
    h.tick(T0 + 41 * 3_600_000);
    assert_eq!(
        outcomes,
        [
            Outcome::Held,
            Outcome::Merged,
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Duplicate
        ]
    );
    for p in ["meta", "tiktok"] {
        assert_eq!(h.dispatched(p).len(), 1, "{p}");
    }
    // Decided again on the merged browser reports: no gclid, no email or
    // phone, nothing Google could match on.
    assert!(h.dispatched("google_ads").is_empty());
}

#[test]
fn keys_expire_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    h.report(0, report("o-5", "Purchase", Source::Server), T0);
    h.tick(T0 + MERGE);
    assert_eq!(
        h.report(
            0,
            report("o-5", "Purchase", Source::Server),
            T0 + WINDOW - 1
        ),
        Outcome::Duplicate
    );
    // The window runs from the first report, not the last.
    assert_eq!(
        h.report(0, report("o-5", "Purchase", Source::Server), T0 + WINDOW),
        Outcome::Held
    );
    h.tick(T0 + WINDOW + MERGE);
    assert_eq!(h.dispatched("meta").len(), 2);
}

#[test]
fn replays_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    h.report(0, report("o-6", "Purchase", Source::Browser), T0); // offset 1
    h.report(0, report("o-6", "Purchase", Source::Server), T0 + 1); // offset 2
    h.tick(T0 + MERGE);
    let sent = h.sent.len();
    for offset in [1, 2] {
        assert_eq!(
            h.replay(
                0,
                offset,
                report("o-6", "Purchase", Source::Browser),
                T0 + 20_000
            ),
            Outcome::Replayed
        );
    }
    assert_eq!(h.sent.len(), sent, "a replay writes nothing");
}

#[test]
fn merge_window_zero_emits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), 0);
    assert_eq!(
        h.report(0, report("o-7", "Purchase", Source::Server), T0),
        Outcome::Emitted
    );
    assert_eq!(h.dispatched("tiktok").len(), 1);
    assert_eq!(
        h.report(0, report("o-7", "Purchase", Source::Browser), T0 + 1),
        Outcome::Duplicate
    );
}

#[test]
fn held_conversions_and_emissions_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut h = open(dir.path(), MERGE);
        h.report(0, report("held", "Purchase", Source::Browser), T0);
        h.report(1, report("done", "Purchase", Source::Server), T0 - MERGE);
        h.tick(T0);
        assert_eq!(h.dispatched("meta").len(), 1);
        assert_eq!(h.dedup.held_count(), 1);
    }
    let mut h = open(dir.path(), MERGE);
    assert_eq!(h.dedup.held_count(), 1, "timer rebuilt from the store");
    assert_eq!(h.tick(T0 + MERGE), 1);
    assert_eq!(h.dispatched("meta")[0].event_id, "held");
    h.next_input.insert(1, 10);
    assert_eq!(
        h.report(1, report("done", "Purchase", Source::Browser), T0 + MERGE),
        Outcome::Duplicate
    );
}

#[test]
fn not_eligible_and_unconfigured_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), 0);
    let mut r = report("o-8", "Purchase", Source::Server);
    r.decisions[0].eligible = false;
    r.decisions[0].reason = Some("no_consent".into());
    r.decisions[2].eligible = false;
    r.decisions[2].reason = Some("platform_not_configured".into());
    h.report(0, r, T0);
    assert!(h.dispatched("meta").is_empty());
    assert_eq!(h.dispatched("google_ads").len(), 1);
    let statuses = h.statuses();
    assert_eq!(statuses.len(), 2, "no status for an unconfigured platform");
    let meta = statuses.iter().find(|s| s.platform == "meta").unwrap();
    assert_eq!(meta.server_side, ServerSideStatus::NotEligible);
    assert_eq!(meta.reason.as_deref(), Some("no_consent"));
}

#[test]
fn a_report_that_would_outgrow_a_changelog_record_is_refused_and_the_state_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    assert_eq!(
        h.report(0, report("big", "Purchase", Source::Server), T0),
        Outcome::Held
    );
    let mut huge = report("big", "Purchase", Source::Browser);
    huge.page = Some(postback_core::model::Page {
        url: Some(format!("https://shop.example/?q={}", "x".repeat(1_100_000))),
        referrer: None,
    });
    let err = h.dedup.report(0, 2, huge, T0 + 10, &mut h.out).unwrap_err();
    assert_eq!(err.reason(), Some("state_too_large"), "{err}");
    assert!(h.out.is_empty(), "nothing staged for the refused report");
    // The server's report is still held and goes out when its window closes.
    assert_eq!(h.tick(T0 + MERGE), 1);
    assert_eq!(h.dispatched("meta").len(), 1);
    assert!(h.dispatched("meta")[0].page.is_none());
}

#[test]
fn a_huge_first_report_is_refused_without_a_timer_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    let mut huge = report("huge", "Purchase", Source::Browser);
    huge.page = Some(postback_core::model::Page {
        url: Some("x".repeat(1_100_000)),
        referrer: None,
    });
    let err = h.dedup.report(0, 1, huge, T0, &mut h.out).unwrap_err();
    assert_eq!(err.reason(), Some("state_too_large"));
    assert_eq!(h.dedup.held_count(), 0);
    assert_eq!(h.tick(T0 + MERGE), 0);
}

#[test]
fn an_aborted_transaction_forgets_what_it_staged_and_the_timers_follow_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    // Held and committed.
    assert_eq!(
        h.report(0, report("kept", "Purchase", Source::Server), T0),
        Outcome::Held
    );
    // Held, then its transaction aborts: as if never read.
    h.dedup
        .report(
            0,
            2,
            report("aborted", "Purchase", Source::Server),
            T0,
            &mut h.out,
        )
        .unwrap();
    h.out.clear();
    h.dedup.aborted().unwrap();
    assert_eq!(h.dedup.held_count(), 1, "only the committed one is held");
    // Read again after the abort: a first report again, not a replay.
    assert_eq!(
        h.replay(0, 2, report("aborted", "Purchase", Source::Server), T0 + 5),
        Outcome::Held
    );
    assert_eq!(h.tick(T0 + MERGE + 5), 2);
    let ids: Vec<String> = h
        .dispatched("meta")
        .iter()
        .map(|c| c.event_id.clone())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[test]
fn changelog_records_are_written_after_what_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), 0);
    let o = h
        .dedup
        .report(
            0,
            1,
            report("order", "Purchase", Source::Server),
            T0,
            &mut h.out,
        )
        .unwrap();
    assert_eq!(o, Outcome::Emitted);
    let (deferred, first): (Vec<_>, Vec<_>) = h.out.iter().partition(|o| o.deferred);
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].topic, "changelog");
    assert!(first.iter().all(|o| o.topic != "changelog") && first.len() == 6);
    h.ack();
}

#[test]
fn a_released_partition_stops_emitting() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = open(dir.path(), MERGE);
    h.report(1, report("moving", "Purchase", Source::Server), T0);
    h.dedup.release(1);
    assert_eq!(h.tick(T0 + MERGE), 0, "the new owner emits it");
    h.dedup.adopt(1).unwrap();
    assert_eq!(h.tick(T0 + MERGE), 1);
}
