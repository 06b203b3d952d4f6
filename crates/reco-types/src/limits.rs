//! Size limits enforced on every input. They bound memory per request and keep every store's item size far below
//! the smallest production limit (DynamoDB's 400 KB item).

/// Longest user, item or session id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest feature, category, source, scene or event-kind name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most features on one user or item.
pub const MAX_FEATURES: usize = 1024;
/// Longest string feature value, in bytes.
pub const MAX_STRING_VALUE_BYTES: usize = 16 * 1024;
/// Most elements of a list feature value.
pub const MAX_LIST_LEN: usize = 4096;
/// Most dimensions of an embedding.
pub const MAX_DIMENSION: usize = 4096;
/// Most candidates in one list (recall pool, rank request, cached result).
pub const MAX_CANDIDATES: usize = 2000;
/// Most ids in one batch read or write.
pub const MAX_BATCH: usize = 1000;
/// Most categories of one item.
pub const MAX_CATEGORIES: usize = 64;
