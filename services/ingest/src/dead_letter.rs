//! Records the consumer cannot record (JSON that does not parse, an event the checks refuse): one JSON line
//! each, with the reason, in a file an operator reads and replays from. They never stop the consumer.
//!
//! ```json
//! {"stream":"events","partition":"shardId-000000000000","position":"49…","arrived_ms":1764000000000,
//!  "reason":"invalid events[0].kind: is \"clack\", not a known kind (…)","data":"{\"user_id\":…}"}
//! ```
//! `data` is the record as it came when it is UTF-8, else `data_base64` holds it.

use std::{io::Write, path::Path, sync::Mutex};

use anyhow::Context;
use serde::Serialize;

use crate::source::Record;

#[derive(Serialize)]
struct Entry<'a> {
    stream: &'a str,
    partition: &'a str,
    position: &'a str,
    arrived_ms: Option<i64>,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

pub struct DeadLetters {
    file: Mutex<std::fs::File>,
    stream: String,
}

impl DeadLetters {
    pub fn open(path: &Path, stream: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot make the directory {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the dead-letter file {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
            stream: stream.to_string(),
        })
    }

    /// Appends `record` with `reason`, synced to disk before it returns (the checkpoint past it comes after).
    pub fn put(&self, partition: &str, record: &Record, reason: &str) -> anyhow::Result<()> {
        let text = std::str::from_utf8(&record.data).ok();
        let entry = Entry {
            stream: &self.stream,
            partition,
            position: &record.position,
            arrived_ms: record.arrived_ms,
            reason,
            data: text,
            data_base64: text
                .is_none()
                .then(|| aws_smithy_types::base64::encode(&record.data)),
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(())
    }
}
