//! The curl examples of README.md and docs/**/*.md, run for real.
//!
//! Every command that runs `curl` in a fenced `sh`, `bash`, `shell` or
//! `console` block is extracted (a command goes on while a line ends with a
//! backslash or a quote is open), its printed addresses are rewritten to the
//! services this test starts on free ports (a collector with the demo keys
//! of config/collector.local.toml on unique topics of the test broker, and a
//! platform sandbox with tools/sandbox/sandbox.example.toml, a fresh one per
//! page), and each block's commands are run in order by one bash, from the
//! repository root. A command must exit 0 and every HTTP answer it gets must
//! have the status the page says: 2xx unless the command's last line ends
//! with `# → NNN`, or the line before the block's fence is
//! `<!-- expect: NNN -->`. `<!-- not-run: REASON -->` there skips the block.
//! docs/README.md ("The examples are tested") documents the convention.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use postback_collector::config::CollectorConfig;
use postback_core::config::{Sources, Validate};
use postback_sandbox::config::SandboxConfig;
use postback_testkit::{kafka_toml, repo_root, unique, Broker};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The addresses the pages print, and which service each one is.
const COLLECTOR_PRINTED: u16 = 8080;
const COLLECTOR_OPS_PRINTED: u16 = 9098;
const SANDBOX_PRINTED: u16 = 8090;
/// How long one block's commands may take together.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);
const STATUS_MARK: &str = "@@doc-example-status";
const EXIT_MARK: &str = "@@doc-example-exit";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Success,
    Status(u16),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Success => write!(f, "2xx"),
            Expect::Status(s) => write!(f, "{s}"),
        }
    }
}

/// One curl command as printed.
#[derive(Debug, Clone)]
struct Example {
    file: String,
    /// 1-based line of the command's first line.
    line: usize,
    text: String,
    expect: Expect,
}

impl Example {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }
}

/// A fenced block with at least one curl command.
#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    not_run: Option<String>,
    examples: Vec<Example>,
}

#[derive(Debug, Default)]
struct Extracted {
    blocks: Vec<Block>,
    /// Convention errors (a marker without a reason, a marker on no block).
    errors: Vec<String>,
}

/// README.md and every Markdown file under docs/, in a stable order.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    files
}

/// The quoting state a shell line leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// What a scan of one line found.
struct Scanned<'a> {
    quote: Quote,
    /// The line ends with an unquoted (or double-quoted) backslash.
    continues: bool,
    /// The text of an unquoted `#` comment, without the `#`.
    comment: Option<&'a str>,
    /// The line without its comment.
    code: &'a str,
}

fn scan(line: &str, mut quote: Quote) -> Scanned<'_> {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut prev_space = true;
    while i < bytes.len() {
        let c = bytes[i];
        // Outside single quotes a backslash escapes the next character, and
        // one at the end of the line continues the command.
        if c == b'\\' && quote != Quote::Single {
            if i + 1 == bytes.len() {
                return Scanned {
                    quote,
                    continues: true,
                    comment: None,
                    code: line,
                };
            }
            prev_space = false;
            i += 2;
            continue;
        }
        match quote {
            Quote::Single => {
                if c == b'\'' {
                    quote = Quote::None;
                }
            }
            Quote::Double => {
                if c == b'"' {
                    quote = Quote::None;
                }
            }
            Quote::None => match c {
                b'\'' => quote = Quote::Single,
                b'"' => quote = Quote::Double,
                b'#' if prev_space => {
                    return Scanned {
                        quote,
                        continues: false,
                        comment: Some(&line[i + 1..]),
                        code: &line[..i],
                    }
                }
                _ => {}
            },
        }
        prev_space = quote == Quote::None && (c == b' ' || c == b'\t');
        i += 1;
    }
    Scanned {
        quote,
        continues: false,
        comment: None,
        code: line,
    }
}

/// `# → 400` or `# -> 400` in a command's trailing comment.
fn expected_status(comment: &str) -> Option<u16> {
    let rest = comment
        .find('→')
        .map(|i| &comment[i + '→'.len_utf8()..])
        .or_else(|| comment.find("->").map(|i| &comment[i + 2..]))?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.len() == 3).then(|| digits.parse().ok()).flatten()
}

/// Whether a command (its comments cut) runs curl.
fn runs_curl(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices("curl").any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 4).copied();
        before.is_none_or(|b| b" \t\n;|&(`".contains(&b))
            && after.is_none_or(|a| a == b' ' || a == b'\t' || a == b'\n')
    })
}

enum Marker {
    Expect(u16),
    NotRun(String),
}

