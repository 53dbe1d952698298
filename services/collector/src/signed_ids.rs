//! Signed event ids: a tenant can require that every browser report
//! carries `event_signature`, an HMAC-SHA256 of the event's name and id
//! under a secret only the tenant's own server knows, issued to the page
//! with the event id (docs/collector.md#signed-event-ids).
//!
//! Why: the site key is public, so without a signature anyone can post a
//! "browser" report for any event id, and a guessed one (a sequential
//! order number) would reach the deduplicator before the shop's own
//! report. With it, a report the shop did not issue is refused here, at the
//! edge, with the field's path.
//!
//! The signed message is `event_name`, a newline, `event_id`: validation
//! refuses names and ids with control characters (`validate.rs`), so the
//! pair reads back one way only. Both are trimmed first, as validation
//! stores them. The signature is 64 lowercase or uppercase hex
//! digits; comparison is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest signing secret accepted: 32 bytes, a SHA-256 block's half.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Clone)]
pub struct EventSigner {
    mac: HmacSha256,
}

impl std::fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSigner([redacted])")
    }
}

/// Why a signature was refused: the message names the field, never the
/// secret or the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("required: this site key accepts only event ids signed by the shop's server")]
    Missing,
    #[error("must be 64 hex digits (HMAC-SHA256 of event_name and event_id)")]
    Malformed,
    #[error("does not match event_name and event_id")]
    Mismatch,
}

impl EventSigner {
    pub fn new(secret: &[u8]) -> EventSigner {
        EventSigner {
            // HMAC takes a key of any length; new_from_slice cannot fail.
            mac: HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!()),
        }
    }

    fn keyed(&self, event_name: &str, event_id: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(event_name.as_bytes());
        mac.update(b"\n");
        mac.update(event_id.as_bytes());
        mac
    }

    /// The signature the tenant's server gives the page (hex).
    pub fn sign(&self, event_name: &str, event_id: &str) -> String {
        hex::encode(self.keyed(event_name, event_id).finalize().into_bytes())
    }

    /// Hex of either case: what is checked is the MAC it spells (the
    /// collector_validate fuzz target found the case was never meant to be
    /// part of the contract, and a shop's library may print upper case).
    pub fn verify(
        &self,
        event_name: &str,
        event_id: &str,
        signature: Option<&str>,
    ) -> Result<(), SignatureError> {
        let signature = signature.ok_or(SignatureError::Missing)?;
        if signature.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        let bytes = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
        self.keyed(event_name, event_id)
            .verify_slice(&bytes)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_is_its_bytes_whatever_the_case_of_its_hex() {
        let signer = EventSigner::new(SECRET);
        let upper = signer.sign("Purchase", "order-1").to_ascii_uppercase();
        assert_eq!(signer.verify("Purchase", "order-1", Some(&upper)), Ok(()));
        assert_eq!(
            signer.verify("Purchase", "order-2", Some(&upper)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_signature_verifies_for_its_event_only() {
        let s = EventSigner::new(SECRET);
        let sig = s.sign("Purchase", "order-1001");
        assert_eq!(sig.len(), 64);
        assert_eq!(s.verify("Purchase", "order-1001", Some(&sig)), Ok(()));
        assert_eq!(
            s.verify("Purchase", "order-1001", Some(&sig.to_uppercase())),
            Ok(())
        );
        for (name, id) in [("Purchase", "order-1002"), ("Lead", "order-1001")] {
            assert_eq!(
                s.verify(name, id, Some(&sig)),
                Err(SignatureError::Mismatch)
            );
        }
        // Name and id are not simply concatenated.
        assert_ne!(
            s.sign("Purchaseorder", "1001"),
            s.sign("Purchase", "order1001")
        );
        let other = EventSigner::new(b"another secret, also 32 bytes long!");
        assert_eq!(
            other.verify("Purchase", "order-1001", Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_signatures_are_told_apart() {
        let s = EventSigner::new(SECRET);
        assert_eq!(s.verify("a", "b", None), Err(SignatureError::Missing));
        for bad in ["", "abc", &"z".repeat(64), &"0".repeat(65)] {
            assert_eq!(
                s.verify("a", "b", Some(bad)),
                Err(SignatureError::Malformed)
            );
        }
    }

    /// The value docs/collector.md gives, so a tenant can check their own
    /// server's implementation against it.
    #[test]
    fn the_documented_example_holds() {
        let s = EventSigner::new(b"demo-signing-secret-0123456789abcdef");
        assert_eq!(
            s.sign("Purchase", "order-1001"),
            DOCUMENTED_EXAMPLE_SIGNATURE
        );
    }

    const DOCUMENTED_EXAMPLE_SIGNATURE: &str =
        "8151859efcfdffdb8d335caa28c5433445c54c7e4bb0525dbb8375f7f7fedcbd";
}
