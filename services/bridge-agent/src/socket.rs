//! The gateway-facing Unix socket, owned by one bridge-agent at a time, never clobbering
//! anything that is not ours. A lock file beside it (`<socket>.lock`, an exclusive `flock` held
//! for as long as the socket is served) says which process owns the path: a starting bridge-agent
//! that cannot take the lock leaves everything alone, so it never removes a live one's socket. The
//! socket file's device and inode say which file is this process's: one that stops removes the
//! file only if it is still the one it bound. A bridge-agent started right after another was
//! stopped waits up to [`TAKEOVER_WAIT`] for it to let go.
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

use crate::Error;

/// The socket this process serves on, with the lock that makes it its own.
#[derive(Debug)]
pub struct OwnedSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file bound.
    file: (u64, u64),
    /// Held (locked) while the socket is served; released with it.
    _lock: File,
}

impl OwnedSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Stops serving: closes the listener, removes the socket file if it is still the one bound
    /// here, and lets go of the lock, so that the next bridge-agent may bind at once.
    pub fn release(self) {
        let OwnedSocket {
            listener,
            path,
            file,
            _lock,
        } = self;
        drop(listener);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == file => {
                if let Err(err) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %err, "could not remove the socket file");
                }
            }
            Ok(_) => {
                tracing::info!(path = %path.display(), "the socket path holds another file now; left alone")
            }
            Err(_) => {}
        }
    }
}

/// How long a starting bridge-agent waits for the one that holds the socket's lock (one that was
/// just stopped or killed, and is exiting) before it gives up.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The lock file of `socket`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Binds `path`, creating its parent (mode 0700) when missing. Refused untouched when another
/// bridge-agent still holds the path's lock after `wait`, or something still answers on the
/// socket; a stale socket left by a crash is replaced; a path that is not a socket is refused
/// untouched. The socket is 0600 before anyone can connect to it: only the gateway's user may
/// talk to it, even in a shared directory such as `/tmp` ([`bind_private`]).
pub async fn bind_socket(path: &Path, wait: Duration) -> Result<OwnedSocket, Error> {
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
    let lock = open_lock(&lock_path(path)).map_err(io_err)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::AlreadyListening(path.to_owned()))
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(io_err(err)),
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                // A bridge-agent that takes no lock (an older one) is serving on it.
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
    let listener = bind_private(path).map_err(io_err)?;
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    Ok(OwnedSocket {
        listener,
        path: path.to_owned(),
        file: (meta.dev(), meta.ino()),
        _lock: lock,
    })
}

/// Opens (creating it 0600) the lock file at `path`: never through a symbolic link, and never one
/// that others may open (in a shared directory someone else could have put it there).
fn open_lock(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "the lock file {} is not a private regular file (mode {:o}); remove it",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(file)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    async fn bind(path: &Path) -> Result<OwnedSocket, Error> {
        bind_socket(path, Duration::ZERO).await
    }

    #[tokio::test]
    async fn creates_a_private_parent_and_a_0600_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/sub/bridge.sock");
        let _socket = bind(&path).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&lock_path(&path)), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[tokio::test]
    async fn the_socket_is_private_before_it_appears_even_in_a_shared_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o1777)).unwrap();
        let path = dir.path().join("bridge.sock");
        let socket = bind(&path).await.unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.nlink(), 1, "the staging link is gone");
        // Nothing but the socket and its lock is left beside it, and it answers.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                std::ffi::OsString::from("bridge.sock"),
                std::ffi::OsString::from("bridge.sock.lock")
            ]
        );
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = socket.listener().accept().await.unwrap();
    }

    #[tokio::test]
    async fn a_lock_file_others_may_open_or_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        fs::write(lock_path(&path), b"").unwrap();
        fs::set_permissions(lock_path(&path), Permissions::from_mode(0o666)).unwrap();
        let err = bind(&path).await.unwrap_err();
        assert!(
            err.to_string().contains("not a private regular file"),
            "{err}"
        );
        fs::remove_file(lock_path(&path)).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, lock_path(&path)).unwrap();
        assert!(bind(&path).await.is_err());
        assert!(!elsewhere.exists(), "nothing created through the link");
    }

    #[tokio::test]
    async fn replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let socket = bind(&path).await.unwrap();
        // The new socket answers.
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = socket.listener().accept().await.unwrap();
    }

    #[tokio::test]
    async fn refuses_a_path_another_owns_and_leaves_its_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        let live = bind(&path).await.unwrap();
        let err = bind_socket(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyListening(_)), "{err}");
        assert!(err
            .to_string()
            .contains("another bridge-agent is already listening"));
        // The live one still serves on its file.
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = live.listener().accept().await.unwrap();
        // An older bridge-agent without the lock, live on the socket, is not replaced either.
        live.release();
        let older = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            bind(&path).await.unwrap_err(),
            Error::AlreadyListening(_)
        ));
        drop(older);
    }

    #[tokio::test]
    async fn a_starting_one_waits_for_the_one_that_is_letting_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        let old = bind(&path).await.unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            old.release();
        });
        let new = bind_socket(&path, TAKEOVER_WAIT).await.unwrap();
        release.await.unwrap();
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = new.listener().accept().await.unwrap();
    }

    #[tokio::test]
    async fn releasing_removes_only_the_file_bound_here() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        let first = bind(&path).await.unwrap();
        first.release();
        assert!(!path.exists());
        // The next one binds at once; a socket put there since by someone else stays.
        let second = bind(&path).await.unwrap();
        fs::remove_file(&path).unwrap();
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        second.release();
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        drop(other);
    }

    #[tokio::test]
    async fn refuses_a_regular_file_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.sock");
        fs::write(&path, b"precious").unwrap();
        let err = bind(&path).await.unwrap_err();
        assert!(matches!(err, Error::NotASocket(_)), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }
}