/// An HTML comment marker of the convention, or None for any other line.
fn marker(line: &str, at: &str) -> Option<Result<Marker, String>> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    if let Some(rest) = inner.strip_prefix("expect:") {
        return Some(match rest.trim().parse::<u16>() {
            Ok(s) if (100..=599).contains(&s) => Ok(Marker::Expect(s)),
            _ => Err(format!(
                "{at}: `<!-- expect: NNN -->` needs an HTTP status, got `{}`",
                rest.trim()
            )),
        });
    }
    if let Some(rest) = inner.strip_prefix("not-run:") {
        let reason = rest.trim();
        return Some(if reason.is_empty() {
            Err(format!("{at}: `<!-- not-run: REASON -->` needs a reason"))
        } else {
            Ok(Marker::NotRun(reason.to_string()))
        });
    }
    if inner.starts_with("expect") || inner.starts_with("not-run") {
        return Some(Err(format!(
            "{at}: malformed marker `{}` (`<!-- expect: NNN -->` or `<!-- not-run: REASON -->`)",
            line.trim()
        )));
    }
    None
}

const SHELL_LANGUAGES: &[&str] = &["sh", "bash", "shell", "console"];

fn extract(file: &str, text: &str, out: &mut Extracted) {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut pending: Option<(usize, Marker)> = None;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(m) = marker(line, &format!("{file}:{}", i + 1)) {
            match m {
                Ok(m) => pending = Some((i, m)),
                Err(e) => out.errors.push(e),
            }
            i += 1;
            continue;
        }
        let Some(info) = trimmed.strip_prefix("```") else {
            if let Some((at, _)) = pending.take() {
                out.errors.push(format!(
                    "{file}:{}: the marker is not on the line just before a code block's fence",
                    at + 1
                ));
            }
            i += 1;
            continue;
        };
        let fence_line = i;
        let language = info.split_whitespace().next().unwrap_or("").to_string();
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push((i, lines[i]));
            i += 1;
        }
        i += 1; // the closing fence
        let marker = pending.take().map(|(_, m)| m);
        if !SHELL_LANGUAGES.contains(&language.as_str()) {
            if marker.is_some() {
                out.errors.push(format!(
                    "{file}:{}: a marker on a `{language}` block, which is never run",
                    fence_line
                ));
            }
            continue;
        }
        let (block_expect, not_run) = match marker {
            Some(Marker::Expect(s)) => (Expect::Status(s), None),
            Some(Marker::NotRun(r)) => (Expect::Success, Some(r)),
            None => (Expect::Success, None),
        };
        let examples = commands(file, &language, &body, &block_expect);
        if examples.is_empty() {
            if not_run.is_some() {
                out.errors.push(format!(
                    "{file}:{}: `not-run` on a block without curl commands",
                    fence_line
                ));
            }
            continue;
        }
        out.blocks.push(Block {
            file: file.to_string(),
            line: fence_line + 1,
            not_run,
            examples,
        });
    }
    if let Some((at, _)) = pending {
        out.errors.push(format!(
            "{file}:{}: the marker applies to no code block",
            at + 1
        ));
    }
}

/// The commands of a shell block that run curl: logical lines, each with
/// its expectation.
fn commands(file: &str, language: &str, body: &[(usize, &str)], block: &Expect) -> Vec<Example> {
    let console = language == "console";
    let mut out = Vec::new();
    let mut k = 0;
    while k < body.len() {
        let (n, raw) = body[k];
        k += 1;
        let first = if console {
            match raw.trim_start().strip_prefix("$ ") {
                Some(cmd) => cmd,
                None => continue, // output
            }
        } else {
            raw
        };
        if first.trim().is_empty() || first.trim_start().starts_with('#') {
            continue;
        }
        let mut text = first.to_string();
        let mut scanned = scan(first, Quote::None);
        let mut code = scanned.code.to_string();
        let mut last_comment = scanned.comment;
        while (scanned.continues || scanned.quote != Quote::None) && k < body.len() {
            let (_, next) = body[k];
            k += 1;
            text.push('\n');
            text.push_str(next);
            scanned = scan(next, scanned.quote);
            code.push('\n');
            code.push_str(scanned.code);
            last_comment = scanned.comment;
        }
        if !runs_curl(&code) {
            continue;
        }
        let expect = last_comment
            .and_then(expected_status)
            .map(Expect::Status)
            .unwrap_or_else(|| block.clone());
        out.push(Example {
            file: file.to_string(),
            line: n + 1,
            text,
            expect,
        });
    }
    out
}

