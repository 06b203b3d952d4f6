//! The Redis backend (ElastiCache in production), on `fred`: a connection pool that reconnects with exponential
//! backoff, a timeout on every command, cluster mode and TLS from the URL scheme.
//!
//! Keys, all of one user under the `{user}` hash tag so multi-key scripts stay in one cluster slot:
//!
//! ```text
//!   {prefix}:rc:{user}          hash  scene -> JSON {items, created_at_ms, expires_at_ms}; key TTL = longest
//!   {prefix}:seq:{user}         list  JSON events, newest first, trimmed to N
//!   {prefix}:imp:{user}:<item>  zset  impression timestamps, trimmed to the 7-day horizon
//!   {prefix}:rl:{<key>}         string GCRA theoretical arrival time (µs, server clock)
//!   {prefix}:sess:{<id>}        string session blob, PX TTL
//! ```
//!
//! Every multi-step operation is one Lua script, so it is atomic and one round trip. Scripts run by EVALSHA and
//! fall back to EVAL on NOSCRIPT (a restarted or failed-over server forgets them).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use fred::{prelude::*, types::scripts::Script};
use rand::Rng;
use reco_types::{Candidate, Event, ItemId, Scene, UserId, now_ms};
use serde::{Deserialize, Serialize};

use crate::{CacheStore, CacheStoreError, CachedResult, RateDecision, Result, Session};

/// How long recent-event lists live after the user's last event.
const SEQUENCE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Impressions older than this are trimmed (the longest frequency-cap window honoured).
const IMPRESSION_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);

/// Connection settings of the Redis backend.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port`, `rediss://` for TLS, `redis-cluster://host:port?node=host2:port2` for cluster mode
    /// (`rediss-cluster://` for both).
    pub url: String,
    /// Treat `url` as a cluster even with a plain `redis://` scheme (ElastiCache cluster mode enabled).
    pub cluster: bool,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest any one command may take; past it the call fails with `Timeout`.
    pub command_timeout: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Prefix of every key, so several deployments can share a server.
    pub key_prefix: String,
    /// With a `rediss://` URL: trust only this CA (PEM) instead of the system's roots (a private CA, a test server).
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            pool_size: 4,
            command_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
            key_prefix: "reco".into(),
            tls_ca_file: None,
        }
    }
}

struct Lua {
    script: Script,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Self {
            script: Script::from_lua(source),
        }
    }

    /// EVALSHA, and EVAL when the server does not know the script yet.
    async fn run<R: FromValue>(
        &self,
        client: &Client,
        opts: &Options,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, Error> {
        let c = client.with_options(opts);
        match c
            .evalsha(self.script.sha1().clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let source = self.script.lua().expect("built from source").clone();
                c.eval(source, keys, args).await
            }
            other => other,
        }
    }
}

/// Result-cache entry as stored.
#[derive(Serialize, Deserialize)]
struct StoredResult {
    items: Vec<Candidate>,
    created_at_ms: i64,
    expires_at_ms: i64,
}

const PUT_RESULT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"#;

/// Counts the live entries removed; ARGV[1] is now (ms), ARGV[2] the scene or "" for every scene.
const INVALIDATE: &str = r#"
local now = tonumber(ARGV[1])
local function live(v)
  local ok, e = pcall(cjson.decode, v)
  return ok and e.expires_at_ms > now
end
local n = 0
if ARGV[2] == '' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 2, #all, 2 do if live(all[i]) then n = n + 1 end end
  redis.call('DEL', KEYS[1])
else
  local v = redis.call('HGET', KEYS[1], ARGV[2])
  if v and live(v) then n = 1 end
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return n
"#;

/// Pushes events, oldest first, leaving out those whose id the list holds (the list's events are read for their
/// ids: it is short, 50 by default). ARGV: max_len, ttl (ms), then per event its id ("" for none) and its JSON.
const PUSH_EVENT: &str = r#"
local seen = {}
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ok, e = pcall(cjson.decode, raw)
  if ok and type(e) == 'table' and type(e.id) == 'string' then seen[e.id] = true end
