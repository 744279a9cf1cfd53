//! The model card: what the server reads to know the model's input, preprocessing, outputs and classes.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::StartupError;

#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub architecture: serde_json::Value,
    pub onnx: String,
    pub sha256: String,
    pub input: CardInput,
    pub normalization: String,
    pub outputs: CardOutputs,
    pub classes: Vec<String>,
    pub default_hop: usize,
    /// Width of the `shrinkage` output: the model's residual shrinkage units.
    #[serde(default)]
    pub shrinkage_units: Option<usize>,
    /// The input the model was trained on and accepts; without it only flat windows and non-finite outputs are
    /// flagged.
    #[serde(default)]
    pub input_range: Option<InputRange>,
    /// How far to trust a class: the softmax temperature fitted on held-out operating conditions, and the
    /// confidence below which a window is reported as uncertain.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// How far a window is from the training data, read from the `ood_score` output: above `uncertain_above` a
    /// class is reported as uncertain.
    #[serde(default)]
    pub ood: Option<Ood>,
    /// A `.npz` file beside the card with `windows` and the `logits` the exported graph gave them: checked before
    /// the version serves.
    #[serde(default)]
    pub golden: Option<String>,
}

/// The model's input contract: windows outside it are flagged, not classified.
#[derive(Debug, Clone, Deserialize)]
pub struct InputRange {
    /// Unit of the samples the model was trained on (e.g. `g`).
    pub unit: String,
    /// Per-window RMS (about the window's mean) accepted, [low, high].
    pub rms_accepted: [f32; 2],
    /// Largest |sample| accepted.
    pub peak_accepted: f32,
    /// A window with this many samples exactly at its maximum (or minimum) is clipped.
    #[serde(default = "default_clip_samples")]
    pub clip_samples: usize,
    /// Largest crest factor (peak about the mean over the RMS) accepted; absent, impulses are not checked.
    #[serde(default)]
    pub crest_accepted: Option<f32>,
}

fn default_clip_samples() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize)]
pub struct Calibration {
    /// Probabilities are softmax(logits / temperature).
    #[serde(default = "one")]
    pub temperature: f32,
    /// A class whose (calibrated) probability is below this is reported as uncertain.
    #[serde(default)]
    pub uncertain_below: Option<f32>,
}

fn one() -> f32 {
    1.0
}

/// The out-of-distribution threshold for the model's `ood_score` output (higher = further from the training data).
#[derive(Debug, Clone, Deserialize)]
pub struct Ood {
    /// A window whose score is above this is reported as uncertain; absent, scores are reported but never judged.
    #[serde(default)]
    pub uncertain_above: Option<f32>,
    /// How the score and threshold were made, for people.
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CardInput {
    pub name: String,
    pub channels: usize,
    pub window: usize,
    pub sample_rate_hz: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CardOutputs {
    pub logits: String,
    #[serde(default)]
    pub shrinkage: Option<String>,
    /// Per-window distance from the training data, `[batch]` or `[batch, 1]`.
    #[serde(default)]
    pub ood_score: Option<String>,
}

/// What the server must do to each window before inference, as the card's `normalization` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// The graph takes raw samples.
    None,
    /// Subtract the window's mean and divide by its standard deviation, per channel.
    Standardize,
}

impl Normalization {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "standardize" | "standardise" | "zscore" | "z-score" => Some(Self::Standardize),
            _ => None,
        }
    }

    /// Applies the normalization in place to one window of `channels`-interleaved samples.
    pub fn apply(self, window: &mut [f32], channels: usize) {
        if self == Self::None || channels == 0 {
            return;
        }
        for c in 0..channels {
            let n = (window.len() / channels) as f64;
            let mean = window
                .iter()
                .skip(c)
                .step_by(channels)
                .map(|&x| x as f64)
                .sum::<f64>()
                / n;
            let var = window
                .iter()
                .skip(c)
                .step_by(channels)
                .map(|&x| (x as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let inv = 1.0 / (var + 1e-8).sqrt();
            for x in window.iter_mut().skip(c).step_by(channels) {
                *x = ((*x as f64 - mean) * inv) as f32;
            }
        }
    }
}

/// A card with its ONNX bytes, checked against the card's sha256.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub card: ModelCard,
    pub card_json: String,
    pub onnx: Vec<u8>,
    pub normalization: Normalization,
    /// The card's golden file, relative to the card resolved.
    pub golden: Option<std::path::PathBuf>,
}

