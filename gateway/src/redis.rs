//! The shared rate limiter's Redis: one connection speaking RESP (only what `EVAL` needs), the
//! GCRA as a Lua script so that reading and moving a key's arrival time is one atomic step on
//! Redis's own clock. Ours instead of the `redis` crate: one command, about 100 lines.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::ratelimit::Rate;

/// GCRA on Redis's clock. KEYS[1] the key; ARGV period in µs, count. Returns the µs to wait
/// (0: taken).
const SCRIPT: &str = r#"
local period = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = math.floor(period / count)
local tolerance = period - interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000) + 1000)
return 0
"#;

/// Timeout of one Redis round trip.
const TIMEOUT_MS: u64 = 500;

#[derive(Debug)]
pub struct Redis {
    addr: String,
    db: u32,
    prefix: String,
    connection: Mutex<Option<BufStream<TcpStream>>>,
}

impl Redis {
    /// From `redis://host:port[/db]`; keys start with `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Redis, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("--redis-url {url:?}: expected redis://host:port[/db]"))?;
        let (addr, db) = match rest.split_once('/') {
            Some((addr, "")) => (addr, 0),
            Some((addr, db)) => (
                addr,
                db.parse()
                    .map_err(|_| format!("--redis-url {url:?}: bad database number"))?,
            ),
            None => (rest, 0),
        };
        if addr.contains('@') {
            return Err("--redis-url: credentials are not supported".into());
        }
        Ok(Redis {
            addr: addr.to_owned(),
            db,
            prefix: prefix.to_owned(),
            connection: Mutex::new(None),
        })
    }

    /// Takes one request from `scope`/`subject`: `Ok(())`, or `Err(ns to wait)` — or the
    /// outer `Err` when Redis cannot answer.
    pub async fn take(
        &self,
        scope: &str,
        subject: &str,
        rate: Rate,
    ) -> Result<Result<(), u64>, String> {
        let key = format!("{}{scope}:{subject}", self.prefix);
        let period_us = rate.period.as_micros().to_string();
        let count = rate.count.max(1).to_string();
        let args = ["EVAL", SCRIPT, "1", &key, &period_us, &count];
        let reply = tokio::time::timeout(
            std::time::Duration::from_millis(TIMEOUT_MS),
            self.command(&args),
        )
        .await
        .map_err(|_| "redis timed out".to_string())?;
        let wait_us = match reply {
            Ok(wait) => wait,
            Err(error) => {
                *self.connection.lock().await = None;
                return Err(error);
            }
        };
        if rate.count == 0 {
            return Ok(Err(
                u64::try_from(rate.period.as_nanos()).unwrap_or(u64::MAX)
            ));
        }
        Ok(if wait_us <= 0 {
            Ok(())
        } else {
            Err(u64::try_from(wait_us).unwrap_or(0).saturating_mul(1000))
        })
    }

    async fn command(&self, args: &[&str]) -> Result<i64, String> {
        let mut guard = self.connection.lock().await;
        if guard.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("redis {}: {e}", self.addr))?;
            let mut stream = BufStream::new(stream);
            if self.db != 0 {
                let db = self.db.to_string();
                write_command(&mut stream, &["SELECT", &db]).await?;
                read_reply(&mut stream).await?;
            }
            *guard = Some(stream);
        }
        let Some(stream) = guard.as_mut() else {
            return Err("no redis connection".into());
        };
        write_command(stream, args).await?;
        match read_reply(stream).await? {
            Reply::Integer(value) => Ok(value),
            Reply::Other => Err("unexpected redis reply".into()),
        }
    }
}

async fn write_command(stream: &mut BufStream<TcpStream>, args: &[&str]) -> Result<(), String> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

enum Reply {
    Integer(i64),
    Other,
}

/// Reads one reply; only integers are kept (errors become `Err`).
async fn read_reply(stream: &mut BufStream<TcpStream>) -> Result<Reply, String> {
    let mut line = String::new();
    let read = stream
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    if read == 0 {
        return Err("redis closed the connection".into());
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        ":" => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| "bad redis integer".into()),
        "-" => Err(format!("redis error: {rest}")),
        "+" => Ok(Reply::Other),
        "$" => {
            let length: i64 = rest.parse().map_err(|_| "bad redis bulk length")?;
            if length >= 0 {
                let mut skip = vec![0u8; usize::try_from(length).unwrap_or(0) + 2];
                stream
                    .read_exact(&mut skip)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(Reply::Other)
        }
        _ => Err(format!("unexpected redis reply {line:?}")),
    }
}
