//! A secret put under the wrong key (a token pasted into a number, a typo
//! of a key's name, a table given a string) is refused at start-up with an
//! error that names the key, and the secret itself is on no line of what
//! the service prints. Every service binary, from the environment and from
//! its file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postback_testkit::workspace_binary;

const TOKEN: &str = "EAABsecretTokenValue0123456789";

/// Each binary and the arguments it needs before its configuration.
const BINARIES: [(&str, &[&str]); 6] = [
    ("postback-collector", &[]),
    ("postback-enricher", &[]),
    ("postback-deduplicator", &[]),
    ("postback-dispatcher", &["--platform", "meta"]),
    ("postback-status", &[]),
    ("postback-sandbox", &[]),
];

/// Runs `binary` with `env` (and nothing else of this process's
/// environment) and `file` as its configuration; its exit code and stderr.
fn run(binary: &str, args: &[&str], env: &[(&str, &str)], file: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, file).expect("write config");
    let mut child = Command::new(workspace_binary(binary))
        .args(args)
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    // A configuration it took would start the service: stop it after a
    // while (the test then fails on its exit code), never leave it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("the binary's output");
    let mut printed = String::from_utf8_lossy(&out.stderr).into_owned();
    printed.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.code(), printed)
}

/// What the case is, its environment, its file.
type Case = (&'static str, Vec<(&'static str, &'static str)>, String);

#[test]
fn a_secret_under_the_wrong_key_is_refused_and_never_printed() {
    let cases: [Case; 4] = [
        (
            "a token as a number, from the environment",
            vec![("POSTBACK_KAFKA__DELIVERY_TIMEOUT_MS", TOKEN)],
            String::new(),
        ),
        (
            "a token under a misspelt key, from the environment",
            vec![("POSTBACK_KAFKA__SASL_PASWORD", TOKEN)],
            String::new(),
        ),
        (
            "a token as an address",
            vec![("POSTBACK_OPS__LISTEN", TOKEN)],
            String::new(),
        ),
        (
            "a token in place of a table, in the file",
            vec![],
            format!("[log]\nformat = \"{TOKEN}\"\n"),
        ),
    ];
    let mut failures = Vec::new();
    for (binary, args) in BINARIES {
        for (what, env, file) in &cases {
            let (code, printed) = run(binary, args, env, file);
            let leaked = printed.contains(TOKEN) || printed.contains(&TOKEN[..12]);
            if leaked || code != Some(2) || printed.trim().is_empty() {
                failures.push(format!(
                    "{binary}, {what}: exit {code:?}, printed {}:\n{printed}",
                    if leaked { "THE SECRET" } else { "no secret" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
