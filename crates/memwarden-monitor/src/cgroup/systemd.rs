//! A systemd transient scope for memwarden, where systemd runs as the cgroup manager.
//!
//! When memwarden shares its v2 cgroup with processes it cannot move (the shell that started
//! it), systemd can: `StartTransientUnit` with `PIDs=` moves memwarden (and its own
//! children) into a new scope `memwarden-PID.scope`, and `Delegate=yes` hands that scope's
//! cgroup to memwarden with the controllers its slice offers. memwarden is then alone in its
//! cgroup and can make room for the command's cgroup as usual. The request goes through
//! `busctl` (systemd's own D-Bus client) rather than a D-Bus library, the same call
//! `systemd-run --scope` makes for itself.
//!
//! The scope leaves the cgroup memwarden was started in. When that cgroup is a unit of the
//! same systemd instance, the scope is made `PartOf=` it, so that stopping that unit stops
//! the run too. `MEMWARDEN_NO_SYSTEMD_SCOPE=1` turns the whole thing off.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Cgroup, Version};

/// Asks a service manager for a scope of memwarden's own.
pub(crate) trait ServiceManager {
    /// Why no scope can be had here (a clause), or `None` when it is worth asking.
    fn unavailable(&self) -> Option<String>;
    /// Moves `pids` into a new transient scope `unit` with `Delegate=yes`, and returns the
    /// scope's memory cgroup. `from` is memwarden's cgroup before the move. The error is a
    /// clause saying why it did not work.
    fn move_into_scope(&self, unit: &str, pids: &[i32], from: &Cgroup) -> Result<Cgroup, String>;
}

/// systemd on this machine: the system instance for root, the user's instance otherwise.
pub(crate) struct Systemd {
    user: Option<u32>,
}

impl Systemd {
    /// The instance memwarden would talk to.
    pub(crate) fn detect() -> Systemd {
        // SAFETY: geteuid has no preconditions and cannot fail.
        #[allow(unsafe_code)]
        let uid = unsafe { libc::geteuid() };
        Systemd {
            user: (uid != 0).then_some(uid),
        }
    }
}

/// How long systemd gets to answer and to move memwarden.
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(5);

impl ServiceManager for Systemd {
    fn unavailable(&self) -> Option<String> {
        if std::env::var_os("MEMWARDEN_NO_SYSTEMD_SCOPE").is_some_and(|v| v == "1") {
            return Some("MEMWARDEN_NO_SYSTEMD_SCOPE=1 is set".to_owned());
        }
        // sd_booted(3): systemd is the init system and manages cgroups.
        if !Path::new("/run/systemd/system").is_dir() {
            return Some("systemd is not running here (no /run/systemd/system)".to_owned());
        }
        if self.user.is_some() {
            let bus = std::env::var_os("XDG_RUNTIME_DIR")
                .map(|dir| Path::new(&dir).join("bus"))
                .filter(|bus| bus.exists());
            if bus.is_none() && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
                return Some(
                    "systemd's user instance is not reachable (no $XDG_RUNTIME_DIR/bus and no \
                     DBUS_SESSION_BUS_ADDRESS)"
                        .to_owned(),
                );
            }
        }
        if !on_path("busctl") {
            return Some("busctl (part of systemd) is not on PATH".to_owned());
        }
        None
    }

    fn move_into_scope(&self, unit: &str, pids: &[i32], from: &Cgroup) -> Result<Cgroup, String> {
        let part_of = unit_to_follow(&from.path, self.user);
        let args = scope_request(self.user.is_some(), unit, pids, part_of.as_deref());
        let output = Command::new("busctl")
            .args(&args)
            .output()
            .map_err(|e| format!("busctl could not be run: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "systemd refused the transient scope {unit}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        // The job runs asynchronously: wait until the kernel shows memwarden in the scope.
        let deadline = Instant::now() + SYSTEMD_TIMEOUT;
        loop {
            let here = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            if unified_path(&here).is_some_and(|p| p.ends_with(&format!("/{unit}"))) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "systemd started {unit} but did not move memwarden into it within {} s",
                    SYSTEMD_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match super::current() {
            Some(scope) if scope.version == Version::V2 && scope.path.ends_with(unit) => Ok(scope),
            _ => Err(format!(
                "the systemd scope {unit} has no memory controller (its slice does not enable \
                 memory for its children)"
            )),
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The v2 path in `/proc/PID/cgroup` text.
fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// The unit whose cgroup memwarden leaves, when the same systemd instance manages it: the
/// last component of `path` when it is a service or scope (`.slice`s hold no processes).
/// The system instance manages everything outside `user@UID.service`; a user instance only
/// what is below its own.
pub(crate) fn unit_to_follow(path: &str, user: Option<u32>) -> Option<String> {
    let unit = path.rsplit('/').next()?;
    if !(unit.ends_with(".service") || unit.ends_with(".scope")) {
        return None;
    }
    let same_instance = match user {
        None => !path.contains("/user@"),
        Some(uid) => path.contains(&format!("/user@{uid}.service/")),
    };
    same_instance.then(|| unit.to_owned())
}

/// `busctl` arguments for `StartTransientUnit(name, mode, properties, aux)` creating scope
/// `unit` with `pids` in it.
pub(crate) fn scope_request(
    user: bool,
    unit: &str,
    pids: &[i32],
    part_of: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        if user { "--user" } else { "--system" },
        "--timeout=5",
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        unit,
        "fail",
    ]
    .map(str::to_owned)
    .to_vec();
    let own = pids.first().copied().unwrap_or_default();
    let mut properties: Vec<Vec<String>> = Vec::new();
    let mut pid_property = vec!["PIDs".to_owned(), "au".to_owned(), pids.len().to_string()];
    pid_property.extend(pids.iter().map(i32::to_string));
    properties.push(pid_property);
    properties.push(["Delegate", "b", "true"].map(str::to_owned).to_vec());
    properties.push(
        ["CollectMode", "s", "inactive-or-failed"]
            .map(str::to_owned)
            .to_vec(),
    );
    properties.push(vec![
        "Description".to_owned(),
        "s".to_owned(),
        format!("memwarden run (pid {own})"),
    ]);
    if let Some(unit) = part_of {
        properties.push(["PartOf", "as", "1", unit].map(str::to_owned).to_vec());
    }
    args.push(properties.len().to_string());
    args.extend(properties.into_iter().flatten());
    args.push("0".to_owned());
    args
}