end
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if id == '' or not seen[id] then
    redis.call('LPUSH', KEYS[1], ARGV[i + 1])
    if id ~= '' then seen[id] = true end
  end
end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('LLEN', KEYS[1])
"#;

/// GCRA on the server's clock (µs), so every gateway instance shares one notion of time.
/// ARGV: limit, window (µs), cost. Returns {allowed, remaining, retry_after_us}.
const RATE_LIMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = window / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - window
if allow_at > now then
  return {0, math.floor((window - (tat - now)) / interval), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((window - (new_tat - now)) / interval), 0}
"#;

/// ARGV: timestamp (ms), horizon (ms), nonce. One zset per item.
const RECORD_IMPRESSIONS: &str = r#"
local ts, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, ts, ARGV[1] .. ':' .. ARGV[3] .. ':' .. i)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', ts - horizon)
  redis.call('PEXPIRE', k, horizon)
end
return #KEYS
"#;

/// ARGV: since (ms, exclusive), cap. Returns the 1-based indexes of capped items.
const FILTER_CAPPED: &str = r#"
local out = {}
local cap = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  if redis.call('ZCOUNT', k, '(' .. ARGV[1], '+inf') >= cap then out[#out + 1] = i end
end
return out
"#;

const GET_SESSION: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
"#;

/// The Redis cache store.
pub struct RedisCacheStore {
    pool: Pool,
    opts: Options,
    timeout: Duration,
    prefix: String,
    put_result: Lua,
    invalidate: Lua,
    push_event: Lua,
    rate_limit: Lua,
    record_impressions: Lua,
    filter_capped: Lua,
    get_session: Lua,
}

impl fmt::Debug for RedisCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn map_err(timeout: Duration) -> impl Fn(Error) -> CacheStoreError {
    move |e| match e.kind() {
        ErrorKind::Timeout => CacheStoreError::Timeout(timeout),
        _ => CacheStoreError::Unavailable(e.to_string()),
    }
}

impl RedisCacheStore {
    /// Builds the pool and starts connecting in the background: the store exists (and reports errors) while Redis
    /// is unreachable, and reconnects by itself with exponential backoff when it comes back.
    pub fn connect(cfg: &RedisConfig) -> Result<Self> {
        let bad = |e: Error| {
            CacheStoreError::Unavailable(format!("bad redis configuration {:?}: {e}", cfg.url))
        };
        let mut config = if cfg.cluster {
            Config::from_url_clustered(&cfg.url).map_err(bad)?
        } else {
            Config::from_url(&cfg.url).map_err(bad)?
        };
        // Keep retrying a first connection that fails, as later ones do, instead of giving up.
        config.fail_fast = false;
        if let Some(ca) = &cfg.tls_ca_file {
            if config.tls.is_none() {
                return Err(CacheStoreError::Unavailable(format!(
                    "a TLS CA file is set but {:?} is not a rediss:// URL",
                    cfg.url
                )));
            }
            config.tls = Some(tls_trusting(ca)?.into());
        }
        let timeout = cfg.command_timeout;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = cfg.connect_timeout;
                c.internal_command_timeout = cfg.connect_timeout;
                c.max_command_attempts = 1;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build_pool(cfg.pool_size.max(1))
            .map_err(bad)?;
        // The connection tasks run until the pool is dropped.
        let _handles = pool.connect_pool();
        Ok(Self {
            pool,
            // During an outage, fail at once instead of queueing until a reconnection.
            opts: Options {
                timeout: Some(timeout),
                fail_fast: true,
                max_attempts: Some(1),
                ..Default::default()
            },
            timeout,
            prefix: cfg.key_prefix.clone(),
            put_result: Lua::new(PUT_RESULT),
            invalidate: Lua::new(INVALIDATE),
            push_event: Lua::new(PUSH_EVENT),
            rate_limit: Lua::new(RATE_LIMIT),
            record_impressions: Lua::new(RECORD_IMPRESSIONS),
            filter_capped: Lua::new(FILTER_CAPPED),
            get_session: Lua::new(GET_SESSION),
        })
    }

    /// A connected client when there is one: after an outage the pool's connections come back one by one, and
    /// commands should not fail on one still in backoff while another is up.
    fn client(&self) -> &Client {
        self.pool.next_connected()
    }

    fn key(&self, kind: &str, tag: &str) -> String {
        format!("{}:{kind}:{{{tag}}}", self.prefix)
    }

    /// Runs a script with the store's timeout and error mapping.
    async fn script<R: FromValue>(
        &self,
        lua: &Lua,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R> {
        // Belt and braces: fred's timeout covers the command; this one covers everything around it.
        match tokio::time::timeout(self.timeout, lua.run(self.client(), &self.opts, keys, args))
            .await
        {
            Ok(r) => r.map_err(map_err(self.timeout)),
            Err(_) => Err(CacheStoreError::Timeout(self.timeout)),
        }
    }

    async fn command<R, F>(&self, f: F) -> Result<R>
    where
        F: std::future::Future<Output = Result<R, Error>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(map_err(self.timeout)),
            Err(_) => Err(CacheStoreError::Timeout(self.timeout)),
        }
    }
}

