//! Cluster and workspace configs in CloudTik's YAML format.
//!
//! Loading a config runs these steps, and every error on the way names the YAML path of
//! the offending value, the file it came from and, where known, its line and column:
//!
//! 1. **Read** the YAML ([`yaml::Document`]): anchors, aliases and merge keys are
//!    resolved; duplicate keys, non-UTF-8 text and hostile nesting are refused.
//! 2. **Inherit** (`from:`): the config is laid over its template chain (see
//!    [`template`]).
//! 3. **Defaults**: the result is laid over the provider's defaults
//!    (`<provider>/defaults`, which inherit the global `defaults`). When the config (or
//!    its templates) define `available_node_types`, the provider defaults' node types
//!    and `head_node_type` are left out, so a config never gains node types it did not
//!    ask for.
//! 4. **Merge** rules are CloudTik's ([`merge`]): deep map merge, single named list items
//!    merge by name, `key++` appends, `++key` prepends, everything else replaces.
//! 5. **Type** the result into [`ClusterConfig`] (unknown top-level keys are refused)
//!    and **validate** it (head type exists, worker limits consistent, ...), then run the
//!    provider's own validator if one is registered
//!    ([`ConfigLoader::with_provider_validator`]).
//!
//! ```
//! use cloudtik_core::config::ConfigLoader;
//!
//! let yaml = "
//! cluster_name: demo
//! workspace_name: ws
//! provider: {type: virtual}
//! available_node_types:
//!   worker.default: {min_workers: 2}
//! ";
//! let err = ConfigLoader::new().load_cluster_str("cluster.yaml", yaml).unwrap_err();
//! // The config defines node types, so the defaults' types are not merged in and the
//! // worker type lacks its node_config:
//! assert_eq!(err.location().unwrap().path, "available_node_types.\"worker.default\".node_config");
//! ```

pub mod cluster;
pub mod hash;
pub mod merge;
pub mod path;
pub mod template;
mod typed;
mod validate;
pub mod workspace;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

pub use cluster::{
    AuthConfig, ClusterConfig, ClusterOptions, CommandPhase, DockerConfig, NodeTypeConfig, ProviderSection,
    RuntimeSection,
};
pub use hash::{RuntimeHashes, canonical_json, hash_value, launch_hash, runtime_hashes};
pub use path::YamlPath;
pub use workspace::WorkspaceConfig;
pub use yaml::Document;

use crate::error::{Error, ErrorKind, Result};
use template::TemplateText;

/// Most templates one chain may inherit.
const MAX_TEMPLATE_DEPTH: usize = 16;

/// A provider's check of its own `provider` keys.
pub type ProviderValidator = Arc<dyn Fn(&ProviderSection) -> Result<()> + Send + Sync>;

/// Loads cluster and workspace configs: templates, defaults, typing and validation.
#[derive(Clone)]
pub struct ConfigLoader {
    template_dirs: Vec<PathBuf>,
    use_env_dirs: bool,
    provider_defaults: HashMap<String, String>,
    validators: HashMap<String, ProviderValidator>,
    runtimes: Option<Arc<crate::runtime::RuntimeRegistry>>,
}

impl fmt::Debug for ConfigLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigLoader")
            .field("template_dirs", &self.template_dirs)
            .field("use_env_dirs", &self.use_env_dirs)
            .field(
                "extra_provider_defaults",
                &self.provider_defaults.keys().collect::<Vec<_>>(),
            )
            .field("validators", &self.validators.keys().collect::<Vec<_>>())
            .field("runtimes", &self.runtimes)
            .finish()
    }
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

/// A config after templates and defaults were merged, before typing, with the documents
/// it came from (to locate errors).
#[derive(Debug, Clone)]
pub struct MergedConfig {
    /// The merged value.
    pub value: Value,
    /// The user's document first, then its templates from the nearest to the farthest,
    /// then the provider defaults.
    pub documents: Vec<Document>,
}

