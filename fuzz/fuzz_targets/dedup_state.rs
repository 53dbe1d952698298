//! The deduplicator's per-key state as read back from its store and its
//! changelog (a restore reads whatever the topic holds): any bytes either
//! refuse with an error or decode to a state that encodes back to exactly
//! those bytes, and the compaction filter's shortcut (`encoded_expiry`,
//! which reads two fields without decoding) agrees with the full decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_deduplicator::state::{encoded_expiry, KeyState};

fuzz_target!(|data: &[u8]| {
    let shortcut = encoded_expiry(data);
    let Ok(state) = KeyState::decode(data) else {
        return;
    };
    assert_eq!(
        state.encode(),
        data,
        "the layout has one encoding per state"
    );
    assert_eq!(state.encoded_len(), data.len());
    let expected = (!state.is_held()).then_some(state.expires_at);
    assert_eq!(shortcut, expected, "encoded_expiry disagrees with decode");
});
