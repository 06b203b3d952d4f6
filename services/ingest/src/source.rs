//! What a stream consumer reads: partitions (Kinesis shards; Kafka partitions would be the same) of ordered
//! records, each at a position (a sequence number, an offset) that a checkpoint resumes after.

use async_trait::async_trait;

/// One partition of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub id: String,
    /// Partitions this one continues (a Kinesis split has one parent, a merge two): read to their end first, so
    /// each user's events stay in order across a reshard.
    pub parents: Vec<String>,
    /// The last position of a closed partition (no new records will come), when the stream says.
    pub ending: Option<String>,
}

/// One record as the stream holds it.
#[derive(Clone, Debug)]
pub struct Record {
    pub position: String,
    pub data: Vec<u8>,
    /// When the stream took it, ms since the Unix epoch.
    pub arrived_ms: Option<i64>,
}

/// What one read of a partition gave.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<Record>,
    /// How far the read is behind the partition's newest record, ms.
    pub behind_ms: Option<i64>,
    /// The partition is closed and every record of it has been read.
    pub ended: bool,
}

/// Where a partition is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// Just after this position (a checkpoint).
    After(String),
    /// Its oldest record still kept.
    Oldest,
    /// Only records that arrive from now on.
    Newest,
}

/// A partitioned stream.
#[async_trait]
pub trait Source: Send + Sync {
    /// The stream's name (in logs, metrics, and the default event ids).
    fn name(&self) -> &str;
    /// Every partition the stream has now, closed ones included while it keeps them.
    async fn partitions(&self) -> anyhow::Result<Vec<Partition>>;
    /// A reader of `partition` from `from`.
    async fn open(
        &self,
        partition: &Partition,
        from: From,
    ) -> anyhow::Result<Box<dyn PartitionReader>>;
}

/// Reads one partition in order.
#[async_trait]
pub trait PartitionReader: Send {
    /// At most `max` next records (none when nothing new has come).
    async fn next(&mut self, max: usize) -> anyhow::Result<Fetched>;
}
