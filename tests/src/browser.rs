//! What the browser tests need: Debian's chromium and the playwright-core
//! that scripts/setup.sh installs (tests/browser/package.json) into
//! `.postback/browser`.

use std::path::PathBuf;

use crate::repo_root;

/// The playwright-core modules directory and the Chromium binary
/// (`POSTBACK_BROWSER_MODULES`, `CHROMIUM` override them). Panics with what
/// to install when either is missing.
pub fn browser_tools() -> (PathBuf, PathBuf) {
    let modules = std::env::var_os("POSTBACK_BROWSER_MODULES")
        .map(Into::into)
        .unwrap_or_else(|| repo_root().join(".postback/browser/node_modules"));
    let chromium = std::env::var_os("CHROMIUM")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        modules.join("playwright-core").is_dir(),
        "{} has no playwright-core: run scripts/setup.sh (it installs tests/browser's packages with npm)",
        modules.display()
    );
    assert!(
        chromium.is_file(),
        "no Chromium at {}: install Debian's chromium (apt-get install chromium; scripts/setup.sh does as root) or set CHROMIUM",
        chromium.display()
    );
    (modules, chromium)
}
