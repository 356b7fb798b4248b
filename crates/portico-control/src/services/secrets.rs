//! Re-sealing every stored secret with the current master key (after a rotation): versions'
//! upstream credentials and signing secrets, webhook secrets, token signing keys. One
//! transaction; a secret that does not open aborts it and names what failed.

use crate::error::{Error, Result};
use portico_core::secret::Keyring;
use portico_store::{Store, catalog, notify, oauth};

/// Re-seals what is not sealed with the current key; returns how many secrets changed.
pub async fn reseal_all(store: &Store, ring: &Keyring) -> Result<usize> {
    let mut tx = store.begin().await?;
    let mut n = 0;
    let stale = |s: &str| !ring.is_current(s);
    for (id, p) in catalog::all_version_policies(&mut tx).await? {
        let opened = p.map_secrets(|s| ring.open(s)).map_err(|e| Error::Invalid(format!("version {id}: {e}")))?;
        let changed = std::cell::Cell::new(false);
        p.map_secrets(|s| {
            if stale(s) {
                changed.set(true);
            }
            Ok(s.to_owned())
        })?;
        if changed.get() {
            catalog::set_version_policies(&mut tx, id, &opened.map_secrets(|s| Ok(ring.seal(s)))?).await?;
            n += 1;
        }
    }
    for (id, secret) in notify::all_endpoint_secrets(&mut tx).await? {
        if stale(&secret) {
            let plain = ring.open(&secret).map_err(|e| Error::Invalid(format!("webhook endpoint {id}: {e}")))?;
            notify::set_endpoint_secret(&mut tx, id, &ring.seal(&plain)).await?;
            n += 1;
        }
    }
    for k in oauth::signing_keys(&mut tx, i64::MAX / 4).await? {
        if stale(&k.private_key) {
            let plain = ring.open(&k.private_key).map_err(|e| Error::Invalid(format!("signing key {}: {e}", k.kid)))?;
            oauth::set_private_key(&mut tx, &k.kid, &ring.seal(&plain)).await?;
            n += 1;
        }
    }
    tx.commit().await?;
    Ok(n)
}
