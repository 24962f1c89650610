//! Every scenario at toy scale against hearthd, and against mosquitto when it
//! is installed: the machinery works (messages flow, figures are numbers).

use std::path::PathBuf;

use hearth_bench::broker::{Env, Kind};
use hearth_bench::scenarios::{check_smoke, run_one, Params, Scenario};

fn hearthd() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTHD") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("hearthd");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p hearth-daemon` (or the whole workspace's tests), or set HEARTHD",
        p.display()
    );
    p
}

#[tokio::test]
async fn every_scenario_runs_at_toy_scale() {
    let mosquitto = PathBuf::from("/usr/sbin/mosquitto");
    // Only here may mosquitto be missing: the CLI's --smoke requires it.
    let mosquitto = mosquitto.exists().then_some(mosquitto);
    if mosquitto.is_none() {
        eprintln!("mosquitto not installed: Hearth only");
    }
    let p = Params::smoke();
    let (env, pool) = Env::prepare(hearthd(), mosquitto.clone(), 2 + p.fanout_subs, p.idle)
        .expect("prepare the hub");
    for s in Scenario::ALL {
        let mut kinds = vec![Kind::Hearth];
        if s.both() && mosquitto.is_some() {
            kinds.push(Kind::Mosquitto);
        }
        for kind in kinds {
            let o = run_one(&env, &pool, s, kind, &p)
                .await
                .unwrap_or_else(|e| panic!("{} on {}: {e:#}", s.name(), kind.name()));
            check_smoke(&o).unwrap_or_else(|e| panic!("{} on {}: {e:#}", s.name(), kind.name()));
            if s == Scenario::Budget {
                hearth_bench::budget::check(&o).unwrap_or_else(|e| panic!("budget: {e}"));
            }
        }
    }
}
