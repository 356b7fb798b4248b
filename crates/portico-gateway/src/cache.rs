//! The response cache: answers of `GET` / `HEAD` calls to versions whose policies have a
//! `cache`, kept in one size-bounded `moka` cache per process (shared by the workers, weighed
//! by body size, each entry expiring on its own).
//!
//! An entry is keyed by version, method, path and query, the values of the policy's
//! `vary_headers`, and the calling app — unless the route is `shared` and the upstream said
//! `Cache-Control: public`, when every app reads the same entry. Only `200` answers whose
//! `Cache-Control` allows it (no `no-store`, `no-cache` or `private`; `s-maxage` / `max-age`
//! capped by the policy's `ttl_secs`) and whose body fits `max_body_bytes` are kept. A client's
//! `Cache-Control: no-cache` skips the lookup, `no-store` skips both lookup and storing.
//!
//! A miss is streamed to the client while it is collected ([`CachingBody`]); nothing is
//! buffered for routes without a cache. Lookups and inserts take no lock across an await.

use crate::GwBody;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use portico_core::ids::{AppId, VersionId};
use portico_core::policy::CachePolicy;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    version: VersionId,
    head: bool,
    /// Path and query as the client sent them.
    target: Box<str>,
    /// `None`: the entry is shared by every app.
    app: Option<AppId>,
    /// The values of the policy's `vary_headers`, in its order.
    vary: Box<[Option<Box<[u8]>>]>,
}

/// One cached answer.
struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    /// The `Age` the upstream reported, in seconds.
    age_at_store: u64,
    ttl: Duration,
}

struct PerEntry;

impl moka::Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _key: &Key, value: &Arc<Entry>, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The process's cache; cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
}

impl ResponseCache {
    /// A cache holding at most about `max_bytes` of answers (bodies, headers and keys).
    pub fn new(max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, v: &Arc<Entry>| {
                let headers: usize = v.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
                let size = v.body.len() + headers + k.target.len() + 128;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntry)
            .build();
        ResponseCache { entries }
    }
}

/// `Cache-Control` directives that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

fn directives(h: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    let all = h.get_all(header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok());
    for part in all.flat_map(|v| v.split(',')) {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part.trim(), None),
        };
        let secs = || value.and_then(|v| v.parse::<u64>().ok());
        match name.to_ascii_lowercase().as_str() {
            "no-store" => d.no_store = true,
            // `no-cache="field"` and `private="field"` are taken as the bare directives: stricter.
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "public" => d.public = true,
            // A malformed value makes the answer stale at once (RFC 9111 §4.2.1).
            "max-age" => d.max_age = Some(secs().unwrap_or(0)),
            "s-maxage" => d.s_maxage = Some(secs().unwrap_or(0)),
            _ => {}
        }
    }
    d
}

/// What the cache does for one call, decided from the request.
pub struct Plan {
    policy: CachePolicy,
    per_app: Key,
    /// The key of an entry shared by every app, on a `shared` route.
    shared: Option<Key>,
    /// `false` when the client asked for a fresh answer (`no-cache`, `max-age=0`).
    read: bool,
    /// `false` when the client said `no-store`.
    store: bool,
}

