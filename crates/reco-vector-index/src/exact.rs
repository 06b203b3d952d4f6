//! Exact k-NN by brute force over a contiguous matrix. O(n·d) per query: fine for tens of thousands of items,
//! and the ground truth for measuring approximate indexes.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap},
};

use async_trait::async_trait;
use parking_lot::RwLock;
use reco_types::{Embedding, ItemFilter, ItemId, Name, dot};

use crate::{Hit, IndexStats, IndexedItem, Metric, Result, VectorIndex};

#[derive(Default)]
struct Rows {
    ids: Vec<ItemId>,
    categories: Vec<Vec<Name>>,
    /// Row-major, `dimension` floats per row; normalised under the cosine metric.
    data: Vec<f32>,
    slot: HashMap<ItemId, usize>,
    version: u64,
}

/// Brute-force index. Writes take a write lock; searches share a read lock.
pub struct ExactIndex {
    dimension: usize,
    metric: Metric,
    rows: RwLock<Rows>,
}

impl ExactIndex {
    pub fn new(dimension: usize, metric: Metric) -> Self {
        Self {
            dimension,
            metric,
            rows: RwLock::default(),
        }
    }

    fn prepare(&self, v: &[f32]) -> Vec<f32> {
        match self.metric {
            Metric::InnerProduct => v.to_vec(),
            Metric::Cosine => {
                let n = dot(v, v).sqrt();
                if n == 0.0 {
                    v.to_vec()
                } else {
                    v.iter().map(|x| x / n).collect()
                }
            }
        }
    }

    fn check(&self, field: &str, v: &Embedding) -> Result<()> {
        crate::check_dimension(field, v, self.dimension)
    }
}

/// A heap entry ordered by score (min-heap through `Reverse` semantics below).
struct Scored(f32, usize);

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    // Reversed so the BinaryHeap's top is the worst kept hit; ties broken by row for determinism.
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0).then(self.1.cmp(&o.1))
    }
}

#[async_trait]
impl VectorIndex for ExactIndex {
    async fn search(&self, query: &Embedding, k: usize, filter: &ItemFilter) -> Result<Vec<Hit>> {
        self.check("vector", query)?;
        let q = self.prepare(query.as_slice());
        let rows = self.rows.read();
        let d = self.dimension;
        let mut heap = BinaryHeap::with_capacity(k + 1);
        let check_categories =
            !filter.include_categories.is_empty() || !filter.exclude_categories.is_empty();
        for (row, chunk) in rows.data.chunks_exact(d).enumerate() {
            if check_categories && !filter.allows_categories(&rows.categories[row]) {
                continue;
            }
            if !filter.exclude_item_ids.is_empty()
                && filter.exclude_item_ids.contains(&rows.ids[row])
            {
                continue;
            }
            let s = dot(&q, chunk);
            if heap.len() < k {
                heap.push(Scored(s, row));
            } else if let Some(worst) = heap.peek()
                && Scored(s, row) < *worst
            {
                heap.pop();
                heap.push(Scored(s, row));
            }
        }
        Ok(heap
            .into_sorted_vec()
            .into_iter()
            .map(|Scored(score, row)| Hit {
                item_id: rows.ids[row].clone(),
                score,
            })
            .collect())
    }

    async fn vectors(&self, items: &[ItemId]) -> Result<Vec<Embedding>> {
        let rows = self.rows.read();
        let d = self.dimension;
        Ok(items
            .iter()
            .filter_map(|id| rows.slot.get(id))
            .filter_map(|&row| {
                Embedding::parse("vector", rows.data[row * d..(row + 1) * d].to_vec()).ok()
            })
            .collect())
    }

    async fn upsert(&self, items: Vec<IndexedItem>) -> Result<usize> {
        for (i, item) in items.iter().enumerate() {
            self.check(&format!("items[{i}].vector"), &item.vector)?;
        }
        let d = self.dimension;
        let mut rows = self.rows.write();
        let n = items.len();
        for item in items {
            let v = self.prepare(item.vector.as_slice());
            match rows.slot.get(&item.item_id).copied() {
                Some(row) => {
                    rows.data[row * d..(row + 1) * d].copy_from_slice(&v);
                    rows.categories[row] = item.categories;
                }
                None => {
                    let row = rows.ids.len();
                    rows.slot.insert(item.item_id.clone(), row);
                    rows.ids.push(item.item_id);
                    rows.categories.push(item.categories);
                    rows.data.extend_from_slice(&v);
                }
            }
        }
        rows.version += 1;
        Ok(n)
    }

    async fn delete(&self, items: &[ItemId]) -> Result<usize> {
        let d = self.dimension;
        let mut rows = self.rows.write();
        let mut deleted = 0;
        for id in items {
            let Some(row) = rows.slot.remove(id) else {
                continue;
            };
            // Swap-remove: the last row moves into the hole.
            let last = rows.ids.len() - 1;
            if row != last {
                let moved = rows.ids[last].clone();
                rows.data.copy_within(last * d..(last + 1) * d, row * d);
                rows.ids.swap(row, last);
                rows.categories.swap(row, last);
                rows.slot.insert(moved, row);
            }
            rows.ids.pop();
            rows.categories.pop();
            rows.data.truncate(last * d);
            deleted += 1;
        }
        rows.version += 1;
        Ok(deleted)
    }

    async fn stats(&self) -> Result<IndexStats> {
        let rows = self.rows.read();
        Ok(IndexStats {
            count: rows.ids.len() as u64,
            dimension: self.dimension,
            metric: self.metric,
            version: format!("exact-{}", rows.version),
        })
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn backend(&self) -> &'static str {
        "exact"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exact_index_passes_the_shared_suite() {
        crate::suite::run_all(&ExactIndex::new(4, Metric::Cosine)).await;
    }
}
