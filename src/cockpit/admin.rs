//! Cockpit's administrative access for single sign-on users, who have no password for the
//! sudo prompt behind "Turn on administrative access".
//!
//! Cockpit starts its privileged bridge from the user's own, unprivileged bridge with
//! `sudo -k -A cockpit-bridge --privileged`; channels opened with `"superuser": "require"`
//! run there. portcullis keeps that path, and with it Cockpit's privilege separation, and
//! only decides who passes sudo's authentication:
//!
//! 1. The Cockpit login token of a user in one of the route's `admin_groups` carries
//!    `"adm": true` (decided at each Cockpit login from the IdP's groups).
//! 2. `pam-verify --admin-grants DIR`, run as root by cockpit-session's PAM stack, records a
//!    grant for that cockpit-session process, the parent of the user's bridge: the file
//!    `DIR/PID-STARTTIME` names the account and the process's executable. A grant dies with
//!    its process: a pid used again has another start time, hence another name.
//! 3. A sudoers drop-in ([`sudoers`]) sends `cockpit-bridge --privileged`, and only that
//!    command, through its own PAM service ([`pam_service`]), whose first line runs
//!    `portcullis pam-admin` ([`check`]): it succeeds when a process above sudo holds a grant
//!    for `PAM_USER`, that is, when sudo runs inside a Cockpit session that portcullis logged
//!    in with administrative access. Anyone else falls through to what sudo asked before:
//!    a member of the fallback group (`sudo`) with their own password.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The PAM service `sudoers` points the privileged bridge at.
pub const DEFAULT_PAM_SERVICE: &str = "portcullis-cockpit-admin";
/// Cockpit's bridge, as its shell manifest runs it through sudo.
pub const DEFAULT_BRIDGE: &str = "/usr/bin/cockpit-bridge";
/// Where grants live by default: under the replay directory, root-only, gone at reboot.
pub const DEFAULT_GRANTS_DIR: &str = "/run/portcullis-pam/admin";
/// How far up the process tree a grant is looked for (sudo, the bridge, cockpit-session).
const MAX_DEPTH: usize = 64;

/// One grant: the Cockpit session process it belongs to, and whose it is.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Grant {
    account: String,
    /// The session process's executable (cockpit-session), as /proc showed it.
    exe: PathBuf,
}

/// Why administrative access is refused (a line on stderr; the exit code is non-zero).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("PAM_USER is not set")]
    NoUser,
    #[error("no Cockpit session above this process grants administrative access to {0:?}")]
    NoGrant(String),
    #[error("the grants directory {0} is not private to this user: refusing its grants")]
    UnsafeDir(PathBuf),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The parent pid and start time (clock ticks since boot) of process `pid`.
fn stat(pid: u32) -> io::Result<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold anything: read after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state, ppid, ..., starttime (field 22 of the whole line).
    let ppid = fields.get(1).and_then(|f| f.parse().ok());
    let start = fields.get(19).and_then(|f| f.parse().ok());
    match (ppid, start) {
        (Some(ppid), Some(start)) => Ok((ppid, start)),
        _ => Err(io::Error::other("malformed /proc stat")),
    }
}

fn exe(pid: u32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

fn grant_name(pid: u32, start: u64) -> String {
    format!("{pid}-{start}")
}

/// Makes the grants directory (mode 0700) if needed, and refuses one another user could write.
fn private_dir(dir: &Path) -> Result<(), AdminError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        return Err(AdminError::UnsafeDir(dir.to_path_buf()));
    }
    Ok(())
}