impl Plan {
    /// The plan for a call, or `None` when the call is not one the cache deals with (not
    /// `GET` / `HEAD`, a range, an upgrade).
    pub fn new(
        policy: &CachePolicy,
        method: &Method,
        headers: &HeaderMap,
        version: VersionId,
        target: &str,
        app: AppId,
    ) -> Option<Plan> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        if headers.contains_key(header::RANGE) || headers.contains_key(header::UPGRADE) {
            return None;
        }
        let vary = policy
            .vary_headers
            .iter()
            .map(|name| {
                let mut values = headers.get_all(name.as_str()).iter().peekable();
                values.peek()?;
                let joined: Vec<u8> = values.map(HeaderValue::as_bytes).collect::<Vec<_>>().join(&b","[..]);
                Some(joined.into_boxed_slice())
            })
            .collect::<Box<[_]>>();
        let per_app = Key { version, head, target: target.into(), app: Some(app), vary };
        let shared = policy.shared.then(|| Key { app: None, ..per_app.clone() });
        let asked = directives(headers);
        Some(Plan {
            policy: policy.clone(),
            per_app,
            shared,
            read: !(asked.no_cache || asked.no_store || asked.max_age == Some(0)),
            store: !asked.no_store,
        })
    }

    /// A fresh cached answer for this call: status, headers (with `Age` and `X-Cache: HIT`)
    /// and the body.
    pub fn lookup(&self, cache: &ResponseCache) -> Option<http::Response<GwBody>> {
        if !self.read {
            return None;
        }
        let found =
            self.shared.as_ref().and_then(|k| cache.entries.get(k)).or_else(|| cache.entries.get(&self.per_app))?;
        let elapsed = found.stored.elapsed();
        if elapsed >= found.ttl {
            return None;
        }
        let mut resp =
            http::Response::new(Full::new(found.body.clone()).map_err(|never| match never {}).boxed_unsync());
        *resp.status_mut() = found.status;
        *resp.headers_mut() = found.headers.clone();
        let age = found.age_at_store + elapsed.as_secs();
        resp.headers_mut().insert(header::AGE, HeaderValue::from(age));
        Some(resp)
    }

    /// The body to send: the upstream's, wrapped so that it is kept once read to its end when
    /// the answer may be cached. `headers` are those the consumer gets (before the
    /// version's response rules, which apply to every hit anew).
    pub fn fill(self, cache: &ResponseCache, status: StatusCode, headers: &HeaderMap, body: GwBody) -> GwBody {
        let (head, max) = (self.per_app.head, self.policy.max_body_bytes);
        match self.storable(status, headers) {
            Some((key, ttl, age)) => {
                let mut kept = headers.clone();
                kept.remove(header::AGE);
                kept.remove(&X_CACHE);
                if head {
                    // A server may never read the body of a HEAD answer: keep it at once.
                    let entry = Entry {
                        status,
                        headers: kept,
                        body: Bytes::new(),
                        stored: Instant::now(),
                        age_at_store: age,
                        ttl,
                    };
                    cache.entries.insert(key, Arc::new(entry));
                    return body;
                }
                let filling = Filling {
                    cache: cache.clone(),
                    key,
                    status,
                    headers: kept,
                    ttl,
                    age_at_store: age,
                    collected: BytesMut::new(),
                    max,
                    expected: headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()),
                };
                CachingBody { inner: body, filling: Some(filling) }.boxed_unsync()
            }
            None => body,
        }
    }

    /// The key, lifetime and reported age of an answer that may be kept.
    fn storable(self, status: StatusCode, headers: &HeaderMap) -> Option<(Key, Duration, u64)> {
        if !self.store || status != StatusCode::OK || headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        let said = directives(headers);
        if said.no_store || said.no_cache || said.private {
            return None;
        }
        let varies_otherwise = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .any(|n| n == "*" || !self.policy.vary_headers.iter().any(|v| v.eq_ignore_ascii_case(n)));
        if varies_otherwise {
            return None;
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if !self.per_app.head && declared.is_some_and(|n| n > self.policy.max_body_bytes) {
            return None;
        }
        let cap = u64::from(self.policy.ttl_secs);
        let lifetime = said.s_maxage.or(said.max_age).map_or(cap, |s| s.min(cap));
        let age = headers.get(header::AGE).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).unwrap_or(0);
        let ttl = lifetime.saturating_sub(age);
        if ttl == 0 {
            return None;
        }
        let key = match self.shared {
            Some(shared) if said.public => shared,
            _ => self.per_app,
        };
        Some((key, Duration::from_secs(ttl), age))
    }
}

/// An answer on its way to be kept: what is known from the head, and the body so far.
struct Filling {
    cache: ResponseCache,
    key: Key,
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    age_at_store: u64,
    collected: BytesMut,
    max: u64,
    /// The upstream's `Content-Length`: a body that has all of it is complete even if its end
    /// is never polled (hyper stops at the length).
    expected: Option<u64>,
}

impl Filling {
    fn keep(self) {
        let entry = Entry {
            status: self.status,
            headers: self.headers,
            body: self.collected.freeze(),
            stored: Instant::now(),
            age_at_store: self.age_at_store,
            ttl: self.ttl,
        };
        self.cache.entries.insert(self.key, Arc::new(entry));
    }

    fn complete(&self) -> bool {
        self.expected == Some(self.collected.len() as u64)
    }
}

/// The upstream's body streamed to the consumer as it comes, and collected on the side up to
/// the policy's limit; kept in the cache when it ends cleanly.
pub struct CachingBody {
    inner: GwBody,
    filling: Option<Filling>,
}

