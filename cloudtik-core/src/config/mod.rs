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
//!    (`<provider>/defaults`, which inherit the global `defaults`) exactly as CloudTik
//!    does (`merge_config_hierarchy`): a deep merge, so `head_node_type`, the defaults'
//!    node types (`head.default`, `worker.default`) and each type's `node_config` come
//!    from the defaults where the config leaves them out. As in CloudTik, this means a
//!    config that defines other node types still has the defaults' `head.default` and
//!    `worker.default` (with the defaults' `min_workers`; 1 on the clouds): name your
//!    types `head.default` / `worker.default` to change them, or set `min_workers: 0`
//!    and `max_workers: 0` on a default type you do not want.
//!    [`MergedConfig::node_type_sources`] tells where each node type came from. Every template a config inherits must be
//!    for the config's provider (or name none).
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
//! let config = ConfigLoader::new().load_cluster_str("cluster.yaml", yaml).unwrap();
//! // The head's type and every type's node_config come from the provider defaults:
//! assert_eq!(config.head_node_type, "head.default");
//! assert!(config.available_node_types["worker.default"].node_config.contains_key("instance_type"));
//! assert_eq!(config.min_workers_of("worker.default"), 2);
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

/// A provider's check of a whole cluster config for what keeps it from being used but not
/// from being read and shown (e.g. a node type naming an instance type the provider
/// section does not define): config errors that `load_*` refuses and `check_*` returns
/// as warnings.
pub type ProviderWarnings = Arc<dyn Fn(&ClusterConfig) -> Vec<Error> + Send + Sync>;

/// Loads cluster and workspace configs: templates, defaults, typing and validation.
#[derive(Clone)]
pub struct ConfigLoader {
    template_dirs: Vec<PathBuf>,
    use_env_dirs: bool,
    provider_defaults: HashMap<String, String>,
    validators: HashMap<String, ProviderValidator>,
    warners: HashMap<String, ProviderWarnings>,
    runtimes: Arc<crate::runtime::RuntimeRegistry>,
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
            .field("warners", &self.warners.keys().collect::<Vec<_>>())
            .field("runtimes", &self.runtimes)
            .finish()
    }
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

/// A cluster config checked by [`ConfigLoader::check_cluster_file`]: the config, how it
/// was merged (where each part came from) and what keeps it from being used in this
/// build.
#[derive(Debug)]
#[non_exhaustive]
pub struct CheckedConfig {
    /// The typed, validated config. Runtimes this build does not have are kept in
    /// `runtime.types`, after the known ones.
    pub config: ClusterConfig,
    /// The merged config and its documents.
    pub merged: MergedConfig,
    /// Config errors ([`ErrorKind::InvalidConfig`], with their YAML paths) that
    /// [`ConfigLoader::load_cluster_file`] would refuse the config for: runtimes this
    /// build does not have, and what providers report
    /// ([`ConfigLoader::with_provider_warnings`]).
    pub warnings: Vec<Error>,
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
    /// Index in `documents` of the first provider-defaults document, if any.
    defaults_from: Option<usize>,
}

impl MergedConfig {
    /// Where each node type of the merged config was defined: for every name under
    /// `available_node_types`, the sources (files or built-in templates) that define it,
    /// in merge order (provider defaults first, the user's file last). A type whose only
    /// sources are the provider defaults was not asked for by the config or its templates.
    pub fn node_type_sources(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::new();
        let Some(Value::Object(types)) = self.value.get("available_node_types") else {
            return out;
        };
        for name in types.keys() {
            let sources: Vec<String> = self
                .documents
                .iter()
                .rev()
                .filter(|d| {
                    d.value
                        .get("available_node_types")
                        .and_then(|t| t.get(name))
                        .is_some()
                })
                .map(|d| d.source.clone())
                .collect();
            out.insert(name.clone(), sources);
        }
        out
    }

