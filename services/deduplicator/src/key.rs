//! The dedup key: tenant, event_name and event_id, the triple the ad
//! platforms themselves deduplicate browser and server events on. The same
//! event_id under two event names (a Lead that later becomes a Purchase) is
//! two conversions.

use std::fmt;

/// Encoded as three length-prefixed parts, so no value can forge another's
/// boundaries whatever bytes it contains; it sorts by tenant first.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed dedup key")]
pub struct MalformedKey;

impl DedupKey {
    pub fn new(tenant: &str, event_name: &str, event_id: &str) -> Self {
        let mut bytes = Vec::with_capacity(6 + tenant.len() + event_name.len() + event_id.len());
        for part in [tenant, event_name, event_id] {
            // Parts are bounded well below 64 KiB by the collector; a longer
            // one is cut rather than allowed to corrupt the framing.
            let part = &part.as_bytes()[..part.len().min(usize::from(u16::MAX))];
            bytes.extend_from_slice(&(part.len() as u16).to_be_bytes());
            bytes.extend_from_slice(part);
        }
        DedupKey(bytes)
    }

    /// A key read back from the store or the changelog.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MalformedKey> {
        let mut rest = bytes;
        for _ in 0..3 {
            let (len, tail) = rest.split_first_chunk::<2>().ok_or(MalformedKey)?;
            let len = usize::from(u16::from_be_bytes(*len));
            if tail.len() < len {
                return Err(MalformedKey);
            }
            rest = &tail[len..];
        }
        if rest.is_empty() {
            Ok(DedupKey(bytes.to_vec()))
        } else {
            Err(MalformedKey)
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn parts(&self) -> [&[u8]; 3] {
        let mut out: [&[u8]; 3] = [&[]; 3];
        let mut rest = &self.0[..];
        for slot in &mut out {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            *slot = &rest[2..2 + len];
            rest = &rest[2 + len..];
        }
        out
    }

    pub fn tenant(&self) -> String {
        String::from_utf8_lossy(self.parts()[0]).into_owned()
    }
}

impl fmt::Debug for DedupKey {
    // Event ids are opaque to us but not personal data; tenants and event
    // names are configuration. Printing them helps when tracing a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [t, n, i] = self.parts();
        write!(
            f,
            "{}/{}/{}",
            String::from_utf8_lossy(t),
            String::from_utf8_lossy(n),
            String::from_utf8_lossy(i)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cannot_bleed_into_each_other() {
        assert_ne!(
            DedupKey::new("a", "b/c", "d"),
            DedupKey::new("a", "b", "c/d")
        );
        assert_ne!(DedupKey::new("ab", "", "c"), DedupKey::new("a", "b", "c"));
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let k = DedupKey::new("acme", "Purchase", "order-1");
        assert_eq!(DedupKey::from_bytes(k.as_bytes()), Ok(k.clone()));
        assert_eq!(format!("{k:?}"), "acme/Purchase/order-1");
        assert_eq!(k.tenant(), "acme");
        assert_eq!(DedupKey::from_bytes(b"\x00\x05ab"), Err(MalformedKey));
        let mut trailing = k.as_bytes().to_vec();
        trailing.push(0);
        assert_eq!(DedupKey::from_bytes(&trailing), Err(MalformedKey));
    }
}
