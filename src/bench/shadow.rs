//! `drsn-serve bench --shadow`: what a shadow candidate costs the serving version's answers. The model is served
//! from a model repository as two versions (the same network); the same loads run without a shadow and with the
//! second version shadowing the first, alternating, in one run on one server: 64 real-time sensors (window latency)
//! and a saturating load (windows/s), with the share of windows the candidate scored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::capacity::{self, Load};
use super::{ClientRuntime, service_throughput};
use crate::model::card::LoadedModel;
use crate::pipeline::shadow::Tally;
use drsn_client::samples::WireChoice;

/// The candidate's version name in the benchmark's repository.
const CANDIDATE: &str = "bench-candidate";
/// Rounds of (without, with): alternating keeps a drift of the machine out of the difference.
const ROUNDS: usize = 3;

/// Real-time sensor counts measured: a light load and one near half of what the shipped model's replica holds.
const SENSORS: [usize; 2] = [64, 512];

/// One real-time load's latency, and what the candidate did with its windows (with the shadow).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Realtime {
    pub sensors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub tally: Option<Tally>,
}

/// The loads without or with the shadow.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Phase {
    pub realtime: Vec<Realtime>,
    pub saturated_windows_per_s: f64,
    pub saturated_tally: Option<Tally>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ShadowReport {
    pub streams: usize,
    /// Per round: (without the shadow, with it).
    pub rounds: Vec<(Phase, Phase)>,
}

/// A model repository holding `card`'s model as its own version and as [`CANDIDATE`], in a folder of its own
/// that is removed when dropped.
struct Repository(PathBuf);

impl Repository {
    fn new(card: &Path) -> anyhow::Result<(Self, String)> {
        let text = std::fs::read_to_string(card)?;
        let mut value: serde_json::Value = serde_json::from_str(&text)?;
        let folder = card
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let folder = std::fs::canonicalize(folder)?;
        for key in ["onnx", "golden"] {
            if let Some(file) = value.get(key).and_then(|v| v.as_str()) {
                value[key] = folder.join(file).to_string_lossy().into_owned().into();
            }
        }
        let name = value["name"].as_str().unwrap_or_default().to_owned();
        let serving = value["version"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!name.is_empty(), "{} names no model", card.display());
        let root = std::env::temp_dir().join(format!("drsn-bench-shadow-{}", std::process::id()));
        let repo = Self(root);
        for version in [serving.as_str(), CANDIDATE] {
            let dir = repo.0.join(&name).join(version);
            std::fs::create_dir_all(&dir)?;
            value["version"] = version.into();
            std::fs::write(dir.join("card.json"), value.to_string())?;
        }
        Ok((repo, serving))
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP/1.1 request to the server's REST listener; the JSON body of a 200.
async fn http(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{path}: not an HTTP response"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {head}: {body}");
    Ok(serde_json::from_str(body)?)
}

/// The server's REST listener and the model's name.
struct Control {
    http: SocketAddr,
    model: String,
    serving: String,
}

impl Control {
    /// Pins the serving version and sets the shadow (or none); a new shadow's tally starts at zero.
    async fn shadow(&self, on: bool) -> anyhow::Result<()> {
        let shadow = if on { CANDIDATE } else { "none" };
        let body = serde_json::json!({"parameters": {"serve": self.serving, "shadow": shadow}});
        let path = format!("/v2/repository/models/{}/load", self.model);
        http(self.http, &path, &body.to_string()).await.map(drop)
    }

    /// The candidate's tally so far, from the repository index.
    async fn tally(&self) -> anyhow::Result<Tally> {
        let index = http(self.http, "/v2/repository/index", "").await?;
        let entry = index
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == self.model.as_str() && e["version"] == CANDIDATE)
            .and_then(|e| e.get("shadow"))
            .ok_or_else(|| anyhow::anyhow!("the index shows no shadow: {index}"))?;
        Ok(serde_json::from_value(entry.clone())?)
    }
}

fn since(before: Tally, after: Tally) -> Tally {
    Tally {
        agree: after.agree - before.agree,
        disagree: after.disagree - before.disagree,
        unscored: after.unscored - before.unscored,
        skipped: after.skipped - before.skipped,
    }
}

