//! What the fuzz targets in `fuzz/` (cargo-fuzz) drive, one function per target, shared with
//! `tests/fuzz_corpora.rs`, which replays every file of `fuzz/corpus/<target>/` through the same
//! function in the ordinary test run, so an input that once crashed stays a test. Each function
//! takes arbitrary bytes and must return without panicking, whatever they are.

use portico_core::api_key::Pepper;
use portico_core::operations::OperationRouter;
use portico_core::snapshot::Snapshot;
use portico_gateway::token::TokenTrust;
use serde_json::Value;
use std::sync::LazyLock;

/// What a fuzz target runs on each input.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Target); 4] =
    [("openapi", openapi_import), ("api_key", api_key), ("jwt", jwt), ("config", config_file)];

/// The key id and public half of the Ed25519 key that signed the JWT corpus's valid tokens
/// (private seed `[7; 32]`, used nowhere else).
pub const JWT_KID: &str = "fuzz-key";
pub const JWT_PUBLIC_KEY: [u8; 32] = [
    0xea, 0x4a, 0x6c, 0x63, 0xe2, 0x9c, 0x52, 0x0a, 0xbe, 0xf5, 0x50, 0x7b, 0x13, 0x2e, 0xc5, 0xf9, 0x95, 0x47, 0x76,
    0xae, 0xbe, 0xbe, 0x7b, 0x92, 0x42, 0x1e, 0xea, 0x69, 0x14, 0x46, 0xd2, 0x2c,
];
/// Whom the corpus's tokens are issued by and for.
pub const JWT_ISSUER: &str = "http://portico.fuzz";
pub const JWT_AUDIENCE: &str = "http://portico.fuzz/gateway";

/// A provider's OpenAPI document as uploaded (JSON or YAML): validated, summarised into
/// operations, compiled into the gateway's operation router, and every operation looked up.
pub fn openapi_import(data: &[u8]) {
    let value = match serde_json::from_slice::<Value>(data) {
        Ok(v) => v,
        Err(_) => match std::str::from_utf8(data).ok().and_then(|t| serde_norway::from_str::<Value>(t).ok()) {
            Some(v) => v,
            None => return,
        },
    };
    let Ok(doc) = portico_core::openapi::OpenApiDoc::parse(value) else { return };
    let Ok(router) = OperationRouter::compile(&doc.operations) else { return };
    for op in &doc.operations {
        let _ = router.lookup(&op.method, &op.path);
        let _ = router.lookup(&op.method, &op.path.replace('{', "x").replace('}', ""));
    }
}

/// A pepper with a previous one, so that a miss also walks the rotation path.
static PEPPER: LazyLock<Pepper> =
    LazyLock::new(|| Pepper::from_bytes([9; 32]).with_previous([Pepper::from_bytes([8; 32])]));
static EMPTY: LazyLock<Snapshot> = LazyLock::new(Snapshot::default);

/// A credential as the gateway meets it: in `X-Api-Key` and in `Authorization: Bearer`, parsed,
/// checksummed and looked up; and the same bytes as the path of a call.
pub fn api_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = portico_core::api_key::ApiKey::parse(text);
    let _ = portico_gateway::identify::lookup(&EMPTY, &PEPPER, text);
    let _ = portico_gateway::route::parse(text);
    for (name, value) in [("x-api-key", text.to_string()), ("authorization", format!("Bearer {text}"))] {
        let Ok(value) = hyper::http::HeaderValue::from_str(&value) else { continue };
        let mut headers = hyper::http::HeaderMap::new();
        headers.insert(name, value);
        if let portico_gateway::identify::Credential::Key { value, .. } =
            portico_gateway::identify::credential(&headers)
        {
            let _ = portico_gateway::identify::lookup(&EMPTY, &PEPPER, value);
        }
    }
}

/// The snapshot the `jwt` target verifies against: it trusts [`JWT_KID`] / [`JWT_PUBLIC_KEY`].
pub static TOKEN_SNAPSHOT: LazyLock<Snapshot> =
    LazyLock::new(|| Snapshot { token_keys: vec![(JWT_KID.to_string(), JWT_PUBLIC_KEY, None)], ..Snapshot::default() });
/// The issuer and audience the `jwt` target requires.
pub static TRUST: LazyLock<TokenTrust> =
    LazyLock::new(|| TokenTrust { issuer: JWT_ISSUER.into(), audience: JWT_AUDIENCE.into() });

/// A bearer token as the gateway verifies it, against a snapshot that trusts one signing key.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = portico_gateway::token::verify(&TOKEN_SNAPSHOT, Some(&TRUST), token.trim());
}

/// A `--config` TOML file: parsed into the settings and validated.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::settings::Settings::from_toml(text);
}
