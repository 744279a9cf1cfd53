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
    pub sequences: Vec<Sequence>,
}

#[derive(Debug, Deserialize)]
pub struct Fold {
    pub heldout_load: u32,
    pub uncertain_below: Option<f32>,
}

#[derive(Debug, Deserialize)]
pub struct Sequence {
    pub fold: u32,
    pub recording: String,
    pub true_class: String,
    pub healthy: bool,
    pub noise: String,
    pub snr_db: Option<f64>,
    pub first_sample: Vec<u64>,
    pub label: Vec<usize>,
    pub confidence: Vec<f32>,
}

/// What one setting did over every sequence of one kind.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub half_life_s: f64,
    pub on_share: f32,
    pub on_delay_s: f64,
    pub off_delay_s: f64,
    /// Faulty sequences (clean) ending FAULT with the right dominant class, and with noise at -4 / -8 dB.
    pub right_clean: f64,
    pub right_minus4: f64,
    pub right_minus8: f64,
    /// Seconds of signal to the first FAULT onset (median and 90th percentile over the faulty sequences with one).
    pub onset_median_s: f64,
    pub onset_p90_s: f64,
    /// FAULT onsets on healthy signal per sensor-hour, and the hours of healthy signal behind it.
    pub false_onsets_per_hour: f64,
    pub false_onsets: u64,
    pub healthy_hours: f64,
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
    let normal = healthy_class(&data.classes);
    let rate = data.sample_rate_hz;
    let fresh = |settings: Settings| {
        Debouncer::new(
            settings,
            normal,
            rate,
            ZoneLimits::default(),
            State::new(data.classes.len(), 0),
        )
    };
    let uncertain = |fold: u32| {
        data.folds
            .iter()
            .find(|f| f.heldout_load == fold)
            .and_then(|f| f.uncertain_below)
    };
    grid.iter()
        .map(|&settings| {
            let (mut right, mut total) = ([0u64; 3], [0u64; 3]);
            let mut onsets = Vec::new();
            for seq in data.sequences.iter().filter(|s| !s.healthy) {
                let cell = match seq.snr_db.map(|s| s.round() as i64) {
                    None => 0,
                    Some(-4) => 1,
                    Some(-8) => 2,
                    _ => continue,
                };
                let mut d = fresh(settings);
                let changes = run(&mut d, data.window, seq, uncertain(seq.fold), 0);
                let truth = data.classes.iter().position(|c| *c == seq.true_class);
                let state = d.state();
                total[cell] += 1;
                if state.condition == Condition::Fault && state.fault_class == truth {
                    right[cell] += 1;
                }
                if let Some((end, _, _)) = changes.iter().find(|c| c.1 == Condition::Fault) {
                    onsets.push((*end + 1) as f64 / rate);
                }
            }
            // Healthy sequences of a fold, one after another, make one long healthy stream per fold and noise.
            let mut false_onsets = 0u64;
            let mut healthy_samples = 0u64;
            let mut streams: Vec<(u32, &str, Option<i64>)> = data
                .sequences
                .iter()
                .filter(|s| s.healthy)
                .map(|s| (s.fold, s.noise.as_str(), s.snr_db.map(|x| x.round() as i64)))
                .collect();
            streams.sort();
            streams.dedup();
            for (fold, noise, snr) in streams {
                let mut d = fresh(settings);
                let mut start = 0u64;
                for seq in data.sequences.iter().filter(|s| {
                    s.healthy
                        && s.fold == fold
                        && s.noise == noise
                        && s.snr_db.map(|x| x.round() as i64) == snr
                }) {
                    let changes = run(&mut d, data.window, seq, uncertain(fold), start);
                    false_onsets +=
                        changes.iter().filter(|c| c.1 == Condition::Fault).count() as u64;
                    let span = seq.first_sample.last().map_or(0, |l| l + data.hop);
                    start += span;
                    healthy_samples += span;
                }
            }
            onsets.sort_by(f64::total_cmp);
            let share = |i: usize| right[i] as f64 / total[i].max(1) as f64;
            let hours = healthy_samples as f64 / rate / 3600.0;
            Row {
                half_life_s: settings.half_life_s,
                on_share: settings.on_share,
                on_delay_s: settings.on_delay_s,
                off_delay_s: settings.off_delay_s,
                right_clean: share(0),
                right_minus4: share(1),
                right_minus8: share(2),
                onset_median_s: percentile(&onsets, 50.0),
                onset_p90_s: percentile(&onsets, 90.0),
                false_onsets_per_hour: false_onsets as f64 / hours.max(1e-12),
                false_onsets,
                healthy_hours: hours,
            }
        })
        .collect()
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
    let faulty = data.sequences.iter().filter(|s| !s.healthy).count();
    let healthy_windows: usize = data
        .sequences
        .iter()
        .filter(|s| s.healthy)
        .map(|s| s.label.len())
        .sum();
    let defaults = Settings::default();
    let mut out = format!(
        "{faulty} faulty sequences (held-out loads, {} folds), {healthy_windows} healthy windows ({:.3} h of \
         healthy signal, noise realisations of the same few seconds)\n\n\
         | half-life s | on share | on delay s | ends FAULT, right class: clean | -4 dB | -8 dB | onset s median | p90 | \
         false onsets / sensor-h (n) |\n|---|---|---|---|---|---|---|---|---|\n",
        data.folds.len(),
        rows.first().map_or(0.0, |r| r.healthy_hours),
    );
    for r in &rows {
        let chosen = r.half_life_s == defaults.half_life_s
            && r.on_share == defaults.on_share
            && r.on_delay_s == defaults.on_delay_s;
        let mark = if chosen { " **(default)**" } else { "" };
        out += &format!(
            "| {}{mark} | {} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1} | {:.1} | {:.1} ({}) |\n",
            r.half_life_s,
            r.on_share,
            r.on_delay_s,
            100.0 * r.right_clean,
            100.0 * r.right_minus4,
            100.0 * r.right_minus8,
            r.onset_median_s,
            r.onset_p90_s,
            r.false_onsets_per_hour,
            r.false_onsets
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(fold: u32, healthy: bool, labels: Vec<usize>, snr: Option<f64>) -> Sequence {
        Sequence {
            fold,
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
        let r = &rows[0];
        assert_eq!(
            r.right_clean, 1.0,
            "the inner-race sequence ends FAULT/inner"
        );
        assert_eq!(
            r.right_minus8, 0.0,
            "the outer-race one ends FAULT/outer, not inner: wrong class"
        );
        assert!(r.onset_median_s >= 2.0 && r.onset_median_s < 4.0, "{r:?}");
        assert_eq!(r.false_onsets, 1, "{r:?}");
        assert!(r.healthy_hours > 0.0);
    }
}
