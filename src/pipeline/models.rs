//! The models this replica serves: each version's [`Pipeline`] by model name and version, and which one a request
//! gets when it names none (the default model; a model's serving version: the one pinned, else its newest).
//! Versions come and go while the server runs (loaded, unloaded): a request takes the table as it is when it
//! arrives, and one stream keeps one version from its `open` to its end. A model may also have a shadow: a
//! candidate version that scores its serving version's stream windows ([`crate::pipeline::shadow`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::error::{ServeError, quote};
use crate::model::repository::compare_versions;
use crate::pipeline::{Gate, Pipeline};

/// A model name's versions, oldest first.
type Versions = Vec<Arc<Pipeline>>;

/// One model: its versions and their roles.
#[derive(Default)]
struct Entry {
    versions: Versions,
    /// The version requests naming none get; `None`: the newest.
    pinned: Option<String>,
    /// The version scoring the serving one's windows, if any.
    shadow: Option<String>,
}

impl Entry {
    fn find(&self, version: &str) -> Option<&Arc<Pipeline>> {
        self.versions
            .iter()
            .find(|p| p.model().card.version == version)
    }

    fn serving(&self) -> Option<&Arc<Pipeline>> {
        match &self.pinned {
            Some(v) => self.find(v).or(self.versions.last()),
            None => self.versions.last(),
        }
    }

    /// Gives the serving version its shadow and every other version none; a role whose version is gone is dropped.
    fn arrange(&mut self) -> Result<(), String> {
        if self
            .pinned
            .as_deref()
            .is_some_and(|v| self.find(v).is_none())
        {
            self.pinned = None;
        }
        if self
            .shadow
            .as_deref()
            .is_some_and(|v| self.find(v).is_none())
        {
            self.shadow = None;
        }
        let serving = self.serving().cloned();
        let candidate = self
            .shadow
            .as_deref()
            .and_then(|v| self.find(v))
            .filter(|c| serving.as_ref().is_some_and(|s| !Arc::ptr_eq(s, c)))
            .cloned();
        for p in &self.versions {
            let is_serving = serving.as_ref().is_some_and(|s| Arc::ptr_eq(s, p));
            match (&candidate, is_serving) {
                (Some(c), true) => {
                    let same = p
                        .shadow()
                        .is_some_and(|s| s.candidate() == c.model().card.version);
                    if !same {
                        p.set_shadow(Some(c))?;
                    }
                }
                _ => p.set_shadow(None)?,
            }
        }
        Ok(())
    }
}

/// What a version is to its model.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Requests and streams that name no version get it.
    Serving,
    /// It scores the serving version's stream windows: what the two said so far.
    Shadow {
        of: String,
        tally: crate::pipeline::shadow::Tally,
    },
    /// Only requests and streams that name it get it.
    Loaded,
}

/// A change of roles: which version serves, which shadows it.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// `Some(None)`: the newest serves; `Some(Some(v))`: `v` serves; `None`: unchanged.
    pub serve: Option<Option<String>>,
    /// `Some(None)`: no shadow; `Some(Some(v))`: `v` shadows the serving version; `None`: unchanged.
    pub shadow: Option<Option<String>>,
}

