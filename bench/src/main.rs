//! hearth-bench command line: pins itself to CPU 1, prepares the hub's data
//! dir and devices, runs every scenario against hearthd and Mosquitto in
//! alternation (fresh broker per run) and writes the table, JSON and SVG.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hearth_bench::broker::{self, Env, Kind};
use hearth_bench::report::{self, Collector};
use hearth_bench::scenarios::{check_smoke, run_one, Params, Scenario};

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
    /// Scenarios to run, comma-separated (qos0,qos1,fanout,fanin,paced,idle,startup,mailbox).
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
}

const PINNED_ENV: &str = "HEARTH_BENCH_PINNED";

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.no_pin && std::env::var_os(PINNED_ENV).is_none() {
        // Re-exec with more file descriptors (idle connections) and, when
        // possible, pinned to CPU 1; brokers get CPU 0.
        let exe = std::env::current_exe()?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@""#)
            .arg("sh")
            .args(broker::pin_prefix(1))
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
        }
    };
    let runs = if smoke { 1 } else { args.runs.max(1) };
    let chosen: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
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
        "nofile": sh("ulimit -n"),
    });
    eprintln!("machine: {machine}");

    let parents = 2 + params.fanout_subs;
    let children = params.idle.max(params.fanin_devices).max(1);
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