impl MergedConfig {
    /// Fills in the file, line and column of a config error from the documents: the
    /// first document that has the error's path (or, failing that, its nearest parent).
    pub fn locate(&self, mut err: Error) -> Error {
        let Some(loc) = err.location_mut() else { return err };
        if loc.file.is_some() {
            return err;
        }
        let mut path = loc.path.clone();
        loop {
            for doc in &self.documents {
                if let Some((line, col)) = doc.position(&path) {
                    loc.file = Some(doc.source.clone());
                    loc.line = Some(line);
                    loc.column = Some(col);
                    return err;
                }
            }
            if path.is_empty() {
                break;
            }
            path = parent_path(&path);
        }
        if let Some(doc) = self.documents.first() {
            loc.file = Some(doc.source.clone());
        }
        err
    }
}

/// The parent of a formatted path: `a.b[2]` -> `a.b`, `a."x.y"` -> `a`.
fn parent_path(path: &str) -> String {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return path[..i].to_string();
    }
    if let Some(body) = path.strip_suffix('"') {
        // quoted key: find the opening quote that starts the segment
        let mut i = body.len();
        while let Some(j) = body[..i].rfind('"') {
            if j == 0 || &body[j - 1..j] == "." {
                return if j == 0 {
                    String::new()
                } else {
                    body[..j - 1].to_string()
                };
            }
            i = j;
        }
    }
    match path.rfind('.') {
        Some(i) => path[..i].to_string(),
        None => String::new(),
    }
}

impl ConfigLoader {
    /// A loader with the built-in templates and the folders in `$CLOUDTIK_USER_TEMPLATES`.
    pub fn new() -> Self {
        ConfigLoader {
            template_dirs: Vec::new(),
            use_env_dirs: true,
            provider_defaults: HashMap::new(),
            validators: HashMap::new(),
            runtimes: None,
        }
    }

    /// Checks `runtime.types` against a registry of runtimes: names must be known,
    /// required runtimes are added and the list is put in start order (for the cluster
    /// and for each node type), each runtime's defaults are laid under its section
    /// (`runtime.<name>`) and the runtime validates the result. Without a registry,
    /// runtime names and sections are taken as they are.
    pub fn with_runtimes(mut self, registry: Arc<crate::runtime::RuntimeRegistry>) -> Self {
        self.runtimes = Some(registry);
        self
    }

