//! What the deduplicator remembers per dedup key, and its byte form: the
//! same bytes are the store's value and the changelog record's value.
//!
//! The form is internal to the deduplicator (its changelog is not a contract
//! with other teams), versioned by its first byte so a new layout can be read
//! next to the old one during a rolling upgrade.

use postback_core::model::{FrontEndStatus, Source};
use postback_core::Platform;

const VERSION: u8 = 1;

/// Where a conversion is in its life at this stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Waiting for more reports until `emit_at` (Unix ms); `record` is the
    /// merged conversion so far, Avro single-object encoded.
    Held { emit_at: i64, record: Vec<u8> },
    /// Sent on to the dispatchers at `at`; later reports are duplicates.
    Emitted { at: i64 },
}

/// Which sources reported a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sources(u8);

impl Sources {
    const ALL: u8 = 1 | 2 | 4;

    fn bit(source: Source) -> u8 {
        match source {
            Source::Browser => 1,
            Source::Server => 2,
            Source::Offline => 4,
        }
    }

    pub fn of(source: Source) -> Self {
        Sources(Self::bit(source))
    }

    pub fn add(&mut self, source: Source) {
        self.0 |= Self::bit(source);
    }

    pub fn contains(self, source: Source) -> bool {
        self.0 & Self::bit(source) != 0
    }

    /// ["browser", "server"], for the status service.
    pub fn names(self) -> Vec<String> {
        [Source::Browser, Source::Server, Source::Offline]
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(|s| s.as_str().to_string())
            .collect()
    }

    /// "browser+server", for status records.
    pub fn describe(self) -> String {
        [Source::Browser, Source::Server, Source::Offline]
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Source::as_str)
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Front-end status per platform, as browser reports told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrontEnd([Option<FrontEndStatus>; 3]);

impl FrontEnd {
    fn index(platform: Platform) -> usize {
        match platform {
            Platform::Meta => 0,
            Platform::GoogleAds => 1,
            Platform::Tiktok => 2,
        }
    }

    /// Unknown until a browser report says; a pixel that fired once stays
    /// fired whatever a later page load reports.
    pub fn observe(&mut self, platform: Platform, status: FrontEndStatus) {
        let slot = &mut self.0[Self::index(platform)];
        *slot = match (*slot, status) {
            (Some(FrontEndStatus::Fired), _) => Some(FrontEndStatus::Fired),
            (_, FrontEndStatus::Unknown) => *slot,
            (_, s) => Some(s),
        };
    }

    pub fn get(&self, platform: Platform) -> FrontEndStatus {
        self.0[Self::index(platform)].unwrap_or(FrontEndStatus::Unknown)
    }

    fn pack(&self) -> u8 {
        self.0.iter().enumerate().fold(0u8, |acc, (i, s)| {
            let v = match s {
                None | Some(FrontEndStatus::Unknown) => 0,
                Some(FrontEndStatus::Fired) => 1,
                Some(FrontEndStatus::NotFired) => 2,
            };
            acc | (v << (2 * i))
        })
    }

