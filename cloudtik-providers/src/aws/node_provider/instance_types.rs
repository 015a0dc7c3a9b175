//! What the provider reads of EC2 besides instances: instance types (their resources) and
//! the default image.

use super::*;

impl AwsNodeProvider {
    /// The resources of EC2 instance types, from `DescribeInstanceTypes` (one call per
    /// 100 types; duplicates are asked for once): `CPU` is the default vCPU count,
    /// `memory` the memory in bytes (MiB × 1024 × 1024) and `GPU` the sum of the GPU
    /// counts, when the type has GPUs.
    ///
    /// A type EC2 does not know is a [`NotFound`](ErrorKind::NotFound) error with the
    /// unknown types in the `instance_types` context; to name them, each type of a call
    /// EC2 refused with `InvalidInstanceType` is asked for on its own.
    pub async fn instance_type_resources(
        &self,
        instance_types: &[String],
    ) -> Result<BTreeMap<String, cloudtik_core::Resources>> {
        let wanted: Vec<String> = instance_types
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut found = BTreeMap::new();
        let mut unknown = Vec::new();
        for chunk in wanted.chunks(DESCRIBE_TYPES_BATCH) {
            match self.describe_instance_types(chunk).await {
                Ok(answered) => found.extend(answered),
                Err(e) if is_invalid_instance_type(&e) => {
                    for t in chunk {
                        match self.describe_instance_types(std::slice::from_ref(t)).await {
                            Ok(answered) => found.extend(answered),
                            Err(e) if is_invalid_instance_type(&e) => unknown.push(t.clone()),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        unknown.extend(wanted.iter().filter(|t| !found.contains_key(*t)).cloned());
        unknown.sort();
        unknown.dedup();
        if !unknown.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "EC2 does not know the instance type(s) {} in region {}",
                    unknown.join(", "),
                    self.inner.settings.region
                ),
            )
            .with_operation("instance_type_resources")
            .with_context("call", "DescribeInstanceTypes")
            .with_context("instance_types", unknown.join(",")));
        }
        Ok(found)
    }

    /// One `DescribeInstanceTypes` call (all pages) for `types`.
    pub(super) async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<BTreeMap<String, cloudtik_core::Resources>> {
        use cloudtik_core::resources::{CPU, GPU, MEMORY};
        let request = self.ec2().describe_instance_types().set_instance_types(Some(
            types.iter().map(|t| InstanceType::from(t.as_str())).collect(),
        ));
        let pages = self
            .inner
            .calls
            .pages(
                Call::ec2("instance_type_resources", "DescribeInstanceTypes"),
                |token| request.clone().set_next_token(token).send(),
                |page| page.next_token(),
            )
            .await
            .map_err(|e| e.with_context("instance_types", types.join(",")))?;
        let mut out = BTreeMap::new();
        for info in pages.iter().flat_map(|page| page.instance_types()) {
            let Some(name) = info.instance_type() else {
                continue;
            };
            let mut r = cloudtik_core::Resources::new();
            if let Some(v) = info.v_cpu_info().and_then(|v| v.default_v_cpus()) {
                r.set(CPU, f64::from(v));
            }
            if let Some(mib) = info.memory_info().and_then(|m| m.size_in_mib()) {
                r.set(MEMORY, (mib * 1024 * 1024) as f64);
            }
            let gpus: i32 = info
                .gpu_info()
                .map(|g| g.gpus().iter().filter_map(|d| d.count()).sum())
                .unwrap_or(0);
            if gpus > 0 {
                r.set(GPU, f64::from(gpus));
            }
            out.insert(name.as_str().to_string(), r);
        }
        Ok(out)
    }

    /// Fills in the `resources` of each node type of `config` that sets none, from
    /// `DescribeInstanceTypes` for its `node_config.InstanceType` (one call for all the
    /// types, see [`instance_type_resources`](Self::instance_type_resources)). Types
    /// with `resources` set are left as they are. A node type without an
    /// `InstanceType`, or with one EC2 does not know, is an
    /// [`InvalidConfig`](ErrorKind::InvalidConfig) error at
    /// `available_node_types.<name>.node_config.InstanceType`.
    pub async fn bootstrap_resources(&self, config: &mut cloudtik_core::config::ClusterConfig) -> Result<()> {
        let mut needed: BTreeMap<String, String> = BTreeMap::new();
        for (name, t) in &config.available_node_types {
            if t.resources.is_some() {
                continue;
            }
            let path = format!("available_node_types.{name}.node_config.InstanceType");
            match t.node_config.get("InstanceType") {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    needed.insert(name.clone(), s.clone());
                }
                _ => {
                    return Err(Error::config(
                        path,
                        "an instance type is required to know the node type's resources (or set `resources`)",
                    ));
                }
            }
        }
        if needed.is_empty() {
            return Ok(());
        }
        let types: Vec<String> = needed.values().cloned().collect();
        let resources = match self.instance_type_resources(&types).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound && e.context_value("instance_types").is_some() => {
                let unknown: BTreeSet<&str> = e
                    .context_value("instance_types")
                    .unwrap_or_default()
                    .split(',')
                    .collect();
                let Some((name, t)) = needed.iter().find(|(_, t)| unknown.contains(t.as_str())) else {
                    return Err(e);
                };
                return Err(Error::config(
                    format!("available_node_types.{name}.node_config.InstanceType"),
                    format!(
                        "EC2 does not know the instance type `{t}` in region {}",
                        self.inner.settings.region
                    ),
                )
                .with_context("call", "DescribeInstanceTypes"));
            }
            Err(e) => return Err(e),
        };
        for (name, t) in &needed {
            if let (Some(node_type), Some(r)) = (config.available_node_types.get_mut(name), resources.get(t))
            {
                node_type.resources = Some(r.clone());
            }
        }
        Ok(())
    }

    /// The image launched when a `node_config` has no `ImageId`: the newest (by
    /// `CreationDate`) available x86_64 image named like [`AwsSettings::image_name`] owned
    /// by [`AwsSettings::image_owners`], looked up once per provider. None found is
    /// `NotFound`, naming the region and the filter.
    pub async fn default_image_id(&self) -> Result<String> {
        self.inner
            .default_image
            .get_or_try_init(|| async {
                let owners = &self.inner.settings.image_owners;
                let name = &self.inner.settings.image_name;
                let answer = self
                    .call("default_image", "DescribeImages", || {
                        self.ec2()
                            .describe_images()
                            .set_owners(Some(owners.clone()))
                            .filters(filter("name", [name.as_str()]))
                            .filters(filter("architecture", ["x86_64"]))
                            .filters(filter("state", ["available"]))
                            .send()
                    })
                    .await?;
                answer
                    .images()
                    .iter()
                    .filter_map(|i| Some((i.creation_date()?, i.image_id()?)))
                    .max()
                    .map(|(_, id)| id.to_string())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "no default image in region {}: DescribeImages found no available \
                                 x86_64 image named {name} owned by {}; set \
                                 node_config.ImageId",
                                self.inner.settings.region,
                                owners.join(", ")
                            ),
                        )
                        .with_operation("default_image")
                    })
            })
            .await
            .cloned()
    }
}

/// Whether `e` is EC2's refusal of an instance type name it does not know.
pub(super) fn is_invalid_instance_type(e: &Error) -> bool {
    ec2_code(e).is_some_and(|c| c.starts_with("InvalidInstanceType"))
}
