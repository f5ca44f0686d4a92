//! twinguard: a secure-by-design AI digital twin for manufacturing.

mod agent_registry;
mod attack;
mod audit_cmd;
mod bench;
mod bench_audit;
mod bench_data;
mod bench_detect;
mod bench_episodes;
mod bench_guard;
mod bench_lookahead;
mod bench_pump;
mod bench_reroute;
mod bom;
mod broker;
mod compare;
mod compliance;
mod core;
mod datadir;
mod demo;
mod detect_cmd;
mod gateway;
mod model_cmd;
mod mqtt_acl;
mod policy_cmd;
mod pump_health;
mod rul_cmd;
mod run;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "twinguard",
    version,
    about = "A digital twin that believes nothing it cannot trace and lets no AI action reach the plant except through its guard"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference bottling line through the whole secure loop (MQTT or OPC UA).
    Demo {
        /// How the plant and twinguard talk: signed frames over MQTT, or OPC UA
        /// (SignAndEncrypt, Write/Call for actuation).
        #[arg(long, value_enum, default_value = "mqtt")]
        transport: demo::Transport,
        /// Simulated hours to run.
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Simulated seconds per wall-clock second (0 = as fast as possible).
        #[arg(long, default_value_t = 120.0)]
        speed: f64,
        /// Run an attack against the loop.
        #[arg(long, value_enum)]
        attack: Option<attack::Attack>,
        /// Seed of the simulated plant.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where keys, the device registry and the audit log live.
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        /// A plant file instead of the embedded reference plant.
        #[arg(long)]
        plant: Option<PathBuf>,
        /// Inject a fault: kind:target@start[+duration][=magnitude] (repeatable).
        #[arg(long = "fault")]
        faults: Vec<String>,
        /// Configuration file (zones, sources, conduits, ingest limits); see `check-config`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A device whose gateway cannot sign (a legacy PLC): its frames go out unsigned
        /// (repeatable). Refused unless the source has `allow_unsigned = true`.
        #[arg(long = "legacy-device")]
        legacy_devices: Vec<String>,
        /// How the simulated edge devices encode their frames' bodies: json (version 1) or
        /// binary (version 2, a quarter of the bytes); see docs/frame-format.md.
        #[arg(long, value_enum, default_value = "json")]
        body: demo::Body,
        /// Use an external MQTT broker at HOST:PORT instead of the embedded one
        /// (credentials from TWINGUARD_MQTT_USERNAME / TWINGUARD_MQTT_PASSWORD).
        #[arg(long)]
        broker: Option<String>,
        /// Port of the HTTP API and page on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// The fixed-setpoint baseline: the agents do not run.
        #[arg(long)]
        no_agents: bool,
        /// Run the same seeded plant twice, with the agents and with fixed setpoints
        /// (data directories `with-agents` and `fixed-setpoints` under --data-dir), and
        /// report the key figures side by side.
        #[arg(long, conflicts_with = "no_agents")]
        compare_baseline: bool,
        /// Operating conditions drawn from the seed (ambient and inlet temperatures, a
        /// production plan that changes the filler's speed every few hours) instead of
        /// the reference conditions.
        #[arg(long)]
        vary_conditions: bool,
        /// With --compare-baseline: also write an SVG of the comparison to this file.
        #[arg(long, requires = "compare_baseline")]
        plot: Option<PathBuf>,
    },
    /// Anomaly detection on your own data: learn from a CSV of plant history, score another.
    Detect {
        #[command(subcommand)]
        command: DetectCommand,
    },
    /// Remaining useful life: learn from run-to-failure histories, estimate for engines in
    /// service (C-MAPSS format).
    Rul {
        #[command(subcommand)]
        command: RulCommand,
    },
    /// Measure the simulator, envelope signing, ingest and the whole loop on this machine.
    Bench {
        /// A public data set's benchmark instead: `skab`.
        #[command(subcommand)]
        data_set: Option<BenchData>,
        /// Simulated hours for the end-to-end run.
        #[arg(long, default_value_t = 6.0)]
        hours: f64,
        /// Only the guard's decision latency.
        #[arg(long, conflicts_with = "plant_size_only")]
        guard_only: bool,
        /// Only the costs against the plant's size (22, 1,022 and 5,022 signals).
        #[arg(long)]
        plant_size_only: bool,
        /// Only the MQTT rows through Debian's mosquitto: twinguard's ingest beside the same
        /// client only receiving and mosquitto's own clients, and the loop for `--hours`.
        #[arg(long, conflicts_with_all = ["plant_size_only", "guard_only"])]
        mqtt_only: bool,
    },
    /// Check a configuration file and explain every error with its line and column.
    CheckConfig { file: PathBuf },
    /// Print the default configuration file.
    DefaultConfig,
    /// Run the twin on a real plant: the configured OPC UA sources feed it, approved
    /// commands go back as OPC UA Write/Call to the server each belongs to, the page and
    /// API serve on 127.0.0.1.
    Run {
        /// The configuration file (OPC UA sources, one per server, with `writes` and
        /// `calls` for actuation).
        #[arg(long)]
        config: PathBuf,
        /// The plant file the signals and setpoints belong to (default: the reference plant).
        #[arg(long)]
        plant: Option<PathBuf>,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        /// Port of the HTTP API and page on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        seconds: Option<f64>,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Connect to the OPC UA sources of a configuration and show what arrives, checked and
    /// with its provenance (an unknown server certificate is refused: see `pki`).
    Watch {
        /// The configuration file with the OPC UA sources.
        #[arg(long)]
        config: PathBuf,
        /// How long to watch.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The plant file the signals belong to (default: the reference plant).
        #[arg(long)]
        plant: Option<PathBuf>,
        /// Where the OPC UA trust list lives (`opcua/pki`).
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Models: sign (publishers), trust, scan, admit, list, promote, rollback, and the
    /// ML-BOM.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Compliance evidence from the live data directory.
    Compliance {
        #[command(subcommand)]
        command: ComplianceCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: audit_cmd::AuditCommand,
    },
    /// The device registry: edge devices and their keys.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The OPC UA certificate trust list: servers twinguard connects to, refused until
    /// trusted here.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Plant files.
    Plant {
        #[command(subcommand)]
        command: PlantCommand,
    },
    /// The stop button from the command line: drive every asset to its safe state (any
    /// operator); nothing automatic runs until an approver resumes.
    Stop {
        #[command(flatten)]
        api: ApiClient,
    },
    /// Restart a stopped line (approver).
    Resume {
        #[command(flatten)]
        api: ApiClient,
    },
    /// Take the agents out of advisory mode after the breakers tripped (approver).
    ResetBreakers {
        #[command(flatten)]
        api: ApiClient,
    },
    /// People: accounts with a role (viewer, operator, approver, admin), signing in with a
    /// password (stored as a salted Argon2id hash) or an API token (stored as its SHA-256).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// External AI agents: register one with its public key and scope, list, revoke.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The guard's Cedar policy: schema, built-in policy, validation, and what it decides.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// (demo attacker) Present a copied agent token to the agent API without the agent's key.
    #[command(hide = true)]
    AttackAgent {
        #[arg(long)]
        api: String,
        #[arg(long)]
        agent: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long)]
        now_ms: i64,
    },
}

