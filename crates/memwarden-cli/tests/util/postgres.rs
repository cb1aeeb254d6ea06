//! A real PostgreSQL server per test: its own cluster in a temporary directory, on a free
//! loopback port, with password authentication, stopped when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A running server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `postgres://postgres:secret@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MEMWARDEN_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn as_postgres(program: PathBuf) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

impl PgServer {
    /// Starts a server, or says loudly why it cannot ([`super::skip`]: a failure under
    /// scripts/test.sh, which installs PostgreSQL).
    pub fn start(test: &str) -> Option<PgServer> {
        let skip = |why: &str| -> Option<PgServer> {
            super::skip(test, &format!("needs PostgreSQL: {why}"));
            None
        };
        let Some(bin) = bin_dir() else {
            return skip("no PostgreSQL binaries (initdb, pg_ctl) found");
        };
        if Command::new("id")
            .arg("postgres")
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return skip("no 'postgres' system user to run the server as");
        }
        let dir = tempfile::Builder::new()
            .prefix("memwarden-pg-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("pw"), "secret\n").expect("password file");
        let chown = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let initdb = as_postgres(bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "-A", "scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", dir.path().join("pw").display()))
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let server = PgServer {
            url: format!("postgres://postgres:secret@127.0.0.1:{port}/postgres"),
            dir,
            bin,
            port,
        };
        server.start_again();
        Some(server)
    }

    /// Starts the (stopped) server.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=120",
            self.port,
            self.dir.path().display()
        );
        let started = as_postgres(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &options, "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    /// Stops the server (fast shutdown: open sessions are closed).
    pub fn stop(&self) {
        let _ = as_postgres(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }

    /// The URL with another password.
    pub fn url_with_password(&self, password: &str) -> String {
        self.url.replace(":secret@", &format!(":{password}@"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