/// A rustls client that trusts only the CA certificates in `ca` (PEM). The crypto provider is named rather than
/// taken from the process default, which is ambiguous once several are linked in.
fn tls_trusting(ca: &Path) -> Result<TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad =
        |e: String| CacheStoreError::Unavailable(format!("TLS CA file {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(client))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| CacheStoreError::Unavailable(format!("corrupt {what} in redis: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Value {
    Value::from(serde_json::to_string(v).expect("domain types serialise"))
}

#[async_trait]
impl CacheStore for RedisCacheStore {
    async fn get_result(&self, user: &UserId, scene: &Scene) -> Result<Option<CachedResult>> {
        let c = self.client().with_options(&self.opts);
        let key = self.key("rc", user.as_str());
        let raw: Option<String> = self.command(c.hget(key, scene.as_str())).await?;
        let Some(raw) = raw else { return Ok(None) };
        let stored: StoredResult = decode("cached result", &raw)?;
        let left = stored.expires_at_ms - now_ms();
        if left <= 0 {
            return Ok(None);
        }
        Ok(Some(CachedResult {
            items: stored.items,
            created_at_ms: stored.created_at_ms,
            ttl_remaining: Duration::from_millis(left as u64),
        }))
    }

    async fn put_result(
        &self,
        user: &UserId,
        scene: &Scene,
        items: Vec<Candidate>,
        ttl: Duration,
    ) -> Result<()> {
        let now = now_ms();
        let stored = StoredResult {
            items,
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as i64,
        };
        let args = vec![
            scene.as_str().into(),
            encode(&stored),
            (ttl.as_millis().max(1) as i64).into(),
        ];
        let _: i64 = self
            .script(&self.put_result, vec![self.key("rc", user.as_str())], args)
            .await?;
        Ok(())
    }

    async fn invalidate(&self, user: &UserId, scene: Option<&Scene>) -> Result<usize> {
        let args = vec![
            now_ms().into(),
            scene.map(Scene::as_str).unwrap_or("").into(),
        ];
        let n: i64 = self
            .script(&self.invalidate, vec![self.key("rc", user.as_str())], args)
            .await?;
        Ok(n as usize)
    }

    async fn push_events(
        &self,
        user: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize> {
        let mut args = Vec::with_capacity(2 + 2 * events.len());
        args.push((max_len.max(1) as i64).into());
        args.push((SEQUENCE_TTL.as_millis() as i64).into());
        for e in &events {
            args.push(e.id.as_ref().map(|i| i.as_str()).unwrap_or("").into());
            args.push(encode(e));
        }
        let n: i64 = self
            .script(&self.push_event, vec![self.key("seq", user.as_str())], args)
            .await?;
        Ok(n as usize)
    }

    async fn recent_events(&self, user: &UserId, limit: usize) -> Result<Vec<Event>> {
        let c = self.client().with_options(&self.opts);
        let stop = if limit == 0 { -1 } else { limit as i64 - 1 };
        let raw: Vec<String> = self
            .command(c.lrange(self.key("seq", user.as_str()), 0, stop))
            .await?;
        raw.iter().map(|s| decode("event", s)).collect()
    }

    async fn check_rate_limit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        cost: u32,
    ) -> Result<RateDecision> {
        let args = vec![
            (limit.max(1) as i64).into(),
            (window.as_micros() as i64).into(),
            (cost.max(1) as i64).into(),
        ];
        let r: Vec<i64> = self
            .script(&self.rate_limit, vec![self.key("rl", key)], args)
            .await?;
        match r.as_slice() {
            [allowed, remaining, retry_us] => Ok(RateDecision {
                allowed: *allowed == 1,
                remaining: (*remaining).max(0) as u32,
                retry_after: Duration::from_micros((*retry_us).max(0) as u64),
            }),
            other => Err(CacheStoreError::Unavailable(format!(
                "unexpected rate-limit reply {other:?}"
            ))),
        }
    }

    async fn record_impressions(&self, user: &UserId, items: &[ItemId], at_ms: i64) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let base = self.key("imp", user.as_str());
        let keys = items.iter().map(|i| format!("{base}:{i}")).collect();
        let nonce: u64 = rand::rng().random();
        let args = vec![
            at_ms.into(),
            (IMPRESSION_HORIZON.as_millis() as i64).into(),
            nonce.to_string().into(),
        ];
        let _: i64 = self.script(&self.record_impressions, keys, args).await?;
        Ok(())
    }

    async fn filter_capped(
        &self,
        user: &UserId,
        items: &[ItemId],
        cap: u32,
        window: Duration,
    ) -> Result<Vec<ItemId>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.key("imp", user.as_str());
        let keys = items.iter().map(|i| format!("{base}:{i}")).collect();
        let since = now_ms() - window.as_millis() as i64;
        let idx: Vec<i64> = self
            .script(
                &self.filter_capped,
                keys,
                vec![since.into(), (cap as i64).into()],
            )
            .await?;
        Ok(idx
            .into_iter()
            .filter_map(|i| items.get((i as usize).wrapping_sub(1)).cloned())
            .collect())
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>> {
        let v: Value = self
            .script(&self.get_session, vec![self.key("sess", id)], vec![])
            .await?;
        match v {
            Value::Null => Ok(None),
            Value::Array(mut parts) if parts.len() == 2 => {
                let ttl = parts.pop().and_then(|t| t.as_i64()).unwrap_or(0);
                let data = parts
                    .pop()
                    .and_then(|d| d.as_bytes().map(<[u8]>::to_vec))
                    .unwrap_or_default();
                Ok(Some(Session {
                    data,
                    ttl_remaining: Duration::from_millis(ttl.max(0) as u64),
                }))
            }
            other => Err(CacheStoreError::Unavailable(format!(
                "unexpected session reply {other:?}"
            ))),
        }
    }

    async fn put_session(&self, id: &str, data: Vec<u8>, ttl: Duration) -> Result<()> {
        let c = self.client().with_options(&self.opts);
        let expire = Expiration::PX(ttl.as_millis().max(1) as i64);
        let _: () = self
            .command(c.set(
                self.key("sess", id),
                Value::Bytes(data.into()),
                Some(expire),
                None,
                false,
            ))
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        let c = self.client().with_options(&self.opts);
        let n: i64 = self.command(c.del(self.key("sess", id))).await?;
        Ok(n > 0)
    }

    async fn ping(&self) -> Result<()> {
        let c = self.client().with_options(&self.opts);
        let _: String = self.command(c.ping(None)).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
