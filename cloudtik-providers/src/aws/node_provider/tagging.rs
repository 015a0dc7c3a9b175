//! Tag writes: `CreateTags` per distinct (key, value), and the batching of concurrent
//! `set_node_tags` calls.

use super::*;

/// `set_node_tags` calls gathered for one batch.
#[derive(Debug, Default)]
pub(super) struct TagQueue {
    /// Each call's updates and where its result goes.
    pub(super) waiting: Vec<(Vec<TagUpdate>, tokio::sync::oneshot::Sender<Result<()>>)>,
    /// A task is gathering calls and will send them.
    pub(super) gathering: bool,
}

/// What a batch of tag writes did to each node.
#[derive(Debug, Default)]
pub(super) struct TagWrites {
    /// Nodes that are not live instances of the cluster.
    pub(super) missing: BTreeSet<String>,
    /// Nodes whose tags could not be written, with the error (shared by the nodes of
    /// one call).
    pub(super) failed: BTreeMap<String, Arc<Error>>,
}

impl AwsNodeProvider {
    /// Writes tags: one `CreateTags` per distinct (key, value) across the nodes, in
    /// chunks of 1,000 (`cloudtik-node-name` also sets `Name`). Ids the provider has not
    /// seen alive are described first (one call per 200); those that are not live
    /// instances of the cluster are `missing`. A `CreateTags` that EC2 refuses because an
    /// instance is gone (`InvalidInstanceID.NotFound`) is sent again once without the
    /// gone ones.
    pub(super) async fn write_tags(&self, op: &'static str, per_node: &BTreeMap<String, Tags>) -> TagWrites {
        let mut writes = TagWrites::default();
        let unknown: Vec<String> = {
            let known = self.inner.known();
            per_node
                .keys()
                .filter(|id| !known.contains(*id))
                .cloned()
                .collect()
        };
        if !unknown.is_empty() {
            match self.existing_ids(op, &unknown, &LIVE_STATES).await {
                Ok(found) => {
                    writes
                        .missing
                        .extend(unknown.iter().filter(|id| !found.contains(*id)).cloned());
                    self.inner.known().extend(found);
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for id in per_node.keys() {
                        writes.failed.insert(id.clone(), e.clone());
                    }
                    return writes;
                }
            }
        }
        let mut groups: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for (id, node_tags) in per_node.iter().filter(|(id, _)| !writes.missing.contains(*id)) {
            for (k, v) in node_tags {
                groups
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(id.clone());
                if k == tags::NODE_NAME && !node_tags.contains_key(NAME_TAG) {
                    groups.entry((NAME_TAG, v.as_str())).or_default().push(id.clone());
                }
            }
        }
        for ((key, value), nodes) in &groups {
            for chunk in nodes.chunks(EC2_BATCH) {
                let mut targets: Vec<String> = chunk
                    .iter()
                    .filter(|id| !writes.missing.contains(*id))
                    .cloned()
                    .collect();
                for attempt in 0..2 {
                    if targets.is_empty() {
                        break;
                    }
                    match self.create_tags(op, key, value, &targets).await {
                        Ok(()) => break,
                        Err(e) if e.kind() == ErrorKind::NotFound && attempt == 0 => {
                            match self.existing_ids(op, &targets, &LIVE_STATES).await {
                                Ok(found) => {
                                    let mut known = self.inner.known();
                                    for id in targets.iter().filter(|id| !found.contains(*id)) {
                                        known.remove(id);
                                        writes.missing.insert(id.clone());
                                    }
                                    targets.retain(|id| found.contains(id));
                                }
                                Err(e) => {
                                    let e = Arc::new(e);
                                    for id in &targets {
                                        writes.failed.insert(id.clone(), e.clone());
                                    }
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            let e = Arc::new(e);
                            for id in &targets {
                                writes.failed.insert(id.clone(), e.clone());
                            }
                            break;
                        }
                    }
                }
            }
        }
        writes
    }

    /// One `CreateTags` call setting `key` = `value` on `ids`.
    pub(super) async fn create_tags(
        &self,
        op: &'static str,
        key: &str,
        value: &str,
        ids: &[String],
    ) -> Result<()> {
        let request = self
            .ec2()
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .tags(Tag::builder().key(key).value(value).build());
        self.call(op, "CreateTags", || request.clone().send())
            .await
            .map(drop)
            .map_err(|e| {
                e.with_context("cluster", &self.inner.cluster)
                    .with_context("tag", key)
                    .with_context("nodes", ids.join(","))
            })
    }

    /// Sends the queued `set_node_tags` calls of one batch and answers each caller:
    /// later calls win over earlier ones for the same node and key; a caller fails only
    /// for its own nodes (`NotFound` naming its missing nodes, or the error of a
    /// `CreateTags` that carried one of its nodes).
    pub(super) async fn send_tag_batch(
        &self,
        batch: Vec<(Vec<TagUpdate>, tokio::sync::oneshot::Sender<Result<()>>)>,
    ) {
        const OP: &str = "set_node_tags";
        let mut per_node: BTreeMap<String, Tags> = BTreeMap::new();
        for (updates, _) in &batch {
            for u in updates {
                per_node
                    .entry(u.node_id.clone())
                    .or_default()
                    .extend(u.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        tracing::debug!(
            calls = batch.len(),
            nodes = per_node.len(),
            "sending a batch of tag updates"
        );
        let writes = self.write_tags(OP, &per_node).await;
        for (updates, answer) in batch {
            let ids: BTreeSet<&str> = updates.iter().map(|u| u.node_id.as_str()).collect();
            let result = if let Some(e) = ids.iter().find_map(|id| writes.failed.get(*id)) {
                Err(duplicate(e))
            } else {
                let missing: Vec<&str> = ids
                    .iter()
                    .copied()
                    .filter(|id| writes.missing.contains(*id))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "no pending, running or stopped instance of cluster {} has id {}",
                            self.inner.cluster,
                            missing.join(", ")
                        ),
                    )
                    .with_operation(OP)
                    .with_context("nodes", missing.join(",")))
                }
            };
            // The caller may have gone (its future dropped): nothing to answer then.
            let _ = answer.send(result);
        }
    }
}

impl AwsNodeProvider {
    /// Sets tags, coalescing concurrent calls: the first call waits
    /// [`AwsSettings::tag_batch_window`] for others, then the updates of every call
    /// queued meanwhile go out together, one `CreateTags` per distinct (key, value)
    /// (see the module docs). Each caller gets its own result. The identity tags
    /// (cluster name, launch token) are refused.
    pub(super) async fn queue_tags(&self, updates: &[TagUpdate]) -> Result<()> {
        const OP: &str = "set_node_tags";
        if updates.is_empty() {
            return Ok(());
        }
        for update in updates {
            if let Some(key) = IDENTITY_TAGS.iter().find(|k| update.tags.contains_key(**k)) {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("tag {key} names the node's cluster or launch and cannot change after launch"),
                )
                .with_operation(OP)
                .with_context("node", &update.node_id));
            }
        }
        let (answer, result) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.inner.tag_queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push((updates.to_vec(), answer));
            !std::mem::replace(&mut queue.gathering, true)
        };
        if lead {
            // A task of its own, so that the batch is sent even if this caller's
            // future is dropped while it waits.
            let this = self.clone();
            tokio::spawn(async move {
                let window = this.inner.settings.tag_batch_window;
                if window.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(window).await;
                }
                let batch = {
                    let mut queue = this.inner.tag_queue.lock().unwrap_or_else(|e| e.into_inner());
                    queue.gathering = false;
                    std::mem::take(&mut queue.waiting)
                };
                this.send_tag_batch(batch).await;
            });
        }
        result.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "the batch of tag updates for cluster {} ended without an answer",
                    self.inner.cluster
                ),
            )
            .with_operation(OP))
        })
    }
}

