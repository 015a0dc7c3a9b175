//! `from:` templates: CloudTik's config inheritance.
//!
//! A config (or template) that says `from: NAME` is laid over the template `NAME`, which
//! may itself say `from:`. Names are looked up, in order, in the user template folders
//! (the loader's, then `$CLOUDTIK_USER_TEMPLATES`, a comma-separated list of folders) and
//! then in the templates built into this crate. `.yaml` is added when the name has no
//! extension. Provider defaults (`<provider>/defaults`, which say `from: defaults`) are
//! system templates and are only looked up among the built-in ones.

use std::path::{Path, PathBuf};

/// Templates built into the crate: name -> YAML text.
pub(crate) const BUILT_IN: &[(&str, &str)] = &[
    ("defaults", include_str!("../../templates/defaults.yaml")),
    (
        "virtual/defaults",
        include_str!("../../templates/virtual/defaults.yaml"),
    ),
    (
        "virtual/standard",
        include_str!("../../templates/virtual/standard.yaml"),
    ),
    (
        "local/defaults",
        include_str!("../../templates/local/defaults.yaml"),
    ),
    ("aws/defaults", include_str!("../../templates/aws/defaults.yaml")),
    ("aws/standard", include_str!("../../templates/aws/standard.yaml")),
    ("aws/gpu", include_str!("../../templates/aws/gpu.yaml")),
    ("gcp/defaults", include_str!("../../templates/gcp/defaults.yaml")),
    ("gcp/standard", include_str!("../../templates/gcp/standard.yaml")),
    (
        "azure/defaults",
        include_str!("../../templates/azure/defaults.yaml"),
    ),
    (
        "azure/standard",
        include_str!("../../templates/azure/standard.yaml"),
    ),
];

/// Environment variable listing user template folders, comma-separated (CloudTik's).
pub const USER_TEMPLATES_ENV: &str = "CLOUDTIK_USER_TEMPLATES";

/// Where a template was found.
#[derive(Debug, Clone)]
pub(crate) enum TemplateText {
    /// A file in a user template folder.
    File(PathBuf, Vec<u8>),
    /// A built-in template.
    BuiltIn(&'static str),
}

pub(crate) fn normalize(name: &str) -> String {
    name.strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .unwrap_or(name)
        .to_string()
}

pub(crate) fn built_in(name: &str) -> Option<&'static str> {
    let n = normalize(name);
    BUILT_IN.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

pub(crate) fn find_in_dirs(dirs: &[PathBuf], name: &str) -> std::io::Result<Option<TemplateText>> {
    let file = if Path::new(name).extension().is_some() {
        name.to_string()
    } else {
        format!("{name}.yaml")
    };
    for dir in dirs {
        let p = dir.join(&file);
        if p.is_file() {
            let bytes = std::fs::read(&p)?;
            return Ok(Some(TemplateText::File(p, bytes)));
        }
    }
    Ok(None)
}

/// Names of the built-in templates users may inherit (provider defaults excluded).
pub fn built_in_template_names() -> Vec<&'static str> {
    BUILT_IN
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| *k != "defaults" && !k.ends_with("/defaults"))
        .collect()
}

/// Provider types that have built-in defaults.
pub fn built_in_provider_types() -> Vec<&'static str> {
    BUILT_IN
        .iter()
        .filter_map(|(k, _)| k.strip_suffix("/defaults"))
        .collect()
}
