//! `drsn-serve condition-study`: runs the server's own condition debouncer over per-window model outputs recorded
//! on the leave-one-load-out folds (`models/reports/condition_windows.json.gz`, made by `python -m drsntrain
//! condition-windows`), for a grid of settings, and prints the decision table the defaults are chosen from.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;

use crate::condition::debounce::{
    Condition, Debouncer, Observation, Settings, State, Vote, healthy_class,
};
use crate::pipeline::severity::ZoneLimits;

#[derive(Debug, Clone, clap::Args)]
pub struct StudyArgs {
    /// Per-window outputs (gzip JSON from `python -m drsntrain condition-windows`).
    #[arg(long, default_value = "models/reports/condition_windows.json.gz")]
    pub windows: PathBuf,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Deserialize)]
pub struct Recorded {
    pub classes: Vec<String>,
    pub window: u64,
    pub hop: u64,
    pub sample_rate_hz: f64,
    pub folds: Vec<Fold>,
    #[serde(default)]
    pub shipped: Option<Shipped>,
    pub sequences: Vec<Sequence>,
}

#[derive(Debug, Deserialize)]
pub struct Fold {
    pub heldout_load: i32,
    pub uncertain_below: Option<f32>,
}

/// The shipped model's calibration, for its sequences.
#[derive(Debug, Deserialize)]
pub struct Shipped {
    pub uncertain_below: Option<f32>,
    pub version: Option<String>,
}

fn fold_model() -> String {
    "fold".into()
}

#[derive(Debug, Deserialize)]
pub struct Sequence {
    /// The held-out load of the fold model, or -1 for the shipped model.
    pub fold: i32,
    /// "fold" or "shipped".
    #[serde(default = "fold_model")]
    pub model: String,
    pub recording: String,
    pub true_class: String,
    pub healthy: bool,
    pub noise: String,
    pub snr_db: Option<f64>,
    pub first_sample: Vec<u64>,
    pub label: Vec<usize>,
    pub confidence: Vec<f32>,
}

/// What one setting did: on the fold models' held-out loads, and with the shipped model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub half_life_s: f64,
    pub on_share: f32,
    pub on_delay_s: f64,
    pub off_delay_s: f64,
    pub folds: Judged,
    pub shipped: Judged,
}

/// One model's sequences under one setting.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Judged {
    /// Faulty sequences ending FAULT with the right dominant class: clean, noise at -4 dB, at -8 dB.
    pub right: [f64; 3],
    pub faulty: [u64; 3],
    /// Seconds of signal to the first FAULT onset (median and 90th percentile over the faulty sequences with one).
    pub onset_median_s: f64,
    pub onset_p90_s: f64,
    /// FAULT onsets on healthy signal, per sensor-hour, and the hours of healthy signal behind it.
    pub false_onsets: u64,
    pub healthy_hours: f64,
    pub false_onsets_per_hour: f64,
}

/// The grid the defaults are picked from.
pub fn grid() -> Vec<Settings> {
    let mut out = Vec::new();
    for half_life_s in [1.0, 2.0, 4.0] {
        for on_share in [0.5, 0.6, 0.7] {
            for on_delay_s in [1.0, 2.0, 4.0] {
                out.push(Settings {
                    half_life_s,
                    on_share,
                    on_delay_s,
                    ..Settings::default()
                });
            }
        }
    }
    out
}

