//! Unix-socket listeners HAProxy can reach: file mode, owner and group of the socket file.
//!
//! HAProxy connects to a Unix socket as its own user (often `haproxy`), so the socket file
//! must be writable by that user: give it to HAProxy's group with mode `0660`, say.
//!
//! ```no_run
//! use spoa_runtime::unix_socket::{SocketPermissions, bind};
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let perms = SocketPermissions { mode: Some(0o660), owner: None, group: Some("haproxy".into()) };
//! let listener = bind("/run/spoa/agent.sock".as_ref(), &perms)?; // a tokio UnixListener
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode, owner and group to give a socket file; `None` keeps what `bind` produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketPermissions {
    /// File mode bits, e.g. `0o660`.
    pub mode: Option<u32>,
    /// A user name or numeric uid.
    pub owner: Option<String>,
    /// A group name or numeric gid.
    pub group: Option<String>,
}

/// Why a socket could not be made accessible.
#[derive(Debug)]
pub struct PermissionError {
    /// The socket file.
    pub path: PathBuf,
    /// What was attempted, e.g. `give it to group haproxy`.
    pub action: String,
    /// The cause.
    pub source: io::Error,
}

impl fmt::Display for PermissionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} on the socket {}: {}",
            self.action,
            self.path.display(),
            self.source
        )?;
        if self.source.kind() == io::ErrorKind::PermissionDenied {
            f.write_str(
                " (changing the owner needs root; changing the group needs membership in it)",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PermissionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Looks a user or group up in `/etc/passwd` or `/etc/group` (numeric ids pass through).
fn lookup(file: &str, name: &str) -> io::Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let _pw = f.next()?;
            let id = f.next()?.parse().ok()?;
            (n == name).then_some(id)
        })
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no such entry in {file}")))
}

/// Applies `perms` to the socket file at `path`.
pub fn apply(path: &Path, perms: &SocketPermissions) -> Result<(), PermissionError> {
    let err = |action: String| {
        move |source| PermissionError {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let uid = perms
        .owner
        .as_deref()
        .map(|u| lookup("/etc/passwd", u).map_err(err(format!("find user {u}"))))
        .transpose()?;
    let gid = perms
        .group
        .as_deref()
        .map(|g| lookup("/etc/group", g).map_err(err(format!("find group {g}"))))
        .transpose()?;
    if uid.is_some() || gid.is_some() {
        let what = match (&perms.owner, &perms.group) {
            (Some(u), Some(g)) => format!("give it to {u}:{g}"),
            (Some(u), None) => format!("give it to user {u}"),
            (None, Some(g)) => format!("give it to group {g}"),
            (None, None) => unreachable!("one is set"),
        };
        std::os::unix::fs::chown(path, uid, gid).map_err(err(what))?;
    }
    if let Some(mode) = perms.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(err(format!("set mode {mode:o}")))?;
    }
    Ok(())
}

/// Binds a tokio `UnixListener` at `path` and applies `perms`; on failure the socket file is
/// removed again. Call it inside a tokio runtime.
pub fn bind(
    path: &Path,
    perms: &SocketPermissions,
) -> Result<tokio::net::UnixListener, Box<dyn std::error::Error + Send + Sync>> {
    let l = tokio::net::UnixListener::bind(path)?;
    if let Err(e) = apply(path, perms) {
        drop(l);
        let _ = std::fs::remove_file(path);
        return Err(Box::new(e));
    }
    Ok(l)
}

/// Parses an octal mode such as `660` or `0o660`.
///
/// ```
/// assert_eq!(spoa_runtime::unix_socket::parse_mode("0660"), Ok(0o660));
/// assert!(spoa_runtime::unix_socket::parse_mode("999").is_err());
/// ```
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid mode {s:?}: octal digits expected, e.g. 660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_errors() {
        assert_eq!(lookup("/etc/passwd", "0").unwrap(), 0);
        assert_eq!(lookup("/etc/passwd", "root").unwrap(), 0);
        assert!(lookup("/etc/group", "no-such-group-spoa").is_err());
        let p = std::env::temp_dir().join(format!("spoa-perm-{}", std::process::id()));
        std::fs::write(&p, b"").unwrap();
        apply(
            &p,
            &SocketPermissions {
                mode: Some(0o640),
                ..SocketPermissions::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let e = apply(
            &p,
            &SocketPermissions {
                group: Some("no-such-group-spoa".into()),
                ..SocketPermissions::default()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot find group no-such-group-spoa"),
            "{e}"
        );
        let _ = std::fs::remove_file(p);
    }
}
