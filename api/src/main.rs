//! `shomei-api`: the REST intake server, and the admin commands that go with it.

use anyhow::Context;
use clap::{Parser, Subcommand};

use shomei_config::Config;
use shomei_jobs::sign::SignatureLevel;

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
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Decrypt one sealed object file (for example from a restored backup) with the data key it
    /// names, through the HSM: proves a backup is readable, or that a deleted tenant's is not.
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
            let created = shomei_api::tenants::create(&db, &name, signature_level, access_codes)?;
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
        } => rotate_data_keys(&config, tenant),
        Command::Storage {
            command: StorageCommand::Open { file, out },
        } => open_object(&config, &file, &out),
        Command::Key {
            command: KeyCommand::Create { tenant, role, name },
        } => {
            let db = migrate(&config)?;
            let (key, secret) =
                shomei_api::tenants::create_key(&db, tenant, role, name.as_deref())?;
            #[allow(clippy::print_stdout)]
            {
                println!("key_id={}", key.id);
                println!("api_key={secret}");
            }
            Ok(())
        }
    }
}

/// The keyring of a command: the database and one HSM session.
async fn keyring(config: &Config) -> anyhow::Result<shomei_vault::Keyring> {
    let db = migrate(config)?;
    let settings = shomei_signing::HsmSettings {
        pool_size: 1,
        ..shomei_signing::HsmSettings::from_config(&config.hsm)
    };
    let hsm = tokio::task::spawn_blocking(move || shomei_signing::Hsm::connect(&settings))
        .await?
        .context("opening the HSM")?;
    Ok(shomei_vault::Keyring::new(db, hsm))
}

#[tokio::main]
async fn open_object(
    config: &Config,
    file: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use sha2::Digest;
    let sealed = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let plain = keyring(config)
        .await?
        .open(&sealed)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    std::fs::write(out, &plain).with_context(|| format!("writing {}", out.display()))?;
    #[allow(clippy::print_stdout)]
    {
        println!("bytes={}", plain.len());
        println!("sha256={}", hex::encode(sha2::Sha256::digest(&plain)));
    }
    Ok(())
}

#[tokio::main]
async fn rotate_data_keys(config: &Config, tenant: Option<uuid::Uuid>) -> anyhow::Result<()> {
    let rotated = keyring(config).await?.rotate(tenant).await?;
    #[allow(clippy::print_stdout)]
    for key in &rotated {
        println!("data_key={} kek={}", key.data_key_id, key.kek_label);
    }
    tracing::info!(rotated = rotated.len(), "data keys re-wrapped");
    Ok(())
}

fn migrate(config: &Config) -> anyhow::Result<shomei_schema::DbPool> {
    let db = shomei_schema::connect_for_command(&config.database_url);
    shomei_schema::run_migrations(&db).context("running database migrations")?;
    Ok(db)
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    shomei_telemetry::metrics::init("api");
    tokio::task::block_in_place(|| migrate(&config))?;
    let state = shomei_api::AppState::new(&config).await?;
    let (listener, addr) = shomei_api::bind(config.api_addr).await?;
    tracing::info!(%addr, "API listening");
    shomei_api::serve(state, listener, shomei_telemetry::shutdown_signal()).await;
    Ok(())
}
