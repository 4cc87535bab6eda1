//! Binding the gateway-facing Unix socket without clobbering anything that is not ours.
use std::fs::{self, DirBuilder, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::Error;

/// Binds `path`, creating its parent (mode 0700) when missing. A stale socket left by a crash is
/// replaced; a socket something still answers on, or a path that is not a socket, is refused
/// untouched. The socket is 0600 before anyone can connect to it: only the gateway's user may
/// talk to it, even in a shared directory such as `/tmp` ([`bind_private`]).
///
/// Must be called from within a Tokio runtime.
pub fn bind_socket(path: &Path) -> Result<UnixListener, Error> {
    let io_err = |source| Error::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err)?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(Error::AlreadyListening(path.to_owned())),
                // Nobody listens: a previous run died without cleaning up.
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale socket file");
                    fs::remove_file(path).map_err(io_err)?;
                }
                Err(err) => return Err(io_err(err)),
            }
        }
        Ok(_) => return Err(Error::NotASocket(path.to_owned())),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(err)),
    }
    bind_private(path).map_err(io_err)
}

/// Binds the socket in a fresh 0700 directory beside `path`, where no other user can reach it,
/// makes it 0600, and only then links it at `path` (a link never replaces anything: something
/// that appeared there meanwhile is an error, not clobbered). Binding at `path` and changing the
/// mode afterwards would leave a moment in which anyone could connect. The staging directory's
/// name is as long as `/bridge.sock`, so the staged path fits where the final one does.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(".bs{:06x}", rand::random::<u32>() & 0xff_ffff));
    DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        fs::set_permissions(&staged, Permissions::from_mode(0o600))?;
        fs::hard_link(&staged, path)?;
        Ok(listener)
    })();
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&staging);
    bound
}

/// Removes the socket file when it is still a socket (never anything else put there since).
pub fn remove_socket(path: &Path) {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(err) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), %err, "could not remove the socket file");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn creates_a_private_parent_and_a_0600_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/sub/bridge.sock");
        let _listener = bind_socket(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[tokio::test]
    async fn the_socket_is_private_before_it_appears_even_in_a_shared_directory() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o1777)).unwrap();
        let path = dir.path().join("bridge.sock");
        let listener = bind_socket(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.nlink(), 1, "the staging link is gone");
        // Nothing but the socket is left beside it, and it answers.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("bridge.sock")]);
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = listener.accept().await.unwrap();
    }

    #[tokio::test]
    async fn replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let listener = bind_socket(&path).unwrap();
        // The new socket answers.
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = listener.accept().await.unwrap();
    }

    #[tokio::test]
    async fn refuses_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        let _live = bind_socket(&path).unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, Error::AlreadyListening(_)), "{err}");
        assert!(err
            .to_string()
            .contains("another bridge-agent is already listening"));
    }

    #[tokio::test]
    async fn refuses_a_regular_file_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        fs::write(&path, b"precious").unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, Error::NotASocket(_)), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn remove_leaves_non_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        fs::write(&path, b"x").unwrap();
        remove_socket(&path);
        assert!(path.exists());
        let sock = dir.path().join("s.sock");
        let _l = bind_socket(&sock).unwrap();
        remove_socket(&sock);
        assert!(!sock.exists());
    }
}