/// The condition changes one sequence causes: (window end sample, condition, class) for each.
fn run(
    d: &mut Debouncer,
    window: u64,
    seq: &Sequence,
    uncertain_below: Option<f32>,
    start: u64,
) -> Vec<(u64, Condition, Option<usize>)> {
    let mut changes = Vec::new();
    for ((first, label), confidence) in seq.first_sample.iter().zip(&seq.label).zip(&seq.confidence)
    {
        let obs = Observation {
            first_sample: start + first,
            end_sample: start + first + window - 1,
            vote: Vote::Class {
                index: *label,
                uncertain: uncertain_below.is_some_and(|t| *confidence < t),
            },
            velocity_mm_s: None,
        };
        if let Some(c) = d.observe(obs, 0) {
            changes.push((obs.end_sample, c.now.condition, c.now.fault_class));
        }
    }
    changes
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// The decision table over `grid` for `data`.
pub fn table(data: &Recorded, grid: &[Settings]) -> Vec<Row> {
    grid.iter()
        .map(|&settings| Row {
            half_life_s: settings.half_life_s,
            on_share: settings.on_share,
            on_delay_s: settings.on_delay_s,
            off_delay_s: settings.off_delay_s,
            folds: judge(data, settings, "fold"),
            shipped: judge(data, settings, "shipped"),
        })
        .collect()
}

/// The sequences of `model` under `settings`.
fn judge(data: &Recorded, settings: Settings, model: &str) -> Judged {
    let normal = healthy_class(&data.classes);
    let rate = data.sample_rate_hz;
    let fresh = || {
        Debouncer::new(
            settings,
            normal,
            rate,
            ZoneLimits::default(),
            State::new(data.classes.len(), 0),
        )
    };
    let uncertain = |fold: i32| match model {
        "shipped" => data.shipped.as_ref().and_then(|s| s.uncertain_below),
        _ => data
            .folds
            .iter()
            .find(|f| f.heldout_load == fold)
            .and_then(|f| f.uncertain_below),
    };
    let snr = |s: &Sequence| s.snr_db.map(|x| x.round() as i64);
    let ours = data.sequences.iter().filter(|s| s.model == model);
    let (mut right, mut faulty) = ([0u64; 3], [0u64; 3]);
    let mut onsets = Vec::new();
    for seq in ours.clone().filter(|s| !s.healthy) {
        let cell = match snr(seq) {
            None => 0,
            Some(-4) => 1,
            Some(-8) => 2,
            _ => continue,
        };
        let mut d = fresh();
        let changes = run(&mut d, data.window, seq, uncertain(seq.fold), 0);
        let truth = data.classes.iter().position(|c| *c == seq.true_class);
        faulty[cell] += 1;
        if d.state().condition == Condition::Fault && d.state().fault_class == truth {
            right[cell] += 1;
        }
        if let Some((end, _, _)) = changes.iter().find(|c| c.1 == Condition::Fault) {
            onsets.push((*end + 1) as f64 / rate);
        }
    }
    // The healthy sequences of a fold and noise cell, one after another, make one long healthy stream.
    let mut false_onsets = 0u64;
    let mut healthy_samples = 0u64;
    let mut streams: Vec<(i32, &str, Option<i64>)> = ours
        .clone()
        .filter(|s| s.healthy)
        .map(|s| (s.fold, s.noise.as_str(), snr(s)))
        .collect();
    streams.sort();
    streams.dedup();
    for (fold, noise, cell) in streams {
        let mut d = fresh();
        let mut start = 0u64;
        for seq in ours
            .clone()
            .filter(|s| s.healthy && s.fold == fold && s.noise == noise && snr(s) == cell)
        {
            let changes = run(&mut d, data.window, seq, uncertain(fold), start);
            false_onsets += changes.iter().filter(|c| c.1 == Condition::Fault).count() as u64;
            let span = seq.first_sample.last().map_or(0, |l| l + data.hop);
            start += span;
            healthy_samples += span;
        }
    }
    onsets.sort_by(f64::total_cmp);
    let hours = healthy_samples as f64 / rate / 3600.0;
    Judged {
        right: [0, 1, 2].map(|i| right[i] as f64 / faulty[i].max(1) as f64),
        faulty,
        onset_median_s: percentile(&onsets, 50.0),
        onset_p90_s: percentile(&onsets, 90.0),
        false_onsets,
        healthy_hours: hours,
        false_onsets_per_hour: if hours > 0.0 {
            false_onsets as f64 / hours
        } else {
            f64::NAN
        },
    }
}

pub fn read(path: &PathBuf) -> anyhow::Result<Recorded> {
    let file = std::fs::File::open(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; make it with `make condition-study`",
            path.display()
        )
    })?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text)?;
    Ok(serde_json::from_str(&text)?)
}

