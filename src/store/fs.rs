//! An embedded store: one JSON file per session, like werkzeug's `FilesystemSessionStore`.
//! One directory belongs to one proxy process (several proxies must not share one: use Redis).
//!
//! Every write goes to a temporary file, fsynced (unless `store.fsync = false`) and renamed over
//! the old one: a crash leaves the old session or the new one, never a torn one. Readers take
//! no lock; writers of one id serialise on a striped async lock. Each file's mtime is the
//! session's expiry (`find DIR -mmin +0` finds the dead). The ids, and with `session.user_key`
//! the users, are indexed in memory, built at open; a file removed behind the store's back is
//! never listed. Every filesystem call runs on the blocking pool, a few writes at a time.
//! Why: docs/stores.md.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::lock::StripedLock;
use super::users::UserIndex;
use super::{
    Alias, ExpiredSink, Loaded, Page, Record, Result, Sealer, SessionStore, StoreError, Update,
    now_ms,
};
use crate::config::FsConfig;
use crate::session::{Handle, SessionId, UserKey};

const TEMP_PREFIX: &str = ".tmp-";
/// The aliases regenerates leave (`session.regenerate_grace`): `.alias-{old handle}`, a name
/// no session file has (a template never starts with a dot), so `id_of` never parses one.
const ALIAS_PREFIX: &str = ".alias-";
/// A temp file older than this was left by a crash mid-write; the sweeper removes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct FsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    prefix: String,
    suffix: String,
    mode: u32,
    fsync: bool,
    /// Writers of one id serialise on its stripe.
    locks: StripedLock,
    /// Bounds the writes in flight across all ids; taken after the id's stripe, so a writer
    /// queued behind its own session holds no permit.
    writers: Arc<tokio::sync::Semaphore>,
    index: Index,
    users: Option<Users>,
    /// Seals each file's data on write and opens it on read; the index and every write's
    /// merge work on the opened data.
    sealer: Sealer,
}

/// The user index and the key it is built from.
#[derive(Debug)]
struct Users {
    key: UserKey,
    index: UserIndex,
}

impl Inner {
    /// `id`'s file went from `old` to `new`; called under the id's stripe.
    fn reindex(&self, id: &Handle, old: Option<&Record>, new: Option<&Record>) {
        let Some(users) = &self.users else { return };
        if let (Some(old), Some(new)) = (old, new)
            && Arc::ptr_eq(&old.data, &new.data)
        {
            return;
        }
        let old = old.and_then(|r| users.key.user_of(&r.data));
        let new = new.and_then(|r| users.key.user_of(&r.data));
        users.index.change(id, old.as_deref(), new.as_deref());
    }

    /// The user index from every file the id index names (expired ones too, until swept).
    fn build_user_index(&self) -> Result<()> {
        let Some(users) = &self.users else {
            return Ok(());
        };
        users.index.clear();
        let mut after = None;
        loop {
            let ids = self.index.after(after.as_ref(), 1024);
            let Some(last) = ids.last().copied() else {
                return Ok(());
            };
            for id in ids {
                if let Some(r) = self.read(&id)?
                    && let Some(user) = users.key.user_of(&r.data)
                {
                    users.index.change(&id, None, Some(&user));
                }
            }
            after = Some(last);
        }
    }

