//! hearth-bench command line: pins itself to CPU 1, prepares the hub's data
//! dir and devices, runs every scenario against hearthd and Mosquitto in
//! alternation (fresh broker per run) and writes the table, JSON and SVG;
//! `hearth-bench soak` runs the long soak of issue 13 instead.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hearth_bench::broker::{self, Env, Kind};
use hearth_bench::budget;
use hearth_bench::report::{self, Collector};
use hearth_bench::scenarios::{check_smoke, run_one, Params, Scenario};
use hearth_bench::soak::{self, SoakParams};

/// Benchmark hearthd side by side with Mosquitto over mutual-TLS MQTT on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Toy scale: seconds, tiny counts, every scenario, both brokers; exits 0
    /// when messages flowed and figures were produced (asserts no timing).
    #[arg(long)]
    smoke: bool,
    /// Runs per broker per scenario (alternating A B A B ...).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Warm-up seconds before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Scenarios to run, comma-separated (qos0,qos1,fanout,fanin,paced,idle,startup,mailbox,home;
    /// budget, the memory-budget run, only when named here or in --smoke).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Payload bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Idle mutual-TLS connections to open.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Fan-out subscribers.
    #[arg(long, default_value_t = 50)]
    fanout_subs: usize,
    /// Fan-in devices (each at --fanin-rate msg/s).
    #[arg(long, default_value_t = 100)]
    fanin_devices: usize,
    /// Fan-in messages per second per device.
    #[arg(long, default_value_t = 50)]
    fanin_rate: u32,
    /// Paced scenario rate, msg/s.
    #[arg(long, default_value_t = 20_000)]
    paced_rate: u32,
    /// Outstanding mailbox sends (the window of sends awaiting a receipt).
    #[arg(long, default_value_t = 64)]
    mailbox_window: usize,
    /// Devices connected in the memory-budget run (the budget in
    /// docs/ARCHITECTURE.md is stated for 200).
    #[arg(long, default_value_t = 200)]
    budget_devices: usize,
    /// hearthd binary (default: next to this executable).
    #[arg(long)]
    hearthd: Option<PathBuf>,
    /// mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Run Hearth only (no Mosquitto installed).
    #[arg(long)]
    hearth_only: bool,
    /// Results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Ratio chart as SVG.
    #[arg(long, default_value = "bench-ratios.svg")]
    svg: PathBuf,
    /// Pin nothing: the brokers and the generator share every CPU (the
    /// unpinned run, reported separately).
    #[arg(long)]
    no_pin: bool,
    /// A mode other than the side-by-side benchmark.
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Hours-like load in minutes: devices publish QoS 1 at a steady rate
    /// with a parent subscribed to all telemetry and some devices
    /// reconnecting; hearthd's RSS is reported every sample and every
    /// acknowledged message must reach the parent. Exits non-zero on fail.
    Soak(SoakArgs),
}

/// The soak's knobs (issue 13: 1000 devices, 1 msg/s, 10 minutes, 100 in churn).
#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Publishing devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Messages per second per device (QoS 1).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Minutes of publishing.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Devices that disconnect and reconnect in churn.
    #[arg(long, default_value_t = 100)]
    churn: usize,
    /// Seconds between a churning device's reconnections.
    #[arg(long, default_value_t = 10.0)]
    churn_every: f64,
    /// Warm-up seconds (default: a fifth of the run). RSS is flat when its
    /// peak over the last such window is within the tolerance of its peak
    /// over the first window after warm-up.
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// Allowed RSS growth after warm-up, percent.
    #[arg(long, default_value_t = 10.0)]
    rss_tolerance: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// The result as JSON.
    #[arg(long, default_value = "soak-results.json")]
    json: PathBuf,
}

const PINNED_ENV: &str = "HEARTH_BENCH_PINNED";

