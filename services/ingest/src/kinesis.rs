//! Amazon Kinesis Data Streams as a [`Source`], by polling (GetRecords), through `aws-sdk-kinesis`.
//!
//! Shards come from ListShards (every page); a shard's parents (a split's one, a merge's two) are named there, and
//! the consumer reads a shard only once its parents are read to their end. A closed shard is at its end when
//! GetRecords gives no next iterator (or, as moto answers, no records past its ending sequence number).

use async_trait::async_trait;
use aws_sdk_kinesis::{Client, types::ShardIteratorType};

use crate::source::{Fetched, From, Partition, PartitionReader, Record, Source};

pub struct KinesisSource {
    client: Client,
    stream: String,
}

impl KinesisSource {
    pub async fn new(aws: &reco_aws::AwsSettings, stream: &str) -> Self {
        let config = aws.sdk_config().await;
        Self {
            client: Client::new(&config),
            stream: stream.to_string(),
        }
    }
}

/// `a >= b` for Kinesis sequence numbers (decimal strings of up to 128 bits, no leading zeros).
pub fn seq_ge(a: &str, b: &str) -> bool {
    (a.len(), a) >= (b.len(), b)
}

#[async_trait]
impl Source for KinesisSource {
    fn name(&self) -> &str {
        &self.stream
    }

    async fn partitions(&self) -> anyhow::Result<Vec<Partition>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // The first page names the stream; the next ones only the token (the API refuses both).
            let call = match &token {
                None => self.client.list_shards().stream_name(&self.stream),
                Some(t) => self.client.list_shards().next_token(t),
            };
            let page = call.send().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot list the shards of stream {:?}: {}",
                    self.stream,
                    aws_sdk_kinesis::error::DisplayErrorContext(&e)
                )
            })?;
            for s in page.shards() {
                out.push(Partition {
                    id: s.shard_id().to_string(),
                    parents: s
                        .parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(str::to_string)
                        .collect(),
                    ending: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_string),
                });
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    async fn open(
        &self,
        partition: &Partition,
        from: From,
    ) -> anyhow::Result<Box<dyn PartitionReader>> {
        let mut call = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&partition.id);
        let last = match &from {
            From::After(seq) => {
                call = call
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .starting_sequence_number(seq);
                Some(seq.clone())
            }
            From::Oldest => {
                call = call.shard_iterator_type(ShardIteratorType::TrimHorizon);
                None
            }
            From::Newest => {
                call = call.shard_iterator_type(ShardIteratorType::Latest);
                None
            }
        };
        let out = call.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot read shard {} of {:?}: {}",
                partition.id,
                self.stream,
                aws_sdk_kinesis::error::DisplayErrorContext(&e)
            )
        })?;
        Ok(Box::new(ShardReader {
            client: self.client.clone(),
            iterator: out.shard_iterator().map(str::to_string),
            last,
            ending: partition.ending.clone(),
        }))
    }
}

struct ShardReader {
    client: Client,
    iterator: Option<String>,
    /// The last position read.
    last: Option<String>,
    ending: Option<String>,
}

#[async_trait]
impl PartitionReader for ShardReader {
    async fn next(&mut self, max: usize) -> anyhow::Result<Fetched> {
        let Some(iterator) = self.iterator.clone() else {
            return Ok(Fetched {
                ended: true,
                ..Default::default()
            });
        };
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(max.clamp(1, 10_000) as i32)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "GetRecords: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(&e)
                )
            })?;
        let records: Vec<Record> = out
            .records()
            .iter()
            .map(|r| Record {
                position: r.sequence_number().to_string(),
                data: r.data().as_ref().to_vec(),
                arrived_ms: r
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok()),
            })
            .collect();
        if let Some(r) = records.last() {
            self.last = Some(r.position.clone());
        }
        self.iterator = out.next_shard_iterator().map(str::to_string);
        let at = self.last.as_deref().unwrap_or("0");
        let ended = self.iterator.is_none()
            || (records.is_empty() && self.ending.as_deref().is_some_and(|e| seq_ge(at, e)));
        Ok(Fetched {
            records,
            behind_ms: out.millis_behind_latest(),
            ended,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::seq_ge;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert!(seq_ge("10", "9"));
        assert!(seq_ge(
            "49590338271490256608559692538361571095921575989136588898",
            "9"
        ));
        assert!(!seq_ge("9", "10"));
        assert!(seq_ge("7", "7"));
        assert!(!seq_ge("0", "1"));
    }
}
