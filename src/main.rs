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
    /// Authorization tooling: explain a decision, replay an audit log against new policies.
    Authz {
        #[command(subcommand)]
        command: AuthzCommand,
    },
    /// API keys: make new ones, hash existing ones for the config.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Revoke a token (`--jti`), subject, client, session or SPIFFE ID on the running
    /// gateway, through its admin API (`admin.listen`, with `admin.auth.bearer_token`); list
    /// revocations (`--list`) or undo one (`--undo`).
    Revoke {
        /// The gateway's config file.
        #[arg(long, short)]
        config: PathBuf,
        /// A token's `jti`.
        #[arg(long)]
        jti: Option<String>,
        /// A subject: its credentials issued until now.
        #[arg(long)]
        sub: Option<String>,
        /// A client application: its credentials issued until now.
        #[arg(long)]
        client_id: Option<String>,
        /// A session (`sid` claim): its credentials issued until now.
        #[arg(long)]
        sid: Option<String>,
        /// A workload's SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// A token, by the base64url SHA-256 of it as sent (43 characters).
        #[arg(long)]
        token_sha256: Option<String>,
        /// How long the revocation lasts, in seconds (a day by default).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Undo the revocation named instead.
        #[arg(long)]
        undo: bool,
        /// List the revocations in force.
        #[arg(long)]
        list: bool,
    },
    /// Usage metering: export what each consumer used, for billing.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
    /// Signed config bundles: pack a config folder, check a bundle, print a public key.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Fleet tooling: the status of many gateways.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print the version and the commit it was built from.
    Version,
    /// Print a shell completion script (`portcullis completions bash > /etc/bash_completion.d/portcullis`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page, in roff (`portcullis man > portcullis.1; man -l portcullis.1`),
    /// or write it and a page for each command into a folder (`--dir /usr/local/share/man/man1`).
    Man {
        /// The folder to write `portcullis.1` and `portcullis-<command>.1` into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Pack every file under DIR (the config and the files it names) into a signed bundle.
    Create {
        /// The folder.
        dir: PathBuf,
        /// The Ed25519 signing key, PEM PKCS#8 (`openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// The bundle's version: must increase with every bundle published (default: the
        /// time now, in seconds since 1970).
        #[arg(long = "bundle-version")]
        bundle_version: Option<u64>,
        /// The config file within DIR.
        #[arg(long, default_value = "portcullis.yaml")]
        config: String,
        /// Where to write the bundle.
        #[arg(long, short, default_value = "bundle.tar")]
        out: PathBuf,
    },
    /// Check a bundle's signature and digests, and print its manifest; exits 1 if it is bad.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// The public keys (PEM) it may be signed with.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<PathBuf>,
    },
    /// Print the PEM public key of a signing key (for `config.source.public_keys`).
    PublicKey {
        /// The signing key.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Print a table of gateways' status (their admin listeners' `/status`); exits 1 if any
    /// does not answer.
    Status {
        /// The gateways' admin base URLs, e.g. `http://10.0.0.7:9901`.
        #[arg(required = true)]
        urls: Vec<String>,
        /// The admin bearer token (`admin.auth.bearer_token`), if the gateways need one.
        #[arg(long)]
        token: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsageCommand {
    /// Print a usage report (CSV by default) from what the config's gateway stored: its
    /// journal (`state.path`) or Redis. The same report as the admin API's `GET /usage`.
    Export {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The first hour: an RFC 3339 time or a date (UTC); the start of this month by default.
        #[arg(long)]
        from: Option<String>,
        /// The end (exclusive): an RFC 3339 time or a date (UTC); now by default.
        #[arg(long)]
        to: Option<String>,
        /// Only this consumer.
        #[arg(long)]
        consumer: Option<String>,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Only this plan.
        #[arg(long)]
        plan: Option<String>,
        /// What to group by: consumer, plan, route, status, hour, day, month.
        #[arg(long, default_value = "consumer,route")]
        group_by: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: UsageFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum UsageFormat {
    Csv,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the config file.
    Schema,
}

#[derive(Subcommand)]
enum AuthzCommand {
    /// Explain the decision on a described request: the route, allow or deny, and the
    /// policies that decided. Exits 0 on allow, 2 on deny.
    Explain {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The request, as JSON: `{"method": "GET", "host": "api", "path": "/orders/1",
        /// "principal": {"claims": {...}}, "context": {"client_ip": "10.0.0.1", "time": 1700000000}}`.
        /// A file, or `-` for standard input.
        #[arg(long, short)]
        request: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
    /// Judge the decisions recorded in an audit log (the access log) by a config with new
    /// policies, and report those that flip. Exits 0 when none flips, 2 when some do, 3 when
    /// none flips but some could not be judged (they read claims the log left out).
    Replay {
        /// The config file with the new rules and policies.
        #[arg(long, short)]
        config: PathBuf,
        /// The audit log (JSON lines), or `-` for standard input.
        #[arg(long, short)]
        log: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Output,
    },
    /// Print the built-in Cedar schema (a starting point for `authorization.cedar.schema`).
    Schema,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Print a new random key (give it to the consumer) and its hash (put it in the config).
    New,
    /// Print the hash of an existing key, for `api_keys.consumers[].keys`. Without KEY, the
    /// key is read from standard input (one line), so that it stays out of shell history.
    Hash {
        /// The key; read from standard input when absent.
        key: Option<String>,
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
            match portcullis_gateway::serve(portcullis_gateway::ServeOptions {
                config,
                log_format,
                build: (env!("CARGO_PKG_VERSION").into(), env!("PORTCULLIS_COMMIT").into()),
            }) {
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
        Command::Authz { command } => authz(command),
        Command::Apikey { command: ApikeyCommand::New } => {
            let key = portcullis_authn::apikey::new_key();
            println!("key:  {key}");
            println!("hash: {}", portcullis_authn::apikey::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Apikey { command: ApikeyCommand::Hash { key } } => {
            let key = match key.map_or_else(read_key, Ok) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{}", portcullis_authn::apikey::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Revoke { config, jti, sub, client_id, sid, spiffe_id, token_sha256, expires_in, undo, list } => {
            use portcullis_gateway::revoke::{Command as Revoke, cli};
            let named: Vec<(String, String)> = [
                ("jti", jti),
                ("sub", sub),
                ("client_id", client_id),
                ("sid", sid),
                ("spiffe_id", spiffe_id),
                ("token_sha256", token_sha256),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect();
            let command = match (list, undo, &named[..]) {
                (true, false, []) => Revoke::List,
                (false, true, [(k, v)]) => Revoke::Undo(k.clone(), v.clone()),
                (false, false, [(k, v)]) => Revoke::Revoke(k.clone(), v.clone(), expires_in),
                _ => {
                    eprintln!(
                        "portcullis: name one of --jti, --sub, --client-id, --sid, --spiffe-id, --token-sha256 (or give --list)"
                    );
                    return ExitCode::from(2);
                }
            };
            match cli(&config, command) {
                Ok(answer) => {
                    println!("{answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Usage {
            command: UsageCommand::Export { config, from, to, consumer, route, plan, group_by, format },
        } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in [("from", from), ("to", to), ("consumer", consumer), ("route", route), ("plan", plan)] {
                if let Some(v) = v {
                    q.append_pair(k, &v);
                }
            }
            q.append_pair("group_by", &group_by);
            q.append_pair("format", if matches!(format, UsageFormat::Csv) { "csv" } else { "json" });
            match portcullis_gateway::usage::export(&config, &q.finish()) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!("portcullis {} (commit {})", env!("CARGO_PKG_VERSION"), env!("PORTCULLIS_COMMIT"));
            ExitCode::SUCCESS
        }
        Command::Bundle { command } => bundle(command),
        Command::Fleet { command: FleetCommand::Status { urls, token } } => {
            let (table, all) = portcullis_gateway::fleet::status(&urls, token.as_deref());
            print!("{table}");
            if all { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match match dir {
            Some(dir) => clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir),
            None => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout()),
        } {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn bundle(command: BundleCommand) -> ExitCode {
    use portcullis_gateway::bundle;
    let fail = |e: String| {
        eprintln!("portcullis: {e}");
        ExitCode::FAILURE
    };
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    match command {
        BundleCommand::Create { dir, key, bundle_version, config, out } => {
            let key = match read(&key).and_then(|pem| bundle::signing_key(&pem)) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let version = bundle_version.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
            });
            match bundle::create(&dir, &config, version, &key)
                .and_then(|b| std::fs::write(&out, b).map_err(|e| format!("cannot write {}: {e}", out.display())))
            {
                Ok(()) => {
                    println!("{}: version {version}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BundleCommand::Verify { bundle: path, public_keys } => {
            let keys: Result<Vec<_>, String> = public_keys.iter().map(|p| bundle::PublicKey::read(p)).collect();
            match keys.and_then(|keys| read(&path).and_then(|b| bundle::verify(&b, &keys))) {
                Ok(v) => {
                    println!(
                        "{}: good; version {}, made {}, digest {}",
                        path.display(),
                        v.manifest.version,
                        v.manifest.created,
                        v.digest
                    );
                    for f in &v.manifest.files {
                        let mark = if f.path == v.manifest.config { " (config)" } else { "" };
                        println!("  {} {} {}{mark}", f.sha256, f.size, f.path);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{}: refused: {e}", path.display())),
            }
        }
        BundleCommand::PublicKey { key } => match read(&key).and_then(|pem| bundle::signing_key(&pem)) {
            Ok(k) => {
                print!("{}", bundle::public_pem(&k));
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

fn authz(command: AuthzCommand) -> ExitCode {
    use portcullis_gateway::policy_tools;
    let fail = |e: String| {
        eprintln!("portcullis: {e}");
        ExitCode::FAILURE
    };
    match command {
        AuthzCommand::Schema => {
            print!("{}", portcullis_authz::DEFAULT_SCHEMA);
            ExitCode::SUCCESS
        }
        AuthzCommand::Explain { config, request, format } => {
            let text = match read_input(&request) {
                Ok(t) => t,
                Err(e) => return fail(e),
            };
            let x = match policy_tools::explain(&config, &text) {
                Ok(x) => x,
                Err(e) => return fail(e),
            };
            if format == Output::Json {
                println!("{}", serde_json::to_string_pretty(&x).unwrap_or_default());
            } else {
                println!("decision: {}", x.decision);
                println!("route:    {}", x.route.as_deref().unwrap_or("(none)"));
                println!(
                    "reason:   {}{}",
                    x.reason,
                    if x.detail.is_empty() { String::new() } else { format!(" ({})", x.detail) }
                );
                println!(
                    "policies: {}",
                    if x.policies.is_empty() { "(none)".to_string() } else { x.policies.join(", ") }
                );
                for e in &x.errors {
                    println!("error:    {e}");
                }
            }
            if x.decision == "allow" { ExitCode::SUCCESS } else { ExitCode::from(2) }
        }
        AuthzCommand::Replay { config, log, format } => {
            let reader: Box<dyn std::io::BufRead> = if log.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                match std::fs::File::open(&log) {
                    Ok(f) => Box::new(std::io::BufReader::new(f)),
                    Err(e) => return fail(format!("{}: {e}", log.display())),
                }
            };
            let r = match policy_tools::replay(&config, reader) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            if format == Output::Json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!(
                    "{} lines, {} decisions replayed: {} unchanged, {} allow -> deny, {} deny -> allow; {} not judged, {} without a recorded decision, {} unreadable",
                    r.lines,
                    r.replayed,
                    r.unchanged,
                    r.allow_to_deny.len(),
                    r.deny_to_allow.len(),
                    r.not_judged.len(),
                    r.skipped,
                    r.unreadable.len()
                );
                for (label, flips) in [("allow -> deny", &r.allow_to_deny), ("deny -> allow", &r.deny_to_allow)] {
                    for f in flips {
                        println!(
                            "{label}: line {} {} {} by {} on {}: {} [{}]",
                            f.line,
                            f.time.as_deref().unwrap_or("-"),
                            f.request,
                            f.principal.as_deref().unwrap_or("-"),
                            f.now.route.as_deref().unwrap_or("(no route)"),
                            f.now.reason,
                            f.now.policies.join(", ")
                        );
                    }
                }
                for n in &r.not_judged {
                    println!("not judged: line {} {} on {}: {}", n.line, n.request, n.route, n.reason);
                }
                for u in &r.unreadable {
                    println!("unreadable: {u}");
                }
            }
            if r.flips() > 0 {
                ExitCode::from(2)
            } else if !r.not_judged.is_empty() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// An API key from the first line of standard input, without its line ending. At a terminal
/// a prompt is shown first (on standard error; what is typed is echoed).
fn read_key() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("API key: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(|e| format!("standard input: {e}"))?;
    let key = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    if key.is_empty() {
        return Err("no key: give it as an argument or on standard input".into());
    }
    Ok(key.to_string())
}

/// A file's text, or standard input's for `-`.
fn read_input(path: &std::path::Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}
