//! A small client for a running Portico's `/api/v1`, used by `apply` and `export` (like decK
//! talks to Kong's Admin API). Problem responses become errors carrying their `detail`.

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<&str>) -> anyhow::Result<Self> {
        crate::install_crypto();
        let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
            bail!(
                "no admin token: pass --token or set PORTICO_TOKEN (make one with `portico admin create --email you@example.com`)"
            );
        };
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            bail!("--server `{server}` must start with http:// or https://");
        }
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        Ok(Client { base: format!("{}/api/v1", server.trim_end_matches('/')), token: token.trim().to_owned(), http })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req.bearer_auth(&self.token).send().await.with_context(|| {
            format!("could not reach Portico at {} (is `portico serve` running? set --server)", self.base)
        })?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("Portico answered {status}: {detail}");
        }
        serde_json::from_slice(&body).context("Portico's answer was not the JSON expected")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }
}