impl LoadedModel {
    /// Reads the card at `path` and the ONNX file it names (relative to the card), and checks the checksum.
    pub fn load(path: &Path) -> Result<Self, StartupError> {
        let card_json = std::fs::read_to_string(path).map_err(|source| StartupError::CardRead {
            path: path.into(),
            source,
        })?;
        let card: ModelCard =
            serde_json::from_str(&card_json).map_err(|source| StartupError::CardParse {
                path: path.into(),
                source,
            })?;
        let invalid = |reason: String| StartupError::CardInvalid {
            path: path.into(),
            reason,
        };
        let normalization = Normalization::parse(&card.normalization).ok_or_else(|| {
            invalid(format!(
                "normalization `{}` is not one of: none, standardize",
                card.normalization
            ))
        })?;
        if card.input.window == 0 || card.input.channels == 0 {
            return Err(invalid(
                "input.window and input.channels must be above 0".into(),
            ));
        }
        if !(card.input.sample_rate_hz.is_finite() && card.input.sample_rate_hz > 0.0) {
            return Err(invalid(format!(
                "input.sample_rate_hz = {} is not a rate",
                card.input.sample_rate_hz
            )));
        }
        if card.default_hop == 0 {
            return Err(invalid("default_hop must be above 0".into()));
        }
        if card.classes.is_empty() {
            return Err(invalid("classes is empty".into()));
        }
        if let Some(r) = &card.input_range {
            let [lo, hi] = r.rms_accepted;
            if !(lo.is_finite() && hi.is_finite() && 0.0 < lo && lo < hi) {
                return Err(invalid(format!(
                    "input_range.rms_accepted = [{lo}, {hi}] must be two finite numbers, 0 < low < high"
                )));
            }
            if !(r.peak_accepted.is_finite() && r.peak_accepted > 0.0) || r.clip_samples < 2 {
                return Err(invalid(
                    "input_range.peak_accepted must be finite and above 0, clip_samples at least 2"
                        .into(),
                ));
            }
        }
        if let Some(c) = &card.calibration {
            if !(c.temperature.is_finite() && c.temperature > 0.0) {
                return Err(invalid(format!(
                    "calibration.temperature = {} must be finite and above 0",
                    c.temperature
                )));
            }
            if let Some(t) = c.uncertain_below
                && !(0.0..=1.0).contains(&t)
            {
                return Err(invalid(format!(
                    "calibration.uncertain_below = {t} must be a probability"
                )));
            }
        }
        if let Some(t) = card.ood.as_ref().and_then(|o| o.uncertain_above) {
            if !t.is_finite() {
                return Err(invalid(format!(
                    "ood.uncertain_above = {t} must be a finite number"
                )));
            }
            // A threshold with no score to compare would silently judge nothing.
            if card.outputs.ood_score.is_none() {
                return Err(invalid(
                    "ood.uncertain_above is set but outputs.ood_score names no model output: add \
                     \"ood_score\": \"<the graph's output name>\" to outputs, or remove ood.uncertain_above"
                        .into(),
                ));
            }
        }
        let onnx_path = path.parent().unwrap_or(Path::new(".")).join(&card.onnx);
        let onnx = std::fs::read(&onnx_path).map_err(|source| StartupError::ModelRead {
            path: onnx_path.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&onnx));
        if !actual.eq_ignore_ascii_case(card.sha256.trim()) {
            return Err(StartupError::Checksum {
                path: onnx_path,
                expected: card.sha256.clone(),
                actual,
            });
        }
        let golden = card
            .golden
            .as_ref()
            .map(|g| path.parent().unwrap_or(Path::new(".")).join(g));
        Ok(Self {
            card,
            card_json,
            onnx,
            normalization,
            golden,
        })
    }

    pub fn window(&self) -> usize {
        self.card.input.window
    }

    pub fn channels(&self) -> usize {
        self.card.input.channels
    }

    /// The unit of the samples (`input_range.unit`, e.g. `g`); "g" when the card does not say, as every CWRU-style
    /// accelerometer model is trained in g.
    pub fn unit(&self) -> &str {
        self.card
            .input_range
            .as_ref()
            .map_or("g", |r| r.unit.as_str())
    }

    /// Model-rate samples per window, all channels interleaved.
    pub fn window_values(&self) -> usize {
        self.card.input.window * self.card.input.channels
    }

    /// Softmax temperature (1 without calibration).
    pub fn temperature(&self) -> f32 {
        self.card
            .calibration
            .as_ref()
            .map_or(1.0, |c| c.temperature)
    }

    /// Confidence below which a class is reported as uncertain, if the card sets one.
    pub fn uncertain_below(&self) -> Option<f32> {
        self.card
            .calibration
            .as_ref()
            .and_then(|c| c.uncertain_below)
    }

    /// OOD score above which a class is reported as uncertain, if the card sets one (only with an `ood_score`
    /// output: checked at load).
    pub fn uncertain_above(&self) -> Option<f32> {
        self.card.ood.as_ref().and_then(|o| o.uncertain_above)
    }

