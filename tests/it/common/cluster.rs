//! A throwaway PostgreSQL cluster for tests that restart, kill or starve the database: `initdb`
//! and `pg_ctl` from the machine's PostgreSQL installation, a temporary directory, a free
//! loopback port, `fsync=on`. Run as the `postgres` user when the tests run as root (PostgreSQL
//! refuses root). Stopped, and its directory removed, when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The directory holding `initdb` and `pg_ctl`: `CCC_ETL_PG_BIN`, else `pg_config --bindir`,
/// else the newest `/usr/lib/postgresql/*/bin`.
fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("CCC_ETL_PG_BIN") {
        return PathBuf::from(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return d;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| r.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").exists());
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) found: install the PostgreSQL server \
             (Debian: apt-get install postgresql) or set CCC_ETL_PG_BIN to their directory"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A command run as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running throwaway cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Cluster {
    /// Initialises and starts a cluster with `settings` (`-c name=value`) on top of `fsync=on`.
    pub fn start(settings: &[(&str, &str)]) -> Cluster {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("ccc-etl-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let owner = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8_lossy(&owner.stdout)
                .trim()
                .parse()
                .unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_owner(&bin.join("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ])
            .args(["--no-instructions", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = String::from(
            "fsync = on\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             shared_buffers = 16MB\nmax_wal_size = 64MB\n",
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let c = Cluster {
            dir,
            bin,
            port: free_port(),
        };
        c.pg_ctl(&["start", "-w", "-t", "60"]);
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.dir.path().join("server.log");
        let out = as_owner(&self.bin.join("pg_ctl"))
            .args(["-D", self.data().to_str().unwrap()])
            .args(["-l", log.to_str().unwrap()])
            .args(["-o", &format!("-p {}", self.port)])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/{db}`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database.
    pub async fn create_db(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        self.url(name)
    }

    /// `pg_ctl restart -m fast`: connections are closed, the server is back when this returns.
    pub fn restart_fast(&self) {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]);
    }

    /// SIGKILL to the postmaster: the server is gone (its backends exit), as after a crash.
    pub fn kill_postmaster(&self) {
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        // Wait until the port is closed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL still answers after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again (after [`Cluster::kill_postmaster`]): crash recovery runs.
    pub fn start_again(&self) {
        // A killed postmaster leaves its pid file; pg_ctl sees the process is gone.
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "stop",
                "-m",
                "immediate",
            ])
            .output();
    }
}
