//! Binding the unix socket and serving the API until shutdown.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::api::Peer;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path}: another braidd answers on this socket; stop it first")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotSocket { path: PathBuf },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> BindError {
    let path = path.to_path_buf();
    move |source| BindError::Io { path, what, source }
}

/// Bind `path` with permission bits `mode`. A stale socket file (nobody
/// answers on it: braidd was killed) is replaced; a live one is an error.
/// The parent directory is created (0755) if missing. Must be called
/// inside a tokio runtime.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotSocket { path: path.to_path_buf() });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse { path: path.to_path_buf() });
        }
        std::fs::remove_file(path).map_err(io(path, "removing the stale socket"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir, "creating the socket's directory"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io(dir, "setting the directory's mode"))?;
        }
    }
    let listener = UnixListener::bind(path).map_err(io(path, "binding"))?;
    // Until this chmod the socket has the umask's bits; peers are also
    // checked by their credentials, so that window admits no one else.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(path, "setting the socket's mode"))?;
    Ok(listener)
}

/// Serve `app` on `listener` until `shutdown` completes; requests in
/// flight are answered first.
pub async fn serve(
    listener: UnixListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(shutdown)
        .await
}
