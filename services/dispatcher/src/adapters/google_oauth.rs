//! Google OAuth 2.0 access tokens from the refresh-token grant, cached per
//! client and refresh token and renewed `margin` before they expire, so no
//! upload waits on a token that runs out mid-request. One refresh at a time
//! per credential: concurrent uploads wait for it rather than stampede.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::Reason;
use crate::config::GoogleAdsAccount;

#[derive(Clone)]
struct Token {
    value: String,
    expires_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

pub struct TokenCache {
    token_url: String,
    margin: Duration,
    http: reqwest::Client,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Refused {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Why no token could be had; always worth a retry later (the credential
/// may be fixed, the endpoint may come back).
#[derive(Debug, Clone)]
pub struct TokenError(pub Reason);

impl TokenCache {
    pub fn new(token_url: String, margin: Duration, http: reqwest::Client) -> Self {
        TokenCache {
            token_url,
            margin,
            http,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, account: &GoogleAdsAccount) -> Slot {
        let key = (account.client_id.clone(), account.refresh_token.clone());
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.entry(key).or_default().clone()
    }

    /// A token valid for at least `margin` (or half its lifetime, if the
    /// platform grants shorter ones).
    pub async fn token(&self, account: &GoogleAdsAccount) -> Result<String, TokenError> {
        let slot = self.slot(account);
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref() {
            if Instant::now() < t.expires_at {
                return Ok(t.value.clone());
            }
        }
        let token = self.refresh(account).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Forgets the cached token (the platform refused it).
    pub async fn invalidate(&self, account: &GoogleAdsAccount) {
        *self.slot(account).lock().await = None;
    }

    async fn refresh(&self, account: &GoogleAdsAccount) -> Result<Token, TokenError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", account.client_id.as_str()),
            ("client_secret", account.client_secret.as_str()),
            ("refresh_token", account.refresh_token.as_str()),
        ];
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                TokenError(Reason::new(
                    "oauth_unreachable",
                    e.without_url().to_string(),
                ))
            })?;
        let status = response.status();
        let body = super::read_capped(response, super::MAX_ANSWER_BYTES)
            .await
            .map_err(|e| {
                TokenError(match e {
                    super::CappedError::Transport(e) => {
                        Reason::new("oauth_unreachable", e.without_url().to_string())
                    }
                    super::CappedError::TooLarge => Reason::new(
                        "oauth_answer_too_large",
                        "the token endpoint's answer is too large to be its own",
                    ),
                })
            })?;
        if !status.is_success() {
            let refused: Option<Refused> = serde_json::from_slice(&body).ok();
            let (code, description) = refused
                .map(|r| (r.error, r.error_description))
                .unwrap_or_else(|| (format!("http_{}", status.as_u16()), String::new()));
            tracing::warn!(customer_id = %account.customer_id, error = %code, "OAuth token refresh refused");
            return Err(TokenError(Reason::new(
                format!("oauth_{code}"),
                description,
            )));
        }
        let granted: Granted = serde_json::from_slice(&body).map_err(|_| {
            TokenError(Reason::new(
                "oauth_bad_response",
                "token endpoint answered without an access_token",
            ))
        })?;
        let lifetime = Duration::from_secs(granted.expires_in.unwrap_or(3600));
        let early = self.margin.min(lifetime / 2);
        tracing::debug!(customer_id = %account.customer_id, lifetime_secs = lifetime.as_secs(), "OAuth access token refreshed");
        Ok(Token {
            value: granted.access_token,
            expires_at: started + lifetime - early,
        })
    }
}
