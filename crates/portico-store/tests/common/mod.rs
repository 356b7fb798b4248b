//! Stores for the repository tests: a migrated SQLite database in a temporary directory, and a
//! migrated fresh database on the machine's PostgreSQL (a test fails, never skips, when it is
//! not reachable).

use portico_store::Store;

pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

pub async fn postgres() -> Store {
    let url = portico_store::testing::fresh_postgres_database().await.unwrap_or_else(|e| panic!("{e}"));
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store
}
