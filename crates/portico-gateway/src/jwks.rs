//! The signing keys of external token issuers (an API's `policies.token_issuers`), fetched
//! from their JWKS URLs and kept in memory, one set per URL for the whole process (parsed by
//! [`portico_core::jwt::KeySet`]).
//!
//! A token whose `kid` is in the set costs no fetch. An unknown `kid` (the issuer rotated its
//! keys) starts one fetch for everyone — calls that arrive while it runs wait for the same
//! fetch — unless the last fetch started less than the issuer's `refresh_cooldown_secs` ago,
//! so that tokens with made-up `kid`s cannot make the gateway hammer the issuer. A set older
//! than `max_age_secs` is fetched again in the background (keys the issuer withdrew stop
//! verifying) while calls go on with the set in hand; a set that could not be refreshed for
//! [`hard_max_age`] is not used at all (503) — a withdrawn key must not live on because the
//! issuer is unreachable.
//!
//! The fetch goes through the worker's upstream client, so the outbound (SSRF) policy judges
//! the address it connects to; it follows no redirect, waits at most 5 s and reads at most
//! 512 KiB. A failed fetch keeps the keys already known. Waiting calls hold no lock.

use crate::{UpBody, UpstreamClient};
use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use portico_core::jwt::{Key, KeySet};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 512 * 1024;
/// JWKS URLs kept; beyond, the map starts again empty (they are refetched on use).
const MAX_SOURCES: usize = 1024;

/// How old keys may get when every refresh fails: ten times `max_age`, at least a day.
pub(crate) fn hard_max_age(max_age: Duration) -> Duration {
    (max_age * 10).max(Duration::from_secs(86_400))
}

/// The keys of one JWKS URL as last fetched.
#[derive(Default)]
pub(crate) struct Fetched {
    at: Option<Instant>,
    pub(crate) set: KeySet,
}

/// What a fetch ended with, for the calls that waited on it.
type Outcome = Option<Result<(), Arc<str>>>;

#[derive(Default)]
struct Refresh {
    started: Option<Instant>,
    /// The fetch under way: calls that need it wait on this.
    running: Option<watch::Receiver<Outcome>>,
}

/// One JWKS URL's keys and its refreshing.
pub(crate) struct Source {
    url: http::Uri,
    keys: ArcSwap<Fetched>,
    refresh: Mutex<Refresh>,
}

/// Why no key could be found for a token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The issuer does not publish that key (after a fetch, or within the cooldown).
    Unknown,
    /// The issuer's keys could not be fetched (or are too old to trust).
    Unreachable,
}

/// Clears the running fetch when the fetching task ends in any way (a panic, a runtime that
/// shuts down), so that a lost fetch never blocks refreshing for good.
struct ClearOnDrop(Arc<Source>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.refresh.lock().unwrap_or_else(|p| p.into_inner()).running = None;
    }
}

impl Source {
    /// The key set and the key for `kid` / `alg` in it; fetches (once, for every caller) when
    /// the key is unknown and the cooldown allows.
    pub(crate) async fn key(
        self: &Arc<Self>,
        client: &UpstreamClient,
        kid: Option<&str>,
        alg: Algorithm,
        cooldown: Duration,
        max_age: Duration,
    ) -> Result<(Arc<Fetched>, usize), Miss> {
        let now = self.keys.load_full();
        let age = now.at.map(|t| t.elapsed());
        let usable = age.is_some_and(|a| a <= hard_max_age(max_age));
        if usable && let Some(i) = now.set.position(kid, alg) {
            if age.is_some_and(|a| a > max_age) {
                // Stale: refresh in the background, verify with what we have.
                drop(self.start(client, cooldown));
            }
            return Ok((now, i));
        }
        let Some(mut running) = self.start(client, cooldown) else {
            // Within the cooldown: a fetch that ended a moment ago may have brought the key.
            let now = self.keys.load_full();
            return match now.set.position(kid, alg) {
                Some(i) if now.at.is_some_and(|t| t.elapsed() <= hard_max_age(max_age)) => Ok((now, i)),
                _ if now.at.is_none_or(|t| t.elapsed() > hard_max_age(max_age)) => Err(Miss::Unreachable),
                _ => Err(Miss::Unknown),
            };
        };
        let outcome = running.wait_for(Option::is_some).await.map(|o| o.clone()).ok().flatten();
        let now = self.keys.load_full();
        let fresh = now.at.is_some_and(|t| t.elapsed() <= hard_max_age(max_age));
        match (now.set.position(kid, alg), fresh, outcome) {
            (Some(i), true, _) => Ok((now, i)),
            // Fetched, and the key is not there.
            (_, _, Some(Ok(()))) => Err(Miss::Unknown),
            _ => Err(Miss::Unreachable),
        }
    }

