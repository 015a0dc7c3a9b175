//! Host keys pinned before the first SSH connection, where the provider can tell them.

use crate::command::{SshOptions, known_host, pin_host_keys};
use crate::error::Result;
use crate::node::NodeInfo;
use crate::provider::NodeProvider;

/// `options` for reaching `node`: its host key pinned under the node's id
/// ([`SshOptions::host_key_alias`]) in the options' known-hosts file.
///
/// * A node already in the file: only that key is accepted (`StrictHostKeyChecking=yes`).
/// * Else, when the provider tells the node's keys ([`NodeProvider::host_keys`]), they are
///   written to the file first and only they are accepted.
/// * Else (the provider cannot tell, e.g. AWS, whose console output is not read): the key
///   is trusted on first use (`accept-new`) and a warning says so.
///
/// An error of the provider's (it should know the keys but could not read them) is
/// returned: nothing connects to a node whose key could not be checked.
pub async fn pinned_ssh_options(
    provider: &dyn NodeProvider,
    node: &NodeInfo,
    options: SshOptions,
) -> Result<SshOptions> {
    let options = options.with_host_key_alias(node.id.clone());
    if known_host(&options.known_hosts_file, &node.id) {
        return Ok(options.with_strict_host_keys(true));
    }
    match provider.host_keys(node).await? {
        Some(keys) if !keys.is_empty() => {
            pin_host_keys(&options.known_hosts_file, &node.id, &keys)?;
            tracing::debug!(
                target: "cloudtik::command",
                node = %node.id,
                known_hosts = %options.known_hosts_file.display(),
                "host keys pinned from the provider"
            );
            Ok(options.with_strict_host_keys(true))
        }
        _ => {
            tracing::warn!(
                target: "cloudtik::command",
                node = %node.id,
                provider = %provider.provider_type(),
                "the {} provider cannot tell the host key of node {} before connecting: trusting the key \
                 it shows on first use (StrictHostKeyChecking=accept-new) and pinning it in {}",
                provider.provider_type(),
                node.id,
                options.known_hosts_file.display()
            );
            Ok(options)
        }
    }
}