    pub fn architecture_name(&self) -> String {
        match &self.card.architecture {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(map) => map
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("unknown")
                .to_owned(),
            _ => "unknown".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the shipped card, changed by `edit`, beside a link to the shipped model; loads it.
    fn load_edited(
        tag: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<LoadedModel, StartupError> {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/drsn_cw_cwru.json");
        let mut card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
        edit(&mut card);
        // A folder of its own per call: tests run in parallel, and two may edit under the same tag.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("drsn-card-{tag}-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // An absolute path: the card names its model relative to itself, and joining keeps an absolute one.
        card["onnx"] = shipped
            .with_file_name("drsn_cw_cwru.onnx")
            .to_str()
            .unwrap()
            .into();
        let path = dir.join("card.json");
        std::fs::write(&path, card.to_string()).unwrap();
        let loaded = LoadedModel::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    fn reason(result: Result<LoadedModel, StartupError>) -> String {
        match result {
            Err(StartupError::CardInvalid { reason, .. }) => reason,
            other => panic!("expected CardInvalid, got {other:?}"),
        }
    }

    /// A card as older models had it: no OOD output, no threshold.
    fn without_ood(c: &mut serde_json::Value) {
        if let Some(outputs) = c["outputs"].as_object_mut() {
            outputs.remove("ood_score");
        }
        if let Some(card) = c.as_object_mut() {
            card.remove("ood");
        }
    }

    #[test]
    fn the_shipped_card_judges_out_of_distribution_windows_and_older_cards_still_load() {
        let model = load_edited("shipped", |_| {}).unwrap();
        assert_eq!(model.card.outputs.ood_score.as_deref(), Some("ood_score"));
        let threshold = model.uncertain_above().expect("a threshold");
        assert!(threshold.is_finite() && threshold > 0.0, "{threshold}");
        let older = load_edited("older", without_ood).unwrap();
        assert!(older.card.outputs.ood_score.is_none() && older.card.ood.is_none());
        assert_eq!(older.uncertain_above(), None);
    }

    #[test]
    fn an_ood_threshold_with_its_output_is_read_and_other_keys_ignored() {
        let model = load_edited("ood", |c| {
            c["outputs"]["ood_score"] = "ood_score".into();
            c["ood"] = serde_json::json!({
                "uncertain_above": 23.4, "method": "Mahalanobis on the pooled features", "fpr_at_95": 0.03
            });
        })
        .unwrap();
        assert_eq!(model.card.outputs.ood_score.as_deref(), Some("ood_score"));
        assert_eq!(model.uncertain_above(), Some(23.4));
        let method = model.card.ood.as_ref().and_then(|o| o.method.as_deref());
        assert_eq!(method, Some("Mahalanobis on the pooled features"));
        // The output without a threshold: scores reported, nothing judged.
        let model = load_edited("ood-no-threshold", |c| {
            without_ood(c);
            c["outputs"]["ood_score"] = "ood_score".into();
        })
        .unwrap();
        assert_eq!(model.uncertain_above(), None);
    }

    #[test]
    fn an_ood_threshold_without_the_output_says_what_to_add() {
        let text = reason(load_edited("ood-no-output", |c| {
            without_ood(c);
            c["ood"] = serde_json::json!({"uncertain_above": 23.4});
        }));
        assert!(
            text.contains("ood.uncertain_above") && text.contains("outputs.ood_score"),
            "{text}"
        );
    }

    type Edit = fn(&mut serde_json::Value);

    #[test]
    fn the_card_schema_and_the_server_agree_on_what_a_card_is() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |p: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
        };
        let schema = jsonschema::validator_for(&read("models/card.schema.json")).unwrap();
        let shipped = read("models/drsn_cw_cwru.json");
        let cases: [(&str, Edit, bool); 12] = [
            ("shipped", |_| {}, true),
            ("older", without_ood, true),
            ("z-score", |c| c["normalization"] = "Z-Score".into(), true),
            (
                "no-classes",
                |c| drop(c.as_object_mut().unwrap().remove("classes")),
                false,
            ),
            (
                "empty-classes",
                |c| c["classes"] = serde_json::json!([]),
                false,
            ),
            (
                "cold",
                |c| c["calibration"]["temperature"] = 0.0.into(),
                false,
            ),
            (
                "not-a-probability",
                |c| c["calibration"]["uncertain_below"] = 1.5.into(),
                false,
            ),
            (
                "clip-1",
                |c| c["input_range"]["clip_samples"] = 1.into(),
                false,
            ),
            ("window-0", |c| c["input"]["window"] = 0.into(), false),
            ("hop-0", |c| c["default_hop"] = 0.into(), false),
            (
                "threshold-without-score",
                |c| drop(c["outputs"].as_object_mut().unwrap().remove("ood_score")),
                false,
            ),
            ("minmax", |c| c["normalization"] = "minmax".into(), false),
        ];
        for (tag, edit, ok) in cases {
            let mut card = shipped.clone();
            edit(&mut card);
            assert_eq!(schema.is_valid(&card), ok, "{tag}: the schema");
            assert_eq!(load_edited(tag, edit).is_ok(), ok, "{tag}: the server");
        }
    }

    #[test]
    fn a_non_finite_ood_threshold_is_refused() {
        // 1e300 is a JSON number, but no f32: it reads as infinity.
        let text = reason(load_edited("ood-infinite", |c| {
            c["outputs"]["ood_score"] = "ood_score".into();
            c["ood"] = serde_json::json!({"uncertain_above": 1e300});
        }));
        assert!(text.contains("finite"), "{text}");
    }
}
