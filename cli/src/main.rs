#![doc = include_str!("../README.md")]
// Results go to stdout (ids, paths, reports: what scripts read); everything else to stderr.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use uuid::Uuid;

mod api;
mod commands;
mod exit;
mod model;
mod progress;
mod save;
mod wait;

use api::Api;
use exit::Failure;

/// The API key's variable. Read here and nowhere else; never a flag's value (it would show in
/// `ps`), never printed.
const KEY_VAR: &str = "SHOMEI_API_KEY";

#[derive(Parser, Debug)]
#[command(
    name = "shomei",
    version,
    about = "Command-line client of the Shomei signing API",
    after_help = "The API key is read from SHOMEI_API_KEY, or from the file given with --key-file.\n\
                  Exit codes: 0 ok, 1 other error, 2 usage, 3 input refused (400/411/413/422),\n\
                  4 key or permission (401/403), 5 not found or gone (404/410), 6 conflict (409/423),\n\
                  7 try again later (429/503), 8 server error, 9 job failed, 10 not valid,\n\
                  11 gave up waiting."
)]
struct Cli {
    /// Base URL of the API.
    #[arg(
        long,
        global = true,
        env = "SHOMEI_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// Also trust the CA certificates in this PEM file (a private CA, such as the dev CA).
    #[arg(long, global = true, env = "SHOMEI_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Read the API key from this file instead of SHOMEI_API_KEY.
    #[arg(long, global = true, env = "SHOMEI_API_KEY_FILE", value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Print the API's answers as JSON on stdout (one document per command).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload a PDF; prints the document id.
    Upload {
        /// The PDF.
        file: PathBuf,
        /// Shown in reports.
        #[arg(long)]
        title: Option<String>,
        /// A folder such as /sales/2026 (default: the root /).
        #[arg(long)]
        folder: Option<String>,
    },
    /// Queue a signature with the service's key; prints the job id.
    Sign {
        /// The document id.
        document: Uuid,
        /// The signer's name, shown in the signature.
        #[arg(long)]
        name: String,
        /// The signer's e-mail address.
        #[arg(long)]
        email: Option<String>,
        /// PAdES level (default: the tenant's, B-T unless it chose B-B).
        #[arg(long)]
        level: Option<Level>,
        /// Reason written into the signature.
        #[arg(long)]
        reason: Option<String>,
        /// Location written into the signature.
        #[arg(long)]
        location: Option<String>,
        /// Also conclude the contract (B-LTA) once signed.
        #[arg(long)]
        conclude: bool,
        /// Sent as Idempotency-Key: the same key and request answer the same job.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// A job's status, or a document's state and revision.
    Status {
        /// A job id or a document id.
        id: Uuid,
    },
    /// Download the document's latest (signed) revision.
    Download {
        /// The document id.
        document: Uuid,
        /// Where to write it (default: the name the API gives, DOC-rREVISION.pdf).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Verify the signatures of a stored document or of a local PDF, on the server.
    Verify {
        /// A document id, or the path of a PDF file.
        target: String,
    },
    /// Bulk download of signed documents as a ZIP archive; prints the export id, or with
    /// --wait the archive's path.
    Export {
        /// The document ids.
        #[arg(required = true)]
        documents: Vec<Uuid>,
        /// Where to write the archive (default: shomei-export-ID.zip; several parts get
        /// -part-N before the extension). Implies --wait.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Args, Debug, Clone, Copy)]
struct Wait {
    /// Follow the job until it finishes, with progress; exit non-zero if it failed.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 11; the job goes on).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
}

impl Wait {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Level {
    #[value(name = "B-B")]
    BB,
    #[value(name = "B-T")]
    BT,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::BB => "B-B",
            Level::BT => "B-T",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(api) = api::api_error(&e) {
                if api.status == reqwest::StatusCode::UNAUTHORIZED {
                    eprintln!("hint: check the key in {KEY_VAR} (or the --key-file)");
                }
            }
            ExitCode::from(exit::code_of(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let key = api_key(cli.key_file.as_deref())?;
    let api = Api::new(&cli.api, key, cli.ca_cert.as_deref())?;
    let out = commands::Output {
        json: cli.json,
        progress: progress::Progress::new(),
    };
    match cli.command {
        Command::Upload {
            file,
            title,
            folder,
        } => commands::upload(&api, &out, &file, title, folder).await,
        Command::Sign {
            document,
            name,
            email,
            level,
            reason,
            location,
            conclude,
            idempotency_key,
            wait,
        } => {
            let request = commands::SignRequest {
                name,
                email,
                level: level.map(Level::as_str),
                reason,
                location,
                conclude,
                idempotency_key,
            };
            let wait = wait.wait.then(|| wait.timeout());
            commands::sign(&api, &out, document, request, wait).await
        }
        Command::Status { id } => commands::status(&api, &out, id).await,
        Command::Download {
            document,
            out: path,
            force,
        } => commands::download(&api, &out, document, path, force).await,
        Command::Verify { target } => commands::verify(&api, &out, &target).await,
        Command::Export {
            documents,
            out: path,
            force,
            wait,
        } => {
            let follow = (wait.wait || path.is_some()).then(|| wait.timeout());
            commands::export(&api, &out, &documents, path, force, follow).await
        }
    }
}

/// The key from `--key-file`, else from SHOMEI_API_KEY; surrounding whitespace dropped.
fn api_key(file: Option<&std::path::Path>) -> anyhow::Result<SecretString> {
    let key = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --key-file {}", path.display()))?,
        None => std::env::var(KEY_VAR).unwrap_or_default(),
    };
    let key = key.trim();
    if key.is_empty() {
        let whence = match file {
            Some(path) => format!("{} is empty", path.display()),
            None => format!("no API key: set {KEY_VAR} or pass --key-file FILE"),
        };
        return Err(Failure::new(exit::USAGE, whence).into());
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Failure::new(
            exit::USAGE,
            "the API key holds whitespace or control characters (one key, one line)",
        )
        .into());
    }
    Ok(SecretString::from(key.to_owned()))
}