pub fn run_study(args: StudyArgs) -> anyhow::Result<String> {
    let data = read(&args.windows)?;
    let rows = table(&data, &grid());
    if args.json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let count = |model: &str, healthy: bool| {
        let seqs = data
            .sequences
            .iter()
            .filter(|s| s.model == model && s.healthy == healthy);
        (
            seqs.clone().count(),
            seqs.map(|s| s.label.len()).sum::<usize>(),
        )
    };
    let (fold_faulty, _) = count("fold", false);
    let (_, fold_healthy) = count("fold", true);
    let (_, shipped_healthy) = count("shipped", true);
    let first = rows.first();
    let mut out = format!(
        "Fold models on held-out loads: {fold_faulty} faulty sequences, {fold_healthy} healthy windows ({:.3} h of \
         healthy signal, noise draws over 3 distinct windows a fold). Shipped model{}: {shipped_healthy} healthy \
         windows ({:.3} h, noise draws over the one ~5 s healthy recording at its true rate).\n\n\
         | half-life s | on share | on delay s | folds: ends FAULT, right class (clean / -4 / -8 dB) | onset s median (p90) \
         | false onsets / sensor-h, folds (n) | shipped model: false onsets / sensor-h (n) |\n\
         |---|---|---|---|---|---|---|\n",
        first.map_or(0.0, |r| r.folds.healthy_hours),
        data.shipped
            .as_ref()
            .and_then(|s| s.version.as_deref())
            .map_or(String::new(), |v| format!(" {v}")),
        first.map_or(0.0, |r| r.shipped.healthy_hours),
    );
    let defaults = Settings::default();
    for r in &rows {
        let chosen = r.half_life_s == defaults.half_life_s
            && r.on_share == defaults.on_share
            && r.on_delay_s == defaults.on_delay_s;
        let mark = if chosen { " **(default)**" } else { "" };
        let f = &r.folds;
        out += &format!(
            "| {}{mark} | {} | {} | {:.1} / {:.1} / {:.1}% | {:.1} ({:.1}) | {:.0} ({}) | {:.0} ({}) |\n",
            r.half_life_s,
            r.on_share,
            r.on_delay_s,
            100.0 * f.right[0],
            100.0 * f.right[1],
            100.0 * f.right[2],
            f.onset_median_s,
            f.onset_p90_s,
            f.false_onsets_per_hour,
            f.false_onsets,
            r.shipped.false_onsets_per_hour,
            r.shipped.false_onsets,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(fold: i32, healthy: bool, labels: Vec<usize>, snr: Option<f64>) -> Sequence {
        Sequence {
            fold,
            model: "fold".into(),
            recording: "r".into(),
            true_class: if healthy { "normal" } else { "inner" }.into(),
            healthy,
            noise: if snr.is_some() { "gaussian" } else { "clean" }.into(),
            snr_db: snr,
            first_sample: (0..labels.len() as u64).map(|i| i * 4096).collect(),
            confidence: vec![0.99; labels.len()],
            label: labels,
        }
    }

    #[test]
    fn the_table_counts_right_faults_onsets_and_false_alarms() {
        let data = Recorded {
            classes: vec!["normal".into(), "inner".into(), "outer".into()],
            window: 8192,
            hop: 4096,
            sample_rate_hz: 12_000.0,
            folds: vec![Fold {
                heldout_load: 0,
                uncertain_below: Some(0.5),
            }],
            shipped: None,
            sequences: vec![
                seq(0, false, vec![1; 30], None),
                seq(0, false, vec![2; 30], Some(-8.0)),
                seq(0, true, vec![0; 30], None),
                // A healthy stretch the model gets wrong for 4 s: a false onset at a short delay.
                seq(
                    0,
                    true,
                    [vec![0; 10], vec![1; 12], vec![0; 30]].concat(),
                    Some(-8.0),
                ),
            ],
        };
        let rows = table(&data, &[Settings::default()]);
        let r = &rows[0].folds;
        assert_eq!(r.right[0], 1.0, "the inner-race sequence ends FAULT/inner");
        assert_eq!(
            r.right[2], 0.0,
            "the outer-race one ends FAULT/outer, not inner: wrong class"
        );
        assert!(r.onset_median_s >= 2.0 && r.onset_median_s < 4.0, "{r:?}");
        assert_eq!(r.false_onsets, 1, "{r:?}");
        assert!(r.healthy_hours > 0.0);
        assert!(
            rows[0].shipped.healthy_hours == 0.0,
            "no shipped-model sequence here"
        );
    }
}
