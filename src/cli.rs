//! The command line: parses arguments and calls one module per subcommand.

use crate::client::PodClient;
use crate::engine::run::RunState;
use crate::engine::store::{self, RunFilter};
use crate::engine::switches;
use crate::engine::workflow::{Workflow, WorkflowRegistry};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Know, and prove, that nothing is lost when pods die",
    long_about = "Vigil is a durable-run engine, an ops console and a chaos harness in one binary.\n\
                  Runs of steps are checkpointed in SQL (SQLite embedded by default, PostgreSQL in \
                  production); kill switches and every state change are audited in the store."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// Store: a SQLite file path, sqlite://PATH, or postgres://USER@HOST:PORT/DB. It must
    /// exist: a missing store is refused and nothing is created (see --create).
    #[arg(long, env = "VIGIL_STORE", default_value = "data/vigil.db")]
    pub store: String,
    /// Create the store if it is missing (a SQLite file and its directory, or Vigil's
    /// tables in an empty PostgreSQL database). Only vigil pod, demo and bench seed create
    /// one without it.
    #[arg(long)]
    pub create: bool,
    /// Talk to this pod's API (http://HOST:PORT) instead of the store.
    #[arg(long, env = "VIGIL_POD")]
    pub pod: Option<String>,
    /// Bearer token file for pods started with --token-file.
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl StoreArg {
    /// The store named by --store: an existing one unless --create.
    async fn open(&self) -> Result<std::sync::Arc<dyn store::Store>> {
        let mode = if self.create {
            store::OpenMode::Create
        } else {
            store::OpenMode::Existing
        };
        Ok(store::open_mode(&self.store, mode).await?)
    }

    fn client(&self) -> Result<Option<PodClient>> {
        self.pod
            .as_deref()
            .map(|p| pod_client(p, self.token_file.as_deref()))
            .transpose()
    }
}

fn pod_client(url: &str, token_file: Option<&std::path::Path>) -> Result<PodClient> {
    let token = token_file.map(crate::pod::read_token).transpose()?;
    Ok(PodClient::new(url)?.with_token(token))
}