    /// The running fetch, or a new one when none runs and the cooldown is over; `None`: within
    /// the cooldown and nothing running.
    fn start(self: &Arc<Self>, client: &UpstreamClient, cooldown: Duration) -> Option<watch::Receiver<Outcome>> {
        let mut r = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = &r.running {
            if rx.has_changed().is_ok() {
                return Some(rx.clone());
            }
            // Its sender is gone without a word: that fetch is lost.
            r.running = None;
        }
        if r.started.is_some_and(|t| t.elapsed() < cooldown) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        r.started = Some(Instant::now());
        r.running = Some(rx.clone());
        drop(r);
        let (clear, client) = (ClearOnDrop(self.clone()), client.clone());
        tokio::spawn(async move {
            let me = &clear.0;
            let outcome = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&client, &me.url)).await {
                Ok(Ok(set)) => {
                    tracing::info!(
                        host = me.url.host().unwrap_or_default(),
                        keys = set.len(),
                        "fetched a token issuer's signing keys"
                    );
                    me.keys.store(Arc::new(Fetched { at: Some(Instant::now()), set }));
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err("no answer within 5 s".to_owned()),
            };
            if let Err(e) = &outcome {
                tracing::warn!(host = me.url.host().unwrap_or_default(), error = %e, "fetching a token issuer's signing keys (JWKS) failed; keeping the keys known");
            }
            drop(clear);
            let _ = tx.send(Some(outcome.map_err(Arc::from)));
        });
        Some(rx)
    }
}

impl Fetched {
    pub(crate) fn key(&self, i: usize) -> &Key {
        self.set.get(i)
    }
}

async fn fetch(client: &UpstreamClient, url: &http::Uri) -> Result<KeySet, String> {
    let body: UpBody = http_body_util::Empty::new().map_err(|e| match e {}).boxed_unsync();
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
        .header(http::header::USER_AGENT, concat!("Portico-Gateway/", env!("CARGO_PKG_VERSION")))
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| {
        if crate::outbound::is_refused(&e) {
            "the outbound policy refuses the JWKS URL's address (a platform admin can allow it with outbound.allow_cidrs)"
                .to_owned()
        } else {
            format!("the JWKS URL could not be reached ({e})")
        }
    })?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("the JWKS URL answered {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("the JWKS could not be read ({e})"))?
        .to_bytes();
    KeySet::parse(&body)
}

/// Every JWKS URL's keys, for the whole process.
#[derive(Default)]
pub(crate) struct Jwks {
    sources: ArcSwap<HashMap<String, Arc<Source>>>,
}

impl Jwks {
    /// The source for a URL (made, empty, on first use); `None` when the URL is not a URI.
    pub(crate) fn source(&self, url: &str) -> Option<Arc<Source>> {
        if let Some(s) = self.sources.load().get(url) {
            return Some(s.clone());
        }
        let uri: http::Uri = url.parse().ok()?;
        let made = Arc::new(Source { url: uri, keys: ArcSwap::default(), refresh: Mutex::default() });
        let mut out = made.clone();
        self.sources.rcu(|m| {
            // URLs come from providers' policies; a process that saw more than this many
            // starts again (the dropped ones are fetched again when next used).
            let mut m = if m.len() >= MAX_SOURCES { HashMap::new() } else { HashMap::clone(m) };
            out = m.entry(url.to_owned()).or_insert_with(|| made.clone()).clone();
            m
        });
        Some(out)
    }
}