impl Body for CachingBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(d) => {
                    let fits = this.filling.as_ref().is_some_and(|f| (f.collected.len() + d.len()) as u64 <= f.max);
                    match (&mut this.filling, fits) {
                        (Some(f), true) => f.collected.extend_from_slice(d),
                        _ => this.filling = None,
                    }
                    if this.inner.is_end_stream()
                        && let Some(f) = this.filling.take()
                    {
                        f.keep();
                    }
                }
                // Trailers are not kept: neither is the answer.
                None => this.filling = None,
            },
            Poll::Ready(None) => {
                if let Some(f) = this.filling.take() {
                    f.keep();
                }
            }
            Poll::Ready(Some(Err(_))) => this.filling = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Report the end only through `poll_frame`, so that the entry is kept.
        self.filling.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CachingBody {
    fn drop(&mut self) {
        // Sent in full (its length reached) but never polled to its end.
        if let Some(f) = self.filling.take()
            && f.complete()
        {
            f.keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn policy(json: serde_json::Value) -> CachePolicy {
        serde_json::from_value(json).unwrap()
    }

    fn plan(p: &CachePolicy, req: &[(&str, &str)]) -> Plan {
        Plan::new(p, &Method::GET, &h(req), VersionId::new(), "/a/v1/x?q=1", AppId::new()).unwrap()
    }

    #[test]
    fn cache_control_is_parsed_leniently() {
        let d = directives(&h(&[("cache-control", "Public, max-age=\"30\""), ("cache-control", "s-maxage=10")]));
        assert_eq!(d, Directives { public: true, max_age: Some(30), s_maxage: Some(10), ..Default::default() });
        assert_eq!(directives(&h(&[("cache-control", "max-age=soon")])).max_age, Some(0));
        assert_eq!(directives(&HeaderMap::new()), Directives::default());
    }

    #[test]
    fn only_cacheable_answers_are_kept_for_their_lifetime() {
        let p = policy(serde_json::json!({"ttl_secs": 60, "shared": true, "vary_headers": ["accept"]}));
        let ok = |resp: &[(&str, &str)]| plan(&p, &[]).storable(StatusCode::OK, &h(resp));
        assert_eq!(ok(&[]).unwrap().1, Duration::from_secs(60), "no max-age: ttl_secs");
        assert_eq!(ok(&[("cache-control", "max-age=600")]).unwrap().1, Duration::from_secs(60), "capped");
        assert_eq!(ok(&[("cache-control", "max-age=5, s-maxage=7")]).unwrap().1, Duration::from_secs(7));
        assert_eq!(ok(&[("cache-control", "max-age=5"), ("age", "2")]).unwrap().1, Duration::from_secs(3));
        for refused in ["no-store", "no-cache", "private", "max-age=0"] {
            assert!(ok(&[("cache-control", refused)]).is_none(), "{refused}");
        }
        assert!(ok(&[("set-cookie", "a=b")]).is_none());
        assert!(ok(&[("vary", "*")]).is_none());
        assert!(ok(&[("vary", "Accept-Language")]).is_none());
        assert!(ok(&[("vary", "Accept")]).is_some());
        assert!(ok(&[("content-length", "2000000")]).is_none(), "larger than max_body_bytes");
        assert!(plan(&p, &[]).storable(StatusCode::NOT_FOUND, &HeaderMap::new()).is_none());
        assert!(ok(&[]).unwrap().0.app.is_some(), "not public: per app");
        assert!(ok(&[("cache-control", "public")]).unwrap().0.app.is_none(), "public on a shared route");
        let own = policy(serde_json::json!({}));
        let k = plan(&own, &[]).storable(StatusCode::OK, &h(&[("cache-control", "public")])).unwrap().0;
        assert!(k.app.is_some(), "public on a route that is not shared: still per app");
    }

    #[test]
    fn the_client_can_skip_the_cache() {
        let p = policy(serde_json::json!({}));
        assert!(!plan(&p, &[("cache-control", "no-cache")]).read);
        assert!(plan(&p, &[("cache-control", "no-cache")]).store);
        let no_store = plan(&p, &[("cache-control", "no-store")]);
        assert!(!no_store.read && !no_store.store);
        assert!(plan(&p, &[("cache-control", "max-age=0")]).storable(StatusCode::OK, &HeaderMap::new()).is_some());
        let post = Plan::new(&p, &Method::POST, &HeaderMap::new(), VersionId::new(), "/x", AppId::new());
        assert!(post.is_none());
        let range = Plan::new(&p, &Method::GET, &h(&[("range", "bytes=0-1")]), VersionId::new(), "/x", AppId::new());
        assert!(range.is_none());
    }

    #[test]
    fn vary_values_are_part_of_the_key() {
        let p = policy(serde_json::json!({"vary_headers": ["accept"]}));
        let (v, app) = (VersionId::new(), AppId::new());
        let key = |req: &[(&str, &str)]| Plan::new(&p, &Method::GET, &h(req), v, "/x", app).unwrap().per_app;
        assert_eq!(key(&[("accept", "text/csv")]), key(&[("accept", "text/csv")]));
        assert_ne!(key(&[("accept", "text/csv")]), key(&[("accept", "application/json")]));
        assert_ne!(key(&[]), key(&[("accept", "")]));
    }
}
