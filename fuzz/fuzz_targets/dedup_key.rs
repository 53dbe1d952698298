//! The deduplicator's key as read back from its store and its changelog:
//! any bytes either refuse as malformed or make a key that frames back to
//! exactly those bytes, and that `DedupKey::new` makes from the same parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_deduplicator::key::DedupKey;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = DedupKey::from_bytes(data) else {
        return;
    };
    assert_eq!(key.as_bytes(), data);
    // Debug and tenant() walk the parts: they must frame what was accepted.
    let _ = (format!("{key:?}"), key.tenant());
    let [tenant, name, id] = parts(data);
    if let (Ok(tenant), Ok(name), Ok(id)) = (
        std::str::from_utf8(tenant),
        std::str::from_utf8(name),
        std::str::from_utf8(id),
    ) {
        assert_eq!(DedupKey::new(tenant, name, id), key);
    }
});

/// The three length-prefixed parts of bytes from_bytes accepted: the
/// oracle, written from the documented layout rather than the code.
fn parts(mut rest: &[u8]) -> [&[u8]; 3] {
    let mut out: [&[u8]; 3] = [&[]; 3];
    for slot in &mut out {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        *slot = &rest[2..2 + len];
        rest = &rest[2 + len..];
    }
    out
}
