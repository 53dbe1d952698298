//! PostgreSQL for the tests of the status service's store: the server in
//! `POSTBACK_TEST_DATABASE_URL`, or one this test process starts from the
//! machine's PostgreSQL binaries (Debian's `postgresql`; scripts/setup.sh
//! and .ci/run install it when they can) in a temporary directory, on a
//! free port, with fsync off, and TLS on with a certificate of a CA made
//! for the run (`TestDatabase::tls_root`). Each test gets a database of
//! its own.
//!
//! The server started here lives as long as the test process: it is
//! started from a thread that never ends, with PR_SET_PDEATHSIG, so it is
//! killed when the process goes however it goes, and an atexit hook
//! removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A database of one test's own; dropped with it.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
    tls_root: Option<PathBuf>,
}

impl TestDatabase {
    /// A new, empty database on the test run's PostgreSQL.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let server = tokio::task::spawn_blocking(server).await??;
        let name = crate::unique("status").replace(['.', '-'], "_");
        let mut admin = connect(&server.admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(TestDatabase {
            url: server.url_of(&name),
            admin_url: server.admin_url.clone(),
            name,
            tls_root: server.tls_root.clone(),
        })
    }

    /// The CA certificate (PEM) of the server's TLS certificate, for
    /// `sslmode=verify-full&sslrootcert=...`; None for the server of
    /// `POSTBACK_TEST_DATABASE_URL`, whose TLS this suite does not know.
    pub fn tls_root(&self) -> Option<&Path> {
        self.tls_root.as_deref()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Dropped inside a test's runtime: a thread of its own to wait on.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut admin = connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

async fn connect(url: &str) -> anyhow::Result<sqlx::postgres::PgConnection> {
    use sqlx::Connection;
    sqlx::postgres::PgConnection::connect(url)
        .await
        .with_context(|| {
            format!(
                "connecting to the test PostgreSQL {}",
                url.split('@').next_back().unwrap_or("")
            )
        })
}

struct Server {
    /// `postgres://user@host:port/` without a database.
    base: String,
    admin_url: String,
    tls_root: Option<PathBuf>,
}

impl Server {
    fn url_of(&self, database: &str) -> String {
        format!("{}{database}", self.base)
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static STARTED: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

fn server() -> anyhow::Result<&'static Server> {
    SERVER
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn start() -> anyhow::Result<Server> {
    if let Ok(url) = std::env::var("POSTBACK_TEST_DATABASE_URL") {
        // postgres://user:pw@host:port/db -> the same server, other databases.
        let base = match url.rfind('/') {
            Some(i) if i > "postgres://".len() => url[..=i].to_string(),
            _ => bail!(
                "POSTBACK_TEST_DATABASE_URL must name a database: postgres://user@host:port/db"
            ),
        };
        return Ok(Server {
            base,
            admin_url: url,
            tls_root: None,
        });
    }
    let bin = binaries().context(
        "the status store's tests need PostgreSQL: install Debian's postgresql (apt-get install postgresql; scripts/setup.sh does as root) or set POSTBACK_TEST_DATABASE_URL",
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("testkit-postgres".into())
        .spawn(move || {
            let outcome = run_server(&bin);
            let started = outcome.is_ok();
            let _ = tx.send(outcome);
            if started {
                // The server dies with this thread (PDEATHSIG): keep it.
                loop {
                    std::thread::park();
                }
            }
        })?;
    let server = rx.recv().context("the PostgreSQL thread ended")??;
    unsafe {
        libc::atexit(stop_server);
    }
    Ok(server)
}

extern "C" fn stop_server() {
    if let Ok(mut guard) = STARTED.lock() {
        if let Some((pid, dir)) = guard.take() {
            unsafe {
                libc::kill(pid as i32, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && unsafe { libc::kill(pid as i32, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The directory of initdb, postgres and pg_isready: PATH, else the newest of
/// /usr/lib/postgresql/<version>/bin.
fn binaries() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                // A symlink on PATH (/usr/local/bin/initdb): the real
                // directory has pg_isready beside it.
                let real = std::fs::canonicalize(dir.join("initdb"))?;
                return Ok(real.parent().map(Path::to_path_buf).unwrap_or(dir));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no initdb on PATH and no /usr/lib/postgresql")?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no /usr/lib/postgresql/<version>/bin/initdb")
}

/// initdb refuses to run as root: as root, the server runs as the
/// `postgres` user the Debian package creates.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        if !out.status.success() {
            bail!("running as root and there is no `postgres` user to run PostgreSQL as");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn command(bin: &Path, program: &str, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(program));
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

fn run_server(bin: &Path) -> anyhow::Result<Server> {
    let user = run_as()?;
    let dir = tempfile::Builder::new()
        .prefix("postback-test-postgres")
        .tempdir()?
        .keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    let data = dir.join("data");
    let init = command(bin, "initdb", user)
        .args([
            "-D",
            &data.to_string_lossy(),
            "-U",
            "postback",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running initdb")?;
    if !init.status.success() {
        bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr).trim()
        );
    }
    let (root, cert, key) = tls_files(&dir, user)?;
    let port = crate::free_port();
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))?;
    }
    let mut server = command(bin, "postgres", user);
    server
        .args([
            "-D",
            &data.to_string_lossy(),
            "-p",
            &port.to_string(),
            "-k",
            &dir.to_string_lossy(),
        ])
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "synchronous_commit=off", "-c", "max_connections=200"])
        .args([
            "-c",
            "ssl=on",
            "-c",
            &format!("ssl_cert_file={}", cert.display()),
        ])
        .args(["-c", &format!("ssl_key_file={}", key.display())])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    unsafe {
        use std::os::unix::process::CommandExt;
        server.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = server.spawn().context("starting postgres")?;
    if let Ok(mut guard) = STARTED.lock() {
        *guard = Some((child.id(), dir.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    // Listening is not ready: while it starts up the server accepts
    // connections and refuses them ("the database system is starting up").
    // pg_isready says when it takes them.
    let ready = || {
        Command::new(bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postback",
                "-d",
                "postgres",
            ])
            .stdin(Stdio::null())
            .output()
    };
    loop {
        let answer = ready();
        if answer.as_ref().is_ok_and(|o| o.status.success()) {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            bail!("PostgreSQL did not accept connections on {port} within 60 s (pg_isready: {answer:?}):\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = format!("postgres://postback@127.0.0.1:{port}/");
    Ok(Server {
        admin_url: format!("{base}postgres"),
        base,
        tls_root: Some(root),
    })
}

/// A CA for this run and the server's certificate from it, for 127.0.0.1
/// and localhost, written into `dir`: the CA's certificate, the server's,
/// and its key, which PostgreSQL reads only if its own user alone can.
fn tls_files(dir: &Path, user: Option<(u32, u32)>) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "postback test CA");
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "postback test PostgreSQL");
    let server = server.signed_by(&key, &ca, &ca_key)?;
    let files = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&files.0, ca.pem())?;
    std::fs::write(&files.1, server.pem())?;
    std::fs::write(&files.2, key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&files.2, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = user {
        for file in [&files.1, &files.2] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid))?;
        }
    }
    Ok(files)
}
