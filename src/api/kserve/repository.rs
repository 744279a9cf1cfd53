//! The model repository extension (Triton's and MLServer's index, load and unload), the same for both front doors:
//! what the index lists, which load parameters are taken, and why a call changed nothing.

use crate::api::kserve::{V2Error, V2Models};
use crate::pipeline::models::{Role, Roles};
use crate::pipeline::shadow::Tally;

/// One model version in the index.
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY` or `UNAVAILABLE`, as Triton says.
    pub state: &'static str,
    /// What the version is to its model, in words.
    pub reason: String,
    /// For a shadow: the version it shadows and what the two said so far.
    pub shadow: Option<(String, Tally)>,
}

/// Every model version served, by name then version; with `ready_only`, only those ready (Triton's `ready` flag).
pub fn index(models: &V2Models, ready_only: bool) -> Vec<IndexEntry> {
    models
        .all()
        .iter()
        .filter(|(v, _)| !ready_only || v.ready())
        .map(|(v, role)| {
            let card = &v.model().card;
            IndexEntry {
                name: card.name.clone(),
                version: card.version.clone(),
                state: if v.ready() { "READY" } else { "UNAVAILABLE" },
                reason: reason(role),
                shadow: match role {
                    Role::Shadow { of, tally } => Some((of.clone(), *tally)),
                    _ => None,
                },
            }
        })
        .collect()
}

/// A version's role in words (the extension leaves `reason` to the server).
fn reason(role: &Role) -> String {
    match role {
        Role::Serving => "serving: streams and requests that name no version get it".into(),
        Role::Loaded => "loaded: only streams and requests that name this version get it".into(),
        Role::Shadow { of, tally } => {
            let agreement = tally
                .agreement()
                .map_or("no window judged by both yet".into(), |a| {
                    format!("{:.1}% agreement", a * 100.0)
                });
            format!(
                "shadow of version {of}: {} windows agreed, {} disagreed, {} unscored, {} skipped for want of \
                 spare capacity ({agreement})",
                tally.agree, tally.disagree, tally.unscored, tally.skipped
            )
        }
    }
}

/// A load or unload parameter as a front door carries it: a string, or another kind of value described.
pub type Param = Result<String, String>;

/// The roles a load asks for: `serve` ("<version>" or "newest") and `shadow` ("<version>" or "none"), both
/// optional. A model cannot be uploaded here (Triton's `config` and `file:` parameters): versions come from the
/// repository folder only, and an unknown parameter is refused rather than ignored.
pub fn load_roles(params: impl IntoIterator<Item = (String, Param)>) -> Result<Roles, V2Error> {
    let mut roles = Roles::default();
    for (key, value) in params {
        let clear = match key.as_str() {
            "serve" => "newest",
            "shadow" => "none",
            "config" => {
                return Err(refused(
                    "this server loads versions from its repository folder only: put the \
                 version's card and ONNX file in DIR/NAME/VERSION/ and load NAME without `config`",
                ));
            }
            k if k.starts_with("file:") => {
                return Err(refused(
                    "this server does not take model files over the \
                 API: put the version's card and ONNX file in DIR/NAME/VERSION/ of its --model-repository",
                ));
            }
            other => {
                return Err(refused(format!(
                    "unknown load parameter {other:?}: the parameters are `serve` (a version, or \"newest\") \
                     and `shadow` (a version, or \"none\")"
                )));
            }
        };
        let role = match value {
            Ok(v) if v.is_empty() || v == clear => None,
            Ok(v) => Some(v),
            Err(other) => {
                return Err(refused(format!(
                    "parameter {key} must be a version string (or \"{clear}\"), not {other}"
                )));
            }
        };
        match key.as_str() {
            "serve" => roles.serve = Some(role),
            _ => roles.shadow = Some(role),
        }
    }
    Ok(roles)
}

fn refused(why: impl Into<String>) -> V2Error {
    V2Error::Control(why.into())
}

/// Loads the versions of `name` in the repository that are not served yet, then applies `roles`; what changed.
pub async fn load(models: &V2Models, name: &str, roles: Roles) -> Result<String, V2Error> {
    let control = models.control().ok_or(V2Error::ControlOff)?;
    control.load(name, roles).await.map_err(V2Error::Control)
}

/// Unloads every version of `name` (their streams end with a resume point); what changed.
pub async fn unload(models: &V2Models, name: &str) -> Result<String, V2Error> {
    let control = models.control().ok_or(V2Error::ControlOff)?;
    control.unload(name).await.map_err(V2Error::Control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, Param)]) -> Vec<(String, Param)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn load_parameters_set_or_clear_each_role_and_refuse_the_rest() {
        let roles = load_roles(params(&[
            ("serve", Ok("2.1.0".into())),
            ("shadow", Ok("none".into())),
        ]))
        .unwrap_or_default();
        assert_eq!(roles.serve, Some(Some("2.1.0".into())));
        assert_eq!(roles.shadow, Some(None));
        let roles = load_roles(params(&[("serve", Ok("newest".into()))])).unwrap_or_default();
        assert_eq!((roles.serve, roles.shadow), (Some(None), None));
        let roles = load_roles(Vec::new()).unwrap_or_default();
        assert_eq!((roles.serve, roles.shadow), (None, None));
        for (bad, says) in [
            (
                params(&[("config", Ok("{}".into()))]),
                "repository folder only",
            ),
            (
                params(&[("file:1/model.onnx", Err("bytes".into()))]),
                "model files",
            ),
            (
                params(&[("serve", Err("true".into()))]),
                "must be a version string",
            ),
            (
                params(&[("sevre", Ok("1".into()))]),
                "unknown load parameter \"sevre\"",
            ),
        ] {
            match load_roles(bad) {
                Err(err @ V2Error::Control(_)) => assert!(err.to_string().contains(says), "{err}"),
                other => panic!("{says}: {:?}", other.map(|r| (r.serve, r.shadow))),
            }
        }
    }
}
