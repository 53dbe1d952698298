//! Identifiers the platforms hand back (fbtrace_id, request_id, OAuth access
//! tokens) and the draws behind injected error rates. A splitmix64 sequence is
//! plenty: nothing here is a secret, the sandbox only needs values that do not
//! repeat and look like the real ones.

use std::sync::atomic::{AtomicU64, Ordering};

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug)]
pub struct Ids {
    state: AtomicU64,
}

impl Ids {
    pub fn new(seed: u64) -> Self {
        Ids {
            state: AtomicU64::new(seed),
        }
    }

    /// Seeded from the wall clock and the address of a local, so two sandboxes
    /// started in the same millisecond still diverge.
    pub fn from_entropy() -> Self {
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ids::new(time ^ addr.rotate_left(32))
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn alnum(&self, len: usize) -> String {
        (0..len)
            .map(|_| ALNUM[(self.next_u64() % ALNUM.len() as u64) as usize] as char)
            .collect()
    }

    pub fn hex(&self, len: usize) -> String {
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next_u64()));
        }
        s.truncate(len);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_draws_stay_in_range_and_vary() {
        let ids = Ids::new(7);
        let draws: Vec<f64> = (0..1000).map(|_| ids.unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.iter().any(|d| *d < 0.5) && draws.iter().any(|d| *d >= 0.5));
    }

    #[test]
    fn identifiers_have_the_requested_shape() {
        let ids = Ids::new(1);
        assert_eq!(ids.alnum(27).len(), 27);
        let h = ids.hex(40);
        assert_eq!(h.len(), 40);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
