//! `postback-ctl topics` creates the pipeline's topics from
//! config/topics.txt with their configs, and the broker applies them.

use std::collections::BTreeMap;
use std::process::Command;

use postback_testkit::{repo_root, unique, Broker};

/// name -> (partitions, configs) as config/topics.txt lists them.
fn listed_topics() -> BTreeMap<String, (i32, BTreeMap<String, String>)> {
    let text = std::fs::read_to_string(repo_root().join("config/topics.txt")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let mut configs = BTreeMap::new();
        if let Some(list) = parts.get(2) {
            // k=v pairs; a bare word continues the previous value's list.
            let mut last: Option<String> = None;
            for item in list.split(',') {
                match item.split_once('=') {
                    Some((k, v)) => {
                        configs.insert(k.to_string(), v.to_string());
                        last = Some(k.to_string());
                    }
                    None => {
                        let k = last.clone().unwrap();
                        configs.get_mut(&k).unwrap().push_str(&format!(",{item}"));
                    }
                }
            }
        }
        out.insert(parts[0].to_string(), (parts[1].parse().unwrap(), configs));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topics_file_is_created_with_every_config_applied_on_the_broker() {
    let broker = Broker::shared().await.unwrap();
    let prefix = format!("{}.", unique("ctl"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    std::fs::write(
        &config,
        postback_testkit::kafka_toml(&broker.kafka_config()),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_postback-ctl"))
        .arg("--config")
        .arg(&config)
        .args(["topics", "--file"])
        .arg(repo_root().join("config/topics.txt"))
        .args(["--prefix", &prefix])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "postback-ctl topics: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let listed = listed_topics();
    assert!(listed.len() >= 9, "{listed:?}");
    assert!(
        listed
            .values()
            .any(|(_, c)| c.get("cleanup.policy").map(String::as_str) == Some("compact,delete")),
        "the changelog is listed compacted"
    );
    for (name, (partitions, configs)) in &listed {
        let topic = format!("{prefix}{name}");
        assert_eq!(
            broker.partitions(&topic).await.unwrap(),
            *partitions,
            "{topic}"
        );
        let applied = broker.topic_configs(&topic).await.unwrap();
        for (k, v) in configs {
            assert_eq!(applied.get(k), Some(v), "{topic}: {k}");
        }
    }

    // A second run changes nothing and fails on nothing (topics exist).
    let again = Command::new(env!("CARGO_BIN_EXE_postback-ctl"))
        .arg("--config")
        .arg(&config)
        .args(["topics", "--file"])
        .arg(repo_root().join("config/topics.txt"))
        .args(["--prefix", &prefix])
        .output()
        .unwrap();
    assert!(again.status.success());
}