    /// Whether `source` (a [`Document::source`] of this config) is one of the provider
    /// defaults rather than the user's file or a template it inherits.
    pub fn is_provider_defaults(&self, source: &str) -> bool {
        self.defaults_from
            .is_some_and(|i| self.documents[i..].iter().any(|d| d.source == source))
    }

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
            warners: HashMap::new(),
            runtimes: Arc::new(crate::runtime::RuntimeRegistry::new()),
        }
    }

    /// The runtimes this loader knows (default: none). `runtime.types` is checked
    /// against them: required runtimes are added and the list is put in start order (for
    /// the cluster and for each node type), each runtime's defaults are laid under its
    /// section (`runtime.<name>`) and the runtime validates the result. A name the
    /// registry does not have is refused by `load_*` and reported as a warning by
    /// `check_*` (see [`CheckedConfig`]), naming `runtime.types[i]` and the runtimes
    /// that exist.
    pub fn with_runtimes(mut self, registry: Arc<crate::runtime::RuntimeRegistry>) -> Self {
        self.runtimes = registry;
        self
    }

    /// The runtimes this loader knows.
    pub fn runtimes(&self) -> &crate::runtime::RuntimeRegistry {
        &self.runtimes
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

    /// Registers a provider's check of whole cluster configs for what stops them from
    /// being used: [`load_cluster_file`](Self::load_cluster_file) refuses a config it
    /// reports, [`check_cluster_file`](Self::check_cluster_file) returns its reports as
    /// warnings.
    pub fn with_provider_warnings(
        mut self,
        provider_type: &str,
        check: impl Fn(&ClusterConfig) -> Vec<Error> + Send + Sync + 'static,
    ) -> Self {
        self.warners.insert(provider_type.to_string(), Arc::new(check));
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

    /// Loads, merges, types and validates a cluster config file, for use: what
    /// [`check_cluster_file`](Self::check_cluster_file) would only warn of (a runtime
    /// this build does not have) is an error here.
    pub fn load_cluster_file(&self, path: impl AsRef<Path>) -> Result<ClusterConfig> {
        let merged = self.merge_cluster_file(path)?;
        self.finish_cluster(&merged)
    }

    /// Loads, merges, types and validates cluster config text; `source` names it in errors.
    pub fn load_cluster_str(&self, source: &str, text: &str) -> Result<ClusterConfig> {
        let merged = self.merge_cluster(Document::parse(source, text)?)?;
        self.finish_cluster(&merged)
    }

    /// Types and validates an already merged config; a warning is an error here.
    pub fn finish_cluster(&self, merged: &MergedConfig) -> Result<ClusterConfig> {
        let (config, warnings) = self.type_and_validate(merged)?;
        match warnings.into_iter().next() {
            Some(w) => Err(w),
            None => Ok(config),
        }
    }

    /// Loads, merges, types and validates a cluster config file, for checking and
    /// showing it: like [`load_cluster_file`](Self::load_cluster_file), but what only
    /// stops the config from being used (a runtime this build does not have) is returned
    /// as a warning with the config, along with where each part came from.
    pub fn check_cluster_file(&self, path: impl AsRef<Path>) -> Result<CheckedConfig> {
        let merged = self.merge_cluster_file(path)?;
        let (config, warnings) = self.type_and_validate(&merged)?;
        Ok(CheckedConfig {
            config,
            merged,
            warnings,
        })
    }

    /// [`check_cluster_file`](Self::check_cluster_file) of config text; `source` names
    /// it in errors.
    pub fn check_cluster_str(&self, source: &str, text: &str) -> Result<CheckedConfig> {
        let merged = self.merge_cluster(Document::parse(source, text)?)?;
        let (config, warnings) = self.type_and_validate(&merged)?;
        Ok(CheckedConfig {
            config,
            merged,
            warnings,
        })
    }

    /// Reads a cluster config that was merged and checked already (the head's
    /// `cluster.json`, written by `start`, JSON or YAML): the same typing and checks as
    /// [`check_cluster_str`](Self::check_cluster_str), the provider's key checks, and no
    /// merge of templates or defaults. Errors name the YAML path and `source`.
    pub fn load_resolved_cluster_str(&self, source: &str, text: &str) -> Result<ClusterConfig> {
        let locate = |mut e: Error| {
            if let Some(loc) = e.location_mut() {
                loc.file = Some(source.to_string());
            }
            e.with_context("file", source)
        };
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{source} is not a JSON or YAML document: {e:#}"),
            )
        })?;
        check_mappings(&value).map_err(locate)?;
        let config: ClusterConfig = typed::from_value(&value, &YamlPath::root()).map_err(locate)?;
        validate::validate_cluster(&config).map_err(locate)?;
        if let Some(v) = self.validators.get(&config.provider.provider_type) {
            v(&config.provider).map_err(locate)?;
        }
        Ok(config)
    }

    fn type_and_validate(&self, merged: &MergedConfig) -> Result<(ClusterConfig, Vec<Error>)> {
        check_mappings(&merged.value).map_err(|e| merged.locate(e))?;
        let mut config: ClusterConfig =
            typed::from_value(&merged.value, &YamlPath::root()).map_err(|e| merged.locate(e))?;
        validate::validate_cluster(&config).map_err(|e| merged.locate(e))?;
        let mut warnings = Vec::new();
        apply_runtimes(&self.runtimes, &mut config, &mut warnings).map_err(|e| merged.locate(e))?;
        if let Some(v) = self.validators.get(&config.provider.provider_type) {
            v(&config.provider).map_err(|e| merged.locate(e))?;
        }
        if let Some(w) = self.warners.get(&config.provider.provider_type) {
            warnings.extend(w(&config));
        }
        let warnings = warnings.into_iter().map(|w| merged.locate(w)).collect();
        Ok((config, warnings))
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
        check_template_providers(&documents, &provider_type)?;
        let defaults_doc = self
            .provider_defaults_doc(&provider_type)
            .map_err(|e| locate_in(&documents, e))?;
        let defaults_from = documents.len();
        let mut defaults = self.resolve_chain(defaults_doc, &mut documents, true)?;
        // Lay the chain over the defaults, CloudTik's way: a deep merge, so node types,
        // `head_node_type` and each type's `node_config` come from the defaults where
        // the config leaves them out.
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
            defaults_from: Some(defaults_from),
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
                            "template `{name}` not found; looked in {}. {}",
                            looked.join(", "),
                            template::suggestions(&name)
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
                    format!("cannot read template `{name}`: {e:#}"),
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
            defaults_from: None,
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
/// validate the section. Names the registry does not have are pushed onto `unknown` (one
/// error each, naming `runtime.types[i]`) and kept, after the known ones, as they are.
fn apply_runtimes(
    registry: &crate::runtime::RuntimeRegistry,
    config: &mut ClusterConfig,
    unknown: &mut Vec<Error>,
) -> Result<()> {
    let root = YamlPath::root();
    config.runtime.types = order_known(registry, &config.runtime.types, &root, unknown)?;
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
            let at = root.key("available_node_types").key(type_name);
            // The cluster's list already reported names this build does not have.
            let mut again = Vec::new();
            rt.types = order_known(registry, &rt.types, &at, &mut again)?;
        }
    }
    Ok(())
}