    /// The live sessions of `user`; an indexed id whose file is gone leaves the index.
    fn user_sessions(&self, user: &str, now: u64) -> Result<Vec<(Handle, Record)>> {
        let Some(users) = &self.users else {
            return Err(StoreError::NoUserIndex);
        };
        let mut out = Vec::new();
        for id in users.index.ids(user) {
            match self.read(&id)? {
                Some(r) if crate::store::users::holds(&users.key, &r, user, now) => {
                    out.push((id, r))
                }
                Some(_) => {}
                None => {
                    let _guard = self.locks.blocking_lock(&id);
                    if self.read(&id)?.is_none() {
                        users.index.change(&id, Some(user), None);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The ids that have a file, in order. A `BTreeSet` (about 50 bytes an id: 50 MB at a million)
/// behind a std lock, which is only ever held by synchronous code on the blocking pool for a
/// lookup or a copy of at most one page of ids, never while a file is read or written.
///
/// Invariant: an id is added or removed only by a thread holding its stripe, right after its
/// file was written or removed; so a listing that finds a file missing can take the stripe,
/// see the file still missing, and drop the id without racing a create of the same id.
#[derive(Debug, Default)]
struct Index(RwLock<BTreeSet<Handle>>);

impl Index {
    fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn insert(&self, id: Handle) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
    }

    fn remove(&self, id: &Handle) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Up to `n` ids strictly after `after`, copied out so the lock is released at once.
    fn after(&self, after: Option<&Handle>, n: usize) -> Vec<Handle> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .range((lower, Bound::Unbounded))
            .take(n)
            .copied()
            .collect()
    }
}

impl FsStore {
    /// Creates the directory (mode 0o700) if needed and checks that it is writable.
    pub async fn open(config: FsConfig) -> Result<Self> {
        Self::open_indexed(config, None).await
    }

    /// [`FsStore::open`], keeping a user index on `users`.
    pub async fn open_indexed(config: FsConfig, users: Option<UserKey>) -> Result<Self> {
        Self::open_sealed(config, users, Sealer::default()).await
    }

    /// [`FsStore::open_indexed`], sealing session data with `sealer` (`store.encryption_key`).
    pub async fn open_sealed(
        config: FsConfig,
        users: Option<UserKey>,
        sealer: Sealer,
    ) -> Result<Self> {
        let (prefix, suffix) = config
            .filename_template
            .split_once("%s")
            .map(|(p, s)| (p.to_owned(), s.to_owned()))
            // Validated in config; refusing here keeps a library caller from a panic.
            .ok_or_else(|| {
                StoreError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "store.filename_template has no %s",
                ))
            })?;
        let inner = Arc::new(Inner {
            dir: config.path,
            prefix,
            suffix,
            mode: config.mode,
            fsync: config.fsync,
            locks: StripedLock::default(),
            writers: Arc::new(tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            index: Index::default(),
            users: users.map(|key| Users {
                key,
                index: UserIndex::default(),
            }),
            sealer,
        });
        let check = inner.clone();
        blocking(move || {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&check.dir)?;
            // Fail at start, not on the first request, if the directory is not writable.
            let probe = check
                .dir
                .join(format!("{TEMP_PREFIX}probe-{}", std::process::id()));
            File::create(&probe)?;
            fs::remove_file(&probe)?;
            check.build_index()?;
            check.build_user_index()
        })
        .await
        .map_err(|e| match e {
            StoreError::Io(io) => StoreError::Io(io::Error::new(
                io.kind(),
                format!("session directory {}: {io}", inner.dir.display()),
            )),
            other => other,
        })?;
        Ok(FsStore { inner })
    }
}

use std::os::unix::fs::DirBuilderExt as _;

impl FsStore {
    /// Runs a write to `id`'s file on the blocking pool, holding the id's stripe (so it is a
    /// true read-modify-write) and a writer permit (so few writes are in flight at once).
    async fn write<T: Send + 'static>(
        &self,
        id: Handle,
        op: impl FnOnce(&Inner, &Handle, PathBuf) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let guard = self.inner.locks.lock(&id).await;
        let permit = self.inner.writers.clone().acquire_owned().await;
        let inner = self.inner.clone();
        blocking(move || {
            let (_guard, _permit) = (guard, permit);
            op(&inner, &id, inner.path(&id))
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StoreError::join)?
}

impl Inner {
    fn path(&self, id: &Handle) -> PathBuf {
        self.dir
            .join(format!("{}{}{}", self.prefix, id, self.suffix))
    }

    fn alias_path(&self, old: &Handle) -> PathBuf {
        self.dir.join(format!("{ALIAS_PREFIX}{old}"))
    }

    /// The alias under `old`, if its file is there, parses and has not expired.
    fn read_alias(&self, old: &Handle, now: u64) -> Result<Option<Alias>> {
        match fs::read(self.alias_path(old)) {
            Ok(bytes) => Ok(Alias::from_json(&bytes).filter(|a| a.old == *old && a.is_live(now))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn id_of(&self, name: &str) -> Option<Handle> {
        name.strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)
            .and_then(Handle::parse)
    }

    /// The session id a file written before handles is named by.
    fn legacy_id_of(&self, name: &str) -> Option<SessionId> {
        name.strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)
            .and_then(SessionId::parse)
    }

    /// The record in `path`, if present (an unreadable file counts as missing:
    /// [`Record::from_stored`]).
    fn read(&self, id: &Handle) -> Result<Option<Record>> {
        match fs::read(self.path(id)) {
            Ok(bytes) => Ok(Record::from_stored(&bytes, id, &self.sealer)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn read_live(&self, id: &Handle, now: u64) -> Result<Option<Record>> {
        Ok(self.read(id)?.filter(|r| r.is_live(now)))
    }

    /// temp file + (fsync) + rename + (fsync dir): the file is the old one or the new one.
    fn write(&self, id: &Handle, path: &Path, record: &Record) -> Result<()> {
        let json = record.to_stored_json(&self.sealer, id)?;
        self.write_file(path, json.as_bytes(), record.expires_at)
    }

    /// [`write`](Self::write) of any bytes, the file's mtime set to `expires_at`.
    fn write_file(&self, path: &Path, bytes: &[u8], expires_at: u64) -> Result<()> {
        let mut token = [0u8; 8];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut token)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let tmp = self.dir.join(format!(
            "{TEMP_PREFIX}{}",
            token.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.mode)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.set_modified(UNIX_EPOCH + Duration::from_millis(expires_at))?;
            if self.fsync {
                file.sync_all()?;
            }
            fs::rename(&tmp, path)?;
            if self.fsync {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The index from the directory's names alone: `read_dir` streams, so at a million files
    /// memory holds the handles (sorted once, in bulk) and nothing else; no file is opened.
    ///
    /// A file named by a session id (what releases before handles wrote) is renamed to its
    /// handle's name here, so an upgraded directory keeps every session and no file name holds
    /// a bearer id. A rename keeps the file's mtime (its expiry).
    fn build_index(&self) -> Result<()> {
        let mut ids = Vec::new();
        let mut renamed = 0usize;
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = self.id_of(name) {
                ids.push(id);
            } else if let Some(old) = self.legacy_id_of(name) {
                let handle = old.handle();
                let to = self.path(&handle);
                if fs::symlink_metadata(&to).is_ok() {
                    tracing::warn!(
                        file = %to.display(),
                        "a file named by a session id was left beside its handle's file"
                    );
                    continue;
                }
                fs::rename(self.dir.join(name), &to)?;
                ids.push(handle);
                renamed += 1;
            }
        }
        if renamed > 0 {
            if self.fsync {
                File::open(&self.dir)?.sync_all()?;
            }
            tracing::info!(
                dir = %self.dir.display(),
                sessions = renamed,
                "session files renamed from their ids to their handles"
            );
        }
        let ids: BTreeSet<Handle> = ids.into_iter().collect();
        *self.index.0.write().unwrap_or_else(PoisonError::into_inner) = ids;
        Ok(())
    }

    /// Drops `id` from the index if its file is really gone: checked under its stripe, so a
    /// create of the same id that ran since the file was found missing keeps its entry.
    fn forget_if_gone(&self, id: &Handle) -> Result<()> {
        let _guard = self.locks.blocking_lock(id);
        match fs::symlink_metadata(self.path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.remove(id);
                Ok(())
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// The user `r` names, for a report (with `session.user_key`).
    fn user_of(&self, r: &Record) -> Option<String> {
        self.users.as_ref().and_then(|u| u.key.user_of(&r.data))
    }

    fn prune(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
        let now_time = UNIX_EPOCH + Duration::from_millis(now);
        let mut removed = 0;
        // Streams the directory: memory stays flat at a million files, and only files whose
        // mtime (= expiry) has passed are opened.
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::now());
            if name.starts_with(ALIAS_PREFIX) {
                if mtime <= now_time {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            if name.starts_with(TEMP_PREFIX) {
                if now_time
                    .duration_since(mtime)
                    .is_ok_and(|age| age > STALE_TEMP)
                {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            let Some(id) = self.id_of(name) else { continue };
            if mtime > now_time {
                continue;
            }
            let _guard = self.locks.blocking_lock(&id);
            // Re-check under the lock: the file may have been touched since the stat. Its times
            // decide, so a sealed record whose key is gone expires like any other (its data is
            // opened only for the user index and the report: `r` is `None` if it does not open).
            let bytes = match fs::read(entry.path()) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if Record::expires_at_of(&bytes).is_none_or(|at| at > now) {
                continue;
            }
            let r = Record::from_stored(&bytes, &id, &self.sealer);
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    self.index.remove(&id);
                    self.reindex(&id, r.as_ref(), None);
                    removed += 1;
                    if let Some(report) = expired {
                        report(&id, r.as_ref().and_then(|r| self.user_of(r)).as_deref());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.index.remove(&id);
                    self.reindex(&id, r.as_ref(), None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// One chunk of a listing: up to `n` ids after `after` from the index, and the live
    /// sessions among their files; dead and unreadable ones are skipped, missing ones also
    /// leave the index. No lock is held while a file is read. `last` is the last id visited
    /// (`None`: the index has nothing after `after`), `more` whether the index has ids after it.
    fn list_chunk(&self, after: Option<Handle>, n: usize, now: u64) -> Result<Chunk> {
        let ids = self.index.after(after.as_ref(), n);
        let last = ids.last().copied();
        let mut sessions = Vec::with_capacity(ids.len());
        for id in ids {
            match fs::read(self.path(&id)) {
                Ok(bytes) => {
                    if let Some(r) =
                        Record::from_stored(&bytes, &id, &self.sealer).filter(|r| r.is_live(now))
                    {
                        sessions.push((id, r));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.forget_if_gone(&id)?,
                Err(e) => return Err(e.into()),
            }
        }
        let more = last.is_some() && !self.index.after(last.as_ref(), 1).is_empty();
        Ok(Chunk {
            sessions,
            last,
            more,
        })
    }
}

/// Files one blocking task of a listing reads (about half a millisecond of work). A page is
/// read as a run of such tasks, the async side taking its turn on the worker between them,
/// so a walk in pages of 1000 is not one thread that stays runnable for 20 ms a page,
/// competing with every request's hand-offs between the worker and the blocking pool. The
/// evidence is weak on this shared machine: at a million files, proxy and walker on one core,
/// the p99 while walking was 0.6–1.1× the idle p99 in three runs with chunks, 0.7–2.6× in
/// three with one task per page (bench/LISTING.md has the chunked runs).
const READ_CHUNK: usize = 32;

struct Chunk {
    sessions: Vec<(Handle, Record)>,
    last: Option<Handle>,
    more: bool,
}

#[async_trait]
impl SessionStore for FsStore {
    async fn load(&self, id: &Handle) -> Result<Option<Record>> {
        let inner = self.inner.clone();
        let id = *id;
        blocking(move || inner.read_live(&id, now_ms())).await
    }

    /// A lock-free read, as `load`; a file found expired is removed under the id's stripe (the
    /// writers' lock, so a create racing it wins or loses cleanly), after a read that shows it
    /// is still the expired one.
    async fn load_or_expired(&self, id: &Handle) -> Result<Loaded> {
        let now = now_ms();
        let inner = self.inner.clone();
        let id = *id;
        match blocking(move || inner.read(&id)).await? {
            None => return Ok(Loaded::Missing),
            Some(r) if r.is_live(now) => return Ok(Loaded::Live(r)),
            Some(_) => {}
        }
        self.write(id, move |inner, id, path| {
            let Some(r) = inner.read(id)? else {
                return Ok(Loaded::Missing);
            };
            if r.is_live(now) {
                return Ok(Loaded::Live(r));
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
                Err(e) => return Err(e.into()),
            }
            inner.index.remove(id);
            inner.reindex(id, Some(&r), None);
            Ok(Loaded::Expired {
                user: inner.user_of(&r),
            })
        })
        .await
    }

    async fn create(&self, id: &Handle, record: &Record) -> Result<bool> {
        let record = record.clone();
        self.write(*id, move |inner, id, path| {
            let old = inner.read(id)?;
            if old.as_ref().is_some_and(|r| r.is_live(now_ms())) {
                return Ok(false);
            }
            inner.write(id, &path, &record)?;
            inner.index.insert(*id);
            inner.reindex(id, old.as_ref(), Some(&record));
            Ok(true)
        })
        .await
    }

    async fn alias(&self, old: &Handle) -> Result<Option<Alias>> {
        let (inner, old) = (self.inner.clone(), *old);
        blocking(move || inner.read_alias(&old, now_ms())).await
    }

    /// Under the old handle's stripe, so [`drop_alias`](SessionStore::drop_alias) compares and
    /// removes in one step.
    async fn put_alias(&self, alias: &Alias) -> Result<()> {
        let (json, expires_at) = (alias.to_json()?, alias.expires_at);
        self.write(alias.old, move |inner, old, _| {
            inner.write_file(&inner.alias_path(old), json.as_bytes(), expires_at)
        })
        .await
    }

    async fn drop_alias(&self, old: &Handle, new: &Handle) -> Result<()> {
        let new = *new;
        self.write(*old, move |inner, old, _| {
            if inner.read_alias(old, 0)?.is_some_and(|a| a.new == new) {
                match fs::remove_file(inner.alias_path(old)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
            Ok(())
        })
        .await
    }

    async fn update(&self, id: &Handle, update: &Update) -> Result<Option<Record>> {
        let update = update.clone();
        self.write(*id, move |inner, id, path| {
            let Some(current) = inner.read_live(id, update.now)? else {
                return Ok(None);
            };
            let next = update.apply(&current)?;
            inner.write(id, &path, &next)?;
            inner.reindex(id, Some(&current), Some(&next));
            Ok(Some(next))
        })
        .await
    }

    async fn delete(&self, id: &Handle) -> Result<bool> {
        self.write(*id, |inner, id, path| {
            let old = inner.read(id)?;
            let live = old.as_ref().is_some_and(|r| r.is_live(now_ms()));
            match fs::remove_file(&path) {
                Ok(()) => {
                    inner.index.remove(id);
                    inner.reindex(id, old.as_ref(), None);
                    Ok(live)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    inner.index.remove(id);
                    inner.reindex(id, old.as_ref(), None);
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Reads only the page's files (the ids come from the index), chunk by chunk, until the
    /// page is full or the index ends.
    async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<Page> {
        let mut after = super::handle_cursor(cursor)?;
        let mut page = Page::default();
        if limit == 0 {
            return Ok(page);
        }
        let now = now_ms();
        while page.sessions.len() < limit {
            let (inner, n) = (
                self.inner.clone(),
                (limit - page.sessions.len()).min(READ_CHUNK),
            );
            let chunk = blocking(move || inner.list_chunk(after, n, now)).await?;
            page.sessions.extend(chunk.sessions);
            let Some(last) = chunk.last else {
                return Ok(page);
            };
            after = Some(last);
            if !chunk.more {
                return Ok(page);
            }
        }
        // Full. A chunk fills the page only when every id it visited was listed, so `after`
        // is the page's last id, and the last chunk said an id follows it.
        page.next = after.map(|id| id.to_string());
        Ok(page)
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<(Handle, Record)>> {
        let (inner, user) = (self.inner.clone(), user.to_owned());
        blocking(move || inner.user_sessions(&user, now_ms())).await
    }

    /// The index's size: files on disk, expired ones included until swept.
    fn count(&self) -> Option<u64> {
        u64::try_from(self.inner.index.len()).ok()
    }

    async fn prune_reporting(&self, now: u64, expired: Option<&ExpiredSink>) -> Result<u64> {
        let (inner, expired) = (self.inner.clone(), expired.cloned());
        blocking(move || inner.prune(now, expired.as_ref())).await
    }
}
