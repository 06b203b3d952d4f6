//! The platform as six OS processes, as production runs it (one container per service): each started as
//! `EXE serve <service> --listen HOST:PORT ...`, the gateway given the others' addresses. Used by
//! `reco up --processes`, the end-to-end benchmark, and the tests that kill, pause and restart a downstream.
//!
//! ```text
//!   reco up --processes ──spawn──▶ feature, cache, vector-recall, graph-recall, ranking ──▶ gateway
//!                        ◀─stdout─ "listening on ADDR" (each child's port, when it was asked for port 0)
//! ```

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::Context;
use rustix::process::Signal;

use crate::platform::{Addrs, SERVICES};

/// How to start the processes.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    pub host: std::net::IpAddr,
    /// The gateway's port; the others follow it (+1 .. +5). 0 gives every service a free port.
    pub base_port: u16,
    /// Where durable stores keep their files; None uses a temporary directory removed when the platform is.
    pub data_dir: Option<PathBuf>,
    /// Extra flags per service (by name, as in [`SERVICES`]).
    pub flags: BTreeMap<&'static str, Vec<String>>,
    /// Show each child's log lines on this process's stderr, prefixed with the service's name.
    pub forward_logs: bool,
    /// The services call each other over Unix sockets (each also listens on one, in a temporary directory), not
    /// over TCP: the processes share a machine, and a socket skips the TCP/IP stack. Every service still listens
    /// on TCP for outside callers (grpcurl, the load generator).
    pub unix_sockets: bool,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            host: [127, 0, 0, 1].into(),
            base_port: 0,
            data_dir: None,
            flags: BTreeMap::new(),
            forward_logs: true,
            unix_sockets: true,
        }
    }
}

/// Six running processes. Dropping it kills them all.
pub struct ProcessPlatform {
    pub addrs: Addrs,
    exe: PathBuf,
    args: BTreeMap<&'static str, Vec<String>>,
    children: BTreeMap<&'static str, Child>,
    forward_logs: bool,
    _data_dir: Option<tempfile::TempDir>,
    _sockets: Option<tempfile::TempDir>,
}

/// Spawns `exe serve service args...` and returns it with the address it printed.
fn spawn(
    exe: &Path,
    service: &'static str,
    args: &[String],
    forward_logs: bool,
) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(exe)
        .arg("serve")
        .arg(service)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if forward_logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .with_context(|| format!("cannot start {} serve {service}", exe.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    // Reads the address, then keeps draining the child's output so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_string());
                continue;
            }
            if forward_logs {
                eprintln!("[{service}] {line}");
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // Its output closed before it listened: it exited (its error went to stderr).
            let status = child.wait()?;
            anyhow::bail!("{service} exited before listening ({status})");
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{service} did not say where it listens within 60 s");
        }
    };
    let addr = addr
        .parse()
        .with_context(|| format!("{service} printed a bad address {addr:?}"))?;
    Ok((child, addr))
}