    /// Adds a user template folder, searched before `$CLOUDTIK_USER_TEMPLATES` and the
    /// built-in templates.
    pub fn with_template_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.template_dirs.push(dir.into());
        self
    }

    /// Whether to read `$CLOUDTIK_USER_TEMPLATES` (default: yes).
    pub fn with_env_template_dirs(mut self, yes: bool) -> Self {
        self.use_env_dirs = yes;
        self
    }

    /// Registers defaults (YAML) for a provider type that has no built-in ones, e.g. an
    /// external provider. They may say `from: defaults`.
    pub fn with_provider_defaults(mut self, provider_type: &str, yaml: impl Into<String>) -> Self {
        self.provider_defaults
            .insert(provider_type.to_string(), yaml.into());
        self
    }

    /// Registers a check of a provider's own keys, run after the common validation.
    pub fn with_provider_validator(
        mut self,
        provider_type: &str,
        validator: impl Fn(&ProviderSection) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.validators
            .insert(provider_type.to_string(), Arc::new(validator));
        self
    }

    /// The provider types this loader has defaults for.
    pub fn provider_types(&self) -> Vec<String> {
        let mut v: Vec<String> = template::built_in_provider_types()
            .into_iter()
            .map(String::from)
            .collect();
        v.extend(self.provider_defaults.keys().cloned());
        v.sort();
        v.dedup();
        v
    }

    fn user_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.template_dirs.clone();
        if self.use_env_dirs
            && let Ok(list) = std::env::var(template::USER_TEMPLATES_ENV)
        {
            dirs.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            );
        }
        dirs
    }

    /// Loads, merges, types and validates a cluster config file.
    pub fn load_cluster_file(&self, path: impl AsRef<Path>) -> Result<ClusterConfig> {
        let merged = self.merge_cluster_file(path)?;
        self.finish_cluster(&merged)
    }

    /// Loads, merges, types and validates cluster config text; `source` names it in errors.
    pub fn load_cluster_str(&self, source: &str, text: &str) -> Result<ClusterConfig> {
        let merged = self.merge_cluster(Document::parse(source, text)?)?;
        self.finish_cluster(&merged)
    }

    /// Types and validates an already merged config.
    pub fn finish_cluster(&self, merged: &MergedConfig) -> Result<ClusterConfig> {
        check_mappings(&merged.value).map_err(|e| merged.locate(e))?;
        let mut config: ClusterConfig =
            typed::from_value(&merged.value, &YamlPath::root()).map_err(|e| merged.locate(e))?;
        validate::validate_cluster(&config).map_err(|e| merged.locate(e))?;
        if let Some(registry) = &self.runtimes {
            apply_runtimes(registry, &mut config).map_err(|e| merged.locate(e))?;
        }
        if let Some(v) = self.validators.get(&config.provider.provider_type) {
            v(&config.provider).map_err(|e| merged.locate(e))?;
        }
        Ok(config)
    }

    /// Reads a cluster config file and merges its templates and defaults.
    pub fn merge_cluster_file(&self, path: impl AsRef<Path>) -> Result<MergedConfig> {
        let doc = read_document(path.as_ref())?;
        self.merge_cluster(doc)
    }

    /// Merges a parsed cluster config with its templates and the provider defaults.
    pub fn merge_cluster(&self, doc: Document) -> Result<MergedConfig> {
        let mut documents = Vec::new();
        let user = root_map(&doc)?;
        let user_from = user.get("from").cloned();
        let mut chain = self.resolve_chain(doc, &mut documents, false)?;

        // Provider defaults, unless the chain already rests on them.
        let provider_type = match chain.get("provider").and_then(|p| p.get("type")) {
            Some(Value::String(t)) => t.clone(),
            Some(_) => {
                let e = Error::config("provider.type", "must be a text value, e.g. `virtual` or `aws`");
                return Err(locate_in(&documents, e));
            }
            None => {
                let e = Error::config(
                    "provider.type",
                    format!(
                        "missing: name the provider, one of {}",
                        self.provider_types().join(", ")
                    ),
                );
                return Err(locate_in(&documents, e));
            }
        };
        let defaults_doc = self
            .provider_defaults_doc(&provider_type)
            .map_err(|e| locate_in(&documents, e))?;
        let mut defaults = self.resolve_chain(defaults_doc, &mut documents, true)?;
        if chain.contains_key("available_node_types") {
            defaults.remove("available_node_types");
            defaults.remove("head_node_type");
        }
        // Lay the chain over the defaults.
        merge::merge_into(&mut defaults, &chain, &YamlPath::root()).map_err(|e| locate_in(&documents, e))?;
        chain = defaults;
        match user_from {
            Some(f) => {
                chain.insert("from".into(), f);
            }
            None => {
                chain.remove("from");
            }
        }
        Ok(MergedConfig {
            value: Value::Object(chain),
            documents,
        })
    }

    fn provider_defaults_doc(&self, provider_type: &str) -> Result<Document> {
        let name = format!("{provider_type}/defaults");
        if let Some(text) = self.provider_defaults.get(provider_type) {
            return Document::parse(&format!("<defaults of provider {provider_type}>"), text);
        }
        match template::built_in(&name) {
            Some(text) => Document::parse(&format!("<built-in template {name}>"), text),
            None => Err(Error::config(
                "provider.type",
                format!(
                    "unknown provider type `{provider_type}`: expected one of {}",
                    self.provider_types().join(", ")
                ),
            )),
        }
    }

    /// Resolves a document's `from:` chain into one mapping. Pushes every document read
    /// onto `documents`, nearest first.
    fn resolve_chain(
        &self,
        doc: Document,
        documents: &mut Vec<Document>,
        system: bool,
    ) -> Result<Map<String, Value>> {
        let mut layers: Vec<Map<String, Value>> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut current = doc;
        loop {
            let map = match root_map(&current) {
                Ok(m) => m.clone(),
                Err(e) => return Err(e),
            };
            let from = map.get("from").cloned();
            documents.push(current);
            layers.push(map);
            let name = match from {
                None | Some(Value::Null) => break,
                Some(Value::String(s)) => s,
                Some(_) => {
                    let e = Error::config("from", "must be a template name, e.g. `aws/standard`");
                    return Err(locate_last(documents, e));
                }
            };
            let norm = template::normalize(&name);
            if seen.contains(&norm) {
                seen.push(norm);
                let e = Error::config(
                    "from",
                    format!("templates inherit in a cycle: {}", seen.join(" -> ")),
                );
                return Err(locate_last(documents, e));
            }
            seen.push(norm);
            if seen.len() > MAX_TEMPLATE_DEPTH {
                let e = Error::config(
                    "from",
                    format!("more than {MAX_TEMPLATE_DEPTH} templates inherit each other"),
                );
                return Err(locate_last(documents, e));
            }
            current = match self.find_template(&name, system) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    let mut looked = self
                        .user_dirs()
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>();
                    looked.push("the built-in templates".into());
                    let e = Error::config(
                        "from",
                        format!(
                            "template `{name}` not found; looked in {}. Built-in templates: {}",
                            looked.join(", "),
                            template::built_in_template_names().join(", ")
                        ),
                    );
                    return Err(locate_last(documents, e));
                }
                Err(e) => return Err(locate_last(documents, e)),
            };
        }
        // Merge from the farthest template to the document itself.
        let mut merged = layers.pop().unwrap_or_default();
        while let Some(layer) = layers.pop() {
            merge::merge_into(&mut merged, &layer, &YamlPath::root()).map_err(|e| locate_in(documents, e))?;
        }
        Ok(merged)
    }

    fn find_template(&self, name: &str, system: bool) -> Result<Option<Document>> {
        let found = if system {
            None
        } else {
            template::find_in_dirs(&self.user_dirs(), name).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cannot read template `{name}`: {e}"),
                )
            })?
        };
        let found = found.or_else(|| template::built_in(name).map(TemplateText::BuiltIn));
        match found {
            None => Ok(None),
            Some(TemplateText::BuiltIn(text)) => Document::parse(
                &format!("<built-in template {}>", template::normalize(name)),
                text,
            )
            .map(Some),
            Some(TemplateText::File(path, bytes)) => {
                Document::parse_bytes(&path.display().to_string(), &bytes).map(Some)
            }
        }
    }

    /// Loads and validates a workspace config file.
    pub fn load_workspace_file(&self, path: impl AsRef<Path>) -> Result<WorkspaceConfig> {
        let doc = read_document(path.as_ref())?;
        self.load_workspace_doc(doc)
    }

    /// Loads and validates workspace config text.
    pub fn load_workspace_str(&self, source: &str, text: &str) -> Result<WorkspaceConfig> {
        self.load_workspace_doc(Document::parse(source, text)?)
    }

    fn load_workspace_doc(&self, doc: Document) -> Result<WorkspaceConfig> {
        let mut documents = Vec::new();
        let map = self.resolve_chain(doc, &mut documents, false)?;
        let merged = MergedConfig {
            value: Value::Object(map),
            documents,
        };
        let ws = workspace::WorkspaceConfig::from_merged(&merged.value).map_err(|e| merged.locate(e))?;
        if !self.provider_types().contains(&ws.provider.provider_type) {
            let e = Error::config(
                "provider.type",
                format!(
                    "unknown provider type `{}`: expected one of {}",
                    ws.provider.provider_type,
                    self.provider_types().join(", ")
                ),
            );
            return Err(merged.locate(e));
        }
        if let Some(v) = self.validators.get(&ws.provider.provider_type) {
            v(&ws.provider).map_err(|e| merged.locate(e))?;
        }
        Ok(ws)
    }
}

