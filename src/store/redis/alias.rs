//! The aliases regenerates leave (`session.regenerate_grace`): a string at
//! `{key_prefix}alias:{old handle}` holding [`Alias::to_json`], `PEXPIREAT` its `expires_at`.
//! `:` is not in the handle alphabet, so it never meets a session key, and it is no hash, so
//! the listing's `SCAN ... TYPE hash` never meets it; Redis drops it by its TTL.
//!
//! On one server the alias is written by the very script that deletes the old session
//! ([`CAS_DEL_ALIASED`]): no reader sees the old session gone and no alias. On Redis Cluster
//! the two keys are in different slots, so the alias is written first and the old session
//! deleted after (the old id resolves to the old session until then); a regenerate that then
//! loses (the old session changed hands or vanished) or fails removes the alias again if it
//! is still its own. A proxy dying between the two leaves an alias that is met only once the
//! old session itself has ended, naming a copy nobody else holds.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use super::RedisStore;
use super::conn::{Key, call_err};
use super::script::{Cas, int_reply, run};
use crate::session::Handle;
use crate::store::{Alias, Record, Result};

/// [`CAS_DEL`](super::script) that also writes the alias. ARGV[5]: expected version; ARGV[6]:
/// the alias key (on one server only, where every key is local), ARGV[7] its JSON, ARGV[8] its
/// `PEXPIREAT`. Returns 1 if deleted (and the alias written), nil if gone, else the record.
const CAS_DEL_ALIASED: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return false end
if v ~= ARGV[5] then return redis.call('HGET', KEYS[1], 'r') end
redis.call('DEL', KEYS[1])
reindex()
redis.call('SET', ARGV[6], ARGV[7], 'PXAT', ARGV[8])
return 1
";

/// Removes the alias at KEYS[1] only if it is still ARGV[1] (the JSON its writer wrote).
const DROP_ALIAS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

static SCRIPTS: LazyLock<(Script, Script)> = LazyLock::new(|| {
    (
        Script::new(&format!("{}{CAS_DEL_ALIASED}", super::script::REINDEX)),
        Script::new(DROP_ALIAS),
    )
});

impl RedisStore {
    /// `{key_prefix}alias:{old}`.
    fn alias_key(&self, old: &Handle) -> String {
        format!("{}alias:{}", self.prefix, old)
    }

    /// The alias under `old`, if its key is there and parses.
    pub(super) async fn get_alias(&self, old: &Handle) -> Result<Option<Alias>> {
        let mut cmd = Cmd::new();
        cmd.arg("GET").arg(self.alias_key(old));
        let bytes: Option<Vec<u8>> = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("GET (alias)"))?;
        Ok(bytes
            .and_then(|b| Alias::from_json(&b))
            .filter(|a| a.old == *old && a.is_live(crate::store::now_ms())))
    }

    /// `SET ... PXAT`: the alias, replacing any.
    pub(super) async fn set_alias(&self, alias: &Alias) -> Result<()> {
        let mut cmd = Cmd::new();
        cmd.arg("SET")
            .arg(self.alias_key(&alias.old))
            .arg(alias.to_json()?)
            .arg("PXAT")
            .arg(alias.expires_at);
        let _: () = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(call_err("SET (alias)"))?;
        Ok(())
    }

    /// Removes `alias` if its key still holds exactly it.
    pub(super) async fn unset_alias(&self, alias: &Alias) -> Result<()> {
        let script = &SCRIPTS.1;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(1)
            .arg(self.alias_key(&alias.old))
            .arg(alias.to_json()?);
        int_reply(run(&mut self.conn(), script, &cmd).await).map_err(call_err("alias drop"))?;
        Ok(())
    }

    /// [`cas_del`](RedisStore::cas_del) of the old session (`key`, `handle`), leaving `alias`
    /// in the same script. One server only.
    pub(super) async fn cas_del_aliased(
        &self,
        key: Key<'_>,
        handle: &Handle,
        current: &Record,
        alias: &Alias,
    ) -> Result<Cas> {
        let script = &SCRIPTS.0;
        let member = handle.as_str();
        let plan = self.reindex(Some(current), None);
        let json = alias.to_json()?;
        let mut cmd = self.invocation(script, key, member, &plan, 4, json.len() + 64);
        cmd.arg(current.version)
            .arg(self.alias_key(&alias.old))
            .arg(json)
            .arg(alias.expires_at);
        let value = run(&mut self.conn(), script, &cmd)
            .await
            .map_err(call_err("compare-and-delete script (alias)"))?;
        Cas::from_value(value, &self.sealer, handle)
    }
}