impl ProcessPlatform {
    /// Starts the five downstream services, then the gateway pointed at them, and waits until each is SERVING.
    pub async fn start(exe: &Path, opts: ProcessOptions) -> anyhow::Result<Self> {
        let (data_dir, temp) = match &opts.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().context("cannot make a temporary data directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = |offset: u16| {
            if opts.base_port == 0 {
                0
            } else {
                opts.base_port + offset
            }
        };
        // Sockets in a directory of their own: a socket's path must stay under ~100 bytes, which a long
        // --data-dir could break.
        let sockets = if opts.unix_sockets {
            Some(tempfile::tempdir().context("cannot make a directory for the Unix sockets")?)
        } else {
            None
        };
        let socket = |service: &str| {
            sockets
                .as_ref()
                .map(|d| d.path().join(format!("{service}.sock")))
        };
        let listen = |offset: u16, service: &str| {
            let mut flags = vec![format!(
                "--listen={}",
                SocketAddr::new(opts.host, port(offset))
            )];
            flags.extend(socket(service).map(|path| format!("--listen-unix={}", path.display())));
            flags
        };
        // How the gateway and vector-recall reach a service: its socket, else its TCP address.
        let reach = |service: &str, tcp: SocketAddr| match socket(service) {
            Some(path) => format!("{}{}", reco_server::UNIX_PREFIX, path.display()),
            None => tcp.to_string(),
        };
        let mut platform = Self {
            addrs: Addrs {
                gateway: SocketAddr::new(opts.host, 0),
                feature: SocketAddr::new(opts.host, 0),
                cache: SocketAddr::new(opts.host, 0),
                vector: SocketAddr::new(opts.host, 0),
                graph: SocketAddr::new(opts.host, 0),
                ranking: SocketAddr::new(opts.host, 0),
            },
            exe: exe.to_path_buf(),
            args: BTreeMap::new(),
            children: BTreeMap::new(),
            forward_logs: opts.forward_logs,
            _data_dir: temp,
            _sockets: None,
        };
        let extra = |s: &str| opts.flags.get(s).cloned().unwrap_or_default();
        let dir = |s: &str| data_dir.join(s).display().to_string();

        let feature = platform.launch(
            "feature",
            [
                listen(1, "feature"),
                vec![format!("--data-dir={}", dir("feature"))],
                extra("feature"),
            ]
            .concat(),
        )?;
        platform.addrs.feature = feature;
        platform.addrs.cache =
            platform.launch("cache", [listen(2, "cache"), extra("cache")].concat())?;
        platform.addrs.vector = platform.launch(
            "vector-recall",
            [
                listen(3, "vector-recall"),
                vec![
                    format!("--data-dir={}", dir("vector")),
                    format!("--feature-addr={}", reach("feature", feature)),
                ],
                extra("vector-recall"),
            ]
            .concat(),
        )?;
        platform.addrs.graph = platform.launch(
            "graph-recall",
            [listen(4, "graph-recall"), extra("graph-recall")].concat(),
        )?;
        platform.addrs.ranking =
            platform.launch("ranking", [listen(5, "ranking"), extra("ranking")].concat())?;
        let a = platform.addrs.clone();
        platform.addrs.gateway = platform.launch(
            "gateway",
            [
                listen(0, "gateway"),
                vec![
                    format!("--feature-addr={}", reach("feature", a.feature)),
                    format!("--cache-addr={}", reach("cache", a.cache)),
                    format!("--vector-addr={}", reach("vector-recall", a.vector)),
                    format!("--graph-addr={}", reach("graph-recall", a.graph)),
                    format!("--ranking-addr={}", reach("ranking", a.ranking)),
                    format!(
                        "--event-outbox={}",
                        data_dir.join("gateway").join("events.redb").display()
                    ),
                ],
                extra("gateway"),
            ]
            .concat(),
        )?;
        platform._sockets = sockets;
        for (name, addr) in platform.addrs.all() {
            reco_server::wait_serving(&addr.to_string(), Duration::from_secs(60))
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        Ok(platform)
    }

    fn launch(&mut self, service: &'static str, args: Vec<String>) -> anyhow::Result<SocketAddr> {
        let (child, addr) = spawn(&self.exe, service, &args, self.forward_logs)?;
        // A restart listens where the first start did.
        let args = args
            .into_iter()
            .map(|a| {
                if a.starts_with("--listen=") {
                    format!("--listen={addr}")
                } else {
                    a
                }
            })
            .collect();
        self.args.insert(service, args);
        self.children.insert(service, child);
        Ok(addr)
    }

    fn child(&mut self, service: &str) -> anyhow::Result<&mut Child> {
        self.children
            .get_mut(service)
            .ok_or_else(|| anyhow::anyhow!("no running process for {service:?}"))
    }

    /// The OS process id of a service.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.children.get(service).map(Child::id)
    }

    /// Kills a service at once (SIGKILL): no draining, connections reset.
    pub fn kill(&mut self, service: &str) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(service)
            .ok_or_else(|| anyhow::anyhow!("no running process for {service:?}"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Freezes a service (SIGSTOP): its connections stay open and its socket accepts, but nothing answers,
    /// as with a process stuck in a long pause.
    pub fn pause(&mut self, service: &str) -> anyhow::Result<()> {
        signal(self.child(service)?.id(), Signal::STOP)
    }

    /// Thaws a paused service (SIGCONT).
    pub fn resume(&mut self, service: &str) -> anyhow::Result<()> {
        signal(self.child(service)?.id(), Signal::CONT)
    }

    /// Starts a killed service again with the same flags and address, and waits until it is SERVING.
    pub async fn restart(&mut self, service: &'static str) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.children.contains_key(service),
            "{service} is still running"
        );
        let args = self.args.get(service).cloned().unwrap_or_default();
        let (child, addr) = spawn(&self.exe, service, &args, self.forward_logs)?;
        self.children.insert(service, child);
        reco_server::wait_serving(&addr.to_string(), Duration::from_secs(60))
            .await
            .map_err(|e| anyhow::anyhow!("{service} after restart: {e}"))
    }

    /// Stops every service with SIGTERM, the gateway first so its last writes reach the cache, and waits up to
    /// `grace` for each before killing it.
    pub fn shutdown(mut self, grace: Duration) {
        let mut order: Vec<&'static str> = SERVICES.to_vec();
        order.reverse();
        for name in order {
            if let Some(mut child) = self.children.remove(name) {
                let _ = signal(child.id(), Signal::TERM);
                let deadline = std::time::Instant::now() + grace;
                while std::time::Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for ProcessPlatform {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal to a child process.
fn signal(pid: u32, signal: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| anyhow::anyhow!("bad process id {pid}"))?;
    rustix::process::kill_process(pid, signal)
        .with_context(|| format!("cannot send {signal:?} to process {pid:?}"))
}
