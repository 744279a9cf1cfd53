//! The models this replica serves: each version's [`Pipeline`] by model name and version, and which one a request
//! gets when it names none (the default model; a model's newest version). One stream, one version, from its `open`
//! to its end.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{ServeError, quote};
use crate::model::repository::compare_versions;
use crate::pipeline::{Gate, Pipeline};

/// A model name's versions, newest last.
type Versions = Vec<Arc<Pipeline>>;

pub struct Models {
    by_name: BTreeMap<String, Versions>,
    default: String,
    /// The default model's newest version.
    newest_default: Arc<Pipeline>,
    gate: Arc<Gate>,
}

impl Models {
    /// `pipelines` share `gate`; `default` names the model for requests that name none (`None`: the only model).
    /// Fails when two pipelines serve the same name and version, or the default is not among them.
    pub fn new(
        pipelines: Vec<Arc<Pipeline>>,
        default: Option<&str>,
        gate: Arc<Gate>,
    ) -> Result<Self, String> {
        let mut by_name: BTreeMap<String, Versions> = BTreeMap::new();
        for p in pipelines {
            by_name
                .entry(p.model().card.name.clone())
                .or_default()
                .push(p);
        }
        for (name, versions) in &mut by_name {
            versions
                .sort_by(|a, b| compare_versions(&a.model().card.version, &b.model().card.version));
            if let Some(w) = versions
                .windows(2)
                .find(|w| w[0].model().card.version == w[1].model().card.version)
            {
                return Err(format!(
                    "model {name} version {} is there twice",
                    w[0].model().card.version
                ));
            }
        }
        let default = match default {
            Some(d) if by_name.contains_key(d) => d.to_owned(),
            Some(d) => {
                return Err(format!(
                    "the default model {} is not among those served: {}",
                    quote(d),
                    by_name.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            None if by_name.len() == 1 => by_name.keys().next().cloned().unwrap_or_default(),
            None => {
                return Err(format!(
                    "{} models are served ({}): name the one for requests that name none with --default-model",
                    by_name.len(),
                    by_name.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        };
        let newest_default = by_name
            .get(&default)
            .and_then(|v| v.last())
            .cloned()
            .ok_or_else(|| "no model to serve".to_owned())?;
        Ok(Self {
            by_name,
            default,
            newest_default,
            gate,
        })
    }

    /// The pipeline for `name` (empty: the default model) at `version` (empty: its newest).
    pub fn get(&self, name: &str, version: &str) -> Result<&Arc<Pipeline>, ServeError> {
        let model = if name.is_empty() { &self.default } else { name };
        let found = self.by_name.get(model).and_then(|versions| {
            if version.is_empty() {
                versions.last()
            } else {
                versions.iter().find(|p| p.model().card.version == version)
            }
        });
        found.ok_or_else(|| ServeError::ModelNotFound {
            asked: if version.is_empty() {
                quote(model)
            } else {
                format!("{} version {}", quote(model), quote(version))
            },
            served: self.served(),
        })
    }

    /// The default model's newest version.
    pub fn default_pipeline(&self) -> &Arc<Pipeline> {
        &self.newest_default
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every version of every model, by name then version (oldest first).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Pipeline>> {
        self.by_name.values().flatten()
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Whether new work is taken: not draining, and every model's inference workers alive.
    pub fn ready(&self) -> bool {
        self.all().all(|p| p.ready())
    }

    /// What is served, for an error message: `name (versions a, b)`, bounded.
    fn served(&self) -> String {
        let mut text = self
            .by_name
            .iter()
            .map(|(name, versions)| {
                let v: Vec<&str> = versions
                    .iter()
                    .map(|p| p.model().card.version.as_str())
                    .collect();
                format!("{name} (version {})", v.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        if text.len() > 400 {
            let cut = (0..=400)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}