#[derive(Subcommand)]
enum ComplianceCommand {
    /// Write report.json and report.html: evidence from the data directory (audit log and
    /// proofs, models, accounts, agents, devices, configuration, test results) mapped to
    /// IEC 62443-3-3, EU AI Act Articles 9, 12-15 and the NIST AI RMF functions.
    Report {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
        /// The configuration twinguard runs with (sources, zones, conduits, retention).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A `cargo test` log: the tests behind each claim, with their results.
        #[arg(long)]
        tests: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PkiDir {
    #[arg(long, default_value = "twinguard-data")]
    data_dir: PathBuf,
    /// The trust list directory, when it is not the data directory's (`opcua/pki`).
    #[arg(long)]
    pki: Option<PathBuf>,
}

impl PkiDir {
    fn path(&self) -> PathBuf {
        self.pki
            .clone()
            .unwrap_or_else(|| self.data_dir.join("opcua").join("pki"))
    }
}

/// Where a running twinguard's API is, and whose token to present.
#[derive(clap::Args)]
struct ApiClient {
    /// HOST:PORT of the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: String,
    /// A file with the bearer token (default: the installer's operator token in the data
    /// directory).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[arg(long, default_value = "twinguard-data")]
    data_dir: PathBuf,
}

impl ApiClient {
    /// POSTs to `path` with the token; the answer, or an error with the API's reason.
    fn post(&self, path: &str) -> Result<serde_json::Value> {
        let token = match &self.token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?
                .trim()
                .to_string(),
            None => datadir::DataDir::open(&self.data_dir)?.operator_token()?,
        };
        let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let (status, body) = rt.block_on(attack::post_json_as(
            &self.api,
            path,
            &serde_json::json!({}),
            Some(&token),
        ))?;
        if status != 200 {
            anyhow::bail!(
                "{} answered {status}: {}",
                self.api,
                body.get("error").and_then(|e| e.as_str()).unwrap_or("?")
            );
        }
        Ok(body)
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add an account. Give `--password-file` (its first line is the password, at least 12
    /// characters) and/or `--token` (an API token is generated and printed once).
    Add {
        name: String,
        /// viewer (reads), operator (also the stop button), approver (also approvals and
        /// resuming the line), admin.
        #[arg(long)]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        token: bool,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// List accounts and their roles (never their secrets).
    List {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// Remove an account: its sessions and token stop working within a second.
    Remove {
        name: String,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Register an external agent: its Ed25519 public key and the action kinds and assets
    /// its tokens may reach (the policy still decides each proposal).
    Add {
        name: String,
        /// The agent's public key, 64 hex characters.
        #[arg(long)]
        public_key: Option<String>,
        /// Generate the agent's key pair here instead: the private key goes to this file
        /// (mode 0600), for the agent's owner to move to the agent.
        #[arg(long)]
        generate_key: Option<PathBuf>,
        /// Action kinds, comma-separated: set_setpoint, stop_line, maintenance, take_order.
        #[arg(long, value_delimiter = ',', required = true)]
        kinds: Vec<String>,
        /// Assets, comma-separated ("line" for a line stop).
        #[arg(long, value_delimiter = ',', required = true)]
        assets: Vec<String>,
        /// The plant file the assets belong to (default: the reference plant).
        #[arg(long)]
        plant: Option<PathBuf>,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// List the registered external agents.
    List {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// Revoke an agent: its tokens stop working at once (a running twinguard reloads the
    /// registry within a second).
    Revoke {
        name: String,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the schema policies are validated against.
    Schema,
    /// Print the built-in policy for the reference plant.
    Default,
    /// Validate a policy file against the schema and the plant; errors name line and column.
    Validate {
        file: PathBuf,
        /// The plant file whose assets the policy names (default: the reference plant).
        #[arg(long)]
        plant: Option<PathBuf>,
    },
    /// Explain what the guard would decide on a proposal file (JSON: agent, action,
    /// optional context and current values), with the configured policy and limits.
    Check {
        #[arg(long)]
        proposal: PathBuf,
        /// Configuration file (its `[guard]` section; default: the built-in policy).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        plant: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// List twinguard's own certificate, the trusted and the rejected ones, with thumbprints.
    List {
        #[command(flatten)]
        dir: PkiDir,
    },
    /// Trust a rejected certificate, by thumbprint (SHA-1 or SHA-256, at least 8 digits).
    Trust {
        thumbprint: String,
        #[command(flatten)]
        dir: PkiDir,
    },
    /// Stop trusting a certificate: connections to it are refused from now on.
    Reject {
        thumbprint: String,
        #[command(flatten)]
        dir: PkiDir,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// List registered devices and their keys with validity windows.
    List {
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// Give a device a new key; the old ones stay valid for the overlap, then are refused.
    Rotate {
        device: String,
        /// Seconds during which frames sealed with the old key are still accepted.
        #[arg(long, default_value_t = 300)]
        overlap_s: u32,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
    /// Revoke a device (its frames are refused from now on), or with --key one of its keys
    /// (frames sealed with it are refused whatever time they carry): for a device or key
    /// that is lost or compromised. A running twinguard takes it up within a second.
    Revoke {
        device: String,
        /// The key to revoke (an id from `device list`); without it, the whole device.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, default_value = "twinguard-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchData {
    /// SKAB, by the leaderboard's protocol: our outlier and changepoint rows beside the
    /// published ones.
    Skab {
        /// The SKAB `data` folder (with valve1, valve2 and other).
        #[arg(long)]
        data: PathBuf,
        /// Print the result as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// The detector's settings (defaults: the ones our published row uses).
        #[command(flatten)]
        detector: DetectorArgs,
        /// Columns left out of the model, comma-separated ("" for none). By default the
        /// two temperatures, which drift through every run as the loop warms: the 400
        /// rows before each test part cannot show their normal range.
        #[arg(long, default_value = "Temperature,Thermocouple")]
        exclude: String,
    },
    /// BATADAL: the competition's S, S_TTD and S_CM on training data set 2's attacks.
    Batadal {
        /// The folder with BATADAL_dataset03.csv, BATADAL_dataset04.csv and
        /// attacks_training_dataset2.csv.
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also write the model fitted on both training sets (for `twinguard detect score`
        /// on the official test set).
        #[arg(long)]
        model_out: Option<PathBuf>,
        /// Our detector's settings (defaults: the ones our published row uses).
        #[command(flatten)]
        detector: DetectorArgs,
    },
    /// C-MAPSS: RMSE and PHM08 score on FD001's official test set beside the published
    /// rows; test predictions for FD002–FD004, whose truth is withheld.
    Cmapss {
        /// The C-MAPSS folder (train_FD00x, test_FD00x, plain or .gz, and RUL_FD001.txt).
        #[arg(long)]
        data: PathBuf,
        /// Where the test predictions go.
        #[arg(long, default_value = "cmapss-predictions")]
        out: PathBuf,
        /// The sets to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "FD001,FD002,FD003,FD004")]
        sets: Vec<String>,
        /// Fit options other than the defaults (JSON, the `options` of a model file).
        #[arg(long)]
        options: Option<PathBuf>,
        /// Also write FD001's estimates against the truth as an SVG (`--out`/fd001.svg).
        #[arg(long)]
        plot: bool,
        #[arg(long)]
        json: bool,
    },
    /// The audit log: append rate with checkpoints, then proofs (made and checked),
    /// reopening and verification at a log of `--records` records.
    Audit {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Where the logs are built (default: the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the result as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The multivariate detector's cost as plants grow: fit time, scoring time per sample
    /// and model memory, PCA and dynamic PCA, on seeded synthetic data.
    Detect {
        /// Numbers of signals, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [8usize, 52, 500])]
        signals: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
    /// The optimiser's look-ahead: one candidate simulated an hour ahead, and a whole
    /// proposal (every candidate), in ms.
    Lookahead {
        /// Timed runs per plant (the median is reported).
        #[arg(long, default_value_t = 21)]
        reps: usize,
        #[arg(long)]
        json: bool,
    },
    /// The model scanner's speed in MB/s on weights, JSON and ONNX files of `--mb` MB.
    Scan {
        #[arg(long, default_value_t = 200)]
        mb: u64,
        #[arg(long)]
        json: bool,
    },
    /// The reference plant's pump: warnings of bearing failure from the RUL model, their
    /// lead time and false warnings over seeded runs to failure.
    Pump {
        /// Seeded runs fitted on.
        #[arg(long, default_value_t = 40)]
        train: u64,
        /// Further seeded runs warned on.
        #[arg(long, default_value_t = 20)]
        test: u64,
        /// Warn when failure within this many hours is estimated.
        #[arg(long, default_value_t = 8.0)]
        horizon_h: f64,
        /// Also write the fitted model here (to sign and admit for `[predict]
        /// registry_model`, or for `[predict] pump_model`).
        #[arg(long)]
        model_out: Option<PathBuf>,
        /// Also write the test runs, cut short, as a golden data set for admission
        /// (`golden_test.txt`, `golden_rul.txt`) into this directory.
        #[arg(long)]
        golden_out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The agents against fixed setpoints on the same seeded plants: energy per good
    /// bottle, throughput, rejects and quality-limit violations, with their spread.
    Optimiser {
        /// Seeds 1 to N.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Simulated hours per run.
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Where the runs' data directories go.
        #[arg(long, default_value = "twinguard-bench-optimiser")]
        data_dir: PathBuf,
        /// Every seed in the reference conditions, instead of conditions drawn from it.
        #[arg(long)]
        reference_conditions: bool,
        /// Also write an SVG of the comparisons to this file.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Whether alarm episodes tell a faulty sensor from a process that moved and from an
    /// attack: seeded runs of the whole loop, each with one sensor fault, process fault,
    /// attack or nothing, the first episode's class scored against it.
    Episodes {
        /// Seeds 1 to N.
        #[arg(long, default_value_t = 2)]
        seeds: u64,
        /// Simulated hours per run (faults start at 4 h).
        #[arg(long, default_value_t = 8.0)]
        hours: f64,
        /// Only these scenarios (comma-separated names, as the table prints them).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Where the runs keep their keys and audit logs.
        #[arg(long, default_value = "twinguard-bench-episodes")]
        data_dir: PathBuf,
        /// Also write an SVG of the confusion matrix to this file.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The scheduler on a site of two filling lines sharing orders with due dates, against
    /// no rerouting on the same seeds: orders late, hours late, pump failures, downtime.
    Reroute {
        /// Seeds 1 to N.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Simulated hours per run.
        #[arg(long, default_value_t = 48.0)]
        hours: f64,
        /// Hours to the pump's danger level under which the scheduler plans maintenance
        /// and moves orders off the line.
        #[arg(long, default_value_t = 6.0)]
        risk_horizon_h: f64,
        /// Where the runs with an agent keep their keys and audit logs.
        #[arg(long, default_value = "twinguard-bench-reroute")]
        data_dir: PathBuf,
        /// Also write an SVG of the comparison to this file.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Tennessee Eastman: detection rate per fault and false alarms, PCA T² and Q beside
    /// our detector.
    Tep {
        /// The folder with d00.dat, d00_te.dat and d01_te.dat … d21_te.dat.
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        /// Our detector's settings (defaults: the ones our published row uses).
        #[command(flatten)]
        detector: DetectorArgs,
    },
}

#[derive(Subcommand, Debug)]
enum RulCommand {
    /// Learn from run-to-failure histories; writes the model file.
    Fit {
        /// The training file (every unit runs to failure).
        #[arg(long)]
        train: PathBuf,
        /// The file's format (only NASA's C-MAPSS layout so far; `.gz` is read as is).
        #[arg(long, default_value = "cmapss")]
        format: String,
        /// The model file to write (JSON, format "twinguard-rul" version 2).
        #[arg(long)]
        out: PathBuf,
        /// Networks in the ensemble.
        #[arg(long)]
        ensemble: Option<usize>,
        /// Cycles in each input window.
        #[arg(long)]
        window: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Do not give the networks the unit's age (cycles so far), nor (with
        /// `--baseline 0`) its first cycles: for units whose history may start mid-life,
        /// such as a pump the twin watches live.
        #[arg(long)]
        no_age: bool,
        /// Cycles at the start of each unit's history whose mean the networks also see
        /// (0: none; default 40).
        #[arg(long)]
        baseline: Option<usize>,
    },
    /// Estimate each unit's remaining life at its last cycle: writes unit,rul,rul_low,rul_high.
    Predict {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        test: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Settings of the PCA detector; each unset one takes the command's default.
#[derive(clap::Args, Debug, Clone, Copy)]
struct DetectorArgs {
    /// Share of the variance the principal components keep (0 to 1).
    #[arg(long)]
    explained_variance: Option<f64>,
    /// Confidence of the control limits (0.5 to 1).
    #[arg(long)]
    confidence: Option<f64>,
    /// Earlier observations appended to each (dynamic PCA).
    #[arg(long)]
    lags: Option<usize>,
    /// Observations whose scores are averaged.
    #[arg(long)]
    smoothing: Option<usize>,
    /// Cross-validation folds for the alarm threshold (0: theoretical limits).
    #[arg(long)]
    folds: Option<usize>,
    /// Ridge penalty of a learned one-step predictor whose errors PCA monitors (0: none).
    #[arg(long)]
    ridge: Option<f64>,
    /// Cross-validation folds cut into blocks of this many rows dealt in turn (0: each
    /// fold one contiguous stretch).
    #[arg(long)]
    fold_block_rows: Option<usize>,
    /// Learn the relations that hold while a switch is on (a pump's flow while it runs)
    /// and alarm when a value strays from its relation by more than this share of its
    /// mean while on (0: none).
    #[arg(long)]
    relation_tolerance: Option<f64>,
    /// Alarm off-delay in observations: a raised alarm stays raised until the score has
    /// stayed at or below the threshold this many observations more (0: none).
    #[arg(long)]
    off_delay: Option<usize>,
    /// Hold the columns constant in the training data to their value: a row in which
    /// one departs is an alarm (true or false).
    #[arg(long)]
    hold_constants: Option<bool>,
}

impl DetectorArgs {
    fn options(self, base: detect::multivariate::FitOptions) -> detect::multivariate::FitOptions {
        detect::multivariate::FitOptions {
            explained_variance: self.explained_variance.unwrap_or(base.explained_variance),
            confidence: self.confidence.unwrap_or(base.confidence),
            lags: self.lags.unwrap_or(base.lags),
            smoothing: self.smoothing.unwrap_or(base.smoothing),
            folds: self.folds.unwrap_or(base.folds),
            ridge: self.ridge.unwrap_or(base.ridge),
            fold_block_rows: self.fold_block_rows.unwrap_or(base.fold_block_rows),
            relation_tolerance: self.relation_tolerance.unwrap_or(base.relation_tolerance),
            off_delay: self.off_delay.unwrap_or(base.off_delay),
            hold_constants: self.hold_constants.unwrap_or(base.hold_constants),
        }
    }
}

#[derive(Subcommand)]
enum DetectCommand {
    /// Learn normal behaviour from a CSV of plant history; writes the model file.
    Fit {
        #[command(flatten)]
        csv: CsvArgs,
        /// Columns to leave out, comma-separated.
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// The model file to write (JSON, format "twinguard-detector" version 1).
        #[arg(long)]
        out: PathBuf,
        /// Detector settings (defaults: 90 % of the variance, 99 % limits, no lags, no
        /// smoothing, 5-fold cross-validated threshold).
        #[command(flatten)]
        detector: DetectorArgs,
    },
    /// Score a CSV with a model: writes time,score,flag,contributors,class per row.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        csv: CsvArgs,
        /// The scores file to write.
        #[arg(long)]
        out: PathBuf,
        /// Also draw the signals, the score and the flags to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

/// Where a CSV file is and how it is laid out.
#[derive(clap::Args, Debug, Clone)]
struct CsvArgs {
    /// The CSV file (a header line, then one row per observation).
    #[arg(long)]
    csv: PathBuf,
    /// The time column (default: the first column if it is named time, datetime,
    /// timestamp or date; otherwise rows are numbered).
    #[arg(long)]
    time_col: Option<String>,
    /// The separator: one character, or "tab".
    #[arg(long, default_value = ",")]
    sep: String,
}

impl CsvArgs {
    fn spec(&self, exclude: Vec<String>) -> Result<detect_cmd::CsvSpec> {
        Ok(detect_cmd::CsvSpec {
            path: self.csv.clone(),
            time_col: self.time_col.clone(),
            sep: detect_cmd::separator(&self.sep)?,
            exclude,
        })
    }
}

#[derive(Subcommand)]
enum PlantCommand {
    /// Validate a plant file.
    Check { file: PathBuf },
    /// Print the embedded reference plant file.
    Reference,
    /// Run the reference simulator on its own and write its signals as CSV (`time` in ms,
    /// every signal, and `label`: 1 while a fault is active), to fit and test models on.
    Simulate {
        #[arg(long, default_value_t = 24.0)]
        hours: f64,
        /// Write a row every this many simulated seconds.
        #[arg(long, default_value_t = 5)]
        every_s: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A fault, as for `demo --fault` (repeatable).
        #[arg(long)]
        fault: Vec<String>,
        /// The plant file (default: the reference plant).
        #[arg(long)]
        plant: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

/// `twinguard plant simulate`: the simulator alone, its signals as CSV.
fn simulate_csv(
    hours: f64,
    every_s: u32,
    seed: u64,
    faults: &[String],
    plant_file: Option<&std::path::Path>,
    out: &std::path::Path,
) -> Result<u64> {
    use std::io::Write as _;
    if !(hours > 0.0 && hours <= 24.0 * 365.0) || every_s == 0 {
        anyhow::bail!("plant simulate: --hours more than 0 and at most 8760, --every-s at least 1");
    }
    let plant = policy_cmd::load_plant(plant_file)?;
    let faults = faults
        .iter()
        .map(|f| plant_sim::Fault::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sim = plant_sim::Sim::new(&plant, seed, plant_sim::DEFAULT_START_MS)?;
    for f in &faults {
        sim.add_fault(f.clone());
    }
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let header: Vec<&str> = plant.signals.iter().map(|s| s.id.as_str()).collect();
    writeln!(w, "time,{},label", header.join(","))?;
    let seconds = (hours * 3600.0).round() as u64;
    let mut rows = 0u64;
    for s in 0..seconds {
        let tick = sim.step();
        if s % u64::from(every_s) != 0 {
            continue;
        }
        let label = u8::from(faults.iter().any(|f| f.active(s)));
        let values: Vec<String> = tick.values.iter().map(|v| format!("{v:.6}")).collect();
        writeln!(w, "{},{},{label}", tick.t_ms, values.join(","))?;
        rows += 1;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(rows)
}

/// `twinguard user add`.
fn user_add(
    data_dir: &std::path::Path,
    name: &str,
    role: &str,
    password_file: Option<&std::path::Path>,
    token: bool,
) -> Result<serde_json::Value> {
    use api::accounts::{Account, Role, hash_password, token_sha256};
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !valid_name || name == "operator" {
        anyhow::bail!(
            "user name {name:?} must be 1 to 64 characters of letters, digits, '.', '_' and '-' (and not \"operator\", the installer's token)"
        );
    }
    let role = Role::parse(role)
        .with_context(|| format!("role {role:?} is not viewer, operator, approver or admin"))?;
    if password_file.is_none() && !token {
        anyhow::bail!("give --password-file FILE, --token, or both");
    }
    let dir = datadir::DataDir::open(data_dir)?;
    let mut users = dir.users()?;
    if users.contains_key(name) {
        anyhow::bail!("user {name} exists (remove it first)");
    }
    let password_hash = match password_file {
        None => None,
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read password file {}", f.display()))?;
            let password = text.lines().next().unwrap_or_default();
            if password.chars().count() < 12 {
                anyhow::bail!(
                    "the password in {} is shorter than 12 characters",
                    f.display()
                );
            }
            Some(hash_password(password).map_err(anyhow::Error::msg)?)
        }
    };
    let api_token = if token {
        Some(frames::keys::random_hex(32)?)
    } else {
        None
    };
    users.insert(
        name.to_string(),
        Account {
            role,
            password_hash,
            token_sha256: api_token.as_deref().map(token_sha256),
        },
    );
    dir.write_users(&users)?;
    Ok(serde_json::json!({
        "user": name,
        "role": role,
        // Shown once; twinguard keeps only its hash.
        "token": api_token,
    }))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TWINGUARD_LOG")
                .unwrap_or_else(|_| "error,rumqttd=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // One TLS crypto provider for the whole process (ring; no OpenSSL, no aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twinguard: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo {
            transport,
            hours,
            speed,
            attack,
            seed,
            data_dir,
            plant,
            faults,
            config,
            legacy_devices,
            body,
            broker,
            port,
            json,
            quiet,
            no_agents,
            compare_baseline,
            vary_conditions,
            plot,
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let args = |agents: bool, data_dir: PathBuf, baseline: Option<serde_json::Value>| {
                demo::DemoArgs {
                    transport,
                    config: config.clone(),
                    legacy_devices: legacy_devices.clone(),
                    body,
                    hours,
                    speed,
                    attack,
                    seed,
                    data_dir,
                    plant_file: plant.clone(),
                    faults: faults.clone(),
                    broker: broker.clone(),
                    api_port: port,
                    quiet: quiet || json,
                    agents,
                    vary_conditions,
                    baseline,
                }
            };
            if compare_baseline {
                // The fixed setpoints first: the run with the agents then shows its own
                // measured KPIs beside theirs on the page as it goes.
                if !(quiet || json) {
                    eprintln!("== fixed-setpoints");
                }
                let fixed = rt.block_on(demo::run(args(
                    false,
                    data_dir.join("fixed-setpoints"),
                    None,
                )))?;
                let fixed_series = fixed.get("kpi_series").cloned();
                if !(quiet || json) {
                    eprintln!("== with-agents");
                }
                let with = rt.block_on(demo::run(args(
                    true,
                    data_dir.join("with-agents"),
                    fixed_series.clone(),
                )))?;
                rt.shutdown_timeout(std::time::Duration::from_millis(100));
                let kpis = vec![compare::kpis(&with, hours), compare::kpis(&fixed, hours)];
                let mut r = compare::pair(seed, hours, kpis)?;
                if let Some(o) = r.as_object_mut() {
                    o.insert(
                        "series".into(),
                        serde_json::json!({
                            "with_agents": with.get("kpi_series"),
                            "fixed_setpoints": fixed_series,
                            "baseline_on_page": with.get("baseline_series"),
                        }),
                    );
                }
                if vary_conditions && let Some(o) = r.as_object_mut() {
                    o.insert("conditions".into(), compare::conditions(seed, hours));
                }
                if let Some(p) = &plot {
                    std::fs::write(p, compare::svg(std::slice::from_ref(&r)))
                        .with_context(|| format!("cannot write {}", p.display()))?;
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    print!("{}", compare::comparison(&r));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let report = rt.block_on(demo::run(args(!no_agents, data_dir, None)))?;
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", demo::summary(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Detect {
            command:
                DetectCommand::Fit {
                    csv,
                    exclude,
                    out,
                    detector,
                },
        } => {
            let options = detector.options(detect_cmd::DEFAULTS);
            detect_cmd::print(&detect_cmd::fit(&csv.spec(exclude)?, options, &out)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rul {
            command:
                RulCommand::Fit {
                    train,
                    format,
                    out,
                    ensemble,
                    window,
                    seed,
                    no_age,
                    baseline,
                },
        } => {
            if format != "cmapss" {
                anyhow::bail!("--format {format:?}: only \"cmapss\" is read so far");
            }
            let d = rul::FitOptions::default();
            let options = rul::FitOptions {
                ensemble: ensemble.unwrap_or(d.ensemble),
                window: window.unwrap_or(d.window),
                seed: seed.unwrap_or(d.seed),
                age: !no_age,
                baseline: baseline.unwrap_or(d.baseline),
                ..d
            };
            detect_cmd::print(&rul_cmd::fit(&train, options, &out)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            data_set: Some(BenchData::Audit { records, dir, json }),
            ..
        } => {
            if !(1000..=100_000_000).contains(&records) {
                anyhow::bail!("bench audit: --records 1000 to 100000000");
            }
            let dir = dir
                .unwrap_or_else(std::env::temp_dir)
                .join(format!("twinguard-bench-audit-{}", std::process::id()));
            let r = bench_audit::run(&dir, records)?;
            bench_data::print(json, &r, bench_audit::table)
        }
        Command::Bench {
            data_set: Some(BenchData::Detect { signals, json }),
            ..
        } => {
            if signals.is_empty() || signals.iter().any(|n| !(2..=2000).contains(n)) {
                anyhow::bail!("bench detect: --signals takes widths of 2 to 2000");
            }
            let r = bench_detect::run(&signals)?;
            bench_data::print(json, &r, bench_detect::table)
        }
        Command::Bench {
            data_set: Some(BenchData::Lookahead { reps, json }),
            ..
        } => {
            if !(1..=10_000).contains(&reps) {
                anyhow::bail!("bench lookahead: --reps 1 to 10000");
            }
            let r = bench_lookahead::run(reps)?;
            bench_data::print(json, &r, bench_lookahead::table)
        }
        Command::Bench {
            data_set: Some(BenchData::Scan { mb, json }),
            ..
        } => {
            if !(1..=2000).contains(&mb) {
                anyhow::bail!("bench scan: --mb 1 to 2000");
            }
            let dir =
                std::env::temp_dir().join(format!("twinguard-bench-scan-{}", std::process::id()));
            let r = bench_audit::scan(&dir, mb)?;
            bench_data::print(json, &r, bench_audit::scan_table)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Pump {
                    train,
                    test,
                    horizon_h,
                    model_out,
                    golden_out,
                    json,
                }),
            ..
        } => {
            if train < 10 || test == 0 || horizon_h.is_nan() || horizon_h <= 0.0 {
                anyhow::bail!(
                    "bench pump: --train at least 10 (each of the 5 networks holds out 2), --test at least 1, --horizon-h positive"
                );
            }
            let (r, model, tests) = bench_pump::bench(train, test, horizon_h)?;
            if let Some(dir) = golden_out {
                bench_pump::write_golden(&tests, &dir)?;
            }
            if let Some(out) = model_out {
                std::fs::write(&out, serde_json::to_string(&model)?)
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
            bench_data::print(json, &r, bench_pump::table)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Episodes {
                    seeds,
                    hours,
                    only,
                    data_dir,
                    plot,
                    json,
                }),
            ..
        } => {
            if seeds == 0 || seeds > 100 || !(hours > 0.0 && hours <= 24.0 * 30.0) {
                anyhow::bail!(
                    "bench episodes: --seeds 1 to 100, --hours more than 0 and at most 720"
                );
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let r = rt.block_on(bench_episodes::bench(seeds, hours, &only, &data_dir))?;
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            if let Some(p) = &plot {
                std::fs::write(p, bench_episodes::svg(&r))
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            bench_data::print(json, &r, bench_episodes::table)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Optimiser {
                    seeds,
                    hours,
                    data_dir,
                    reference_conditions,
                    plot,
                    json,
                }),
            ..
        } => {
            if seeds == 0 || seeds > 100 || !(hours > 0.0 && hours <= 24.0 * 30.0) {
                anyhow::bail!(
                    "bench optimiser: --seeds 1 to 100, --hours more than 0 and at most 720"
                );
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let r = rt.block_on(compare::bench_optimiser(
                seeds,
                hours,
                &data_dir,
                !reference_conditions,
            ))?;
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            if let Some(p) = &plot {
                let runs = r
                    .get("runs")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                std::fs::write(p, compare::svg(&runs))
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            bench_data::print(json, &r, compare::optimiser_table)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Reroute {
                    seeds,
                    hours,
                    risk_horizon_h,
                    data_dir,
                    plot,
                    json,
                }),
            ..
        } => {
            if seeds == 0 || seeds > 100 || !(1.0..=24.0 * 30.0).contains(&hours) {
                anyhow::bail!("bench reroute: --seeds 1 to 100, --hours 1 to 720");
            }
            if !(0.5..=48.0).contains(&risk_horizon_h) {
                anyhow::bail!("bench reroute: --risk-horizon-h 0.5 to 48");
            }
            let r = bench_reroute::bench(seeds, hours, risk_horizon_h, &data_dir)?;
            if let Some(p) = &plot {
                std::fs::write(p, bench_reroute::svg(&r))
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            bench_data::print(json, &r, bench_reroute::table)
        }
        Command::Rul {
            command: RulCommand::Predict { model, test, out },
        } => {
            detect_cmd::print(&rul_cmd::predict(&model, &test, &out)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Cmapss {
                    data,
                    out,
                    sets,
                    options,
                    plot,
                    json,
                }),
            ..
        } => {
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            for s in &sets {
                if !["FD001", "FD002", "FD003", "FD004"].contains(s) {
                    anyhow::bail!("--sets: {s:?} is not FD001, FD002, FD003 or FD004");
                }
            }
            let options = match options {
                Some(f) => rul_cmd::read_options(&f)?,
                None => rul_cmd::bench_options(),
            };
            if plot && !sets.contains(&"FD001") {
                anyhow::bail!("--plot draws FD001's test engines: add FD001 to --sets");
            }
            let r = rul_cmd::bench(&data, &out, &sets, options)?;
            if plot {
                let path = out.join("fd001.svg");
                std::fs::write(&path, rul_cmd::svg(&r))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            bench_data::print(json, &r, rul_cmd::tables)
        }
        Command::Detect {
            command:
                DetectCommand::Score {
                    model,
                    csv,
                    out,
                    plot,
                },
        } => {
            let summary = detect_cmd::score(&model, &csv.spec(vec![])?, &out, plot.as_deref())?;
            detect_cmd::print(&summary)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Batadal {
                    data,
                    json,
                    model_out,
                    detector,
                }),
            ..
        } => {
            let r = benchmarks::batadal::run(&data, detector.options(bench_data::BATADAL_OPTIONS))?;
            if let Some(path) = &model_out {
                let text = serde_json::to_string_pretty(&r.model_for_test)?;
                std::fs::write(path, text + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            bench_data::print(json, &r, bench_data::batadal_table)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Skab {
                    data,
                    json,
                    detector,
                    exclude,
                }),
            ..
        } => {
            let exclude: Vec<String> = exclude
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect();
            let r = bench_data::skab(&data, detector.options(bench_data::SKAB_OPTIONS), &exclude)?;
            bench_data::print(json, &r, bench_data::skab_tables)
        }
        Command::Bench {
            data_set:
                Some(BenchData::Tep {
                    data,
                    json,
                    detector,
                }),
            ..
        } => {
            let r = bench_data::tep(&data, detector.options(bench_data::TEP_OPTIONS))?;
            bench_data::print(json, &r, bench_data::tep_table)
        }
        Command::Bench {
            hours,
            guard_only,
            plant_size_only,
            mqtt_only,
            ..
        } => {
            let dir = std::env::temp_dir().join(format!("twinguard-bench-{}", std::process::id()));
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let r = if plant_size_only {
                bench::by_plant_size().map(|rows| serde_json::json!({ "by_plant_size": rows }))
            } else if mqtt_only {
                rt.block_on(bench::mosquitto_only(hours))
                    .map(|m| serde_json::json!({ "mosquitto": m }))
            } else if guard_only {
                bench_guard::run(&dir).and_then(|g| {
                    let writes = bench_guard::journal_writes(&dir.join("journal"))?;
                    let http = bench_guard::http(&dir.join("http"))?;
                    Ok(serde_json::json!({ "guard": g, "journal_writes": writes, "guard_http": http }))
                })
            } else {
                rt.block_on(bench::run(hours, dir.clone()))
                    .and_then(|mut r| {
                        let guard = bench_guard::run(&dir.join("guard"))?;
                        let writes = bench_guard::journal_writes(&dir.join("journal"))?;
                        let http = bench_guard::http(&dir.join("guard-http"))?;
                        if let Some(m) = r.as_object_mut() {
                            m.insert("guard".into(), guard);
                            m.insert("journal_writes".into(), writes);
                            m.insert("guard_http".into(), http);
                        }
                        Ok(r)
                    })
            };
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            let _ = std::fs::remove_dir_all(&dir);
            println!("{}", serde_json::to_string_pretty(&r?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => audit_cmd::run(command),
        Command::Model { command } => model_cmd::run(command),
        Command::Compliance {
            command:
                ComplianceCommand::Report {
                    out,
                    data_dir,
                    config,
                    tests,
                },
        } => {
            let dir = datadir::DataDir::open(&data_dir)?;
            let r = compliance::report(&dir, config.as_deref(), tests.as_deref(), &out)?;
            println!(
                "compliance evidence written to {} (report.html, report.json): {} claims met, {} partly, {} not shown",
                out.display(),
                r.pointer("/summary/met")
                    .unwrap_or(&serde_json::Value::Null),
                r.pointer("/summary/partial")
                    .unwrap_or(&serde_json::Value::Null),
                r.pointer("/summary/not_shown")
                    .unwrap_or(&serde_json::Value::Null)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read configuration {}", file.display()))?;
            match twinguard_config::Config::parse(&text) {
                Ok(c) => {
                    if let Err(e) =
                        demo::load_policy(&c, Some(&file), &plant_model::Plant::reference())
                    {
                        println!("{e}");
                        println!("1 error(s) in the policy of {}", file.display());
                        return Ok(ExitCode::from(1));
                    }
                    if let Err(e) =
                        demo::multivariate(&c, Some(&file), &plant_model::Plant::reference())
                    {
                        println!("{e:#}");
                        println!("1 error(s) in the detector model of {}", file.display());
                        return Ok(ExitCode::from(1));
                    }
                    if let Err(e) = demo::pump_health(&c, Some(&file)) {
                        println!("{e:#}");
                        println!("1 error(s) in the pump model of {}", file.display());
                        return Ok(ExitCode::from(1));
                    }
                    println!(
                        "{} is valid: {} zones, {} sources, {} conduits",
                        file.display(),
                        c.zones.len(),
                        c.sources.len(),
                        c.conduits.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors {
                        println!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message);
                    }
                    println!("{} error(s) in {}", errors.len(), file.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Run {
            config,
            plant,
            data_dir,
            port,
            seconds,
            json,
        } => {
            if let Some(s) = seconds
                && !(s > 0.0 && s.is_finite())
            {
                anyhow::bail!("--seconds must be a positive number, got {s}");
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = rt.block_on(run::run(run::RunArgs {
                config,
                data_dir,
                plant_file: plant,
                api_port: port,
                seconds,
            }))?;
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            config,
            seconds,
            plant,
            data_dir,
            json,
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = rt.block_on(watch::run(watch::WatchArgs {
                config,
                data_dir,
                plant_file: plant,
                seconds,
                quiet: json,
            }))?;
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            print!("{}", twinguard_config::DEFAULT_CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { api } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&api.post("/api/v1/stop")?)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { api } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&api.post("/api/v1/start")?)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ResetBreakers { api } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&api.post("/api/v1/breakers/reset")?)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command } => {
            let r = match command {
                UserCommand::Add {
                    name,
                    role,
                    password_file,
                    token,
                    data_dir,
                } => user_add(&data_dir, &name, &role, password_file.as_deref(), token)?,
                UserCommand::List { data_dir } => {
                    let users = datadir::DataDir::open(&data_dir)?.users()?;
                    serde_json::json!(
                        users
                            .iter()
                            .map(|(n, a)| serde_json::json!({
                                "user": n,
                                "role": a.role,
                                "password": a.password_hash.is_some(),
                                "token": a.token_sha256.is_some(),
                            }))
                            .collect::<Vec<_>>()
                    )
                }
                UserCommand::Remove { name, data_dir } => {
                    let dir = datadir::DataDir::open(&data_dir)?;
                    let mut users = dir.users()?;
                    if users.remove(&name).is_none() {
                        anyhow::bail!("no user {name}");
                    }
                    dir.write_users(&users)?;
                    serde_json::json!({ "user": name, "removed": true })
                }
            };
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent { command } => {
            let r = match command {
                AgentCommand::Add {
                    name,
                    public_key,
                    generate_key,
                    kinds,
                    assets,
                    plant,
                    data_dir,
                } => {
                    let plant = policy_cmd::load_plant(plant.as_deref())?;
                    agent_registry::add(
                        &datadir::DataDir::open(&data_dir)?,
                        &plant,
                        &name,
                        public_key.as_deref(),
                        generate_key.as_deref(),
                        kinds,
                        assets,
                    )?
                }
                AgentCommand::List { data_dir } => {
                    agent_registry::list(&datadir::DataDir::open(&data_dir)?)?
                }
                AgentCommand::Revoke { name, data_dir } => {
                    agent_registry::revoke(&datadir::DataDir::open(&data_dir)?, &name)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => {
            match command {
                PolicyCommand::Schema => print!("{}", guard::SCHEMA),
                PolicyCommand::Default => print!("{}", guard::DEFAULT_POLICY),
                PolicyCommand::Validate { file, plant } => {
                    let plant = policy_cmd::load_plant(plant.as_deref())?;
                    let p = policy_cmd::validate(&file, &plant)?;
                    println!(
                        "{} is valid: {} policies",
                        file.display(),
                        p.policies().len()
                    );
                    for (id, reason) in p.policies() {
                        println!("  {id}: {reason}");
                    }
                }
                PolicyCommand::Check {
                    proposal,
                    config,
                    plant,
                } => {
                    let r = policy_cmd::check(&proposal, config.as_ref(), plant.as_deref())?;
                    println!("{}", serde_json::to_string_pretty(&r)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki { command } => {
            let print = |c: &opcua_link::pki::CertEntry| {
                println!(
                    "{:<9} {}  {}\n          SHA-256 {}  valid until {}\n          {}",
                    format!("{:?}", c.state).to_lowercase(),
                    c.thumbprint,
                    c.subject,
                    c.sha256,
                    c.not_after,
                    c.file.display()
                );
            };
            match command {
                PkiCommand::List { dir } => {
                    let all = opcua_link::pki::list(&dir.path())?;
                    if all.is_empty() {
                        println!("no certificates in {}", dir.path().display());
                    }
                    all.iter().for_each(print);
                }
                PkiCommand::Trust { thumbprint, dir } => {
                    let c = opcua_link::pki::trust(&dir.path(), &thumbprint)?;
                    println!("trusted:");
                    print(&c);
                }
                PkiCommand::Reject { thumbprint, dir } => {
                    let c = opcua_link::pki::reject(&dir.path(), &thumbprint)?;
                    println!("rejected:");
                    print(&c);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Device {
            command: DeviceCommand::List { data_dir },
        } => {
            let dir = datadir::DataDir::open(&data_dir)?;
            let fmt_t = |t: Option<i64>| t.map_or_else(|| "-".to_string(), core::format_time);
            for d in dir.registry()? {
                println!("{} (asset {})", d.id, d.asset);
                for k in &d.keys {
                    println!(
                        "  {:<16} {:?}  valid {} .. {}",
                        k.id,
                        k.material,
                        fmt_t(k.not_before_ms),
                        fmt_t(k.not_after_ms)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Device {
            command:
                DeviceCommand::Revoke {
                    device,
                    key,
                    data_dir,
                },
        } => {
            let dir = datadir::DataDir::open(&data_dir)?;
            let removed = dir.revoke_device(&device, key.as_deref())?;
            let mut store = audit::SqliteStore::open(&dir.audit_db(), dir.key("audit")?)?;
            audit::AuditStore::append(
                &mut store,
                &[audit::Entry::new(
                    demo::wall_clock_ms(),
                    "device_revoked",
                    serde_json::json!({ "device": device, "whole_device": key.is_none(), "keys": removed }),
                )],
            )?;
            match key {
                Some(k) => println!(
                    "device {device}: key {k} revoked; frames sealed with it are refused \
                     (a running twinguard takes this up within a second)"
                ),
                None => println!(
                    "device {device} revoked with its keys {}; its frames are refused \
                     (a running twinguard takes this up within a second)",
                    removed.join(", ")
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Device {
            command:
                DeviceCommand::Rotate {
                    device,
                    overlap_s,
                    data_dir,
                },
        } => {
            let dir = datadir::DataDir::open(&data_dir)?;
            let now = demo::wall_clock_ms();
            let overlap_ms = i64::from(overlap_s) * 1000;
            let (_, new_id) = dir.rotate_device_key(&device, now, overlap_ms)?;
            let mut store = audit::SqliteStore::open(&dir.audit_db(), dir.key("audit")?)?;
            audit::AuditStore::append(
                &mut store,
                &[audit::Entry::new(
                    now,
                    "device_key_rotated",
                    serde_json::json!({ "device": device, "new_key": new_id, "overlap_ms": overlap_ms }),
                )],
            )?;
            println!(
                "device {device}: new key {new_id}; earlier keys accepted until {} \
                 (a running twinguard takes this up within a second)",
                core::format_time(now + overlap_ms)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plant {
            command: PlantCommand::Check { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read plant file {}", file.display()))?;
            let p = plant_model::Plant::parse(&text, &file.display().to_string())?;
            println!(
                "plant file {} is valid: {} assets, {} signals, {} setpoints, {} relations",
                file.display(),
                p.assets.len(),
                p.signals.len(),
                p.setpoints.len(),
                p.relations.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plant {
            command: PlantCommand::Reference,
        } => {
            print!("{}", plant_model::REFERENCE_PLANT);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plant {
            command:
                PlantCommand::Simulate {
                    hours,
                    every_s,
                    seed,
                    fault,
                    plant,
                    out,
                },
        } => {
            let rows = simulate_csv(hours, every_s, seed, &fault, plant.as_deref(), &out)?;
            println!("{rows} rows written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::AttackAgent {
            api,
            agent,
            token_file,
            now_ms,
        } => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("cannot read {}", token_file.display()))?;
            let rt = tokio::runtime::Runtime::new()?;
            let v = rt.block_on(attack::thief(&api, &agent, token.trim(), now_ms))?;
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A report as one JSON object (`--json`) or pretty-printed for reading.
fn print_report(report: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report:#}");
    }
    Ok(())
}
