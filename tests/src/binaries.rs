//! The workspace's service binaries, for tests that run them as processes.

use std::path::PathBuf;
use std::process::Command;

/// The debug binary `name` of the package of the same name, beside the
/// running test's (target/debug/deps/<test> -> target/debug/<name>); built
/// with cargo if this test run did not build it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .expect("the test binary's directory");
    let path = dir.join(name);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::repo_root())
            .args(["build", "--quiet", "-p", name, "--bin", name])
            .status()
            .expect("run cargo");
        assert!(status.success(), "cannot build {name}");
    }
    path
}

/// The service binary at `path` as a command without this process's
/// POSTBACK_* variables: a service's configuration is strict, and a test's
/// or a bench's own variables would be read as (unknown) keys.
pub fn service_command(path: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(path);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("POSTBACK_") {
            command.env_remove(name);
        }
    }
    command
}
