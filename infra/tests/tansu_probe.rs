#![allow(clippy::unwrap_used, clippy::expect_used)]
use infra::kafka::{provision_topics, read_partition, partition_for, KafkaSettings, PartitionWriter};
use rdkafka::mocking::MockCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_probe() {
    let mock = MockCluster::new(1).unwrap();
    let s = KafkaSettings { partitions: 4, operation_timeout_ms: 8000, ..KafkaSettings::new(mock.bootstrap_servers(), "m.") };
    eprintln!("provision: {:?}", provision_topics(&s).await);
    let key = (0..).map(|i: u32| format!("k{i}")).find(|k| partition_for(k.as_bytes(), 4) == 1).unwrap();
    let rec = domain::KafkaRecord { key: key.into_bytes(), headers: vec![("h", b"v".to_vec())], value: b"x".to_vec() };
    let w = PartitionWriter::open(&s, 1).await.unwrap();
    eprintln!("append: {:?}", w.append(&[rec.clone(), rec.clone()]).await);
    eprintln!("read: {:?}", read_partition(&s, &s.topics().customer_events(), 1, 0).await.map(|v| v.iter().map(|r| r.position.offset).collect::<Vec<_>>()));
    let w2 = PartitionWriter::open(&s, 1).await.unwrap();
    eprintln!("old append after fence: {:?}", w.append(&[rec.clone()]).await);
    eprintln!("new append: {:?}", w2.append(&[rec.clone()]).await);
    eprintln!("read: {:?}", read_partition(&s, &s.topics().customer_events(), 1, 0).await.map(|v| v.iter().map(|r| r.position.offset).collect::<Vec<_>>()));
}
