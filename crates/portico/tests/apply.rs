//! `portico apply` / `portico export` against a running Portico, through the real binary:
//! applying the same file twice changes nothing, `apply(export())` changes nothing,
//! `--dry-run` changes nothing, and a bad file is refused with its line.

mod common;

use common::{Backend, spawn_app};
use std::process::Command;

fn portico(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(args).env_remove("PORTICO_TOKEN").env_remove("PORTICO_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn apply_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.admin_token().await;
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/demo-marketplace.yaml");
    let env = [
        ("PORTICO_TOKEN", token.as_str()),
        ("PORTICO_SERVER", app.api.as_str()),
        ("DEMO_UPSTREAM", "http://127.0.0.1:9"),
    ];

    // A dry run reports creations and changes nothing.
    let (ok, out, err) = tokio::task::spawn_blocking({
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        move || {
            portico(
                &["apply", "-f", demo, "--dry-run"],
                &env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>(),
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("+ create api weather"), "{out}");
    assert!(out.contains("dry run"), "{out}");
    let (_, catalog) = app.get("/apis", None).await;
    assert_eq!(catalog["items"], serde_json::json!([]), "a dry run changes nothing");

    let run = |args: Vec<String>| {
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            portico(&args, &env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<Vec<_>>())
        })
    };
    let (ok, out, err) = run(vec!["apply".into(), "-f".into(), demo.into()]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("+ create version weather@1.2.0"), "{out}");
    let (_, catalog) = app.get("/apis", None).await;
    assert_eq!(catalog["items"].as_array().unwrap().len(), 3);
    let (_, weather) = app.get("/apis/weather", None).await;
    assert_eq!(weather["hosts"], serde_json::json!(["weather.localhost"]), "{weather}");

    let (ok, out, err) = run(vec!["apply".into(), "-f".into(), demo.into()]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("No changes"), "applying twice changes nothing: {out}");

    let exported = app.dir.path().join("exported.yaml");
    let (ok, _, err) = run(vec!["export".into(), "-o".into(), exported.display().to_string()]).await.unwrap();
    assert!(ok, "{err}");
    let (ok, out, err) = run(vec!["apply".into(), "-f".into(), exported.display().to_string()]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("No changes"), "apply(export()) changes nothing: {out}");

    // A change shows up as an update of just that field.
    let text = std::fs::read_to_string(&exported).unwrap().replace("requests: 60", "requests: 61");
    std::fs::write(&exported, text).unwrap();
    let (ok, out, err) = run(vec!["apply".into(), "-f".into(), exported.display().to_string()]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("~ update plan weather/free (rate_limit)"), "{out}");

    // A bad file: refused with the file and line, nothing applied.
    let bad = app.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "providers:\n  - slug: acme-weather\n    name: Acme\n    apis:\n      - slug: Weather API\n        name: W\n",
    )
    .unwrap();
    let (ok, _, err) = run(vec!["apply".into(), "-f".into(), bad.display().to_string()]).await.unwrap();
    assert!(!ok);
    assert!(err.contains("bad.yaml:5:") && err.contains("slug"), "{err}");
    // Without a token: says how to get one.
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        portico(&["apply", "-f", demo], &[("DEMO_UPSTREAM", "http://127.0.0.1:9")])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("portico admin create"), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn apply_twice_and_export_round_trip_on_sqlite() {
    apply_is_idempotent(Backend::Sqlite).await;
}

#[tokio::test]
async fn apply_twice_and_export_round_trip_on_postgres() {
    apply_is_idempotent(Backend::Postgres).await;
}

#[tokio::test]
async fn only_platform_admins_apply() {
    let app = spawn_app(Backend::Sqlite).await;
    let user = app.signup("someone@example.com", "provider").await;
    let (s, v) = app.post("/admin/apply", Some(&user), serde_json::json!({"providers": []})).await;
    assert_eq!(s, 403, "{v}");
    let (s, _) = app.get("/admin/export", Some(&user)).await;
    assert_eq!(s, 403);
    app.stop().await;
}
