//! A throw-away PostgreSQL cluster owned by the project.
//!
//! Tests, the demo and the benchmarks need a real server with
//! `wal_level=logical`, and must never depend on one started by hand. Crates
//! that download PostgreSQL (`postgresql_embedded`) or assume a non-root user
//! (`pgtemp`) do not fit this environment, where the binaries are installed but
//! `initdb`/`postgres` refuse to run as root; so this module runs them as the
//! `postgres` system user (through `runuser`) when we are root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{DomainError, Result};

/// Settings that every project-managed cluster gets.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("max_replication_slots", "32"),
    ("max_wal_senders", "32"),
    ("max_connections", "200"),
    ("listen_addresses", "'127.0.0.1'"),
    // The cluster is disposable: a server crash loses the test, not data we own.
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "256MB"),
    ("max_wal_size", "4GB"),
    ("wal_sender_timeout", "60s"),
    ("logging_collector", "off"),
];

/// A running PostgreSQL cluster in a temporary directory, stopped and removed on drop.
#[derive(Debug)]
pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
}

impl PgCluster {
    /// Runs `initdb` in a fresh temporary directory and starts the server on a free port.
    ///
    /// Blocking: call from a blocking context (or `spawn_blocking`); it takes about a second.
    pub fn start() -> Result<Self> {
        Self::start_with(false)
    }

    /// Like [`Self::start`], and with `tls` the server also accepts TLS (a certificate for
    /// `localhost` signed by a throw-away CA, see [`Self::tls_files`]), and the role `secure`
    /// (REPLICATION, LOGIN) may connect over TCP only with TLS. Unix-socket logins are
    /// allowed for everyone.
    pub fn start_with(tls: bool) -> Result<Self> {
        let bindir = find_bindir()?;
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("bitvelocity-pg-")
            .tempdir()?;
        if as_postgres {
            run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(dir.path()),
                "chown",
            )?;
        }
        let data = dir.path().join("data");
        let mut cluster = PgCluster {
            dir: Some(dir),
            data,
            bindir,
            port: 0,
            as_postgres,
            stopped: true,
        };
        let mut initdb = cluster.command("initdb");
        initdb.arg("-D").arg(&cluster.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]);
        run(&mut initdb, "initdb")?;
        let mut conf = String::from("\n# bitvelocity managed cluster\n");
        for (k, v) in SERVER_SETTINGS {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            cluster
                .dir
                .as_ref()
                .map(|d| d.path().display().to_string())
                .unwrap_or_default()
        ));
        if tls {
            let files = cluster.tls_files();
            make_certs(&cluster.data, &files)?;
            if cluster.as_postgres {
                run(
                    Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(cluster.data.join("server.crt"))
                        .arg(cluster.data.join("server.key")),
                    "chown",
                )?;
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            // First match wins: `secure` must use TLS over TCP; everyone else may use either.
            std::fs::write(
                cluster.data.join("pg_hba.conf"),
                "local all all trust\n\
                 local replication all trust\n\
                 hostnossl all secure 127.0.0.1/32 reject\n\
                 hostnossl replication secure 127.0.0.1/32 reject\n\
                 host all all 127.0.0.1/32 trust\n\
                 host replication all 127.0.0.1/32 trust\n",
            )?;
        }
        append(&cluster.data.join("postgresql.conf"), &conf)?;
        // A port can be taken between our probe and the server's bind: retry a few times.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.stopped = false;
                    cluster.wait_ready()?;
                    tracing::info!(port = cluster.port, dir = %cluster.data.display(), "postgres started");
                    return Ok(cluster);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| DomainError::Server("could not start postgres".into())))
    }

    /// The CA that signed the server's certificate, and an unrelated CA (for tests of a
    /// certificate that must be refused); they exist when the cluster was started with TLS.
    pub fn tls_files(&self) -> TlsFiles {
        let dir = self.data.parent().unwrap_or(&self.data);
        TlsFiles {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
        }
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.data.parent().unwrap_or(&self.data).to_path_buf()
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, database)
    }

    /// Directory holding the server's binaries (for `pg_recvlogical`, say).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Creates a database (idempotent).
    pub fn create_database(&self, name: &str) -> Result<()> {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        )?;
        if exists.trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        }
        Ok(())
    }

    /// Runs one SQL command with `psql` as the superuser and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bindir.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(DomainError::Server(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast shutdown) and removes its directory.
    pub fn stop(&mut self) -> Result<()> {
        if !self.stopped {
            let mut c = self.command("pg_ctl");
            c.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]);
            self.stopped = true;
            run(&mut c, "pg_ctl stop")?;
        }
        if let Some(dir) = self.dir.take() {
            dir.close()?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let log = self.data.parent().unwrap_or(&self.data).join("server.log");
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .args(["-w", "-t", "60", "start"]);
        run(&mut c, "pg_ctl start").map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            DomainError::Server(format!("{e}; server log: {tail}"))
        })
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(self.bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()?
                .success();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DomainError::Server(format!(
                    "postgres on port {} not ready after 30 s",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bindir.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping managed postgres");
        }
    }
}

/// Certificate authorities of a TLS cluster, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the server certificate (subject alternative name `localhost`).
    pub ca: PathBuf,
    /// A CA that signed nothing the server holds.
    pub other_ca: PathBuf,
}

/// Writes a CA, a server key and certificate for `localhost` signed by it (into `data`, as
/// the server wants them), and an unrelated CA, with the `openssl` command.
fn make_certs(data: &Path, files: &TlsFiles) -> Result<()> {
    let dir = files.ca.parent().unwrap_or(data);
    let openssl = |args: &[&str]| {
        run(
            Command::new("openssl").current_dir(dir).args(args),
            "openssl (needed for a TLS test cluster)",
        )
    };
    for (key, crt, cn) in [
        ("ca.key", "ca.crt", "bitvelocity test CA"),
        ("other-ca.key", "other-ca.crt", "unrelated CA"),
    ] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            key,
            "-out",
            crt,
        ])?;
    }
    let key = data.join("server.key");
    let csr = dir.join("server.csr");
    let crt = data.join("server.crt");
    let ext = dir.join("server.ext");
    std::fs::write(&ext, "subjectAltName=DNS:localhost\n")?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key.display().to_string(),
        "-out",
        &csr.display().to_string(),
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr.display().to_string(),
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext.display().to_string(),
        "-out",
        &crt.display().to_string(),
    ])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DomainError::Server(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DomainError::Server(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Finds the PostgreSQL server binaries: `$PG_BINDIR`, then `pg_config --bindir`, then Debian's layout.
fn find_bindir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .ok_or_else(|| {
            DomainError::Server(
                "PostgreSQL server binaries (initdb, postgres) not found; set PG_BINDIR".into(),
            )
        })
}
