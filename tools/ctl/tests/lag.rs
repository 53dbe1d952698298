//! `postback-ctl lag` reads a group's committed offsets and the partitions'
//! ends from the broker: what the group has left, per partition, including
//! partitions it never committed on.

use std::process::Command;
use std::time::Duration;

use postback_testkit::{unique, Broker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_each_partitions_end_minus_what_the_group_committed() {
    let broker = Broker::shared().await.unwrap();
    let topic = unique("ctl.lag");
    broker.create_topic(&topic, 3).await.unwrap();
    let producer: FutureProducer = broker.client_config().create().unwrap();
    for partition in 0..3 {
        for i in 0..10 {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key("k")
                        .payload(&format!("{i}")),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    // The group has done 4 records of partition 0, all of partition 1, and
    // never committed on partition 2.
    let group = unique("ctl.lag.group");
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(4))
        .unwrap();
    offsets
        .add_partition_offset(&topic, 1, Offset::Offset(10))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    std::fs::write(
        &config,
        postback_testkit::kafka_toml(&broker.kafka_config()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_postback-ctl"))
            .arg("--config")
            .arg(&config)
            .arg("lag")
            .args(args)
            .output()
            .unwrap()
    };
    let output = run(&[&format!("{group}={topic}")]);
    assert!(
        output.status.success(),
        "postback-ctl lag: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(output.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["group"], group.as_str());
    assert_eq!(line["lag"], 16, "{line}");
    let partitions = line["partitions"].as_array().unwrap();
    let got: Vec<(i64, serde_json::Value, i64)> = partitions
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["committed"].clone(),
                p["lag"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, serde_json::json!(4), 6),
            (1, serde_json::json!(10), 0),
            (2, serde_json::Value::Null, 10),
        ]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("16 records behind over 3 partitions (1 never committed)"),
        "{stderr}"
    );
    println!("{}", stderr.trim());

    // A topic the broker does not know is an error that names it.
    let missing = unique("ctl.lag.missing");
    let output = run(&[&format!("{group}={missing}"), "--timeout-secs", "5"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&missing), "{stderr}");
    // So is an argument that is not GROUP=TOPIC.
    let output = run(&[&group]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("GROUP=TOPIC"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
