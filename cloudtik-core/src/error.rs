//! One error type for the whole SDK, with a kind that says what went wrong and a
//! retry status that says whether trying again can help.
//!
//! Modelled on OpenDAL's `Error`: a kind ([`ErrorKind`]), a status
//! ([`ErrorStatus`]: permanent, temporary, or persistent once retries ran out), the
//! operation that failed, key/value context (which resource, which node type, ...)
//! and the underlying cause. Config errors also carry the YAML path and, where the
//! parser knows it, the line and column ([`ConfigLocation`]).
//!
//! ```
//! use cloudtik_core::{Error, ErrorKind};
//!
//! let err = Error::new(ErrorKind::RateLimited, "too many requests")
//!     .with_operation("create_nodes")
//!     .with_context("node_type", "worker.cpu");
//! assert!(err.is_retryable());
//! assert_eq!(err.to_string(), "rate limited: too many requests (operation: create_nodes, node_type: worker.cpu)");
//! ```

use std::fmt;

/// `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of which provider or component reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid; the error names the YAML path and what was expected.
    InvalidConfig,
    /// A resource (node, network, workspace, file) does not exist.
    NotFound,
    /// A resource that must be created exists already.
    AlreadyExists,
    /// The provider has no capacity for the request right now (e.g. EC2 `InsufficientInstanceCapacity`).
    Capacity,
    /// An account quota or limit is reached (e.g. vCPU quota).
    Quota,
    /// The provider throttled the request.
    RateLimited,
    /// Credentials are valid but lack permission for the call.
    PermissionDenied,
    /// Credentials are missing or invalid.
    Unauthenticated,
    /// A passing failure: a dropped connection, a 5xx answer, a server restarting.
    Transient,
    /// The operation did not finish in time.
    Timeout,
    /// The state of a resource conflicts with the request (e.g. deleting a workspace that has clusters).
    Conflict,
    /// The provider or component does not support the operation.
    Unsupported,
    /// A command run on a node failed.
    CommandFailed,
    /// Anything else: a bug, or an answer nobody expected.
    Unexpected,
}

impl ErrorKind {
    /// A short lowercase name of the kind, as shown in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid config",
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::Capacity => "insufficient capacity",
            ErrorKind::Quota => "quota exceeded",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Transient => "transient failure",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::CommandFailed => "command failed",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    /// The retry status an error of this kind has unless told otherwise.
    ///
    /// Rate limits, transient failures and time-outs are temporary. Capacity
    /// shortages are temporary too, but callers should back the node type off
    /// rather than retry at once (see [`Error::is_capacity_or_quota`]).
    pub fn default_status(self) -> ErrorStatus {
        match self {
            ErrorKind::RateLimited | ErrorKind::Transient | ErrorKind::Timeout | ErrorKind::Capacity => {
                ErrorStatus::Temporary
            }
            _ => ErrorStatus::Permanent,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorStatus {
    /// Retrying the same request will fail the same way: fix the input or the environment.
    Permanent,
    /// The same request may succeed later.
    Temporary,
    /// Was temporary, but kept failing after the retries allowed.
    Persistent,
}

/// Where in a configuration a config error is: the YAML path, and the file, line and
/// column where the parser knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    /// The path of the offending value, e.g. `available_node_types."worker.cpu".min_workers`.
    /// Empty for the document itself.
    pub path: String,
    /// The file the value came from (the user's file or a template), if known.
    pub file: Option<String>,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
}

impl fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str("the document root")?;
        } else {
            f.write_str(&self.path)?;
        }
        match (&self.file, self.line, self.column) {
            (Some(file), Some(l), Some(c)) => write!(f, " ({file}:{l}:{c})"),
            (Some(file), Some(l), None) => write!(f, " ({file}:{l})"),
            (Some(file), None, _) => write!(f, " ({file})"),
            (None, Some(l), Some(c)) => write!(f, " (line {l}, column {c})"),
            (None, Some(l), None) => write!(f, " (line {l})"),
            (None, None, _) => Ok(()),
        }
    }
}

