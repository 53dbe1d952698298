//! The collector against its own description, docs/api/collector.openapi.yaml,
//! with schemathesis (installed into .postback/venv by scripts/setup.sh):
//! requests generated from the description, valid and invalid, for every
//! operation; every answer must be one it documents (status, headers,
//! content type, body schema), none a 5xx, and data it calls invalid must
//! be refused. A fixed seed, so a failure repeats.

mod harness;

use std::time::Duration;

use harness::{Collector, API_KEY, ORIGIN, SITE_KEY};
use postback_testkit::{repo_root, Broker};

/// Runs schemathesis on the operations whose path matches `paths`,
/// against `base`; its report when it fails.
async fn schemathesis(base: &str, paths: &str, examples: u32) -> Result<(), String> {
    let st = repo_root().join(".postback/venv/bin/st");
    assert!(
        st.is_file(),
        "{} is missing: run scripts/setup.sh (it installs schemathesis into .postback/venv)",
        st.display()
    );
    let run = tokio::process::Command::new(&st)
        .arg("run")
        .arg(repo_root().join("docs/api/collector.openapi.yaml"))
        .args(["--base-url", base, "--include-path-regex", paths])
        .args(["--checks", "all", "--hypothesis-seed", "20261203"])
        .args(["--hypothesis-max-examples", &examples.to_string()])
        .args(["--workers", "1", "--request-timeout", "20000"])
        .args(["-H", &format!("Authorization: Bearer {API_KEY}")])
        .args(["-H", &format!("Origin: {ORIGIN}")])
        .args(["--set-query", &format!("site_key={SITE_KEY}")])
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .map_err(|_| "schemathesis ran past 10 minutes".to_string())?
        .map_err(|e| format!("cannot run schemathesis: {e}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    if out.status.success() {
        Ok(())
    } else {
        Err(report)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_answers_as_its_openapi_description_says() {
    let broker = Broker::shared().await.unwrap();
    let c = Collector::start(&broker).await;
    let api = schemathesis(&c.base, "^/v1/", 100).await;
    let ops = schemathesis(&c.ops_base, "^/(healthz|readyz|metrics)$", 20).await;
    c.stop().await;
    api.expect("the API as described");
    ops.expect("the ops endpoints as described");
}
