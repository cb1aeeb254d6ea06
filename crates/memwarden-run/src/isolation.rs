//! The command's own memory cgroup, and how a hard limit is enforced.
//!
//! With `--cgroup auto` (the default) the command runs in a child cgroup of memwarden's
//! own, created for the run: its peak counter gives the exact peak of the whole tree, its
//! OOM counter says whether the kernel killed anything, and with `--hard-limit` the kernel
//! enforces the limit. Where the kernel refuses (no memory controller, a read-only cgroup
//! filesystem, v2 without delegation), the run goes on without, and a hard limit falls back
//! to the watchdog; the report says so and why.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use memwarden_format::report::Enforcement;
use memwarden_monitor::cgroup::{self, Cgroup};

use crate::config::CgroupMode;

/// The cgroups of a run.
#[derive(Debug)]
pub struct Isolation {
    /// The cgroup memwarden itself runs in (its limit is the container's).
    pub enclosing: Option<Cgroup>,
    /// The cgroup created for the command.
    pub own: Option<Cgroup>,
    join: Option<File>,
    /// How `--hard-limit` is enforced.
    pub enforcement: Enforcement,
    /// Why the command has no cgroup of its own, when it has none.
    pub note: Option<String>,
}

impl Isolation {
    /// Sets up the run's cgroup per `mode`. Fails only when `mode` is `require` and the
    /// kernel refuses.
    pub fn prepare(mode: CgroupMode, hard_limit_bytes: Option<u64>) -> Result<Isolation, String> {
        let enclosing = cgroup::current();
        let mut isolation = Isolation {
            enclosing,
            own: None,
            join: None,
            enforcement: Enforcement::None,
            note: None,
        };
        let refused = match (mode, &isolation.enclosing) {
            (CgroupMode::Off, _) => Some("--cgroup off".to_owned()),
            (_, None) => {
                Some("no memory cgroup controller is mounted and visible to memwarden".to_owned())
            }
            (_, Some(enclosing)) => {
                let name = format!("memwarden-{}", std::process::id());
                match enclosing.create_child(&name, hard_limit_bytes) {
                    Ok(own) => match own.open_procs_for_join() {
                        Ok(join) => {
                            // On v2, memwarden may have moved itself into a systemd scope
                            // to make room: its limits are the scope's from now on.
                            if own.delegation().is_some_and(|d| d.systemd_scope.is_some()) {
                                isolation.enclosing = cgroup::current();
                            }
                            isolation.own = Some(own);
                            isolation.join = Some(join);
                            None
                        }
                        Err(e) => {
                            let _ = own.remove(enclosing);
                            Some(e.to_string())
                        }
                    },
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        if let Some(reason) = refused {
            if mode == CgroupMode::Require {
                return Err(format!(
                    "--cgroup require: the command cannot get a memory cgroup of its own: {reason}"
                ));
            }
            isolation.note = Some(match hard_limit_bytes {
                Some(_) => format!("no cgroup of its own for the command ({reason}): the hard limit is enforced by memwarden's watchdog"),
                None => format!("no cgroup of its own for the command ({reason})"),
            });
        }
        if hard_limit_bytes.is_some() {
            isolation.enforcement = if isolation.own.is_some() {
                Enforcement::Cgroup
            } else {
                Enforcement::Watchdog
            };
        }
        Ok(isolation)
    }

    /// The descriptor the command writes itself into before exec, when it has a cgroup.
    pub fn join_fd(&self) -> Option<RawFd> {
        self.join.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Removes the run's cgroup; a failure becomes a warning.
    pub fn cleanup(&mut self) -> Option<String> {
        self.join = None;
        let (own, enclosing) = (self.own.as_ref()?, self.enclosing.as_ref()?);
        own.remove(enclosing).err().map(|e| match e {
            // The run's cgroup is gone; memwarden stays in its leaf for a concurrent run.
            cgroup::CgroupError::LeftDelegated { .. } => e.to_string(),
            e => format!("the run's cgroup was left behind: {e}"),
        })
    }
}
