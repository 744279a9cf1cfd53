//! The models this replica serves: each version's [`Pipeline`] by model name and version, and which one a request
//! gets when it names none (the default model; a model's newest version). Versions come and go while the server
//! runs (loaded, unloaded): a request takes the table as it is when it arrives, and one stream keeps one version
//! from its `open` to its end.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::error::{ServeError, quote};
use crate::model::repository::compare_versions;
use crate::pipeline::{Gate, Pipeline};

/// A model name's versions, oldest first.
type Versions = Vec<Arc<Pipeline>>;

pub struct Models {
    table: RwLock<BTreeMap<String, Versions>>,
    default: String,
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
        let mut table: BTreeMap<String, Versions> = BTreeMap::new();
        for p in pipelines {
            add(&mut table, p)?;
        }
        let names = || table.keys().cloned().collect::<Vec<_>>().join(", ");
        let default = match default {
            Some(d) if table.contains_key(d) => d.to_owned(),
            Some(d) => {
                return Err(format!(
                    "the default model {} is not among those served: {}",
                    quote(d),
                    names()
                ));
            }
            None if table.len() == 1 => names(),
            None if table.is_empty() => return Err("no model to serve".into()),
            None => {
                return Err(format!(
                    "{} models are served ({}): name the one for requests that name none with --default-model",
                    table.len(),
                    names()
                ));
            }
        };
        Ok(Self {
            table: RwLock::new(table),
            default,
            gate,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Versions>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Versions>> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The pipeline for `name` (empty: the default model) at `version` (empty: its newest).
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<Pipeline>, ServeError> {
        let model = if name.is_empty() { &self.default } else { name };
        let table = self.read();
        let found = table.get(model).and_then(|versions| {
            if version.is_empty() {
                versions.last()
            } else {
                versions.iter().find(|p| p.model().card.version == version)
            }
        });
        found.cloned().ok_or_else(|| ServeError::ModelNotFound {
            asked: if version.is_empty() {
                quote(model)
            } else {
                format!("{} version {}", quote(model), quote(version))
            },
            served: served(&table),
        })
    }

    /// Serves one more version; new streams and requests that name no version get it if it is the newest.
    pub fn insert(&self, pipeline: Arc<Pipeline>) -> Result<(), String> {
        add(&mut self.write(), pipeline)
    }

    /// Stops serving `name` at `version` (every version when empty) and returns what was removed; its streams go
    /// on until the caller retires it. The default model's last version cannot be removed.
    pub fn remove(&self, name: &str, version: &str) -> Result<Vec<Arc<Pipeline>>, String> {
        let mut table = self.write();
        let Some(versions) = table.get_mut(name) else {
            return Err(format!(
                "model {} is not served; served: {}",
                quote(name),
                served(&table)
            ));
        };
        let (gone, kept): (Versions, Versions) = std::mem::take(versions)
            .into_iter()
            .partition(|p| version.is_empty() || p.model().card.version == version);
        if gone.is_empty() || (kept.is_empty() && name == self.default) {
            let why = if gone.is_empty() {
                format!("model {} has no version {}", quote(name), quote(version))
            } else {
                format!(
                    "model {} is the default (--default-model): load another version before unloading this one",
                    quote(name)
                )
            };
            *versions = gone.into_iter().chain(kept).collect();
            versions.sort_by(order);
            return Err(why);
        }
        if kept.is_empty() {
            table.remove(name);
        } else {
            *versions = kept;
        }
        Ok(gone)
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every version of every model, by name then version (oldest first).
    pub fn all(&self) -> Vec<Arc<Pipeline>> {
        self.read().values().flatten().cloned().collect()
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Whether new work is taken: not draining, and every model's inference workers alive.
    pub fn ready(&self) -> bool {
        self.read().values().flatten().all(|p| p.ready())
    }
}

fn order(a: &Arc<Pipeline>, b: &Arc<Pipeline>) -> std::cmp::Ordering {
    compare_versions(&a.model().card.version, &b.model().card.version)
}

fn add(table: &mut BTreeMap<String, Versions>, p: Arc<Pipeline>) -> Result<(), String> {
    let card = &p.model().card;
    let versions = table.entry(card.name.clone()).or_default();
    if versions
        .iter()
        .any(|v| v.model().card.version == card.version)
    {
        return Err(format!(
            "model {} version {} is served already",
            card.name, card.version
        ));
    }
    versions.push(p);
    versions.sort_by(order);
    Ok(())
}

/// What is served, for an error message: `name (version a, b)`, bounded.
fn served(table: &BTreeMap<String, Versions>) -> String {
    let mut text = table
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
