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
