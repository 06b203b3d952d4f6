//! Where the consumer is in each partition, kept durably so a restart (a crash, a `kill -9`) resumes there:
//! a file in embedded mode, a DynamoDB table in production.
//!
//! A checkpoint is written after the gateway has taken a batch (it is then in the gateway's durable outbox), so
//! a restart reads again at most the batch in flight; the gateway refuses those events as duplicates by their id.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use serde::{Deserialize, Serialize};

/// Where one partition is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The last position taken; None before the first record.
    pub after: Option<String>,
    /// The partition is closed and read to its end (its children may be read).
    #[serde(default)]
    pub finished: bool,
}

#[async_trait]
pub trait Checkpoints: Send + Sync {
    /// Every partition's position, by partition id.
    async fn load(&self) -> anyhow::Result<BTreeMap<String, Position>>;
    /// Records a partition's position durably before it returns.
    async fn save(&self, partition: &str, position: &Position) -> anyhow::Result<()>;
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    stream: String,
    partitions: BTreeMap<String, Position>,
}

/// Checkpoints in one JSON file, replaced atomically (written beside it, synced, renamed, the directory synced).
pub struct FileCheckpoints {
    path: PathBuf,
    stream: String,
    state: tokio::sync::Mutex<BTreeMap<String, Position>>,
}

impl FileCheckpoints {
    /// Opens (or starts) the file for `stream`; a file kept for another stream is refused.
    pub fn open(path: &Path, stream: &str) -> anyhow::Result<Self> {
        let partitions = match std::fs::read(path) {
            Ok(bytes) => {
                let f: CheckpointFile = serde_json::from_slice(&bytes).with_context(|| {
                    format!("the checkpoint file {} does not parse", path.display())
                })?;
                anyhow::ensure!(
                    f.stream == stream,
                    "the checkpoint file {} is for stream {:?}, not {stream:?}",
                    path.display(),
                    f.stream
                );
                f.partitions
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot make the directory {}", dir.display()))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            stream: stream.to_string(),
            state: tokio::sync::Mutex::new(partitions),
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[async_trait]
impl Checkpoints for FileCheckpoints {
    async fn load(&self) -> anyhow::Result<BTreeMap<String, Position>> {
        Ok(self.state.lock().await.clone())
    }

    async fn save(&self, partition: &str, position: &Position) -> anyhow::Result<()> {
        // Held across the write, so two partitions' saves cannot reorder on disk.
        let mut state = self.state.lock().await;
        state.insert(partition.to_string(), position.clone());
        let bytes = serde_json::to_vec_pretty(&CheckpointFile {
            stream: self.stream.clone(),
            partitions: state.clone(),
        })?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await?
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Checkpoints in a DynamoDB table: key `stream` (hash) and `partition` (range); `after` and `finished`.
pub struct DynamoCheckpoints {
    client: aws_sdk_dynamodb::Client,
    table: String,
    stream: String,
}

impl DynamoCheckpoints {
    pub async fn new(
        aws: &reco_aws::AwsSettings,
        table: &str,
        stream: &str,
        create: bool,
    ) -> anyhow::Result<Self> {
        let config = aws.sdk_config().await;
        let me = Self {
            client: aws_sdk_dynamodb::Client::new(&config),
            table: table.to_string(),
            stream: stream.to_string(),
        };
        if create {
            me.create_table().await?;
        }
        Ok(me)
    }

    /// Creates the table on demand (pay per request), if it does not exist.
    async fn create_table(&self) -> anyhow::Result<()> {
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let made = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("stream", KeyType::Hash)?)
            .key_schema(key("partition", KeyType::Range)?)
            .attribute_definitions(attr("stream")?)
            .attribute_definitions(attr("partition")?)
            .send()
            .await;
        match made {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot create the checkpoint table {:?}: {}",
                self.table,
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )),
        }
    }
}

#[async_trait]
impl Checkpoints for DynamoCheckpoints {
    async fn load(&self) -> anyhow::Result<BTreeMap<String, Position>> {
        let mut out = BTreeMap::new();
        let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#s = :s")
                .expression_attribute_names("#s", "stream")
                .expression_attribute_values(":s", AttributeValue::S(self.stream.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read the checkpoints in {:?}: {}",
                        self.table,
                        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
                    )
                })?;
            for item in page.items() {
                let Some(AttributeValue::S(partition)) = item.get("partition") else {
                    continue;
                };
                let after = match item.get("after") {
                    Some(AttributeValue::S(s)) => Some(s.clone()),
                    _ => None,
                };
                let finished = matches!(item.get("finished"), Some(AttributeValue::Bool(true)));
                out.insert(partition.clone(), Position { after, finished });
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    async fn save(&self, partition: &str, position: &Position) -> anyhow::Result<()> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("stream", AttributeValue::S(self.stream.clone()))
            .item("partition", AttributeValue::S(partition.to_string()))
            .item("finished", AttributeValue::Bool(position.finished));
        if let Some(after) = &position.after {
            put = put.item("after", AttributeValue::S(after.clone()));
        }
        put.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot write a checkpoint to {:?}: {}",
                self.table,
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_keeps_positions_across_opens_and_refuses_another_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/checkpoints.json");
        let c = FileCheckpoints::open(&path, "events").unwrap();
        assert!(c.load().await.unwrap().is_empty());
        let p = Position {
            after: Some("42".into()),
            finished: false,
        };
        c.save("shardId-000000000000", &p).await.unwrap();
        c.save(
            "shardId-000000000001",
            &Position {
                after: None,
                finished: true,
            },
        )
        .await
        .unwrap();
        drop(c);
        let again = FileCheckpoints::open(&path, "events").unwrap();
        let got = again.load().await.unwrap();
        assert_eq!(got["shardId-000000000000"], p);
        assert!(got["shardId-000000000001"].finished);
        let e = FileCheckpoints::open(&path, "other")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is for stream \"events\""), "{e}");
        std::fs::write(&path, "{not json").unwrap();
        let e = FileCheckpoints::open(&path, "events")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not parse"), "{e}");
    }
}
