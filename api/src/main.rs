//! `shomei-api`: the REST intake server, and the admin commands that go with it.

use anyhow::Context;
use clap::{Parser, Subcommand};

use shomei_config::{ApiTransport, Config};
use shomei_jobs::ledger::{self, ChainReport, VerifyOptions};
use shomei_jobs::sign::SignatureLevel;
use shomei_schema::LogName;

#[derive(Parser)]
#[command(version, about = "Shomei intake API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API (runs database migrations first).
    Serve,
    /// Run database migrations and exit.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage a tenant's API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage the data keys that encrypt documents and personal data.
    DataKeys {
        #[command(subcommand)]
        command: DataKeyCommand,
    },
    /// Work with stored objects directly (operators).
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// The tamper-evident logs (operation log, deletion log, operator actions).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Decrypt one sealed object file (for example from a restored backup) with the data key it
    /// names, through the HSM: proves a backup is readable, or that a deleted tenant's is not.
    /// An appended revision (`<hash>.a<N>.sealed`) is put together with the revisions it
    /// extends, read from the same directory.
    Open {
        /// The sealed file.
        file: std::path::PathBuf,
        /// Where to write the plaintext.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum DataKeyCommand {
    /// Re-wrap data keys under a new version of their key-encryption key in the HSM and destroy
    /// the old version. Documents are not re-encrypted.
    Rotate {
        /// Only this tenant's keys (default: every live key).
        #[arg(long)]
        tenant: Option<uuid::Uuid>,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Verify the hash chains and their time-stamp anchors; name the first entry that was
    /// edited, inserted or removed. Exits non-zero when a chain fails.
    Verify {
        /// One log only: `events` (the operation log), `deletions` or `operator`.
        #[arg(long)]
        log: Option<LogName>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a further API key for a tenant and print it (shown only this once).
    Create {
        #[arg(long)]
        tenant: uuid::Uuid,
        #[arg(long, value_enum, default_value = "member")]
        role: shomei_api::auth::Role,
        /// A name to tell keys apart in the accounts list.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print a fresh API key for it (shown only this once).
    Create {
        name: String,
        /// PAdES level of signatures whose request names none: B-T (time-stamped) or B-B.
        #[arg(long, default_value = "B-T")]
        signature_level: SignatureLevel,
        /// Every signer of this tenant's signature requests also needs an access code, shared
        /// by the sender by other means (one is made when the request gives none).
        #[arg(long)]
        access_codes: bool,
    },
}

fn main() -> anyhow::Result<()> {
    shomei_telemetry::init();
    let cli = Cli::parse();
    let config = Config::from_env()?;
    // Operator actions name who ran the command.
    let actor = format!("cli:{}", config.operator);
    match cli.command {
        Command::Serve => serve(config),
        // The admin commands are short and blocking (diesel); they need no async runtime.
        Command::Migrate => migrate(&config).map(drop),
        Command::Tenant {
            command:
                TenantCommand::Create {
                    name,
                    signature_level,
                    access_codes,
                },
        } => {
            let db = migrate(&config)?;
            let created =
                shomei_api::tenants::create(&db, &actor, &name, signature_level, access_codes)?;
            // The one place a key is printed: to the operator who asked for it.
            #[allow(clippy::print_stdout)]
            {
                println!("tenant_id={}", created.tenant.id);
                println!("api_key={}", created.api_key);
            }
            Ok(())
        }
        Command::DataKeys {
            command: DataKeyCommand::Rotate { tenant },
        } => rotate_data_keys(&config, &actor, tenant),
        Command::Storage {
            command: StorageCommand::Open { file, out },
        } => open_object(&config, &actor, &file, &out),
        Command::Key {
            command: KeyCommand::Create { tenant, role, name },
        } => {
            let db = migrate(&config)?;
            let (key, secret) =
                shomei_api::tenants::create_key(&db, &actor, tenant, role, name.as_deref())?;
            #[allow(clippy::print_stdout)]
            {
                println!("key_id={}", key.id);
                println!("api_key={secret}");
            }
            Ok(())
        }
        Command::Log {
            command: LogCommand::Verify { log, json },
        } => verify_logs(&config, log, json),
    }
}

/// The keyring of a command (the database and one HSM session), and the database.
async fn keyring(
    config: &Config,
) -> anyhow::Result<(shomei_vault::Keyring, shomei_schema::DbPool)> {
    let db = migrate(config)?;
    let settings = shomei_signing::HsmSettings {
        pool_size: 1,
        ..shomei_signing::HsmSettings::from_config(&config.hsm)
    };
    let hsm = tokio::task::spawn_blocking(move || shomei_signing::Hsm::connect(&settings))
        .await?
        .context("opening the HSM")?;
    Ok((shomei_vault::Keyring::new(db.clone(), hsm), db))
}

/// Records an operator action (the chained operator log).
fn record_action(
    db: &shomei_schema::DbPool,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let mut conn = db.get().context("connecting to PostgreSQL")?;
    shomei_schema::OperatorAction::record(&mut conn, actor, action, target, detail)?;
    Ok(())
}

#[tokio::main]
async fn open_object(
    config: &Config,
    actor: &str,
    file: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use sha2::Digest;
    let (keys, db) = keyring(config).await?;
    let opened = shomei_storage::open_revision_file(&keys, file).await;
    // Recorded whether or not it opened: reading stored documents is an operator action.
    record_action(
        &db,
        actor,
        "storage.open",
        &file.display().to_string(),
        serde_json::json!({"opened": opened.is_ok()}),
    )?;
    let plain = opened.with_context(|| format!("opening {}", file.display()))?;
    std::fs::write(out, &plain).with_context(|| format!("writing {}", out.display()))?;
    #[allow(clippy::print_stdout)]
    {
        println!("bytes={}", plain.len());
        println!("sha256={}", hex::encode(sha2::Sha256::digest(&plain)));
    }
    Ok(())
}

/// `log verify`: read-only (no migrations run), so it may point at a replica.
fn verify_logs(config: &Config, only: Option<LogName>, json: bool) -> anyhow::Result<()> {
    let Some(anchors) = config.tsa.trust_anchors.as_deref() else {
        anyhow::bail!("SHOMEI_TSA_TRUST_ANCHORS must name the CA certificates the anchors' time-stamps chain to");
    };
    let options = VerifyOptions {
        trust_anchors: shomei_jobs::trust_anchors(Some(anchors))?,
        policy: config.tsa.required_policy.clone(),
    };
    let db = shomei_schema::connect_for_command(&config.database_url);
    let mut conn = db.get().context("connecting to PostgreSQL")?;
    let logs = only.map_or(LogName::ALL.to_vec(), |log| vec![log]);
    let mut reports = Vec::new();
    for log in logs {
        reports.push(
            ledger::verify(&mut conn, log, &options)
                .with_context(|| format!("verifying the {log} log"))?,
        );
    }
    #[allow(clippy::print_stdout)]
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            println!("{}", describe(report));
        }
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.log.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("log chain verification failed: {}", failed.join(", "));
    }
    Ok(())
}

#[tokio::main]
async fn rotate_data_keys(
    config: &Config,
    actor: &str,
    tenant: Option<uuid::Uuid>,
) -> anyhow::Result<()> {
    let (keys, db) = keyring(config).await?;
    let rotated = keys.rotate(tenant).await?;
    let target = tenant.map_or("all tenants".to_owned(), |t| t.to_string());
    let labels: Vec<&str> = rotated.iter().map(|r| r.kek_label.as_str()).collect();
    record_action(
        &db,
        actor,
        "data_keys.rotate",
        &target,
        serde_json::json!({"keks": labels}),
    )?;
    #[allow(clippy::print_stdout)]
    for key in &rotated {
        println!("data_key={} kek={}", key.data_key_id, key.kek_label);
    }
    tracing::info!(rotated = rotated.len(), "data keys re-wrapped");
    Ok(())
}

/// One line per log: `events: OK, ...` or `events: FAILED at seq N (id): edited: ...`.
fn describe(report: &ChainReport) -> String {
    let log = report.log;
    if let Some(problem) = &report.problem {
        let id = problem
            .id
            .map(|id| format!(" (id {id})"))
            .unwrap_or_default();
        return format!(
            "{log}: FAILED at seq {}{id}: {}: {}",
            problem.seq,
            problem.kind.as_str(),
            problem.detail
        );
    }
    let mut line = match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => {
            format!(
                "{log}: OK, {} entries (seq {first} to {last})",
                report.entries
            )
        }
        _ => format!("{log}: OK, no sealed entries"),
    };
    if let Some(start) = &report.starts_after {
        line.push_str(&format!(
            ", starting after the purge through seq {}",
            start.through_seq
        ));
    }
    line.push_str(&format!(", {} anchors verified", report.anchors));
    if let Some(newest) = &report.newest_anchor {
        line.push_str(&format!(
            " (newest: seq {} at {})",
            newest.seq,
            newest.time.to_rfc3339()
        ));
    }
    if report.unsealed > 0 {
        line.push_str(&format!(", {} not sealed yet", report.unsealed));
    }
    line
}

fn migrate(config: &Config) -> anyhow::Result<shomei_schema::DbPool> {
    let db = shomei_schema::connect_for_command(&config.database_url);
    shomei_schema::run_migrations(&db).context("running database migrations")?;
    Ok(db)
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    // First, so a missing or broken certificate stops the start before anything is touched.
    let tls = match config.api_transport_required()? {
        ApiTransport::Https { cert, key } => Some(shomei_api::server::tls_acceptor(cert, key)?),
        ApiTransport::PlainHttp => {
            if !config.api_addr.ip().is_loopback() {
                tracing::warn!(
                    addr = %config.api_addr,
                    "serving plain HTTP on a non-loopback address (SHOMEI_API_PLAIN_HTTP=true)"
                );
            }
            None
        }
    };
    shomei_telemetry::metrics::init("api");
    tokio::task::block_in_place(|| migrate(&config))?;
    let state = shomei_api::AppState::new(&config).await?;
    let (listener, addr) = shomei_api::bind(config.api_addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "API listening");
    shomei_api::serve(state, listener, tls, shomei_telemetry::shutdown_signal()).await;
    Ok(())
}