/// Records that the Cockpit session process `session_pid` may start a privileged bridge
/// for `account`, and sweeps the grants of sessions that are gone.
pub fn grant(dir: &Path, account: &str, session_pid: u32) -> Result<(), AdminError> {
    private_dir(dir)?;
    sweep(dir);
    let (_, start) = stat(session_pid)?;
    let grant = Grant {
        account: account.to_string(),
        exe: exe(session_pid)?,
    };
    let path = dir.join(grant_name(session_pid, start));
    let tmp = dir.join(format!(".{}.tmp", grant_name(session_pid, start)));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    io::Write::write_all(
        &mut file,
        serde_json::to_string(&grant)
            .expect("a grant serializes")
            .as_bytes(),
    )?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Removes the grants whose session process has exited (its pid gone, or used again).
pub fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let live = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, start)| Some((pid.parse::<u32>().ok()?, start.parse::<u64>().ok()?)))
            .is_some_and(|(pid, start)| stat(pid).is_ok_and(|(_, s)| s == start));
        if !live {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `from_pid` or a process above it is a Cockpit session with a grant for
/// `account`; returns that session's pid.
pub fn check(dir: &Path, account: &str, from_pid: u32) -> Result<u32, AdminError> {
    private_dir(dir)?;
    let mut pid = from_pid;
    for _ in 0..MAX_DEPTH {
        if pid <= 1 {
            break;
        }
        let Ok((ppid, start)) = stat(pid) else { break };
        if let Ok(text) = std::fs::read_to_string(dir.join(grant_name(pid, start)))
            && let Ok(grant) = serde_json::from_str::<Grant>(&text)
            && grant.account == account
            && exe(pid).is_ok_and(|e| e == grant.exe)
            // The process may have exited and its pid been reused meanwhile.
            && stat(pid).is_ok_and(|(_, s)| s == start)
        {
            return Ok(pid);
        }
        pid = ppid;
    }
    Err(AdminError::NoGrant(account.to_string()))
}

/// `portcullis pam-admin`: run by `pam_exec` from sudo (our parent), for `PAM_USER`.
pub fn pam_admin_main(dir: &Path) -> Result<(String, u32), AdminError> {
    let user = std::env::var("PAM_USER").map_err(|_| AdminError::NoUser)?;
    if user.is_empty() {
        return Err(AdminError::NoUser);
    }
    sweep(dir);
    let session = check(dir, &user, std::os::unix::process::parent_id())?;
    Ok((user, session))
}

/// The sudoers drop-in (`/etc/sudoers.d/portcullis-cockpit`, mode 0440): Cockpit's
/// privileged bridge, and only that command, authenticates through `service`.
pub fn sudoers(service: &str, bridge: &Path) -> String {
    format!(
        "# Written by `portcullis cockpit-admin sudoers`: Cockpit's administrative access for
# single sign-on users. Cockpit starts its privileged bridge with
# `sudo -k -A cockpit-bridge --privileged`; this sends that one command through the PAM
# service {service}, which lets in the Cockpit sessions portcullis logged in for an admin
# group, and otherwise asks what sudo asked before (see /etc/pam.d/{service}).
# Check with `visudo -c` after installing it.
Cmnd_Alias PORTCULLIS_COCKPIT_BRIDGE = {bridge} --privileged
Defaults!PORTCULLIS_COCKPIT_BRIDGE pam_service={service}, passwd_tries=1, !lecture
ALL ALL=(root) PORTCULLIS_COCKPIT_BRIDGE
",
        bridge = bridge.display()
    )
}

/// The PAM service (`/etc/pam.d/portcullis-cockpit-admin`): a grant, or else (with
/// `fallback_group`) a member of that group with their own password; Debian's includes.
pub fn pam_service(bin: &Path, grants: &Path, fallback_group: Option<&str>) -> String {
    let fallback = match fallback_group {
        Some(group) => format!(
            "# Anyone else: a member of {group} with their own password, as sudo asked before.
auth       requisite    pam_succeed_if.so quiet user ingroup {group}
@include common-auth
"
        ),
        None => "# Anyone else: refused.\nauth       requisite    pam_deny.so\n".to_string(),
    };
    format!(
        "#%PAM-1.0
# Written by `portcullis cockpit-admin pam`: who may start Cockpit's privileged bridge
# (sudo's pam_service for `cockpit-bridge --privileged`, see /etc/sudoers.d/).
# A Cockpit session portcullis logged in for a member of an admin group: no password.
auth       [success=done default=ignore]  pam_exec.so quiet seteuid {bin} pam-admin --grants {grants}
{fallback}@include common-account
@include common-session-noninteractive
",
        bin = bin.display(),
        grants = grants.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-admin-{}-{}",
            std::process::id(),
            crate::crypto::random_token(6)
        ));
        private_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_grant_is_found_from_below_for_its_account_only() {
        let dir = temp_dir();
        let me = std::process::id();
        assert!(matches!(
            check(&dir, "alice", me),
            Err(AdminError::NoGrant(_))
        ));
        grant(&dir, "alice", me).unwrap();
        assert_eq!(check(&dir, "alice", me).unwrap(), me);
        // From a child process: the grant is above it.
        let child = Killed(
            std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap(),
        );
        assert_eq!(check(&dir, "alice", child.0.id()).unwrap(), me);
        // Another account, from the same session: no.
        assert!(check(&dir, "bob", child.0.id()).is_err());
        drop(child);
        std::fs::remove_dir_all(dir).ok();
    }

    /// A child process, killed on drop.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn attack_grants_that_do_not_match_the_process_are_refused_and_swept() {
        let dir = temp_dir();
        let me = std::process::id();
        let (_, start) = stat(me).unwrap();
        // A grant for this pid with another start time: a pid used again.
        let other = Grant {
            account: "alice".into(),
            exe: exe(me).unwrap(),
        };
        std::fs::write(
            dir.join(grant_name(me, start + 1)),
            serde_json::to_string(&other).unwrap(),
        )
        .unwrap();
        assert!(check(&dir, "alice", me).is_err());
        // The right name but another executable: not the session it was granted to.
        let wrong_exe = Grant {
            account: "alice".into(),
            exe: "/usr/lib/cockpit/cockpit-session-not".into(),
        };
        std::fs::write(
            dir.join(grant_name(me, start)),
            serde_json::to_string(&wrong_exe).unwrap(),
        )
        .unwrap();
        assert!(check(&dir, "alice", me).is_err());
        std::fs::write(dir.join(grant_name(me, start)), "not json").unwrap();
        assert!(check(&dir, "alice", me).is_err());
        // An exited process's grant is swept; a live one's stays.
        let child = Killed(
            std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap(),
        );
        grant(&dir, "alice", child.0.id()).unwrap();
        drop(child);
        sweep(&dir);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![grant_name(me, start)], "{left:?}");
        // A directory others can write is not trusted at all.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        grant(&dir, "alice", me).unwrap_err();
        assert!(matches!(
            check(&dir, "alice", me),
            Err(AdminError::UnsafeDir(_))
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_files_name_the_bridge_the_service_and_the_helper() {
        let s = sudoers("portcullis-cockpit-admin", Path::new(DEFAULT_BRIDGE));
        assert!(s.contains(
            "Cmnd_Alias PORTCULLIS_COCKPIT_BRIDGE = /usr/bin/cockpit-bridge --privileged\n"
        ));
        assert!(s.contains(
            "Defaults!PORTCULLIS_COCKPIT_BRIDGE pam_service=portcullis-cockpit-admin, passwd_tries=1, !lecture\n"
        ));
        assert!(s.ends_with("ALL ALL=(root) PORTCULLIS_COCKPIT_BRIDGE\n"));
        let p = pam_service(
            Path::new("/usr/local/bin/portcullis"),
            Path::new(DEFAULT_GRANTS_DIR),
            Some("sudo"),
        );
        let lines: Vec<&str> = p.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            vec![
                "auth       [success=done default=ignore]  pam_exec.so quiet seteuid /usr/local/bin/portcullis pam-admin --grants /run/portcullis-pam/admin",
                "auth       requisite    pam_succeed_if.so quiet user ingroup sudo",
                "@include common-auth",
                "@include common-account",
                "@include common-session-noninteractive",
            ]
        );
        let none = pam_service(Path::new("/p"), Path::new("/g"), None);
        assert!(none.contains("auth       requisite    pam_deny.so\n"));
        assert!(!none.contains("common-auth"));
    }
}
