//! The command line: parses arguments and calls one module per subcommand.

use crate::client::PodClient;
use crate::engine::run::RunState;
use crate::engine::store::{self, RunFilter};
use crate::engine::workflow::{Workflow, WorkflowRegistry};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod kv;
pub use kv::{SettingCmd, SwitchCmd};
use kv::{setting, switch};

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Know, and prove, that nothing is lost when pods die",
    long_about = "Vigil is a durable-run engine, an ops console and a chaos harness in one binary.\n\
                  Runs of steps are checkpointed in SQL (SQLite embedded by default, PostgreSQL in \
                  production); kill switches and every state change are audited in the store.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Exit codes of every command but `vigil chaos`, which keeps Jepsen's
/// (see [`crate::chaos`]). None overlaps another's meaning: 2 is only ever
/// a usage error.
pub mod exit {
    /// An error: a store or pod unreachable, bad input, a corrupt row.
    pub const ERROR: u8 = 1;
    /// Bad arguments or flags (clap's code).
    pub const USAGE: u8 = 2;
    /// `cancel`: the run had already ended; nothing was cancelled.
    pub const ALREADY_TERMINAL: u8 = 3;
    /// `attach`, `submit --attach`: the run ended other than succeeded.
    pub const RUN_NOT_SUCCEEDED: u8 = 4;
}

/// The table `vigil --help` ends with (and the README repeats).
const EXIT_CODES_HELP: &str = "\
Exit codes (every command but `vigil chaos`):
  0  done
  1  an error: a store or pod unreachable, bad input, a corrupt row (the message names it)
  2  usage: bad arguments or flags
  3  cancel: the run had already ended; nothing was cancelled
  4  attach, submit --attach: the run ended other than succeeded (failed, cancelled,
     timed_out or lost)
`vigil chaos` keeps Jepsen's codes: 0 pass, 1 fail, 2 unknown, 254 bad input,
255 internal error (see `vigil chaos --help`).";

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
    /// Print a shell completion script: vigil completions bash > /etc/bash_completion.d/vigil
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (vigil.1), or write one page per command into --out-dir.
    Man {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # submit, print the run id
  vigil submit --pod http://127.0.0.1:7700 chat_reply --input '{\"prompt\": \"hi\"}'
  # submit and follow the stream; exit 4 unless the run succeeds
  vigil submit chat_reply --input '{\"prompt\": \"hi\"}' --attach
  # at most one run per key, however often this is retried
  vigil submit embed_backfill --idempotency-key backfill-2026-12-04")]
pub struct SubmitArgs {
    #[command(flatten)]
    pub pod: PodArg,
    /// Workflow name.
    pub workflow: String,
    /// The run's input: a JSON object.
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
    /// Run id, or a unique prefix of one (as git and docker take).
    pub id: String,
    /// One JSON object per event instead of raw chunk text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub pod: PodArg,
    /// Run id, or a unique prefix of one (as git and docker take).
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
        /// One JSON document (name, lane, steps, description of each).
        #[arg(long)]
        json: bool,
    },
    /// Validate workflow files (or every *.toml of a directory); errors name file, step and field.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// A listing verb's arguments: where to read, and whether as JSON.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--who` of an audited change.
#[derive(Debug, Args, Clone)]
pub struct WhoArg {
    /// Who: recorded in the audit row. Default: git's user.name, else USER@HOST.
    #[arg(long, env = "VIGIL_WHO")]
    pub who: Option<String>,
}

impl WhoArg {
    fn resolve(self) -> String {
        self.who
            .filter(|w| !w.trim().is_empty())
            .unwrap_or_else(crate::human::default_who)
    }
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
    /// Run id, or a unique prefix of one (as git and docker take).
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
                _ => ExitCode::from(exit::USAGE),
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
            eprintln!("error: {}", crate::errors::report(&e));
            ExitCode::from(exit::ERROR)
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
                    println!("run {} {} -> {}", t.run_id, t.from, t.to);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => match e.already_terminal() {
                    Some(state) => {
                        eprintln!("run {} is already {state}: nothing to cancel", args.id);
                        Ok(ExitCode::from(exit::ALREADY_TERMINAL))
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
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut script);
            write_stdout(&script)
        }
        Command::Man { out_dir } => {
            use clap::CommandFactory as _;
            let cmd = Cli::command();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    clap_mangen::generate_to(cmd, &dir)
                        .with_context(|| format!("writing man pages into {}", dir.display()))?;
                    println!("{}", dir.display());
                }
                None => {
                    let mut page = Vec::new();
                    clap_mangen::Man::new(cmd).render(&mut page)?;
                    return write_stdout(&page);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write `bytes` to stdout; a reader that stopped early (`| head`) is not
/// an error.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

fn workflows(cmd: WorkflowsCmd) -> Result<ExitCode> {
    match cmd {
        WorkflowsCmd::List { dir, json } => {
            let reg = WorkflowRegistry::load_dir(&dir)?;
            if json {
                let list: Vec<serde_json::Value> = reg
                    .names()
                    .filter_map(|name| reg.get(name).ok())
                    .map(|wf| {
                        serde_json::json!({
                            "name": wf.name,
                            "lane": wf.lane,
                            "steps": wf.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
                            "description": wf.description,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "workflows": list }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
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
            use crate::engine::store::IdMatch;
            let store = args.store.open().await?;
            let run = match store::resolve_run_id(store.as_ref(), &args.id).await? {
                IdMatch::One(run) => *run,
                IdMatch::None => bail!("run {} not found in {}", args.id, args.store.store),
                IdMatch::Many { candidates, more } => {
                    bail!("{}", IdMatch::ambiguous(&args.id, &candidates, more))
                }
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
    if !input.is_object() {
        bail!(
            "--input must be a JSON object of the run's inputs, like '{{\"n\": 1}}'; got {}",
            args.input
        );
    }
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
        ExitCode::from(exit::RUN_NOT_SUCCEEDED)
    })
}