/// The printed addresses, rewritten to the started services; an error
/// names a loopback address the test does not serve.
fn rewrite(text: &str, ports: &BTreeMap<u16, u16>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut targets = 0;
    loop {
        let hit = ["127.0.0.1:", "localhost:"]
            .iter()
            .filter_map(|h| rest.find(h).map(|i| (i, h.len())))
            .min();
        let Some((i, len)) = hit else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..i]);
        let after = &rest[i + len..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        let printed: u16 = digits
            .parse()
            .map_err(|_| format!("`{}` has no port", &rest[i..i + len]))?;
        let Some(port) = ports.get(&printed) else {
            return Err(format!(
                "it targets port {printed}, which the test does not serve (collector :{COLLECTOR_PRINTED} and ops :{COLLECTOR_OPS_PRINTED}, \
                 sandbox :{SANDBOX_PRINTED}); start that service in tests/tests/doc_examples.rs or mark the block \
                 `<!-- not-run: REASON -->`"
            ));
        };
        out.push_str(&format!("127.0.0.1:{port}"));
        targets += 1;
        rest = &after[digits.len()..];
    }
    if targets == 0 {
        return Err(
            "it targets no service the test starts (a placeholder or a real host?); mark the block \
             `<!-- not-run: REASON -->`"
                .into(),
        );
    }
    Ok(out)
}

/// A service running in this process until stopped (or dropped).
struct Running {
    name: &'static str,
    addr: SocketAddr,
    /// Where its /readyz and /metrics are (the collector's own port).
    ops: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .is_err()
            {
                eprintln!("{} did not stop within 20 s", self.name);
            }
        }
    }
}