/// Runs the comparison on a server started for it.
pub(crate) async fn run(args: super::BenchArgs) -> anyhow::Result<ShadowReport> {
    let split = args.client_cpus.map(super::cpu::split).transpose()?;
    let recordings = super::load_recordings(&args.recordings)?;
    let (repository, serving) = Repository::new(&args.serve.model)?;
    let model = LoadedModel::load(&args.serve.model)?;
    let mut config = super::local(&args.serve)?;
    config.model_repository = Some(repository.0.clone());
    config.model_control = crate::server::config::ModelControlMode::Explicit;
    let running = crate::server::start(config.clone()).await?;
    let addr = format!("http://{}", running.grpc_addr);
    let control = Control {
        http: running.http_addr,
        model: model.card.name.clone(),
        serving,
    };
    let client = ClientRuntime::new(split.as_ref().map(|s| s.client.as_slice()))?;
    let load = Load::new(&addr, &recordings, &model, &args, &config);
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let mut phases = [Phase::default(), Phase::default()];
        for (phase, on) in phases.iter_mut().zip([false, true]) {
            let what = if on { "with" } else { "without" };
            eprintln!(
                "round {round}/{ROUNDS} {what} a shadow: {SENSORS:?} real-time sensors (phases spread), then {} \
                 streams saturating, {} s each ...",
                args.streams, args.seconds
            );
            control.shadow(on).await?;
            let tally = async || match on {
                true => control.tally().await.map(Some),
                false => Ok(None),
            };
            let mut before = tally().await?;
            for sensors in SENSORS {
                let l = load.clone();
                let trial = client
                    .run(async move { capacity::trial(&l, sensors, true).await })
                    .await?;
                let after = tally().await?;
                phase.realtime.push(Realtime {
                    sensors,
                    p50_ms: trial.p50_ms,
                    p99_ms: trial.p99_ms,
                    tally: before.zip(after).map(|(b, a)| since(b, a)),
                });
                before = after;
            }
            let (_, rate, _) = client
                .run(service_throughput(
                    addr.clone(),
                    recordings.clone(),
                    args.streams,
                    args.chunk,
                    args.seconds,
                    WireChoice::F32,
                ))
                .await?;
            let after = tally().await?;
            phase.saturated_windows_per_s = rate;
            phase.saturated_tally = before.zip(after).map(|(b, a)| since(b, a));
        }
        let [off, on] = phases;
        rounds.push((off, on));
    }
    drop(client);
    running.shutdown();
    running.stopped().await;
    drop(repository);
    Ok(ShadowReport {
        streams: args.streams,
        rounds,
    })
}

/// "N of M windows (P%)" the candidate scored.
fn scored(t: Option<Tally>) -> String {
    let Some(t) = t else { return "-".into() };
    let scored = t.agree + t.disagree + t.unscored;
    let all = scored + t.skipped;
    let share = if all == 0 {
        0.0
    } else {
        100.0 * scored as f64 / all as f64
    };
    let agreement = t
        .agreement()
        .map_or("-".into(), |a| format!("{:.1}%", a * 100.0));
    format!("scored {scored} of {all} windows ({share:.0}%), agreement {agreement}")
}

impl std::fmt::Display for ShadowReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "shadow scoring: the serving version alone and with a candidate version (the same network) shadowing \
             it, alternating, one server; real-time sensors with phases spread"
        )?;
        writeln!(
            f,
            "{:<6} {:<7} {:>9} {:>8} {:>8} {:>16}",
            "round", "shadow", "sensors", "p50 ms", "p99 ms", "saturated w/s"
        )?;
        for (i, (off, on)) in self.rounds.iter().enumerate() {
            for (name, p) in [("off", off), ("on", on)] {
                for (j, r) in p.realtime.iter().enumerate() {
                    let rate = match j {
                        0 => format!("{:.0}", p.saturated_windows_per_s),
                        _ => String::new(),
                    };
                    writeln!(
                        f,
                        "{:<6} {:<7} {:>9} {:>8.2} {:>8.2} {:>16}",
                        i + 1,
                        name,
                        r.sensors,
                        r.p50_ms,
                        r.p99_ms,
                        rate
                    )?;
                }
            }
            for r in &on.realtime {
                writeln!(
                    f,
                    "       candidate, {} sensors: {}",
                    r.sensors,
                    scored(r.tally)
                )?;
            }
            writeln!(
                f,
                "       candidate, saturated ({} streams): {}",
                self.streams,
                scored(on.saturated_tally)
            )?;
        }
        let mean = |pick: &dyn Fn(&Phase) -> f64, on: bool| {
            let n = self.rounds.len().max(1) as f64;
            self.rounds
                .iter()
                .map(|(a, b)| pick(if on { b } else { a }))
                .sum::<f64>()
                / n
        };
        let ratio = |pick: &dyn Fn(&Phase) -> f64| mean(pick, true) / mean(pick, false);
        write!(f, "with / without, mean over rounds:")?;
        for (j, sensors) in SENSORS.iter().enumerate() {
            let at = |p: &Phase, ms: fn(&Realtime) -> f64| p.realtime.get(j).map_or(f64::NAN, ms);
            write!(
                f,
                " {sensors} sensors p50 {:.2}, p99 {:.2};",
                ratio(&|p| at(p, |r| r.p50_ms)),
                ratio(&|p| at(p, |r| r.p99_ms))
            )?;
        }
        write!(
            f,
            " saturated windows/s {:.2}",
            ratio(&|p| p.saturated_windows_per_s)
        )
    }
}