pub struct Models {
    table: RwLock<BTreeMap<String, Entry>>,
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
        let mut table: BTreeMap<String, Entry> = BTreeMap::new();
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The pipeline for `name` (empty: the default model) at `version` (empty: its serving version).
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<Pipeline>, ServeError> {
        let model = if name.is_empty() { &self.default } else { name };
        let table = self.read();
        let found = table.get(model).and_then(|entry| {
            if version.is_empty() {
                entry.serving()
            } else {
                entry.find(version)
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

    /// Serves one more version; new streams and requests that name no version get it if it is the newest and no
    /// version is pinned.
    pub fn insert(&self, pipeline: Arc<Pipeline>) -> Result<(), String> {
        let mut table = self.write();
        let name = pipeline.model().card.name.clone();
        add(&mut table, pipeline)?;
        rearrange(&mut table, &name);
        Ok(())
    }

    /// Changes which version of `name` serves and which shadows it; nothing changes when either is not served or
    /// the shadow cannot read the serving version's windows. Returns the roles as they now are.
    pub fn set_roles(&self, name: &str, roles: &Roles) -> Result<String, String> {
        let mut table = self.write();
        let names = served(&table);
        let entry = table
            .get_mut(name)
            .ok_or_else(|| format!("model {} is not served; served: {names}", quote(name)))?;
        for v in [&roles.serve, &roles.shadow]
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.find(v).is_none() {
                return Err(format!(
                    "model {} has no version {} loaded; served: {names}",
                    quote(name),
                    quote(v)
                ));
            }
        }
        let before = (entry.pinned.clone(), entry.shadow.clone());
        if let Some(serve) = &roles.serve {
            entry.pinned.clone_from(serve);
        }
        if let Some(shadow) = &roles.shadow {
            entry.shadow.clone_from(shadow);
        }
        if let Err(why) = entry.arrange() {
            (entry.pinned, entry.shadow) = before;
            let _ = entry.arrange();
            return Err(why);
        }
        Ok(describe(entry))
    }

    /// The roles of `name`'s versions, to set back with [`Models::set_roles`].
    pub fn roles(&self, name: &str) -> Roles {
        let table = self.read();
        let entry = table.get(name);
        Roles {
            serve: Some(entry.and_then(|e| e.pinned.clone())),
            shadow: Some(entry.and_then(|e| e.shadow.clone())),
        }
    }

    /// What `pipeline` is to its model now.
    pub fn role(&self, pipeline: &Arc<Pipeline>) -> Role {
        let table = self.read();
        let Some(entry) = table.get(&pipeline.model().card.name) else {
            return Role::Loaded;
        };
        let serving = entry.serving();
        if serving.is_some_and(|s| Arc::ptr_eq(s, pipeline)) {
            return Role::Serving;
        }
        match serving.and_then(|s| Some((s, s.shadow()?))) {
            Some((s, shadow)) if shadow.candidate() == pipeline.model().card.version => {
                Role::Shadow {
                    of: s.model().card.version.clone(),
                    tally: shadow.tally(),
                }
            }
            _ => Role::Loaded,
        }
    }

    /// Stops serving `name` at `version` (every version when empty) and returns what was removed; its streams go
    /// on until the caller retires it. The default model's last version cannot be removed.
    pub fn remove(&self, name: &str, version: &str) -> Result<Vec<Arc<Pipeline>>, String> {
        let mut table = self.write();
        let Some(entry) = table.get_mut(name) else {
            return Err(format!(
                "model {} is not served; served: {}",
                quote(name),
                served(&table)
            ));
        };
        let versions = &mut entry.versions;
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
            rearrange(&mut table, name);
        }
        for p in &gone {
            let _ = p.set_shadow(None);
        }
        Ok(gone)
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every version of every model, by name then version (oldest first).
    pub fn all(&self) -> Vec<Arc<Pipeline>> {
        self.read()
            .values()
            .flat_map(|e| e.versions.iter().cloned())
            .collect()
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Whether new work is taken: not draining, and every model's inference workers alive.
    pub fn ready(&self) -> bool {
        self.read()
            .values()
            .flat_map(|e| &e.versions)
            .all(|p| p.ready())
    }
}

fn order(a: &Arc<Pipeline>, b: &Arc<Pipeline>) -> std::cmp::Ordering {
    compare_versions(&a.model().card.version, &b.model().card.version)
}

/// After versions came or went: the serving version may have changed, so its shadow moves with it. A shadow that
/// cannot read the new serving version's windows is dropped, and said so.
fn rearrange(table: &mut BTreeMap<String, Entry>, name: &str) {
    let Some(entry) = table.get_mut(name) else {
        return;
    };
    if let Err(why) = entry.arrange() {
        tracing::warn!(model = %name, error = %why, "the shadow is dropped");
        entry.shadow = None;
        let _ = entry.arrange();
    }
}

/// The roles of a model's versions, for a person.
fn describe(entry: &Entry) -> String {
    let serving = entry
        .serving()
        .map_or(String::new(), |p| p.model().card.version.clone());
    let how = if entry.pinned.is_some() {
        "pinned"
    } else {
        "the newest"
    };
    match &entry.shadow {
        Some(s) if *s != serving => {
            format!("version {serving} serves ({how}); version {s} shadows it")
        }
        _ => format!("version {serving} serves ({how}); no shadow"),
    }
}

fn add(table: &mut BTreeMap<String, Entry>, p: Arc<Pipeline>) -> Result<(), String> {
    let card = &p.model().card;
    let versions = &mut table.entry(card.name.clone()).or_default().versions;
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
fn served(table: &BTreeMap<String, Entry>) -> String {
    let mut text = table
        .iter()
        .map(|(name, entry)| {
            let v: Vec<&str> = entry
                .versions
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