fn main() -> Result<()> {
    let args = Args::parse();
    // The soak pins nothing: it is judged on correctness and memory, not
    // rates, and shares the machine with whatever else runs.
    let soak = matches!(args.mode, Some(Mode::Soak(_)));
    if (soak || !args.no_pin) && std::env::var_os(PINNED_ENV).is_none() {
        // Re-exec with more file descriptors (idle connections; the soak's
        // devices, three descriptors each in hearthd, which inherits the
        // limit) and, when possible, pinned to CPU 1; brokers get CPU 0.
        let exe = std::env::current_exe()?;
        let pin = if soak {
            Vec::new()
        } else {
            broker::pin_prefix(1)
        };
        let status = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@""#)
            .arg("sh")
            .args(pin)
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(PINNED_ENV, "1")
            .status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if let Some(Mode::Soak(soak_args)) = &args.mode {
        return run_soak(&args, soak_args).await;
    }
    let smoke = args.smoke;
    let params = if smoke {
        Params {
            payload: args.payload,
            ..Params::smoke()
        }
    } else {
        Params {
            smoke,
            warmup: Duration::from_secs_f64(args.warmup),
            window: Duration::from_secs_f64(args.window),
            payload: args.payload,
            qos1_window: 100,
            fanout_subs: args.fanout_subs,
            fanin_devices: args.fanin_devices,
            fanin_rate: args.fanin_rate,
            paced_rate: args.paced_rate,
            idle: args.idle,
            idle_concurrency: 32,
            mailbox_window: args.mailbox_window,
            home_slow: 200,
            home_fast: 20,
            budget_devices: args.budget_devices,
        }
    };
    let runs = if smoke { 1 } else { args.runs.max(1) };
    let chosen: Vec<Scenario> = if args.scenarios.is_empty() {
        // The budget run is a check of its own (minutes, Hearth only, at
        // the default limits): asked for by name, or at toy scale in smoke.
        Scenario::ALL
            .into_iter()
            .filter(|s| smoke || *s != Scenario::Budget)
            .collect()
    } else {
        args.scenarios
            .iter()
            .map(|n| {
                Scenario::ALL
                    .into_iter()
                    .find(|s| s.name() == n)
                    .with_context(|| format!("unknown scenario {n}"))
            })
            .collect::<Result<_>>()?
    };
    let hearthd = match args.hearthd {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("hearthd"),
    };
    if !hearthd.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p hearth-daemon) or pass --hearthd",
            hearthd.display()
        );
    }
    let mosquitto = if args.hearth_only {
        None
    } else if args.mosquitto.exists() {
        Some(args.mosquitto.clone())
    } else {
        bail!(
            "{} not found: apt-get install mosquitto, or pass --hearth-only",
            args.mosquitto.display()
        );
    };

    let machine = serde_json::json!({
        "nproc": sh("getconf _NPROCESSORS_ONLN"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "kernel": sh("uname -r"),
        "loadavg_at_start": sh("cat /proc/loadavg"),
        "hearthd": sh(&format!("'{}' --version", hearthd.display())),
        "mosquitto": mosquitto.as_ref().map(|m| sh(&format!("'{}' -h | head -1", m.display()))),
        "generator_affinity": sh("taskset -pc $$ 2>/dev/null | cut -d: -f2"),
        "broker_pinning": if args.no_pin { "none".to_owned() } else { broker::pin_prefix(0).join(" ") },
        "clk_tck": broker::clk_tck(),
        "broker_cpu": "process CPU-time clock (clock_getcpuclockid), microseconds",
        "nofile": sh("ulimit -n"),
    });
    eprintln!("machine: {machine}");

    // Devices for the chosen scenarios only: issuing thousands takes a while.
    let (mut parents, mut children) = (3, 1);
    for s in &chosen {
        match s {
            Scenario::FanOut => parents = parents.max(3 + params.fanout_subs),
            Scenario::FanIn => children = children.max(params.fanin_devices),
            Scenario::Idle => children = children.max(params.idle),
            Scenario::Home => children = children.max(1 + params.home_slow + params.home_fast),
            Scenario::Budget => {
                children = children.max(params.budget_devices);
                let plan = if smoke {
                    budget::Plan::smoke(params.budget_devices)
                } else {
                    budget::Plan::new(params.budget_devices, &budget::Defaults::default())
                };
                parents = parents.max(plan.parents());
            }
            _ => {}
        }
    }
    eprintln!(
        "preparing the hub data dir and {} devices...",
        parents + children
    );
    let t = Instant::now();
    let (mut env, pool) = Env::prepare(hearthd.clone(), mosquitto.clone(), parents, children)?;
    if args.no_pin {
        env.pin.clear();
    }
    eprintln!(
        "prepared in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        env.work.display()
    );

    let mut collector = Collector::default();
    let gen_limit = if smoke { f64::INFINITY } else { 0.9 };
    for s in &chosen {
        let kinds: Vec<Kind> = if s.both() && env.mosquitto.is_some() {
            vec![Kind::Hearth, Kind::Mosquitto]
        } else {
            vec![Kind::Hearth]
        };
        // The budget run checks a peak, not a median: once is enough.
        let runs = if *s == Scenario::Budget { 1 } else { runs };
        for i in 0..runs {
            for &kind in &kinds {
                match run_one(&env, &pool, *s, kind, &params).await {
                    Ok(o) => {
                        let figs: Vec<String> = o
                            .figures
                            .iter()
                            .map(|f| format!("{}={:.1}{}", f.name, f.value, f.unit))
                            .collect();
                        eprintln!(
                            "[{} run {}/{} {}] gen CPU {:.0}%  {}",
                            s.name(),
                            i + 1,
                            runs,
                            kind.name(),
                            o.gen_cpu * 100.0,
                            figs.join("  ")
                        );
                        if o.gen_cpu > gen_limit {
                            eprintln!("  generator above 90% of its core: rate figures of this run withheld");
                        }
                        if *s == Scenario::Budget {
                            match budget::check(&o) {
                                Ok(()) => eprintln!("  memory budget: within"),
                                Err(e) => {
                                    eprintln!("  memory budget: FAILED: {e}");
                                    collector.failures.push((s.name(), kind.name(), e));
                                }
                            }
                        }
                        if smoke {
                            check_smoke(&o)
                                .with_context(|| format!("{} on {}", s.name(), kind.name()))
                                .map_err(|e| {
                                    collector.failures.push((
                                        s.name(),
                                        kind.name(),
                                        format!("{e:#}"),
                                    ));
                                    e
                                })
                                .ok();
                        }
                        collector.add(*s, kind, &o, gen_limit);
                    }
                    Err(e) => {
                        eprintln!("[{} run {} {}] FAILED: {e:#}", s.name(), i + 1, kind.name());
                        collector
                            .failures
                            .push((s.name(), kind.name(), format!("{e:#}")));
                    }
                }
            }
        }
    }
    let (rows, collector) = collector.finish();
    let table = report::table(&rows);
    println!("{table}");
    let doc = serde_json::json!({
        "_about": "hearth-bench results: every run's figures, medians and ratios Hearth / Mosquitto (docs/BENCHMARKS.md)",
        "machine": machine,
        "smoke": smoke,
        "runs_per_broker": runs,
        "params": format!("{params:?}"),
        "rows": rows,
        "generator_cpu": collector.gen_cpu,
        "failures": collector.failures,
        "seconds": started.elapsed().as_secs_f64(),
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc)?)?;
    std::fs::write(
        &args.svg,
        report::svg(
            &rows,
            "Hearth vs Mosquitto 2.0.11, same core, mutual TLS over loopback",
        ),
    )?;
    eprintln!(
        "wrote {} and {} in {:.1} s",
        args.json.display(),
        args.svg.display(),
        started.elapsed().as_secs_f64()
    );
    drop(env);
    if !collector.failures.is_empty() {
        for (s, k, e) in &collector.failures {
            eprintln!("failure: {s} on {k}: {e}");
        }
        bail!("{} run(s) failed", collector.failures.len());
    }
    Ok(())
}

