//! The model repository on disk: `DIR/<model>/<version>/` holds one model card (`*.json`) and the ONNX file it
//! names, as Triton and MLServer lay theirs out. Scanning it is pure data: which versions exist, in order, and
//! whether each card says the name and version of the folders it sits in.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::error::StartupError;

/// Longest model or version name taken: names go into metric labels, topics and URLs.
pub const MAX_NAME: usize = 64;

/// One version of one model found in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub model: String,
    pub version: String,
    /// The version's model card.
    pub card: PathBuf,
}

/// Every version of every model under `dir`, by model name, then version (oldest first, see [`compare_versions`]).
/// Folders and files whose names start with `.` are skipped (editors' and `kubectl cp`'s leftovers); anything else
/// that is not a model folder with version folders, each with exactly one card, is refused by name.
pub fn scan(dir: &Path) -> Result<Vec<Entry>, StartupError> {
    let bad = |reason: String| {
        StartupError::Config(format!("--model-repository {}: {reason}", dir.display()))
    };
    let mut entries = Vec::new();
    for model_dir in folders(dir).map_err(&bad)? {
        let model = name_of(&model_dir).map_err(&bad)?;
        let versions = folders(&model_dir).map_err(&bad)?;
        if versions.is_empty() {
            return Err(bad(format!(
                "model {model} has no version folder (expected {model}/<version>/<card>.json)"
            )));
        }
        for version_dir in versions {
            let version = name_of(&version_dir).map_err(&bad)?;
            let card = card_in(&version_dir).map_err(&bad)?;
            entries.push(Entry {
                model: model.clone(),
                version,
                card,
            });
        }
    }
    if entries.is_empty() {
        return Err(bad(
            "no model folder in it (expected <model>/<version>/<card>.json)".into(),
        ));
    }
    entries.sort_by(|a, b| {
        a.model
            .cmp(&b.model)
            .then_with(|| compare_versions(&a.version, &b.version))
    });
    Ok(entries)
}

/// Orders versions as people number them: dot-separated parts compared as numbers where both are numbers (so 10
/// comes after 9, and 2.10.0 after 2.9.1), else as text; a version that is a prefix of another comes first.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Whether `name` may name a model or a version: 1 to [`MAX_NAME`] of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The sub-folders of `dir` (hidden ones skipped), sorted; a plain file beside them is refused.
fn folders(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let read = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if !path.is_dir() {
            return Err(format!(
                "{} is a file where a folder was expected (<model>/<version>/<card>.json)",
                path.display()
            ));
        }
        out.push(path);
    }
    out.sort();
    Ok(out)
}

fn name_of(dir: &Path) -> Result<String, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if valid_name(&name) {
        Ok(name)
    } else {
        Err(format!(
            "folder {} is not a usable model or version name (1 to {MAX_NAME} of A-Z a-z 0-9 . _ -)",
            dir.display()
        ))
    }
}

/// The one card (`*.json`) in a version folder.
fn card_in(dir: &Path) -> Result<PathBuf, String> {
    let read = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut cards: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    cards.sort();
    match cards.len() {
        1 => Ok(cards.remove(0)),
        0 => Err(format!("{} holds no model card (*.json)", dir.display())),
        _ => Err(format!(
            "{} holds {} .json files; a version folder holds exactly one model card",
            dir.display(),
            cards.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_numbers_where_they_are_numbers() {
        let mut v = vec![
            "10",
            "9",
            "2.10.0",
            "2.9.1",
            "2.9",
            "1.0.0-rc1",
            "1.0.0",
            "b",
            "a",
        ];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            [
                "1.0.0",
                "1.0.0-rc1",
                "2.9",
                "2.9.1",
                "2.10.0",
                "9",
                "10",
                "a",
                "b"
            ]
        );
    }

    #[test]
    fn names_fit_labels_urls_and_topics() {
        for ok in ["drsn_cw_cwru", "2.0.0", "fan-end", "A1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ä", "+", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    fn tree(files: &[&str]) -> PathBuf {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("drsn-repo-{}-{call}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for f in files {
            let path = dir.join(f);
            if f.ends_with('/') {
                std::fs::create_dir_all(&path).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, "{}").unwrap();
            }
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn refusal(files: &[&str]) -> String {
        let dir = tree(files);
        let err = scan(&dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        err
    }

    #[test]
    fn a_repository_lists_every_version_of_every_model_in_order() {
        let dir = tree(&[
            "pump/10/card.json",
            "pump/9/card.json",
            "pump/9/model.onnx",
            "fan/1.0.0/fan.json",
            ".git/HEAD/x.json",
            "fan/.partial/",
        ]);
        let got: Vec<(String, String)> = scan(&dir)
            .unwrap()
            .into_iter()
            .map(|e| (e.model, e.version))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        let want = [("fan", "1.0.0"), ("pump", "9"), ("pump", "10")];
        assert_eq!(
            got,
            want.map(|(m, v)| (m.to_owned(), v.to_owned())).to_vec()
        );
    }

    #[test]
    fn a_repository_laid_out_otherwise_is_refused_by_what_is_wrong() {
        assert!(refusal(&[]).contains("no model folder"));
        assert!(refusal(&["pump/"]).contains("model pump has no version folder"));
        assert!(refusal(&["pump/1/"]).contains("holds no model card"));
        assert!(refusal(&["pump/1/a.json", "pump/1/b.json"]).contains("exactly one model card"));
        assert!(refusal(&["card.json"]).contains("is a file where a folder was expected"));
        assert!(refusal(&["pump/1 beta/a.json"]).contains("not a usable model or version name"));
    }
}