impl Running {
    /// Runs a service in this process until the test stops it, and waits
    /// for its /readyz.
    async fn start<F, E>(
        name: &'static str,
        listener: TcpListener,
        ops: Option<SocketAddr>,
        service: impl FnOnce(TcpListener, CancellationToken) -> F,
    ) -> anyhow::Result<Running>
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let run = service(listener, stop.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = run.await {
                eprintln!("{name} failed: {e}");
            }
        });
        let running = Running {
            name,
            addr,
            ops: ops.unwrap_or(addr),
            stop,
            task: Some(task),
        };
        wait_ready(&running).await?;
        Ok(running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A TOML file as JSON (read by the services' own loader, without the
/// environment), to adjust before it becomes a service's config.
fn toml_file(path: &Path) -> anyhow::Result<Value> {
    Ok(Sources::new(Some(path), vec![])?.extract()?)
}

async fn start_collector(broker: &Broker) -> anyhow::Result<(Running, Vec<String>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut value = toml_file(&repo_root().join("config/collector.local.toml"))?;
    // The file's keys, pointed at this test's broker and topics.
    let kafka: Value = Sources::toml(&kafka_toml(&broker.kafka_config()), vec![]).extract()?;
    value["kafka"] = kafka["kafka"].clone();
    value["http"]["listen"] = Value::String(addr.to_string());
    let raw = unique("doc-examples.raw");
    let rejected = unique("doc-examples.rejected");
    value["topics"]["raw"] = Value::String(raw.clone());
    value["topics"]["rejected"] = Value::String(rejected.clone());
    let mut topics = vec![raw, rejected];
    if value["ingest"].is_object() {
        value["ingest"]["group_id"] = Value::String(unique("doc-examples.ingest"));
        if let Some(list) = value["ingest"]["topics"].as_array_mut() {
            for t in list {
                let name = unique("doc-examples.orders");
                t["topic"] = Value::String(name.clone());
                topics.push(name);
            }
        }
    }
    for t in &topics {
        broker.create_topic(t, 3).await?;
    }
    let config: CollectorConfig = serde_json::from_value(value)?;
    config.validate()?;
    let ops = TcpListener::bind("127.0.0.1:0").await?;
    let ops_addr = ops.local_addr()?;
    let running = Running::start("collector", listener, Some(ops_addr), |listener, stop| {
        postback_collector::run_with_listeners(config, listener, ops, stop)
    })
    .await?;
    Ok((running, topics))
}

async fn start_sandbox() -> anyhow::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut value = toml_file(&repo_root().join("tools/sandbox/sandbox.example.toml"))?;
    value["http"]["listen"] = Value::String(addr.to_string());
    let config: SandboxConfig = serde_json::from_value(value)?;
    config.validate()?;
    Running::start("sandbox", listener, None, |listener, stop| {
        postback_sandbox::run(config, listener, stop)
    })
    .await
}

/// The status of `GET path`, or None when nothing answers.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 64];
    let n = s.read(&mut head).await.ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_ready(service: &Running) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if get_status(service.ops, "/readyz").await == Some(200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{} on {} not ready after 60 s", service.name, service.addr)
}

/// Kills a child's whole process group (bash and its curls) unless disarmed.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: killpg only sends a signal; the group is the one this
            // test made for its child (process_group(0)).
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// The bash script of a block: a curl wrapper that reports each answer's
/// status on stderr, then each command between markers.
fn script(commands: &[String]) -> String {
    let mut s = String::from(
        r#"set -o pipefail
curl() {
  local marker='%{stderr}@@doc-example-status '"${DOC_EXAMPLE:-?}"' %{http_code}\n' args=() seen=0
  while (($#)); do
    case "$1" in
      -w|--write-out) args+=("$1" "$2$marker"); seen=1; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  ((seen)) || args+=(--write-out "$marker")
  command curl "${args[@]}"
}
"#,
    );
    for (n, c) in commands.iter().enumerate() {
        s.push_str(&format!(
            "DOC_EXAMPLE={n}\necho \"@@doc-example {n}\"\n{c}\necho \"{EXIT_MARK} {n} $?\" >&2\n"
        ));
    }
    s
}

struct Outcome {
    exit: Option<i32>,
    statuses: Vec<u16>,
}

/// Runs a block's commands in one bash; the outcome of each, and the
/// block's output (for failure messages).
async fn run_block(commands: &[String], root: &Path) -> (Vec<Outcome>, String) {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(script(commands))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut outcomes: Vec<Outcome> = commands
        .iter()
        .map(|_| Outcome {
            exit: None,
            statuses: Vec::new(),
        })
        .collect();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (outcomes, format!("cannot run bash: {e}")),
    };
    let mut guard = GroupKill(child.id().and_then(|id| i32::try_from(id).ok()));
    let output = match tokio::time::timeout(BLOCK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(o)) => {
            guard.0 = None; // done: nothing of the group is left running
            o
        }
        Ok(Err(e)) => return (outcomes, format!("bash failed: {e}")),
        Err(_) => {
            return (
                outcomes,
                format!(
                    "the block did not finish within {} s",
                    BLOCK_TIMEOUT.as_secs()
                ),
            )
        }
    };
    drop(guard);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut other_stderr = String::new();
    for line in stderr.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let n = fields.get(1).and_then(|n| n.parse::<usize>().ok());
        match (fields.first().copied(), n, fields.get(2)) {
            (Some(STATUS_MARK), Some(n), Some(code)) if n < outcomes.len() => {
                outcomes[n].statuses.push(code.parse().unwrap_or(0));
            }
            (Some(EXIT_MARK), Some(n), Some(code)) if n < outcomes.len() => {
                outcomes[n].exit = code.parse().ok();
            }
            _ => {
                other_stderr.push_str(line);
                other_stderr.push('\n');
            }
        }
    }
    let log = format!(
        "bash exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        clip(&stdout),
        clip(&other_stderr)
    );
    (outcomes, log)
}

