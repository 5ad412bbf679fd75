//! The `broker` command: serve, migrate, dev tokens, policy checks and the audit trail.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

use broker::auth::{dev, Role};
use broker::checkpoint::{self, Signer, VerifyingKey};
use broker::clock::{rfc3339, SystemClock};
use broker::config::{Config, Overrides};
use broker::domain::decision::Outcome;
use broker::domain::tenancy::TenantScope;
use broker::policy::{fixtures, PolicyEngine};
use broker::printable;
use broker::store::{EventFilter, Page, Store};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Standard output was closed by its reader (`broker audit list | head`): the command stops there, quietly.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
struct StdoutClosed;

/// Writes to standard output through a handle: `println!` panics when the reader has gone (EPIPE).
fn emit(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("writing to standard output"),
        })
}

/// `println!` that returns the closed pipe as [`StdoutClosed`] instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// Prints a command's whole report, whose exit code was decided before: a reader that went away does not
/// turn a failed check into a success.
fn report(text: &str, code: ExitCode) -> anyhow::Result<ExitCode> {
    match emit(format_args!("{text}")) {
        Err(e) if e.is::<StdoutClosed>() => Ok(code),
        Err(e) => Err(e),
        Ok(()) => Ok(code),
    }
}

/// `eprintln!` that ignores a closed standard error (nothing is left to tell it to).
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Authorization broker for AI agents: every tool call is checked against sessions and Cedar policies,
/// and recorded in a tamper-evident audit trail, before it happens.
#[derive(Parser)]
#[command(name = "broker", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// TOML config file; `BROKER_*` environment variables and these flags override it.
    #[arg(long, global = true, env = "BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:50051].
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// `sqlite://PATH` or `postgres://...` [default: SQLite in the data dir].
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Policy directory [default: ./policies].
    #[arg(long, global = true)]
    policies: Option<PathBuf>,
    /// Data directory for the embedded database and the dev signing key [default: ./broker-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. SIGTERM or SIGINT stops it cleanly: calls in flight get `shutdown_grace`, the audit
    /// trail is flushed and a last checkpoint signed, then it exits 0.
    Serve {
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Serve with the dev issuer on a non-loopback address (development only: anyone who can read
        /// its key mints tokens of any role). Same as `allow_dev_issuer_on_network = true`.
        #[arg(long)]
        allow_dev_issuer_on_network: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Database administration.
    #[command(subcommand)]
    Db(DbCommand),
    /// Print a JWT signed by the dev issuer's key (development only).
    Token(TokenArgs),
    /// Check or test policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read and verify the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Engage, release and list kill switches on a running broker (role `admin`).
    Kill(KillArgs),
    /// List, show, approve and deny tool calls waiting for people (role `approver`).
    Approvals(ApprovalArgs),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Print the SQL (Postgres) that gives the broker's role only what it needs: SELECT and INSERT on the
    /// audit trail. Run it as the owner of the tables, after `broker migrate`.
    Grants {
        /// The role the broker connects as (a lowercase identifier).
        #[arg(long)]
        role: String,
    },
}

#[derive(Args)]
struct ApprovalArgs {
    /// The broker to talk to [default: http://<listen>].
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// An approver's token.
    #[arg(long, global = true, env = "BROKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: ApprovalCommand,
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// Approvals waiting for a decision (with `--all`, every status).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One approval in full: the redacted arguments, who must approve, the votes so far.
    Show { id: String },
    /// Approve exactly what `show` printed.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Args)]
struct KillArgs {
    /// The broker to talk to [default: http://<listen>].
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// An admin token.
    #[arg(long, global = true, env = "BROKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: KillCommand,
}

#[derive(Subcommand)]
enum KillCommand {
    /// Stop everything, a tenant, an agent, a user, a tool (name or `prefix.*`) or one session, now.
    Engage {
        /// global, tenant, agent, user, tool or session.
        #[arg(long)]
        scope: String,
        /// What to stop (empty for global).
        #[arg(long, default_value = "")]
        target: String,
        #[arg(long)]
        reason: String,
        /// Release by itself after this long, e.g. `30m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Release an engaged switch.
    Release {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// The switches in force (with `--all`, released and expired ones too).
    List {
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args)]
struct TokenArgs {
    /// The agent's (or person's) identity, the token's `sub`.
    #[arg(long)]
    sub: String,
    /// A role to grant; repeat for several: agent, approver, admin, auditor.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// The user the agent acts for.
    #[arg(long)]
    on_behalf_of: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// A group to put in the token (approvers approve for their groups); repeat for several.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Lifetime, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse and strictly validate a policy directory.
    Check { dir: Option<PathBuf> },
    /// Run the decision fixtures in `<dir>/fixtures`.
    Test { dir: Option<PathBuf> },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutcomeArg {
    Allow,
    Deny,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain, then check it against the signed checkpoints; exit 1 naming the first event
    /// modified, inserted or deleted, and every checkpoint the chain does not match (rewritten, truncated).
    Verify {
        /// The checkpoint file [default: `audit.checkpoints.path`, or `<data-dir>/audit-checkpoints.jsonl`].
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The checkpoint public key: 64 hex characters, or a file holding them [default:
        /// `audit.checkpoints.public_key`, else the public half of the local signing key].
        #[arg(long)]
        public_key: Option<String>,
        /// Walk the chain only (it cannot show a rewrite of every hash, or a cut tail).
        #[arg(long, conflicts_with_all = ["checkpoints", "public_key"])]
        no_checkpoints: bool,
    },
    /// Print the checkpoint signing key's public half (hex), creating the key if it does not exist yet.
    /// Keep it away from the broker's host; `audit verify --public-key` takes it.
    CheckpointKey,
    /// List audit events, oldest first.
    List {
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long, value_enum)]
        outcome: Option<OutcomeArg>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(field: &str, s: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("`--{field}`: not an RFC 3339 time"))?
        .timestamp_micros())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into log files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    match start(Cli::parse()) {
        Ok(code) => code,
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote what a server or the database sent.
            tell!("error: {}", printable::lines(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// The configuration first: it says how many threads the runtime gets.
fn start(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = cli.global;
    let allow_dev_issuer_on_network = matches!(
        cli.command,
        Command::Serve {
            allow_dev_issuer_on_network: true,
            ..
        }
    );
    let overrides = Overrides {
        listen: g.listen,
        database_url: g.database_url,
        policies: g.policies,
        data_dir: g.data_dir,
        allow_dev_issuer_on_network: allow_dev_issuer_on_network.then_some(true),
    };
    let config = Config::load(g.config.as_deref(), &overrides)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    let code = runtime.block_on(run(cli.command, config));
    // A task still running (a connection the shutdown gave up on) does not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { log_json, .. } => serve(config, log_json).await,
        Command::Migrate => {
            let store = Store::connect(&config.store_config()).await?;
            store.migrate().await?;
            say!(
                "migrations applied ({})",
                redact_url(&config.effective_database_url())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(DbCommand::Grants { role }) => {
            emit(format_args!("{}", broker::store::postgres_grants(&role)?))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::CheckpointKey) => checkpoint_key(&config),
        Command::Token(args) => token(&config, args),
        Command::Policy(PolicyCommand::Check { dir }) => {
            let dir = dir.unwrap_or(config.policies);
            let engine = PolicyEngine::load(&dir)?;
            say!(
                "{}: {} policies over {} tools are valid (version {})",
                dir.display(),
                engine.policy_count(),
                engine.tool_names().count(),
                engine.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Test { dir }) => policy_test(dir.unwrap_or(config.policies)),
        Command::Audit(cmd) => audit(&config, cmd).await,
        Command::Kill(args) => kill(&config, args).await,
        Command::Approvals(args) => approvals(&config, args).await,
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!(
            "{}://***{}",
            url.get(..scheme).unwrap_or(""),
            url.get(at..).unwrap_or("")
        ),
        _ => url.to_owned(),
    }
}

async fn serve(config: Config, log_json: bool) -> anyhow::Result<ExitCode> {
    init_tracing(log_json);
    let dev = broker::uses_dev_issuer(&config);
    let mut stop = std::pin::pin!(stop_signal()?);
    // A stop during startup (a database slow to answer, say) ends it there: nothing was served yet.
    let running = tokio::select! {
        started = broker::start(config.clone(), None, Arc::new(SystemClock)) => started?,
        () = &mut stop => {
            tracing::info!("stopped before serving");
            return Ok(ExitCode::SUCCESS);
        }
    };
    tracing::info!(
        listen = %running.addr,
        database = %redact_url(&config.effective_database_url()),
        policies = %config.policies.display(),
        data_dir = %config.data_dir.display(),
        "broker serving (gRPC health and reflection enabled)"
    );
    if dev {
        tracing::info!(
            key = %config.data_dir.join("dev-signing-key").display(),
            "dev issuer on: get a token with `broker token --sub agent-1 --role agent --on-behalf-of alice`"
        );
    }
    reload_policies_on_sighup(config.policies.clone(), running.policies.clone())?;
    running.run_until(stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM (systemd, Docker, Kubernetes) or SIGINT (Ctrl-C): both stop the broker cleanly. Listened for
/// from the start, so that neither can kill it mid-write.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stop requested");
    })
}

/// `kill -HUP` reloads the policy directory. A set that fails strict validation is refused and the one in
/// effect stays: a typo never turns into an open (or a closed) door.
fn reload_policies_on_sighup(
    dir: PathBuf,
    policies: tokio::sync::watch::Sender<Arc<PolicyEngine>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // Reading and validating a large set takes seconds (10,000 policies: about 1.7 s): on a
            // blocking thread, so the runtime's workers keep deciding with the set in effect meanwhile.
            let loading = dir.clone();
            let loaded = tokio::task::spawn_blocking(move || PolicyEngine::load(&loading))
                .await
                .map_err(|e| anyhow::anyhow!("the policy reload stopped: {e}"))
                .and_then(|r| r.map_err(anyhow::Error::from));
            match loaded {
                Ok(engine) => {
                    tracing::info!(
                        policies = engine.policy_count(),
                        version = engine.version(),
                        "policies reloaded"
                    );
                    policies.send_replace(Arc::new(engine));
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the previous policies stay in effect")
                }
            }
        }
    });
    Ok(())
}

fn token(config: &Config, args: TokenArgs) -> anyhow::Result<ExitCode> {
    if !broker::uses_dev_issuer(config) {
        bail!("the dev issuer is off (a key source is configured): tokens come from your identity provider");
    }
    let roles = args
        .roles
        .iter()
        .map(|r| r.parse::<Role>())
        .collect::<Result<Vec<_>, _>>()?;
    let (secret, _) = dev::load_or_create_secret(&config.data_dir)?;
    let req = dev::TokenRequest {
        subject: args.sub,
        roles,
        on_behalf_of: args.on_behalf_of,
        tenant: args.tenant,
        groups: args.groups,
        ttl: args.ttl,
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
    };
    say!("{}", dev::mint(&secret, &config.auth, &req)?);
    Ok(ExitCode::SUCCESS)
}

fn policy_test(dir: PathBuf) -> anyhow::Result<ExitCode> {
    let engine = PolicyEngine::load(&dir)?;
    let results = fixtures::run_dir(&engine, &dir.join(fixtures::FIXTURES_DIR))?;
    let failed: Vec<_> = results.iter().filter(|r| r.failure.is_some()).collect();
    let mut out = String::new();
    for r in &results {
        let name = printable::text(&r.name);
        let _ = match &r.failure {
            None => writeln!(out, "ok    {name}"),
            Some(f) => writeln!(
                out,
                "FAIL  {name} ({}): {}",
                printable::text(&r.file.display().to_string()),
                printable::text(f)
            ),
        };
    }
    let _ = writeln!(
        out,
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    );
    report(
        &out,
        if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

fn checkpoint_key(config: &Config) -> anyhow::Result<ExitCode> {
    let path = config.checkpoint_key_path();
    let signer = if config.audit.checkpoints.key.is_some() {
        Signer::load(&path)?
    } else {
        let (signer, created) = Signer::load_or_create(&path)?;
        if created {
            tell!("created the checkpoint signing key `{}`", path.display());
        }
        signer
    };
    say!("{}", hex::encode(signer.public_key().as_bytes()));
    tell!(
        "key id {} (signing key `{}`): keep this public key away from the broker's host and pass it to `broker audit verify --public-key`",
        signer.key_id(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The key checkpoints are checked with: the flag, the configured one, or the local signing key's (then
/// with a note for the report).
fn checkpoint_public_key(
    config: &Config,
    flag: Option<&str>,
    out: &mut String,
) -> anyhow::Result<VerifyingKey> {
    if let Some(key) = flag.or(config.audit.checkpoints.public_key.as_deref()) {
        return Ok(checkpoint::parse_public_key(key)?);
    }
    let path = config.checkpoint_key_path();
    if !path.exists() {
        bail!(
            "no public key to check checkpoints with: pass `--public-key HEX|PATH` (printed by `broker audit checkpoint-key`)"
        );
    }
    let _ = writeln!(
        out,
        "note: checkpoints checked with the public half of the local signing key `{}`; pass `--public-key` with the copy kept elsewhere for an independent check",
        path.display()
    );
    Ok(Signer::load(&path)?.public_key())
}

async fn audit(config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&config.store_config()).await?;
    store.migrate().await?;
    match cmd {
        AuditCommand::CheckpointKey => checkpoint_key(config),
        AuditCommand::Verify {
            checkpoints,
            public_key,
            no_checkpoints,
        } => {
            // The whole report first, then printed: its exit code never depends on the reader.
            let mut out = String::new();
            let chain = store.verify_chain().await?;
            let mut ok = match chain.first_break {
                None => {
                    let _ = writeln!(
                        out,
                        "audit chain ok: {} events verified",
                        chain.events_checked
                    );
                    true
                }
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "audit chain BROKEN at event {} ({}): {}; {} events before it verified",
                        b.seq,
                        printable::text(&b.event_id),
                        printable::text(&b.problem),
                        chain.events_checked
                    );
                    false
                }
            };
            if no_checkpoints {
                let _ = writeln!(out, "checkpoints not checked (--no-checkpoints): the chain alone cannot show a rewrite of every hash or a cut tail");
            } else if checkpoints.is_none() && !config.audit.checkpoints.enabled {
                let _ = writeln!(
                    out,
                    "checkpoints not checked: audit.checkpoints.enabled is false"
                );
            } else {
                let path = checkpoints.unwrap_or_else(|| config.checkpoint_path());
                let key = checkpoint_public_key(config, public_key.as_deref(), &mut out)?;
                let against = checkpoint::verify::verify(&store, &path, &key).await?;
                let _ = writeln!(out, "{}", printable::lines(against.to_string().trim_end()));
                ok &= against.ok();
            }
            report(
                &out,
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        AuditCommand::List {
            session,
            agent,
            tool,
            outcome,
            since,
            until,
            limit,
            json,
        } => {
            let filter = EventFilter {
                session_id: session,
                agent,
                tool,
                outcome: outcome.map(|o| match o {
                    OutcomeArg::Allow => Outcome::Allow,
                    OutcomeArg::Deny => Outcome::Deny,
                }),
                since: since.map(|s| parse_time("since", &s)).transpose()?,
                until: until.map(|s| parse_time("until", &s)).transpose()?,
                // The operator reads the database itself: every tenant.
                tenant: TenantScope::All,
            };
            let (events, _) = store
                .list_events(
                    &filter,
                    Page {
                        after_seq: 0,
                        limit: limit.clamp(1, 1000),
                    },
                )
                .await?;
            for e in &events {
                if json {
                    say!("{}", printable::json(&serde_json::to_string(e)?));
                } else {
                    let b = &e.body;
                    let reasons: Vec<String> = b
                        .reasons
                        .iter()
                        .map(|r| r.code.as_str().to_owned())
                        .collect();
                    say!(
                        "{:>6} {} {:<17} {:<6} agent={} user={} session={} tool={} {}",
                        e.seq,
                        rfc3339(b.time),
                        b.kind.as_str(),
                        b.outcome.map_or("-", Outcome::as_str),
                        printable::field(&b.agent),
                        printable::field(b.user.as_deref().unwrap_or("-")),
                        printable::field(b.session_id.as_deref().unwrap_or("-")),
                        printable::field(b.tool.as_deref().unwrap_or("-")),
                        printable::text(&reasons.join(","))
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_switch(k: &broker_sdk::KillSwitch) -> anyhow::Result<()> {
    let state = if k.active {
        "ACTIVE".to_owned()
    } else {
        format!(
            "released by {}: {}",
            printable::text(k.released_by.as_deref().unwrap_or("-")),
            printable::text(k.release_reason.as_deref().unwrap_or("-"))
        )
    };
    let expires = k
        .expires_at
        .map(|t| format!(" expires {}", humantime::format_rfc3339_seconds(t)))
        .unwrap_or_default();
    say!(
        "{} {:<7} {:<24} by {} at {}{} [{}] {}",
        printable::text(&k.id),
        k.scope.as_str(),
        if k.target.is_empty() {
            "*".into()
        } else {
            printable::text(&k.target)
        },
        printable::text(&k.engaged_by),
        humantime::format_rfc3339_seconds(k.engaged_at),
        expires,
        state,
        printable::text(&k.reason)
    );
    Ok(())
}

fn default_endpoint(config: &Config) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", config.listen)
}

fn print_approval(a: &broker_sdk::Approval, full: bool) -> anyhow::Result<()> {
    let who = a
        .user
        .as_deref()
        .map(|u| format!(" for {}", printable::text(u)))
        .unwrap_or_default();
    let needs: Vec<String> = a
        .requirements
        .iter()
        .map(|r| format!("{} of {}", r.quorum, printable::text(&r.group)))
        .collect();
    say!(
        "{} {:<9} {} by {}{} in {} needs {} (expires {})",
        printable::text(&a.approval_id),
        a.status.as_str(),
        printable::text(&a.tool),
        printable::text(&a.agent),
        who,
        printable::text(&a.session_id),
        needs.join(" and "),
        humantime::format_rfc3339_seconds(a.expires_at)
    );
    if full {
        say!(
            "  arguments: {}",
            printable::json(&a.arguments_redacted_json)
        );
        say!("  digest:    {}", printable::text(&a.arguments_digest));
        for r in &a.reasons {
            say!(
                "  why:       {} {} ({})",
                printable::text(&r.code),
                printable::text(r.policy_id.as_deref().unwrap_or("-")),
                printable::text(&r.message)
            );
        }
        for v in &a.votes {
            say!(
                "  vote:      {} {} at {}: {}",
                printable::text(&v.approver),
                v.vote.as_str(),
                humantime::format_rfc3339_seconds(v.at),
                printable::text(&v.comment)
            );
        }
    }
    Ok(())
}

async fn approvals(config: &Config, args: ApprovalArgs) -> anyhow::Result<ExitCode> {
    let token = args
        .token
        .context("an approver token is required: --token or BROKER_TOKEN")?;
    let endpoint = args.endpoint.unwrap_or_else(|| default_endpoint(config));
    let client = broker_sdk::ApprovalClient::connect(endpoint, token).await?;
    match args.command {
        ApprovalCommand::List { all } => {
            let mut filter = broker_sdk::ApprovalFilter::new();
            if !all {
                filter = filter.status(broker_sdk::ApprovalStatus::Pending);
            }
            for a in client.list(filter).await?.approvals {
                print_approval(&a, false)?;
            }
        }
        ApprovalCommand::Show { id } => print_approval(&client.get(&id).await?, true)?,
        ApprovalCommand::Approve { id, comment } => {
            print_approval(&client.approve(&id, &comment).await?, true)?
        }
        ApprovalCommand::Deny { id, comment } => {
            print_approval(&client.deny(&id, &comment).await?, true)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn kill(config: &Config, args: KillArgs) -> anyhow::Result<ExitCode> {
    let token = args
        .token
        .context("an admin token is required: --token or BROKER_TOKEN")?;
    let endpoint = args.endpoint.unwrap_or_else(|| default_endpoint(config));
    let client = broker_sdk::KillSwitchClient::connect(endpoint, token).await?;
    match args.command {
        KillCommand::Engage {
            scope,
            target,
            reason,
            expires_in,
        } => {
            let scope: broker_sdk::KillSwitchScope = scope.to_uppercase().parse()?;
            let mut req = broker_sdk::EngageRequest::new(scope, target, reason);
            if let Some(d) = expires_in {
                req = req.expires_at(std::time::SystemTime::now() + d);
            }
            print_switch(&client.engage(req).await?)?;
        }
        KillCommand::Release { id, reason } => print_switch(&client.release(&id, &reason).await?)?,
        KillCommand::List { all } => {
            for k in client.list(all).await? {
                print_switch(&k)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
