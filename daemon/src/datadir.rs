//! The state directory: where it is by default (the same rule for `hearthd`
//! and `hearth`), created 0700, refused if it cannot be made private, and
//! helpers that write files with the mode they need from the first byte.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The data dir cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("data dir {path}: {message}")]
pub struct DataDirError {
    /// The directory.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// Where the state lives when neither `--data-dir` nor the config says:
/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `/var/lib/hearth`
/// for root, else `$XDG_STATE_HOME/hearth` (`~/.local/state/hearth`).
/// Never relative to the working directory: a hub started from another
/// directory must find the same CA, not silently make a second household.
pub fn default_dir() -> Result<PathBuf, String> {
    default_dir_for(|key| std::env::var_os(key), effective_uid())
}

/// [`default_dir`] with the environment and user given (for tests).
pub fn default_dir_for(
    env: impl Fn(&str) -> Option<OsString>,
    euid: Option<u32>,
) -> Result<PathBuf, String> {
    // systemd may pass several colon-separated directories; ours is the first.
    if let Some(dirs) = env("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        let dirs = dirs.to_string_lossy().into_owned();
        return Ok(PathBuf::from(dirs.split(':').next().unwrap_or_default()));
    }
    if euid == Some(0) {
        return Ok(PathBuf::from("/var/lib/hearth"));
    }
    // The XDG spec ignores a relative $XDG_STATE_HOME, and so do we.
    if let Some(state) = env("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Ok(state.join("hearth"));
    }
    match env("HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(home) => Ok(home.join(".local/state/hearth")),
        None => Err("no state directory: $HOME is not set; give one with --data-dir".into()),
    }
}

/// The effective user id, read from /proc (no `unsafe` libc call); `None`
/// where /proc is not there, which then counts as an ordinary user.
pub fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved filesystem
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Creates the data dir if needed and makes sure only its owner can enter it.
pub fn prepare(path: &Path) -> Result<(), DataDirError> {
    let fail = |message: String| DataDirError {
        path: path.to_owned(),
        message,
    };
    match fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => return Err(fail("exists and is not a directory".into())),
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "data dir was open to others; setting mode 0700");
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                    .map_err(|e| fail(format!("cannot set mode 0700: {e}")))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| fail(format!("cannot create: {e}")))?;
            // The umask may have narrowed more, never less; make it exact.
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                .map_err(|e| fail(format!("cannot set mode 0700: {e}")))?;
        }
        Err(e) => return Err(fail(format!("cannot inspect: {e}"))),
    }
    // Prove we can write here before anything else depends on it.
    let probe = path.join(".hearth-write-probe");
    write_private(&probe, b"").map_err(|e| fail(format!("not writable: {e}")))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Creates a directory (and its parents) only its owner can enter, if it
/// does not exist yet; an existing one is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))
}

/// Writes a file readable by its owner only (keys, tokens), atomically:
/// a temporary sibling created 0600, synced, then renamed over the target.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, contents, 0o600)
}

/// Writes a public file (certificates) atomically with mode 0644.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, contents, 0o644)
}

/// Writes atomically with `mode` from the first byte; an error names the file.
pub fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomically(path, contents, mode)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_dir_and_tightens_an_open_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn the_default_never_depends_on_the_working_directory() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let home = &[("HOME", "/home/ada")];
        assert_eq!(
            default_dir_for(env(home), Some(1000)).unwrap(),
            PathBuf::from("/home/ada/.local/state/hearth")
        );
        assert_eq!(
            default_dir_for(
                env(&[("HOME", "/home/ada"), ("XDG_STATE_HOME", "/s")]),
                Some(1000)
            )
            .unwrap(),
            PathBuf::from("/s/hearth")
        );
        // A relative XDG_STATE_HOME is ignored, as the spec says.
        assert_eq!(
            default_dir_for(env(&[("HOME", "/h"), ("XDG_STATE_HOME", "rel")]), None).unwrap(),
            PathBuf::from("/h/.local/state/hearth")
        );
        assert_eq!(
            default_dir_for(env(home), Some(0)).unwrap(),
            PathBuf::from("/var/lib/hearth")
        );
        assert_eq!(
            default_dir_for(env(&[("STATE_DIRECTORY", "/var/lib/hearth:/x")]), Some(999)).unwrap(),
            PathBuf::from("/var/lib/hearth")
        );
        assert!(default_dir_for(env(&[]), Some(1000)).is_err());
        assert!(default_dir_for(env(&[("HOME", "relative")]), Some(1000)).is_err());
    }

    #[test]
    fn the_effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }

    #[test]
    fn a_file_in_the_way_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = prepare(&file).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn private_files_are_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("k");
        write_private(&key, b"secret").unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&key).unwrap(), b"secret");
    }
}