#[derive(Debug, Args, Clone)]
pub struct PodArg {
    /// The pod's API, e.g. http://127.0.0.1:7700.
    #[arg(long, env = "VIGIL_POD", default_value = "http://127.0.0.1:7700")]
    pub pod: String,
    /// Bearer token file for pods started with --token-file.
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl PodArg {
    fn client(&self) -> Result<PodClient> {
        pod_client(&self.pod, self.token_file.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The one-command tour: runs on the embedded store, a pod killed mid-stream, another resuming.
    Demo(crate::demo::DemoArgs),
    /// Run one engine pod: dispatch runs, serve the HTTP API and /metrics.
    Pod(crate::pod::PodArgs),
    /// The live ops console: runs, pods, recovery activity, kill switches, events.
    Console(crate::console::ConsoleArgs),
    /// Submit a run to a pod.
    Submit(SubmitArgs),
    /// Follow a run's stream live (chunks on stdout; resets and the end on stderr).
    Attach(AttachArgs),
    /// Cancel a run.
    Cancel(CancelArgs),
    /// Chaos scenarios: faults against a local cluster, invariants checked.
    #[command(subcommand)]
    Chaos(crate::chaos::ChaosCmd),
    /// Measurements with real pods and signals: throughput, recovery latency, store seeding.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
    /// List or validate workflow definitions.
    #[command(subcommand)]
    Workflows(WorkflowsCmd),
    /// Read and flip kill switches (every change is audited in the store).
    #[command(subcommand)]
    Switch(SwitchCmd),
    /// Read and change the store-wide settings (every change is audited in the store).
    #[command(subcommand)]
    Setting(SettingCmd),
    /// List runs in the store.
    Runs(RunsArgs),
    /// Show one run: its state, steps (redacted outputs), transitions and stream.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub pod: PodArg,
    /// Workflow name.
    pub workflow: String,
    /// The run's input, as JSON.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// A repeated key returns the same run, never a second one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the run's stream until it ends.
    #[arg(long)]
    pub attach: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub pod: PodArg,
    pub id: String,
    /// One JSON object per event instead of raw chunk text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub pod: PodArg,
    pub id: String,
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowsCmd {
    /// List the workflows of a directory.
    List {
        #[arg(long, env = "VIGIL_WORKFLOWS", default_value = "fixtures/workflows")]
        dir: PathBuf,
    },
    /// Validate workflow files (or every *.toml of a directory); errors name file, step and field.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SwitchCmd {
    /// Every known switch: current value in the store, default, what turning it off disables.
    List(StoreArg),
    /// Set a switch on or off, with a reason for the audit trail.
    Set {
        #[command(flatten)]
        store: StoreArg,
        /// Switch name, e.g. authority.db_fallback.
        name: String,
        /// on or off.
        value: String,
        /// Why: recorded in the audit row.
        #[arg(long)]
        reason: String,
        /// Who: recorded in the audit row.
        #[arg(long, env = "USER", default_value = "unknown")]
        who: String,
    },
    /// The audit trail of one switch.
    Audit {
        #[command(flatten)]
        store: StoreArg,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingCmd {
    /// Every known setting: its value in the store (or default), bounds, what it governs.
    List(StoreArg),
    /// Set a setting, with a reason for the audit trail; every pod sharing the store uses it.
    Set {
        #[command(flatten)]
        store: StoreArg,
        /// Setting name, e.g. runs.max_deadline_ms.
        name: String,
        /// The new value (an integer within the setting's bounds).
        value: i64,
        /// Why: recorded in the audit row.
        #[arg(long)]
        reason: String,
        /// Who: recorded in the audit row.
        #[arg(long, env = "USER", default_value = "unknown")]
        who: String,
    },
    /// The audit trail of one setting.
    Audit {
        #[command(flatten)]
        store: StoreArg,
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only runs in this state.
    #[arg(long)]
    pub state: Option<RunState>,
    #[arg(long)]
    pub lane: Option<String>,
    /// Only runs owned by this pod.
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArg,
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

impl clap::ValueEnum for RunState {
    fn value_variants<'a>() -> &'a [Self] {
        &RunState::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `vigil chaos` speaks Jepsen's exit codes: 254 for bad arguments.
            let chaos = std::env::args().nth(1).is_some_and(|a| a == "chaos");
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ if chaos => ExitCode::from(crate::chaos::EXIT_BAD_INPUT),
                _ => ExitCode::from(2),
            };
        }
    };
    // The console and the demo own the screen: they set up their own logging.
    if !matches!(cli.command, Command::Console(_) | Command::Demo(_)) {
        crate::logging::init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Console(args) => crate::console::run(args).await,
        Command::Pod(args) => {
            let shutdown = tokio_util::sync::CancellationToken::new();
            crate::pod::cancel_on_signals(shutdown.clone())?;
            crate::pod::serve(args, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(args) => submit(args).await,
        Command::Chaos(cmd) => Ok(crate::chaos::main(cmd).await),
        Command::Bench(cmd) => crate::bench::main(cmd).await,
        Command::Attach(args) => {
            let client = args.pod.client()?;
            attach(&client, &args.id, args.json).await
        }
        Command::Cancel(args) => {
            let client = args.pod.client()?;
            match client.cancel(&args.id, args.reason).await {
                Ok(t) => {
                    println!("run {} {} -> {}", args.id, t.from, t.to);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => match e.already_terminal() {
                    Some(state) => {
                        eprintln!("run {} is already {state}: nothing to cancel", args.id);
                        Ok(ExitCode::from(3))
                    }
                    None => Err(e.into()),
                },
            }
        }
        Command::Workflows(cmd) => workflows(cmd),
        Command::Switch(cmd) => switch(cmd).await,
        Command::Setting(cmd) => setting(cmd).await,
        Command::Runs(args) => runs(args).await,
        Command::Run(args) => show_run(args).await,
    }
}

fn workflows(cmd: WorkflowsCmd) -> Result<ExitCode> {
    match cmd {
        WorkflowsCmd::List { dir } => {
            let reg = WorkflowRegistry::load_dir(&dir)?;
            for name in reg.names() {
                let wf = reg.get(name)?;
                println!(
                    "{:<22} lane={:<15} steps={:<2} {}",
                    wf.name,
                    wf.lane,
                    wf.steps.len(),
                    wf.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowsCmd::Check { paths } => {
            let mut bad = 0;
            let mut files = Vec::new();
            for p in paths {
                if p.is_dir() {
                    let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                        .collect();
                    found.sort();
                    files.extend(found);
                } else {
                    files.push(p);
                }
            }
            for f in files {
                match Workflow::load(&f) {
                    Ok(wf) => println!(
                        "ok    {} ({}, {} steps)",
                        f.display(),
                        wf.name,
                        wf.steps.len()
                    ),
                    Err(e) => {
                        bad += 1;
                        println!("error {e}");
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn switch(cmd: SwitchCmd) -> Result<ExitCode> {
    match cmd {
        SwitchCmd::List(s) => {
            if let Some(client) = s.client()? {
                for v in client.switches().await?.switches {
                    println!(
                        "{:<24} {:<3}  {}\n    off disables: {}\n    metric: {}",
                        v.name,
                        if v.enabled { "on" } else { "off" },
                        match (&v.updated_by, &v.reason) {
                            (Some(by), Some(why)) => format!("set by {by} ({why})"),
                            _ => "default".to_string(),
                        },
                        v.disables,
                        v.metric
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let store = s.open().await?;
            let rows = store.switches().await?;
            for spec in switches::KNOWN {
                let row = rows.iter().find(|r| r.name == spec.name);
                let (value, source) = match row {
                    Some(r) => (r.enabled, format!("set by {} ({})", r.updated_by, r.reason)),
                    None => (spec.default, "default".to_string()),
                };
                println!(
                    "{:<24} {:<3}  {}\n    off disables: {}\n    metric: {}",
                    spec.name,
                    if value { "on" } else { "off" },
                    source,
                    spec.disables,
                    spec.metric
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SwitchCmd::Set {
            store: s,
            name,
            value,
            reason,
            who,
        } => {
            let Some(enabled) = switches::parse_bool(&value) else {
                bail!("switch value {value:?}: expected on or off");
            };
            if reason.trim().is_empty() {
                bail!("--reason must say why (it goes into the audit trail)");
            }
            let audit = match s.client()? {
                Some(client) => {
                    let req = crate::pod::wire::SetSwitchRequest {
                        enabled,
                        reason: reason.clone(),
                        who: Some(who.clone()),
                    };
                    client.set_switch(&name, &req).await?
                }
                None => {
                    let store = s.open().await?;
                    switches::set(store.as_ref(), &name, enabled, &who, &reason).await?
                }
            };
            let show = |v: Option<bool>| match v {
                Some(true) => "on",
                Some(false) => "off",
                None => "default",
            };
            println!(
                "{name}: {} -> {} (by {who}: {reason})",
                show(audit.old),
                show(Some(audit.new))
            );
            Ok(ExitCode::SUCCESS)
        }
        SwitchCmd::Audit { store: s, name } => {
            switches::spec(&name)?;
            if s.pod.is_some() {
                bail!("the audit trail is read from the store: pass --store, not --pod");
            }
            let store = s.open().await?;
            for a in store.switch_audit(&name).await? {
                println!(
                    "{}  {:?} -> {}  by {}: {}",
                    a.at_ms, a.old, a.new, a.who, a.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn setting(cmd: SettingCmd) -> Result<ExitCode> {
    use crate::engine::settings;
    let (SettingCmd::List(s)
    | SettingCmd::Set { store: s, .. }
    | SettingCmd::Audit { store: s, .. }) = &cmd;
    if s.pod.is_some() {
        bail!("settings are read and set in the store: pass --store, not --pod");
    }
    let store = s.open().await?;
    match cmd {
        SettingCmd::List(_) => {
            let rows = store.settings().await?;
            for spec in settings::KNOWN {
                let (value, source) = match rows.iter().find(|r| r.name == spec.name) {
                    Some(r) => (r.value, format!("set by {} ({})", r.updated_by, r.reason)),
                    None => (spec.default, "default".to_string()),
                };
                println!(
                    "{:<24} {value}  {source}\n    {}\n    default {}, from {} to {}",
                    spec.name, spec.governs, spec.default, spec.min, spec.max
                );
            }
        }
        SettingCmd::Set {
            name,
            value,
            reason,
            who,
            ..
        } => {
            if reason.trim().is_empty() {
                bail!("--reason must say why (it goes into the audit trail)");
            }
            let audit = settings::set(store.as_ref(), &name, value, &who, &reason).await?;
            let old = audit
                .old
                .map_or_else(|| "default".to_string(), |v| v.to_string());
            println!("{name}: {old} -> {} (by {who}: {reason})", audit.new);
        }
        SettingCmd::Audit { name, .. } => {
            settings::spec(&name)?;
            for a in store.setting_audit(&name).await? {
                println!(
                    "{}  {:?} -> {}  by {}: {}",
                    a.at_ms, a.old, a.new, a.who, a.reason
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn runs(args: RunsArgs) -> Result<ExitCode> {
    let runs = match args.store.client()? {
        Some(client) => {
            let mut q = vec![("limit", args.limit.to_string())];
            if let Some(s) = args.state {
                q.push(("state", s.as_str().to_owned()));
            }
            if let Some(l) = args.lane {
                q.push(("lane", l));
            }
            if let Some(o) = args.owner {
                q.push(("owner", o));
            }
            client.runs(&q).await?.runs
        }
        None => {
            let store = args.store.open().await?;
            let filter = RunFilter {
                state: args.state,
                lane: args.lane,
                owner_pod: args.owner,
                limit: Some(args.limit),
            };
            store.list_runs(&filter).await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<9}  {:<20}  {:<14}  {:<10}  EPOCH",
        "ID", "STATE", "WORKFLOW", "LANE", "OWNER"
    );
    for r in runs {
        println!(
            "{:<36}  {:<9}  {:<20}  {:<14}  {:<10}  {}",
            r.id,
            r.state.as_str(),
            r.workflow,
            r.lane,
            r.owner_pod.as_deref().unwrap_or("-"),
            r.epoch
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_run(args: RunArgs) -> Result<ExitCode> {
    let detail = match args.store.client()? {
        Some(client) => client.run(&args.id).await?,
        None => {
            let store = args.store.open().await?;
            let Some(run) = store.get_run(&args.id).await? else {
                bail!("run {} not found in {}", args.id, args.store.store);
            };
            crate::pod::wire::RunDetail::of(store.as_ref(), run).await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(ExitCode::SUCCESS);
    }
    let crate::pod::wire::RunDetail {
        run,
        steps,
        transitions,
    } = detail;
    println!(
        "run {}  {}  workflow={} lane={} owner={} epoch={}",
        run.id,
        run.state,
        run.workflow,
        run.lane,
        run.owner_pod.as_deref().unwrap_or("-"),
        run.epoch
    );
    if let Some(e) = &run.error {
        println!("error: {e}");
    }
    println!("steps:");
    for s in &steps {
        println!(
            "  {:<16} {:<9} attempts={} output={}",
            s.node_id,
            s.status.as_str(),
            s.attempts,
            s.output.as_ref().map_or("-".into(), |o| o.to_string())
        );
    }
    println!("transitions:");
    for t in &transitions {
        println!(
            "  {} -> {}  epoch={} pod={} {}{}",
            t.from,
            t.to,
            t.epoch,
            t.pod.as_deref().unwrap_or("-"),
            t.reason,
            if t.late { " [late]" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let client = args.pod.client()?;
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .with_context(|| format!("--input is not JSON: {:?}", args.input))?;
    let req = crate::pod::wire::SubmitRequest {
        workflow: args.workflow,
        input,
        idempotency_key: args.idempotency_key,
    };
    let resp = client.submit(&req).await?;
    if args.json {
        println!("{}", serde_json::to_string(&resp)?);
    } else if resp.created {
        eprintln!("submitted run {} ({})", resp.run.id, resp.run.workflow);
        println!("{}", resp.run.id);
    } else {
        eprintln!(
            "idempotency key already used: run {} ({})",
            resp.run.id, resp.run.state
        );
        println!("{}", resp.run.id);
    }
    if args.attach {
        return attach(&client, &resp.run.id, args.json).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn attach(client: &PodClient, id: &str, json: bool) -> Result<ExitCode> {
    use crate::client::StreamEvent;
    use std::io::Write as _;
    let end = client
        .attach(id, |ev| {
            if json {
                println!("{}", serde_json::to_string(ev).unwrap_or_default());
                return;
            }
            match ev {
                StreamEvent::Chunk { data, .. } => {
                    print!("{data}");
                    let _ = std::io::stdout().flush();
                }
                StreamEvent::Reset { epoch, keep } => {
                    let kept: Vec<String> = keep
                        .iter()
                        .map(|p| format!("{}#{}@{}", p.step, p.attempt, p.epoch))
                        .collect();
                    eprintln!(
                        "\n[reset: the run resumed at epoch {epoch}; of the output above keep only {}]",
                        if kept.is_empty() {
                            "nothing".to_owned()
                        } else {
                            format!("the chunks of {}", kept.join(", "))
                        }
                    );
                }
                StreamEvent::End { .. } => {}
            }
        })
        .await?;
    if !json {
        println!();
        eprintln!(
            "[end: {}{}]",
            end.state,
            end.error.map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    Ok(if end.state == RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