/// `types` in start order with required runtimes added ([`RuntimeRegistry::order`]),
/// for the names the registry has; each other name is reported in `unknown` (path
/// `<at>.runtime.types[i]`) and kept at the end. Errors of the registry's order are
/// placed under `at`.
///
/// [`RuntimeRegistry::order`]: crate::runtime::RuntimeRegistry::order
fn order_known(
    registry: &crate::runtime::RuntimeRegistry,
    types: &[String],
    at: &YamlPath,
    unknown: &mut Vec<Error>,
) -> Result<Vec<String>> {
    let mut known = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for (i, name) in types.iter().enumerate() {
        if registry.get(name).is_some() {
            known.push(name.clone());
        } else {
            if !missing.contains(name) {
                missing.push(name.clone());
            }
            unknown.push(Error::config(
                at.key("runtime").key("types").index(i).to_string(),
                crate::runtime::unknown_runtime_message(registry, name),
            ));
        }
    }
    let mut ordered = registry.order(&known).map_err(|e| {
        if at.is_empty() {
            return e;
        }
        let loc = e.location().map(|l| l.path.clone()).unwrap_or_default();
        Error::config(format!("{at}.{loc}"), e.message().to_string())
    })?;
    ordered.extend(missing);
    Ok(ordered)
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

/// CloudTik's check that every template a config inherits is for the config's provider
/// (a template that names no provider fits any).
fn check_template_providers(documents: &[Document], provider_type: &str) -> Result<()> {
    for (i, doc) in documents.iter().enumerate().skip(1) {
        if let Some(Value::String(t)) = doc.value.get("provider").and_then(|p| p.get("type"))
            && t != provider_type
        {
            let e = Error::config(
                "from",
                format!(
                    "template `{}` is for provider `{t}`, but this config's provider.type is \
                     `{provider_type}`: inherit a {provider_type} template (e.g. `{provider_type}/standard`)",
                    doc.source
                ),
            );
            return Err(locate_in(&documents[i - 1..i], e));
        }
    }
    Ok(())
}

fn locate_in(documents: &[Document], e: Error) -> Error {
    MergedConfig {
        value: Value::Null,
        documents: documents.to_vec(),
        defaults_from: None,
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
            format!("cannot read the config file `{}`: {e:#}", path.display()),
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
