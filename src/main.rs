//! `portcullis`: the command line. Parses arguments and hands over to the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portcullis_config::{Config, LogFormat};

// A request allocates a few small objects that die with it; mimalloc's thread-local free
// lists serve that pattern with fewer instructions than glibc (measured: see bench/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A zero-trust microgateway: every request is authenticated, authorized and checked before
/// it reaches a service.
#[derive(Parser)]
#[command(name = "portcullis", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (SIGHUP reloads, SIGTERM drains and exits).
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Process log format; overrides `log.format`.
        #[arg(long, value_enum)]
        log_format: Option<Format>,
    },
    /// Validate a config file: exits 0 when valid, else prints each error with its key and line.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Config tooling.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// API keys: make new ones, hash existing ones for the config.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the config file.
    Schema,
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Print a new random key (give it to the consumer) and its hash (put it in the config).
    New,
    /// Print the hash of an existing key, for `api_keys.consumers[].keys`.
    Hash {
        /// The key.
        key: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Pretty,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => {
            let log_format = log_format.map(|f| match f {
                Format::Json => LogFormat::Json,
                Format::Pretty => LogFormat::Pretty,
            });
            match portcullis_gateway::serve(portcullis_gateway::ServeOptions { config, log_format }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match portcullis_gateway::check(&config) {
            Ok(summary) => {
                println!("{}: valid ({} routes)", config.display(), summary.routes.len());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Config { command: ConfigCommand::Schema } => {
            println!("{}", serde_json::to_string_pretty(&Config::json_schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Apikey { command: ApikeyCommand::New } => {
            let key = portcullis_authn::apikey::new_key();
            println!("key:  {key}");
            println!("hash: {}", portcullis_authn::apikey::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Apikey { command: ApikeyCommand::Hash { key } } => {
            println!("{}", portcullis_authn::apikey::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("portcullis {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
