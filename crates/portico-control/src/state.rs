//! The control plane's shared state: one `Clone` struct of `Arc`s, taken as `State<AppState>`.

use crate::snapshot::SnapshotPublisher;
use portico_core::api_key::Pepper;
use portico_store::Store;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Mark session cookies `Secure` (set when Portico is served over HTTPS).
    pub secure_cookies: bool,
    /// The gateway's public base URL, shown in the portal and in code samples; the `aud` of
    /// access tokens.
    pub gateway_url: String,
    /// Days of per-minute rollups kept (`retention.minute_days`): minute and hour analytics
    /// reach back this far.
    pub minute_retention_days: u32,
    /// The API's public base URL: the `iss` of access tokens.
    pub token_issuer: String,
    /// Largest accepted request body (OpenAPI documents included).
    pub max_body_bytes: usize,
    /// Proxies in front of Portico whose `X-Forwarded-For` is believed (sign-in throttling and
    /// the audit log record the client's address).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which addresses upstream URLs may point at; a version whose upstream is refused is not
    /// saved (the gateway's connect-time check is the real guard).
    pub outbound: portico_core::outbound::OutboundPolicy,
    /// The portal's single sign-on providers (OpenID Connect), in the order the sign-in page
    /// shows them.
    pub sso: Vec<crate::services::sso::SsoProvider>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            secure_cookies: false,
            gateway_url: "http://127.0.0.1:8080".into(),
            token_issuer: "http://127.0.0.1:8081".into(),
            minute_retention_days: 14,
            max_body_bytes: 5 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            outbound: portico_core::outbound::OutboundPolicy::default(),
            sso: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub pepper: Arc<Pepper>,
    pub snapshot: Arc<SnapshotPublisher>,
    pub config: Arc<ControlConfig>,
    pub throttle: Arc<crate::throttle::LoginThrottle>,
    /// Seals and opens secrets stored in the database (AES-256-GCM under the master key).
    pub secrets: Arc<portico_core::secret::Keyring>,
    /// E-mail out (SMTP or the outbox directory).
    pub mailer: Arc<crate::services::mail::Mailer>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
}
