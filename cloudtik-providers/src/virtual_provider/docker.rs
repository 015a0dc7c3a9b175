//! The Docker Engine client of the virtual provider and the mapping of its errors to
//! [`ErrorKind`]s.

use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use cloudtik_core::{Error, ErrorKind, Result};
use tokio::sync::OnceCell;

/// Seconds one Engine API request may take.
const REQUEST_TIMEOUT_SECONDS: u64 = 120;

/// A lazily connected client: the first call connects and negotiates the API version
/// (the daemon may be older than bollard's default version); a failed connect is tried
/// again by the next call.
#[derive(Debug)]
pub(crate) struct DockerClient {
    socket: PathBuf,
    client: OnceCell<Docker>,
}

impl DockerClient {
    pub(crate) fn new(socket: PathBuf) -> Self {
        DockerClient {
            socket,
            client: OnceCell::new(),
        }
    }

    /// The connected client; a failure to connect names `operation`.
    pub(crate) async fn get(&self, operation: &'static str) -> Result<&Docker> {
        self.client
            .get_or_try_init(|| async {
                let path = self.socket.to_string_lossy().into_owned();
                let docker =
                    Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
                        .map_err(|e| map_error(e, &self.socket, operation))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| map_error(e, &self.socket, operation))
            })
            .await
    }

    /// Maps an error of a call on this client.
    pub(crate) fn error(&self, e: DockerError, operation: &'static str) -> Error {
        map_error(e, &self.socket, operation)
    }
}

/// The HTTP status of a daemon's error answer.
pub(crate) fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// True for a daemon answer with this status.
pub(crate) fn is_status(e: &DockerError, status: u16) -> bool {
    status_of(e) == Some(status)
}

fn unreachable(socket: &Path, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Transient,
        format!(
            "Docker is not reachable at {}: {detail}. Start the Docker daemon (`sudo systemctl start docker`, \
             or `sudo dockerd &` where there is no systemd), or point provider.docker_socket (or DOCKER_HOST=unix://...) \
             at its socket",
            socket.display()
        ),
    )
}

/// Maps a bollard error to the SDK's error, saying what to do where that is known.
pub(crate) fn map_error(e: DockerError, socket: &Path, operation: &'static str) -> Error {
    let err = match &e {
        DockerError::SocketNotFoundError(path) => {
            return unreachable(socket, format!("the socket {path} does not exist"))
                .with_operation(operation);
        }
        DockerError::DockerResponseServerError { status_code, message } => {
            let lower = message.to_ascii_lowercase();
            let kind = if lower.contains("no available ipv4 addresses")
                || lower.contains("no available addresses")
                || lower.contains("cannot allocate memory")
                || lower.contains("no space left")
                || lower.contains("range of cpus")
                || lower.contains("minimum memory limit")
            {
                ErrorKind::Capacity
            } else {
                match status_code {
                    404 => ErrorKind::NotFound,
                    409 => ErrorKind::Conflict,
                    400 => ErrorKind::InvalidConfig,
                    401 => ErrorKind::Unauthenticated,
                    403 => ErrorKind::PermissionDenied,
                    429 => ErrorKind::RateLimited,
                    500..=599 => ErrorKind::Transient,
                    _ => ErrorKind::Unexpected,
                }
            };
            Error::new(kind, format!("Docker answered {status_code}: {}", message.trim()))
        }
        DockerError::RequestTimeoutError => Error::new(ErrorKind::Timeout, "the Docker request timed out"),
        _ => match io_kind(&e) {
            Some(std::io::ErrorKind::PermissionDenied) => Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "no permission to use the Docker socket {}: run as root or add your user to the `docker` group \
                     (`sudo usermod -aG docker $USER`, then log in again)",
                    socket.display()
                ),
            ),
            Some(
                std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe,
            ) => unreachable(socket, "nothing answers on the socket"),
            _ => Error::new(ErrorKind::Transient, "talking to Docker failed"),
        },
    };
    err.with_operation(operation).with_source(e)
}

/// The kind of the I/O error somewhere in `e`'s source chain.
fn io_kind(e: &DockerError) -> Option<std::io::ErrorKind> {
    if let DockerError::IOError { err } = e {
        return Some(err.kind());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_answers_map_to_kinds() {
        let socket = Path::new("/var/run/docker.sock");
        let answer = |status_code: u16, message: &str| DockerError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        };
        assert_eq!(
            map_error(answer(404, "No such image: x"), socket, "t").kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            map_error(answer(409, "name in use"), socket, "t").kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            map_error(
                answer(
                    500,
                    "no available IPv4 addresses on this network's address pools: cloudtik-x"
                ),
                socket,
                "t"
            )
            .kind(),
            ErrorKind::Capacity
        );
        assert_eq!(
            map_error(
                answer(
                    400,
                    "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
                ),
                socket,
                "t"
            )
            .kind(),
            ErrorKind::Capacity
        );
        let e = map_error(answer(503, "busy"), socket, "t");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.is_retryable());
    }

    #[test]
    fn a_missing_socket_says_how_to_start_docker() {
        let e = map_error(
            DockerError::SocketNotFoundError("/nowhere/docker.sock".into()),
            Path::new("/nowhere/docker.sock"),
            "list_nodes",
        );
        let text = e.to_string();
        assert!(
            text.contains("Docker is not reachable at /nowhere/docker.sock"),
            "{text}"
        );
        assert!(text.contains("systemctl start docker"), "{text}");
        assert_eq!(e.operation(), Some("list_nodes"));
    }
}