/// The SDK's error: a kind, a retry status, a message, the failed operation, context
/// and the cause.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    status: ErrorStatus,
    message: String,
    operation: Option<&'static str>,
    context: Vec<(&'static str, String)>,
    location: Option<ConfigLocation>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message saying what happened.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                status: kind.default_status(),
                message: message.into(),
                operation: None,
                context: Vec::new(),
                location: None,
                source: None,
            }),
        }
    }

    /// A config error at `path` (dotted YAML path; empty for the root) saying what was expected.
    pub fn config(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidConfig, message).with_location(ConfigLocation {
            path: path.into(),
            file: None,
            line: None,
            column: None,
        })
    }

    /// Names the operation that failed (e.g. `create_nodes`). Keeps the first one set.
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        if self.inner.operation.is_none() {
            self.inner.operation = Some(operation);
        }
        self
    }

    /// Adds a key/value that says which resource or input the error is about.
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.inner.context.push((key, value.to_string()));
        self
    }

    /// Sets where in the configuration the error is.
    pub fn with_location(mut self, location: ConfigLocation) -> Self {
        self.inner.location = Some(location);
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// Marks the error temporary: the same request may succeed later.
    pub fn set_temporary(mut self) -> Self {
        self.inner.status = ErrorStatus::Temporary;
        self
    }

    /// Marks the error permanent: do not retry.
    pub fn set_permanent(mut self) -> Self {
        self.inner.status = ErrorStatus::Permanent;
        self
    }

    /// Marks a temporary error persistent, after retries ran out.
    pub fn set_persistent(mut self) -> Self {
        if self.inner.status == ErrorStatus::Temporary {
            self.inner.status = ErrorStatus::Persistent;
        }
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether retrying may help.
    pub fn status(&self) -> ErrorStatus {
        self.inner.status
    }

    /// True when the same request may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        self.inner.status == ErrorStatus::Temporary
    }

    /// True for capacity shortages and quota limits: the autoscaler backs the node type off.
    pub fn is_capacity_or_quota(&self) -> bool {
        matches!(self.inner.kind, ErrorKind::Capacity | ErrorKind::Quota)
    }

    /// The message, without kind, operation or context.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The operation that failed, if set.
    pub fn operation(&self) -> Option<&'static str> {
        self.inner.operation
    }

    /// The context key/values, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.inner.context
    }

    /// The value of a context key, if set.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.inner
            .context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Where in the configuration a config error is.
    pub fn location(&self) -> Option<&ConfigLocation> {
        self.inner.location.as_ref()
    }

    /// Mutable access to the location, to fill in file, line and column later.
    pub fn location_mut(&mut self) -> Option<&mut ConfigLocation> {
        self.inner.location.as_mut()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        if let Some(loc) = &inner.location {
            write!(f, "{} at {}: {}", inner.kind, loc, inner.message)?;
        } else {
            write!(f, "{}: {}", inner.kind, inner.message)?;
        }
        if inner.operation.is_some() || !inner.context.is_empty() {
            f.write_str(" (")?;
            let mut first = true;
            if let Some(op) = inner.operation {
                write!(f, "operation: {op}")?;
                first = false;
            }
            for (k, v) in &inner.context {
                if !first {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
                first = false;
            }
            f.write_str(")")?;
        }
        if inner.status == ErrorStatus::Persistent {
            f.write_str(" [persisted after retries]")?;
        }
        if f.alternate()
            && let Some(source) = &inner.source
        {
            write!(f, ": {}", Report(source.as_ref()))?;
        }
        Ok(())
    }
}

/// Shows an error and its chain of causes, `: `-separated: what `{:#}` shows of an
/// [`Error`], for any error type, e.g. in a `tracing` field: `error = %Report(&e)`.
///
/// [`Error`]'s plain `Display` (`{}`) is its own text only and
/// [`source`](std::error::Error::source) returns the cause, so error-chain printers
/// (this one, `anyhow`'s `{:#}`, ...) say each cause once.
#[derive(Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each error's own text (plain `{}`): the causes come from `source()`, once each.
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.kind)
            .field("status", &inner.status)
            .field("message", &inner.message);
        if let Some(op) = inner.operation {
            d.field("operation", &op);
        }
        if !inner.context.is_empty() {
            d.field("context", &inner.context);
        }
        if let Some(loc) = &inner.location {
            d.field("location", loc);
        }
        if let Some(source) = &inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_the_documented_retryability() {
        assert!(Error::new(ErrorKind::RateLimited, "x").is_retryable());
        assert!(Error::new(ErrorKind::Transient, "x").is_retryable());
        assert!(Error::new(ErrorKind::Capacity, "x").is_retryable());
        assert!(!Error::new(ErrorKind::PermissionDenied, "x").is_retryable());
        assert!(!Error::new(ErrorKind::InvalidConfig, "x").is_retryable());
        assert!(!Error::new(ErrorKind::Quota, "x").is_retryable());
        let e = Error::new(ErrorKind::Transient, "x").set_persistent();
        assert_eq!(e.status(), ErrorStatus::Persistent);
        assert!(!e.is_retryable());
        // persistent only applies to temporary errors
        let e = Error::new(ErrorKind::NotFound, "x").set_persistent();
        assert_eq!(e.status(), ErrorStatus::Permanent);
    }

    #[test]
    fn config_errors_show_path_and_position() {
        let mut e = Error::config(
            "available_node_types.worker.min_workers",
            "expected an integer, found a string",
        );
        let loc = e.location_mut().unwrap();
        loc.file = Some("cluster.yaml".into());
        loc.line = Some(7);
        loc.column = Some(20);
        assert_eq!(
            e.to_string(),
            "invalid config at available_node_types.worker.min_workers (cluster.yaml:7:20): expected an integer, found a string"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    }

    #[test]
    fn source_is_chained() {
        let io = std::io::Error::other("boom");
        let inner = Error::new(ErrorKind::Transient, "reading").with_source(io);
        let e = Error::new(ErrorKind::Unexpected, "loading").with_source(inner);
        // `{}` is the error's own text; the causes come from source(), once each.
        assert_eq!(e.to_string(), "unexpected: loading");
        let source = std::error::Error::source(&e).unwrap();
        assert_eq!(source.to_string(), "transient failure: reading");
        assert_eq!(source.source().unwrap().to_string(), "boom");
        assert!(source.source().unwrap().source().is_none());
        // `{:#}` and Report show the chain.
        assert_eq!(
            format!("{e:#}"),
            "unexpected: loading: transient failure: reading: boom"
        );
        assert_eq!(Report(&e).to_string(), format!("{e:#}"));
    }
}