    fn unpack(b: u8) -> Result<Self, StateError> {
        // Three platforms use six bits: a state with the other two set is
        // corrupt, not a state whose re-encoding silently differs.
        if b >> 6 != 0 {
            return Err(StateError::Corrupt("front-end status"));
        }
        let mut out = FrontEnd::default();
        for i in 0..3 {
            out.0[i] = match (b >> (2 * i)) & 3 {
                0 => None,
                1 => Some(FrontEndStatus::Fired),
                2 => Some(FrontEndStatus::NotFired),
                _ => return Err(StateError::Corrupt("front-end status")),
            };
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// When the first report arrived (Unix ms); the dedup window starts here.
    pub first_seen: i64,
    /// After this the key is forgotten: a report is a new conversion again.
    pub expires_at: i64,
    /// Input offset of the last report applied. All reports of a key come
    /// through one input partition, so a record at or below it is a replay
    /// (after a crash or a partition move) and changes nothing.
    pub last_offset: i64,
    pub first_source: Source,
    pub sources: Sources,
    pub reports: u32,
    pub front_end: FrontEnd,
    pub phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state record of unknown version {0}")]
    UnknownVersion(u8),
    #[error("state record is truncated or corrupt ({0})")]
    Corrupt(&'static str),
}

impl KeyState {
    /// Whether the key is forgotten: its window passed and it was emitted
    /// (a held conversion is always still emitted, however late).
    pub fn is_expired(&self, now: i64) -> bool {
        !self.is_held() && self.expires_at <= now
    }

    pub fn is_held(&self) -> bool {
        matches!(self.phase, Phase::Held { .. })
    }

    /// The length of `encode()`, without encoding.
    pub fn encoded_len(&self) -> usize {
        match &self.phase {
            Phase::Held { record, .. } => 41 + 4 + record.len(),
            Phase::Emitted { .. } => 41,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let record_len = match &self.phase {
            Phase::Held { record, .. } => 4 + record.len(),
            Phase::Emitted { .. } => 0,
        };
        let mut out = Vec::with_capacity(41 + record_len);
        out.push(VERSION);
        out.extend_from_slice(&self.first_seen.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.last_offset.to_be_bytes());
        out.push(source_code(self.first_source));
        out.push(self.sources.0);
        out.extend_from_slice(&self.reports.to_be_bytes());
        out.push(self.front_end.pack());
        match &self.phase {
            Phase::Held { emit_at, record } => {
                out.push(0);
                out.extend_from_slice(&emit_at.to_be_bytes());
                out.extend_from_slice(&(record.len() as u32).to_be_bytes());
                out.extend_from_slice(record);
            }
            Phase::Emitted { at } => {
                out.push(1);
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        let mut r = Reader(bytes);
        match r.u8("version")? {
            VERSION => {}
            v => return Err(StateError::UnknownVersion(v)),
        }
        let first_seen = r.i64("first_seen")?;
        let expires_at = r.i64("expires_at")?;
        let last_offset = r.i64("last_offset")?;
        let first_source = match r.u8("first_source")? {
            0 => Source::Browser,
            1 => Source::Server,
            2 => Source::Offline,
            _ => return Err(StateError::Corrupt("first_source")),
        };
        let sources = match r.u8("sources")? {
            b if b & !Sources::ALL == 0 => Sources(b),
            _ => return Err(StateError::Corrupt("sources")),
        };
        let reports = u32::from_be_bytes(r.take::<4>("reports")?);
        let front_end = FrontEnd::unpack(r.u8("front_end")?)?;
        let phase = match r.u8("phase")? {
            0 => {
                let emit_at = r.i64("emit_at")?;
                let len = u32::from_be_bytes(r.take::<4>("record length")?) as usize;
                if r.0.len() != len {
                    return Err(StateError::Corrupt("record"));
                }
                Phase::Held {
                    emit_at,
                    record: r.0.to_vec(),
                }
            }
            1 => {
                let at = r.i64("emitted_at")?;
                if !r.0.is_empty() {
                    return Err(StateError::Corrupt("trailing bytes"));
                }
                Phase::Emitted { at }
            }
            _ => return Err(StateError::Corrupt("phase")),
        };
        Ok(KeyState {
            first_seen,
            expires_at,
            last_offset,
            first_source,
            sources,
            reports,
            front_end,
            phase,
        })
    }
}

/// When an encoded state may be dropped, read without decoding the rest
/// (the store's compaction filter calls it for every value it rewrites).
/// None for a held conversion: it is never dropped before it was emitted,
/// however long the instance was down.
pub fn encoded_expiry(bytes: &[u8]) -> Option<i64> {
    // version (1), first_seen (8), expires_at (8), last_offset (8),
    // first_source (1), sources (1), reports (4), front_end (1), phase (1).
    const EXPIRES_AT: std::ops::Range<usize> = 9..17;
    const PHASE: usize = 32;
    if bytes.first() != Some(&VERSION) || bytes.get(PHASE) != Some(&1) {
        return None;
    }
    Some(i64::from_be_bytes(bytes.get(EXPIRES_AT)?.try_into().ok()?))
}

fn source_code(s: Source) -> u8 {
    match s {
        Source::Browser => 0,
        Source::Server => 1,
        Source::Offline => 2,
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StateError> {
        let (head, tail) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(StateError::Corrupt(what))?;
        self.0 = tail;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, StateError> {
        Ok(self.take::<1>(what)?[0])
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, StateError> {
        Ok(i64::from_be_bytes(self.take::<8>(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(phase: Phase) -> KeyState {
        let mut front_end = FrontEnd::default();
        front_end.observe(Platform::Meta, FrontEndStatus::Fired);
        front_end.observe(Platform::Tiktok, FrontEndStatus::NotFired);
        let mut sources = Sources::of(Source::Browser);
        sources.add(Source::Server);
        KeyState {
            first_seen: 1_732_270_000_000,
            expires_at: 1_732_442_800_000,
            last_offset: 41,
            first_source: Source::Browser,
            sources,
            reports: 2,
            front_end,
            phase,
        }
    }

    /// Found by the dedup_state fuzz target: stray bits decoded, and the
    /// state then encoded differently from what the store held.
    #[test]
    fn bits_no_field_uses_are_corruption() {
        let good = sample(Phase::Emitted {
            at: 1_732_270_010_000,
        })
        .encode();
        const SOURCES: usize = 26;
        const FRONT_END: usize = 31;
        for (at, stray, field) in [
            (FRONT_END, 0b1100_0000, "front-end status"),
            (SOURCES, 0b0000_1000, "sources"),
        ] {
            let mut bad = good.clone();
            bad[at] |= stray;
            assert_eq!(KeyState::decode(&bad), Err(StateError::Corrupt(field)));
        }
        let crash = [
            1, 0, 0, 0, 0, 1, 162, 46, 230, 176, 0, 0, 0, 65, 1, 1, 1, 97, 0, 1, 46, 230, 176, 230,
            176, 0, 162, 82, 0, 0, 4, 210, 1, 0, 94, 1, 162, 46, 67, 235, 160,
        ];
        assert!(KeyState::decode(&crash).is_err());
    }

    #[test]
    fn round_trips_both_phases() {
        for phase in [
            Phase::Held {
                emit_at: 1_732_270_010_000,
                record: vec![0xc3, 0x01, 1, 2, 3],
            },
            Phase::Emitted {
                at: 1_732_270_010_000,
            },
        ] {
            let s = sample(phase);
            let bytes = s.encode();
            assert_eq!(KeyState::decode(&bytes), Ok(s.clone()));
            let expiry = (!s.is_held()).then_some(s.expires_at);
            assert_eq!(encoded_expiry(&bytes), expiry);
        }
    }

    #[test]
    fn refuses_truncated_and_unknown_versions() {
        let bytes = sample(Phase::Emitted { at: 5 }).encode();
        for cut in 0..bytes.len() {
            assert!(KeyState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(KeyState::decode(&v2), Err(StateError::UnknownVersion(2)));
        assert_eq!(encoded_expiry(&v2), None);
    }

    #[test]
    fn fired_wins_and_unknown_never_overrides() {
        let mut f = FrontEnd::default();
        assert_eq!(f.get(Platform::Meta), FrontEndStatus::Unknown);
        f.observe(Platform::Meta, FrontEndStatus::NotFired);
        assert_eq!(f.get(Platform::Meta), FrontEndStatus::NotFired);
        f.observe(Platform::Meta, FrontEndStatus::Fired);
        f.observe(Platform::Meta, FrontEndStatus::NotFired);
        f.observe(Platform::Meta, FrontEndStatus::Unknown);
        assert_eq!(f.get(Platform::Meta), FrontEndStatus::Fired);
    }

    #[test]
    fn sources_describe_in_a_fixed_order() {
        let mut s = Sources::of(Source::Server);
        s.add(Source::Browser);
        assert_eq!(s.describe(), "browser+server");
    }
}
