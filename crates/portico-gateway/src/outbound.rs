//! The SSRF guard under the upstream client: every new connection's address is judged by the
//! [`OutboundPolicy`] before it is opened. A host that is an IP literal (`127.0.0.1`,
//! `[::ffff:127.0.0.1]`) is judged by [`Guarded`] (hyper's connector never resolves a
//! literal); a name is resolved by [`GuardedResolver`], which drops every address the policy
//! refuses and fails when none is left — so the address judged is the address connected to, and
//! a name that re-resolves elsewhere (DNS rebinding) is judged again on the next connection.
//!
//! TLS sits above this layer and still sees the URL's own host name (SNI, certificate check).
//! Connections are pooled: the check runs once per new connection, never per request. The
//! gateway follows no redirects (a 3xx goes back to the consumer), so there is nothing to check
//! between hops.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioIo;
use portico_core::outbound::{OutboundPolicy, Refusal, literal_ip};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A connection the outbound policy refused. Its address goes to the log, never to a consumer.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) address: IpAddr,
    pub(crate) reason: Refusal,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the outbound policy refuses {} ({})", self.address, self.reason)
    }
}

impl std::error::Error for Refused {}

fn refuse(host: &str, address: IpAddr, reason: Refusal) -> BoxError {
    tracing::warn!(
        host,
        %address,
        %reason,
        "upstream connection refused by the outbound policy; a platform admin can allow the network with outbound.allow_cidrs"
    );
    Box::new(Refused { address, reason })
}

/// Whether a client error is (or was caused by) a refusal of the outbound policy.
pub(crate) fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<Refused>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Resolves names with `getaddrinfo` and keeps only the addresses the policy permits.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    gai: GaiResolver,
    policy: Arc<OutboundPolicy>,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.gai.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        let resolving = self.gai.call(name.clone());
        Box::pin(async move {
            let mut permitted = Vec::new();
            let mut refused = None;
            for addr in resolving.await? {
                match policy.check(addr.ip()) {
                    Ok(()) => permitted.push(addr),
                    Err(reason) => refused = refused.or(Some((addr.ip(), reason))),
                }
            }
            if let (true, Some((address, reason))) = (permitted.is_empty(), refused) {
                return Err(refuse(name.as_str(), address, reason));
            }
            Ok(permitted.into_iter())
        })
    }
}

/// hyper's TCP connector over a [`GuardedResolver`], with IP-literal hosts judged here.
#[derive(Clone)]
pub(crate) struct Guarded {
    http: HttpConnector<GuardedResolver>,
    policy: Arc<OutboundPolicy>,
}

impl Guarded {
    pub(crate) fn new(
        policy: Arc<OutboundPolicy>,
        configure: impl FnOnce(&mut HttpConnector<GuardedResolver>),
    ) -> Self {
        let resolver = GuardedResolver { gai: GaiResolver::new(), policy: policy.clone() };
        let mut http = HttpConnector::new_with_resolver(resolver);
        configure(&mut http);
        Guarded { http, policy }
    }
}

impl Service<http::Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        if let Some(host) = uri.host()
            && let Some(ip) = literal_ip(host)
            && let Err(reason) = self.policy.check(ip)
        {
            let e = refuse(host, ip, reason);
            return Box::pin(std::future::ready(Err(e)));
        }
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(allow: &[&str]) -> Guarded {
        let policy = OutboundPolicy::new(allow.iter().map(|n| n.parse().unwrap()).collect());
        Guarded::new(Arc::new(policy), |h| h.enforce_http(false))
    }

    async fn connect(g: &mut Guarded, url: &str) -> Result<TokioIo<TcpStream>, BoxError> {
        std::future::poll_fn(|cx| g.poll_ready(cx)).await?;
        g.call(url.parse().unwrap()).await
    }

    #[tokio::test]
    async fn loopback_is_refused_in_every_form_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let urls = [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ];
        let mut strict = guarded(&[]);
        for url in &urls {
            let e = connect(&mut strict, url).await.err().unwrap_or_else(|| panic!("{url} was connected"));
            assert!(is_refused(&*e), "{url}: {e}");
        }
        let mut open = guarded(&["127.0.0.0/8"]);
        for url in &urls {
            connect(&mut open, url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let e = connect(&mut open, "http://169.254.169.254/").await.err().unwrap();
        assert!(is_refused(&*e) && e.to_string().contains("cloud metadata"), "{e}");
    }
}
