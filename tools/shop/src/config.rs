//! The shop's settings, from the environment (it is a demo tool; the
//! services take a file plus overrides).

use crate::ShopError;

#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// The collector, as the browser and the shop's backend reach it.
    pub collector_url: String,
    /// The public site key of the tenant (its allowed origins must include
    /// the shop's).
    pub site_key: String,
    /// The server API key the backend sends its reports with; without one
    /// the shop is browser-only.
    pub api_key: Option<String>,
    /// Where the stand-in pixels are: the sandbox.
    pub pixels_url: String,
}

impl ShopConfig {
    /// `SHOP_COLLECTOR_URL`, `SHOP_SITE_KEY`, `SHOP_API_KEY` (optional),
    /// `SHOP_PIXELS_URL`.
    pub fn from_env() -> Result<ShopConfig, ShopError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let required =
            |name: &str| var(name).ok_or_else(|| ShopError::Config(format!("{name} is not set")));
        let config = ShopConfig {
            collector_url: required("SHOP_COLLECTOR_URL")?,
            site_key: required("SHOP_SITE_KEY")?,
            api_key: var("SHOP_API_KEY"),
            pixels_url: required("SHOP_PIXELS_URL")?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ShopError> {
        for (name, url) in [
            ("SHOP_COLLECTOR_URL", &self.collector_url),
            ("SHOP_PIXELS_URL", &self.pixels_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ShopError::Config(format!("{name} must be an http(s) URL")));
            }
        }
        Ok(())
    }
}