fn hearthd_path(given: Option<&PathBuf>) -> Result<PathBuf> {
    let hearthd = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("hearthd"),
    };
    if !hearthd.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p hearth-daemon) or pass --hearthd",
            hearthd.display()
        );
    }
    Ok(hearthd)
}

async fn run_soak(args: &Args, s: &SoakArgs) -> Result<()> {
    let started = Instant::now();
    let hearthd = hearthd_path(args.hearthd.as_ref())?;
    let duration = Duration::from_secs_f64(s.minutes * 60.0);
    let params = SoakParams {
        devices: s.devices,
        rate: s.rate,
        duration,
        churn: s.churn.min(s.devices),
        churn_every: Duration::from_secs_f64(s.churn_every),
        warmup: s
            .warmup
            .map(Duration::from_secs_f64)
            .unwrap_or(duration / 5),
        sample_every: Duration::from_secs_f64(s.sample_every),
        payload: s.payload,
        rss_tolerance: s.rss_tolerance / 100.0,
    };
    eprintln!(
        "soak: {} devices x {} msg/s QoS 1 for {:.1} min, {} in churn (every {} s), parent on {}",
        params.devices,
        params.rate,
        s.minutes,
        params.churn,
        s.churn_every,
        soak::TELEMETRY_FILTER
    );
    eprintln!(
        "preparing the hub data dir and {} devices...",
        s.devices + 1
    );
    let t = Instant::now();
    let (mut env, pool) = Env::prepare(hearthd.clone(), None, 1, s.devices.max(1))?;
    env.pin.clear();
    eprintln!("prepared in {:.1} s", t.elapsed().as_secs_f64());
    let mut b = env.start(Kind::Hearth)?;
    let result = async {
        broker::wait_ready(&mut b, &pool.parents[0], Duration::from_secs(30)).await?;
        soak::run(&mut b, &pool.parents[0], &pool.children, &params).await
    }
    .await;
    b.stop();
    let report = result?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "published {}  acked {}  unacked {}  delivered {}  duplicates {}  LOST {}  reconnects {}  connect failures {}",
        report.published,
        report.acked,
        report.unacked,
        report.delivered,
        report.duplicates,
        report.lost,
        report.reconnects,
        report.connect_failures
    );
    eprintln!(
        "hearthd RSS peak just after warm-up {:.1} MiB, at the end {:.1} MiB ({:+.1} %), largest after warm-up {:.1} MiB",
        mib(report.baseline_rss_kib),
        mib(report.final_rss_kib),
        (report.final_rss_kib as f64 / report.baseline_rss_kib.max(1) as f64 - 1.0) * 100.0,
        mib(report.max_rss_after_warmup_kib),
    );
    let doc = serde_json::json!({
        "_about": "hearth-bench soak (issue 13; docs/BENCHMARKS.md, Soak)",
        "hearthd": sh(&format!("'{}' --version", hearthd.display())),
        "loadavg_at_end": sh("cat /proc/loadavg"),
        "seconds": started.elapsed().as_secs_f64(),
        "passed": report.passed(),
        "report": report,
    });
    std::fs::write(&s.json, serde_json::to_string_pretty(&doc)?)?;
    drop(env);
    if report.passed() {
        eprintln!("soak PASSED ({})", s.json.display());
        Ok(())
    } else {
        for f in &report.failures {
            eprintln!("soak failure: {f}");
        }
        bail!("soak FAILED ({})", s.json.display())
    }
}
