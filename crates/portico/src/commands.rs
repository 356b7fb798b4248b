//! One function per subcommand.

use crate::app::{App, shutdown_signal};
use crate::cli::{AdminArgs, AdminCommand, ApplyArgs, ExportArgs, ServeArgs, StoreArgs};
use crate::client::Client;
use crate::settings::Settings;
use anyhow::Context;
use portico_control::services::declarative::ApplyReport;
use portico_core::declarative::Document;
use portico_core::values::Email;
use portico_store::Store;

pub async fn serve(args: ServeArgs, log_format: Option<&str>) -> anyhow::Result<()> {
    let settings = Settings::load(&args)?;
    // Kept to the end: dropping it flushes the last traces.
    let _telemetry = crate::telemetry::init(log_format, Some(&settings.tracing))?;
    let app = App::build(&settings).await?;
    if settings.demo {
        let upstream = crate::demo::start_upstream().await?;
        let info = crate::demo::seed_demo(&app, &settings.data_dir, &upstream).await?;
        println!("\nPortico demo marketplace is running.\n");
        println!("  Portal:        {}", info.portal_url);
        println!("  REST API:      {}  (reference: {}/docs)", info.api_url, info.api_url);
        println!("  Gateway:       {}", info.gateway_url);
        println!("  Admin login:   {} / {}", info.admin_email, info.admin_password);
        println!("  Consumer key:  {}", info.consumer_api_key);
        println!("\nTry it:\n  {}\n", info.curl);
        println!("(All of this is in {}.)\n", settings.data_dir.join("demo.json").display());
    } else if portico_control::services::accounts::admin_count(&app.state.store).await? == 0 {
        tracing::warn!(
            "there is no platform admin yet: create one with `portico admin create --email you@example.com` (same --data-dir / --database)"
        );
    }
    tracing::info!(gateway = %app.gateway_addr, api = %app.api_addr, "Portico is serving (portal and API on the api address)");
    app.run(shutdown_signal()).await
}

fn print_changes(report: &ApplyReport) {
    if report.changes.is_empty() {
        println!("No changes: Portico already matches the file.");
        return;
    }
    for c in &report.changes {
        let sign = if c.action == "create" { "+" } else { "~" };
        let fields = if c.fields.is_empty() { String::new() } else { format!(" ({})", c.fields.join(", ")) };
        println!("{sign} {} {} {}{fields}", c.action, c.kind, c.name);
    }
    let verb = if report.dry_run { "would be made (dry run: nothing changed)" } else { "made" };
    println!("{} change(s) {verb}.", report.changes.len());
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let doc = crate::document::read(&args.file)?;
    let client = Client::new(&args.server.server, args.server.token.as_deref())?;
    let path = format!("/admin/apply?dry_run={}", args.dry_run);
    let report: ApplyReport =
        client.post(&path, &doc).await.with_context(|| format!("applying {}", args.file.display()))?;
    print_changes(&report);
    Ok(())
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server.server, args.server.token.as_deref())?;
    let doc: Document = client.get("/admin/export").await?;
    let yaml = serde_norway::to_string(&doc)?;
    match args.output {
        Some(path) => std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}

async fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let settings = Settings::for_store(args)?;
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    crate::install_crypto();
    let url = settings.database_url();
    let store = Store::connect(&url).await.with_context(|| format!("connecting to {}", portico_store::redact(&url)))?;
    store.migrate().await.context("running migrations")?;
    Ok(store)
}

pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Create { email, password, store } => {
            let email = Email::parse(&email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            let store = open_store(&store).await?;
            let made = portico_control::services::accounts::create_admin(&store, &email, password.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if made.created {
                println!("Created platform admin {}.", made.email);
            } else {
                println!("{} is now a platform admin.", made.email);
            }
            if let Some(p) = made.generated_password {
                println!("Password (shown once): {p}");
            }
            println!("API token (shown once; use as PORTICO_TOKEN or `Authorization: Bearer …`):\n{}", made.token);
            store.close().await;
            Ok(())
        }
        AdminCommand::RotateMasterKey { store: args } => {
            if std::env::var_os("PORTICO_MASTER_KEY").is_some() {
                anyhow::bail!(
                    "the master key comes from PORTICO_MASTER_KEY: put a new key there (64 hex digits, e.g. from `openssl rand -hex 32`), \
                     the old one in PORTICO_MASTER_KEY_PREVIOUS, restart, then run `portico admin reseal`"
                );
            }
            let settings = Settings::for_store(&args)?;
            let ring = crate::settings::load_keyring(&settings.data_dir)?;
            let path = settings.data_dir.join("master-keys");
            let old = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let key = portico_core::secret::Keyring::generate_key();
            crate::settings::write_private(&path, &format!("{}\n{old}", hex::encode(key)))?;
            let new_ring = crate::settings::load_keyring(&settings.data_dir)?;
            let store = open_store(&args).await?;
            let n = portico_control::services::secrets::reseal_all(&store, &new_ring)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.close().await;
            println!(
                "New master key {} (was {}); {n} secrets re-sealed. Restart running Portico processes to pick it up; keep the old key in {} until then.",
                new_ring.current(),
                ring.current(),
                path.display()
            );
            Ok(())
        }
        AdminCommand::Reseal { store: args } => {
            let settings = Settings::for_store(&args)?;
            let ring = crate::settings::load_keyring(&settings.data_dir)?;
            let store = open_store(&args).await?;
            let n = portico_control::services::secrets::reseal_all(&store, &ring)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.close().await;
            println!("{n} secrets re-sealed with master key {}.", ring.current());
            Ok(())
        }
    }
}

pub async fn migrate(args: StoreArgs) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    println!("The database is up to date ({:?}).", store.backend());
    store.close().await;
    Ok(())
}