/// Orders runtime types, merges each runtime's defaults under its section and lets it
/// validate the section.
fn apply_runtimes(registry: &crate::runtime::RuntimeRegistry, config: &mut ClusterConfig) -> Result<()> {
    config.runtime.types = registry.order(&config.runtime.types)?;
    for name in config.runtime.types.clone() {
        let Some(rt) = registry.get(&name) else { continue };
        let path = YamlPath::root().key("runtime").key(&name);
        let mut section = match rt.config_defaults() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        match config.runtime.sections.get(&name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(user)) => merge::merge_into(&mut section, user, &path)?,
            Some(other) => {
                return Err(Error::config(
                    path.to_string(),
                    format!(
                        "wrong type: found {}, expected a mapping of the runtime's settings",
                        kind_of(other)
                    ),
                ));
            }
        }
        let section = Value::Object(section);
        rt.validate(&section)?;
        config.runtime.sections.insert(name, section);
    }
    for (type_name, t) in config.available_node_types.iter_mut() {
        if let Some(rt) = t.runtime.as_mut()
            && !rt.types.is_empty()
        {
            rt.types = registry.order(&rt.types).map_err(|e| {
                let loc = e.location().map(|l| l.path.clone()).unwrap_or_default();
                let path = format!(
                    "{}.{loc}",
                    YamlPath::root().key("available_node_types").key(type_name)
                );
                Error::config(path, e.message().to_string())
            })?;
        }
    }
    Ok(())
}