/// A copy of `e` for one more caller (an [`Error`] is not `Clone`): kind, status,
/// message, operation, context and the source's text.
pub(super) fn duplicate(e: &Error) -> Error {
    let mut copy = Error::new(e.kind(), e.message());
    copy = match e.status() {
        cloudtik_core::ErrorStatus::Permanent => copy.set_permanent(),
        cloudtik_core::ErrorStatus::Temporary => copy.set_temporary(),
        cloudtik_core::ErrorStatus::Persistent => copy.set_persistent(),
    };
    if let Some(op) = e.operation() {
        copy = copy.with_operation(op);
    }
    for (k, v) in e.context() {
        copy = copy.with_context(k, v);
    }
    if let Some(location) = e.location() {
        copy = copy.with_location(location.clone());
    }
    if let Some(source) = std::error::Error::source(e) {
        copy = copy.with_source(source.to_string());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicated_error_keeps_kind_operation_and_context() {
        let e = Error::new(ErrorKind::PermissionDenied, "no")
            .with_operation("set_node_tags")
            .with_context("call", "CreateTags")
            .with_source("denied by policy");
        let d = duplicate(&e);
        assert_eq!(d.kind(), e.kind());
        assert_eq!(d.status(), e.status());
        assert_eq!(d.operation(), Some("set_node_tags"));
        assert_eq!(d.context_value("call"), Some("CreateTags"));
        assert_eq!(d.to_string(), e.to_string());
    }
}
