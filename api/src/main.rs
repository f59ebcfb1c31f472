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