/// serde reads a struct from a list as readily as from a mapping (`auth: [root]` would
/// set `ssh_user`); the sections that are mappings in CloudTik's schema must be mappings.
fn check_mappings(v: &Value) -> Result<()> {
    fn must_be_map(v: Option<&Value>, path: &YamlPath) -> Result<()> {
        match v {
            None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
            Some(other) => Err(Error::config(
                path.to_string(),
                format!(
                    "wrong type: found {}, expected a mapping of keys to values",
                    kind_of(other)
                ),
            )),
        }
    }
    let root = YamlPath::root();
    for key in [
        "provider",
        "auth",
        "options",
        "docker",
        "runtime",
        "available_node_types",
        "file_mounts",
    ] {
        must_be_map(v.get(key), &root.key(key))?;
    }
    if let Some(Value::Object(types)) = v.get("available_node_types") {
        for (name, t) in types {
            let p = root.key("available_node_types").key(name);
            must_be_map(Some(t), &p)?;
            for key in ["node_config", "resources", "runtime", "docker"] {
                must_be_map(t.get(key), &p.key(key))?;
            }
        }
    }
    Ok(())
}

fn locate_in(documents: &[Document], e: Error) -> Error {
    MergedConfig {
        value: Value::Null,
        documents: documents.to_vec(),
    }
    .locate(e)
}

fn locate_last(documents: &[Document], e: Error) -> Error {
    match documents.last() {
        Some(d) => locate_in(std::slice::from_ref(d), e),
        None => e,
    }
}

fn root_map(doc: &Document) -> Result<&Map<String, Value>> {
    match &doc.value {
        Value::Object(m) => Ok(m),
        Value::Null => Err(yaml::error_at(
            &doc.source,
            "",
            None,
            "the config is empty: expected a mapping with cluster_name, workspace_name, provider, ...".into(),
        )),
        other => Err(yaml::error_at(
            &doc.source,
            "",
            doc.position(""),
            format!("expected a mapping of keys to values, found {}", kind_of(other)),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn read_document(path: &Path) -> Result<Document> {
    let bytes = std::fs::read(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::InvalidConfig
        };
        Error::new(
            kind,
            format!("cannot read the config file `{}`: {e}", path.display()),
        )
    })?;
    Document::parse_bytes(&path.display().to_string(), &bytes)
}

/// The JSON Schema of a cluster config file, for editors (YAML language servers read it).
///
/// It describes the file a user writes, so it is looser than the merged config: keys
/// such as `setup_commands++` are allowed, and a node type may leave out `node_config`
/// (a template may supply it).
pub fn cluster_config_schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(ClusterConfig)).unwrap_or(Value::Null);
    schema["patternProperties"] = serde_json::json!({
        "^\\+\\+[A-Za-z_]+$|^[A-Za-z_]+\\+\\+$": {"type": "array", "description": "appends (`key++`) or prepends (`++key`) to a list"}
    });
    if let Some(t) = schema.pointer_mut("/$defs/NodeTypeConfig")
        && let Some(obj) = t.as_object_mut()
    {
        obj.remove("required");
    }
    schema
}

/// The JSON Schema of the workspace config.
pub fn workspace_config_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(WorkspaceConfig)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), "a.b");
        assert_eq!(parent_path("a.\"x.y\""), "a");
        assert_eq!(parent_path("a.\"x.y\".z"), "a.\"x.y\"");
        assert_eq!(parent_path("\"x.y\""), "");
        assert_eq!(parent_path("a"), "");
    }
}