fn clip(s: &str) -> String {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

/// What went wrong with one example, if anything.
fn verdict(example: &Example, outcome: &Outcome) -> Option<String> {
    match outcome.exit {
        None => return Some("did not run to its end (bash stopped before it finished)".into()),
        Some(0) => {}
        Some(code) => return Some(format!("exited {code}")),
    }
    if outcome.statuses.is_empty() {
        return Some("made no HTTP request".into());
    }
    let bad: Vec<u16> = outcome
        .statuses
        .iter()
        .copied()
        .filter(|s| match example.expect {
            Expect::Success => !(200..=299).contains(s),
            Expect::Status(want) => *s != want,
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "got HTTP {}{}, the page says {}",
            bad.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if bad.contains(&0) {
                " (0: no answer)"
            } else {
                ""
            },
            example.expect
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_curl_examples_work_as_printed() {
    let root = repo_root();
    let mut extracted = Extracted::default();
    for path in markdown_files(&root) {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        extract(&name, &text, &mut extracted);
    }
    let mut failures = extracted.errors.clone();
    let runnable: Vec<&Block> = extracted
        .blocks
        .iter()
        .filter(|b| b.not_run.is_none())
        .collect();
    assert!(
        !runnable.is_empty(),
        "no curl example found in README.md or docs/: is the extraction broken?"
    );

    let broker = Broker::shared().await.expect("the test broker");
    let (collector, topics) = start_collector(&broker).await.expect("start the collector");
    println!(
        "collector on {} (topics {}), sandbox fresh per page",
        collector.addr,
        topics.join(", ")
    );

    let mut report = Vec::new();
    let mut files: Vec<&str> = runnable.iter().map(|b| b.file.as_str()).collect();
    files.dedup();
    for file in files {
        let sandbox = start_sandbox().await.expect("start the sandbox");
        let ports = BTreeMap::from([
            (COLLECTOR_PRINTED, collector.addr.port()),
            (COLLECTOR_OPS_PRINTED, collector.ops.port()),
            (SANDBOX_PRINTED, sandbox.addr.port()),
        ]);
        for block in runnable.iter().filter(|b| b.file == file) {
            let mut commands = Vec::new();
            let mut examples = Vec::new();
            for example in &block.examples {
                match rewrite(&example.text, &ports) {
                    Ok(c) => {
                        commands.push(c);
                        examples.push(example);
                    }
                    Err(why) => failures.push(format!(
                        "{}: `{}`: {why}",
                        example.at(),
                        example.first_line()
                    )),
                }
            }
            if commands.is_empty() {
                continue;
            }
            let (outcomes, log) = run_block(&commands, &root).await;
            for (example, outcome) in examples.iter().zip(&outcomes) {
                let statuses = outcome
                    .statuses
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                match verdict(example, outcome) {
                    None => report.push(format!(
                        "ok   {} [{}; expected {}] {}",
                        example.at(),
                        statuses,
                        example.expect,
                        example.first_line().trim()
                    )),
                    Some(why) => {
                        report.push(format!(
                            "FAIL {} [{}; expected {}] {}",
                            example.at(),
                            statuses,
                            example.expect,
                            example.first_line().trim()
                        ));
                        failures.push(format!(
                            "{}: the example does not work as printed: {why}\n{}\n(block at {}:{})\n{log}",
                            example.at(),
                            example.text,
                            block.file,
                            block.line
                        ));
                    }
                }
            }
        }
        sandbox.stop().await;
    }
    collector.stop().await;

    for block in extracted.blocks.iter().filter(|b| b.not_run.is_some()) {
        report.push(format!(
            "skip {}:{} ({} command(s)): not-run: {}",
            block.file,
            block.line,
            block.examples.len(),
            block.not_run.as_deref().unwrap_or_default()
        ));
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} problem(s) with the docs' examples:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn extraction_follows_the_convention() {
    let page = r#"
Text.

```sh
curl -s http://127.0.0.1:8080/healthz
scripts/run.sh   # not curl: not run
curl -s http://127.0.0.1:8080/v1/events \
  -H 'A: b' \
  -d '{"a": 1,
       "b": 2}'   # → 400
echo '{"x": 1}' \
  | postback-ctl produce orders.ingest
```

<!-- expect: 403 -->
```bash
token=$(curl -s 'http://127.0.0.1:8090/x' | cut -c1-3)   # a comment, no status
```

<!-- not-run: a placeholder host -->
```sh
curl https://collect.example/v1/collect
```

```js
curl("not shell");
```

```console
$ curl -i http://localhost:8080/readyz
HTTP/1.1 200 OK
```
"#;
    let mut out = Extracted::default();
    extract("page.md", page, &mut out);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let found: Vec<(usize, Expect, Option<&str>)> = out
        .blocks
        .iter()
        .flat_map(|b| {
            b.examples
                .iter()
                .map(move |e| (e.line, e.expect.clone(), b.not_run.as_deref()))
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (5, Expect::Success, None),
            (7, Expect::Status(400), None),
            (17, Expect::Status(403), None),
            (22, Expect::Success, Some("a placeholder host")),
            (30, Expect::Success, None),
        ]
    );
    assert_eq!(out.blocks[0].examples[1].text.lines().count(), 4);

    let ports = BTreeMap::from([(8080, 1111), (8090, 2222)]);
    assert_eq!(
        rewrite(
            "curl http://localhost:8080/a http://127.0.0.1:8090/b",
            &ports
        )
        .as_deref(),
        Ok("curl http://127.0.0.1:1111/a http://127.0.0.1:2222/b")
    );
    assert!(rewrite("curl http://127.0.0.1:9091/metrics", &ports).is_err());
    assert!(rewrite("curl https://collect.example/", &ports).is_err());

    let mut bad = Extracted::default();
    extract(
        "bad.md",
        "<!-- not-run: -->\n```sh\ncurl x\n```\n<!-- expect: 4o4 -->\n<!-- expect: 404 -->\ntext\n",
        &mut bad,
    );
    assert_eq!(bad.errors.len(), 3, "{:?}", bad.errors);
}
