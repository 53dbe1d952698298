//! The enricher: consumes conversions.raw and writes conversions.enriched.
//! Raw personal data stops here.

pub mod normalize;
