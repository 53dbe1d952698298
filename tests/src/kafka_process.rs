//! An Apache Kafka broker process started by the tests: `scripts/kafka.sh
//! run`, which fetches the jars once, formats the data dir and then *is* the
//! JVM (it execs it), so the parent-death signal set here reaches the broker
//! itself and a test process that dies takes its broker with it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::free_ports;

/// How long a JVM may take to start on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The SASL_SSL listener of a broker this suite started: TLS with a CA made
/// for it, and one user for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.
#[derive(Debug, Clone)]
pub struct SaslSslListener {
    pub bootstrap: String,
    pub ca_location: PathBuf,
    pub username: String,
    pub password: String,
}

/// What a started broker serves, as `scripts/kafka.sh` wrote it to
/// `broker.env`.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub plaintext: String,
    pub sasl_ssl: Option<SaslSslListener>,
}

impl Listeners {
    /// Reads `DIR/broker.env`.
    pub fn read(dir: &Path) -> anyhow::Result<Listeners> {
        let path = dir.join("broker.env");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let plaintext = value("KAFKA_BOOTSTRAP")
            .with_context(|| format!("{} names no KAFKA_BOOTSTRAP", path.display()))?;
        let sasl_ssl = match value("KAFKA_SASL_SSL_BOOTSTRAP") {
            None => None,
            Some(bootstrap) => Some(SaslSslListener {
                bootstrap,
                ca_location: value("KAFKA_SSL_CA_LOCATION")
                    .map(PathBuf::from)
                    .context("broker.env: KAFKA_SSL_CA_LOCATION")?,
                username: value("KAFKA_SASL_USERNAME").context("broker.env: username")?,
                password: value("KAFKA_SASL_PASSWORD").context("broker.env: password")?,
            }),
        };
        Ok(Listeners {
            plaintext,
            sasl_ssl,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    controller: u16,
    sasl_ssl: Option<u16>,
}

/// A running broker this process started.
pub struct KafkaProcess {
    child: Option<Child>,
    dir: PathBuf,
    ports: Ports,
    pub listeners: Listeners,
}

impl KafkaProcess {
    /// Starts a broker with a fresh data dir in `dir` on free ports, trying
    /// other ports if another process takes one first.
    pub fn start(dir: &Path, with_sasl_ssl: bool) -> anyhow::Result<KafkaProcess> {
        let mut last_error = None;
        for _ in 0..5 {
            let [client, controller, sasl_ssl] = free_ports();
            let ports = Ports {
                client,
                controller,
                sasl_ssl: with_sasl_ssl.then_some(sasl_ssl),
            };
            match Self::spawn(dir, ports) {
                Ok(p) => return Ok(p),
                Err(e) if port_taken(dir) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("Kafka did not start")))
    }

    fn spawn(dir: &Path, ports: Ports) -> anyhow::Result<KafkaProcess> {
        std::fs::create_dir_all(dir)?;
        let log_path = dir.join("broker.log");
        let log = std::fs::File::create(&log_path)?;
        let script = crate::repo_root().join("scripts/kafka.sh");
        let mut command = Command::new("bash");
        command.arg(&script).args([
            "run",
            "--dir",
            &dir.to_string_lossy(),
            "--port",
            &ports.client.to_string(),
            "--controller-port",
            &ports.controller.to_string(),
        ]);
        if let Some(p) = ports.sasl_ssl {
            command.args(["--sasl-ssl-port", &p.to_string()]);
        }
        // Environment meant for the services must not configure the broker's
        // script, and the script's own must not leak from a caller.
        command.env_remove("STATE_DIR");
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            // The broker dies with the thread that started it: callers start
            // it from a thread that lives as long as the broker should.
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", script.display()))?;
        let mut process = KafkaProcess {
            child: Some(child),
            dir: dir.to_path_buf(),
            ports,
            listeners: Listeners {
                plaintext: format!("127.0.0.1:{}", ports.client),
                sasl_ssl: None,
            },
        };
        process.wait_started()?;
        process.listeners = Listeners::read(dir)?;
        Ok(process)
    }

    fn wait_started(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.join("broker.log");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = read_lossy(&log_path);
            if log.contains("Kafka Server started") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(
                        "Kafka exited at start ({status}); {} ends with:\n{}",
                        log_path.display(),
                        tail(&log, 30)
                    );
                }
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "Kafka did not start within {} s; {} ends with:\n{}",
                    START_TIMEOUT.as_secs(),
                    log_path.display(),
                    tail(&log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The broker's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would; the data stays for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: a controlled shutdown (leaders moved, logs flushed), then
    /// SIGKILL if it takes longer than 30 s.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Starts the stopped broker again on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let fresh = Self::spawn(&self.dir, self.ports)?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for KafkaProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn port_taken(dir: &Path) -> bool {
    let log = read_lossy(&dir.join("broker.log"));
    log.contains("Address already in use") || log.contains("BindException")
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
