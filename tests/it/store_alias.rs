//! The aliases a regenerate leaves (`session.regenerate_grace`), as a store contract expanded
//! for every backend (the openers of `store_contract.rs`): written by the regenerate itself,
//! found under the old handle only, never a session (not listed, counted or in the user index),
//! naming only the winner of concurrent regenerates, gone with their expiry, and holding no id.

use std::sync::Arc;

use serde_json::json;
use session_proxy::session::{DataChange, SessionId};
use session_proxy::store::{Alias, Record, Update, now_ms};

use crate::store_contract::Opened;

fn update(idle_ms: u64, user: &str) -> Update {
    Update {
        change: Some(DataChange::Patch(
            json!({"user": user}).as_object().unwrap().clone(),
        )),
        base: None,
        now: now_ms(),
        lifetime: session_proxy::config::Lifetime {
            idle_timeout: std::time::Duration::from_millis(idle_ms),
            absolute_timeout: None,
            touch_interval: std::time::Duration::from_millis(idle_ms / 10),
            remember_max: std::time::Duration::from_secs(90 * 86400),
            remember_absolute: None,
            first_lifetime: None,
        },
        max_size: 16 * 1024,
        extends: true,
        visit: None,
    }
}

fn live() -> Record {
    let now = now_ms();
    Record {
        data: Arc::from(r#"{"n":1}"#),
        created_at: now,
        updated_at: now,
        expires_at: now + 3_600_000,
        version: 1,
        meta: Default::default(),
    }
}

pub async fn regenerate_leaves_an_alias_that_is_no_session(s: Opened) {
    let store = &s.store;
    let (old, new) = (
        SessionId::generate().unwrap(),
        SessionId::generate().unwrap(),
    );
    assert!(store.create(&old.handle(), &live()).await.unwrap());
    let grace_until = now_ms() + 10_000;
    let alias = Alias::new(&old, &new, grace_until).unwrap();
    let record = store
        .regenerate_aliased(
            &old.handle(),
            &new.handle(),
            &update(3_600_000, "ada"),
            Some(&alias),
        )
        .await
        .unwrap()
        .expect("regenerated");
    assert!(store.load(&old.handle()).await.unwrap().is_none());
    let found = store.alias(&old.handle()).await.unwrap().expect("an alias");
    assert_eq!(found.new, new.handle());
    assert_eq!(found.grace_until, grace_until);
    assert_eq!(
        found.expires_at, record.expires_at,
        "it dies with the new session"
    );
    assert_eq!(found.open(&old), Some(new), "the old id opens the new one");
    assert!(store.alias(&new.handle()).await.unwrap().is_none());
    // Not a session: listing, count and user index hold the new session only.
    let page = store.list(None, 100).await.unwrap();
    assert_eq!(
        page.sessions.iter().map(|(h, _)| *h).collect::<Vec<_>>(),
        [new.handle()]
    );
    if let Some(n) = store.count() {
        assert_eq!(n, 1);
    }
    let users = store.user_sessions("ada").await.unwrap();
    assert_eq!(
        users.iter().map(|(h, _)| *h).collect::<Vec<_>>(),
        [new.handle()]
    );
    assert_eq!(store.prune(now_ms()).await.unwrap(), 0);
    assert!(
        store.alias(&old.handle()).await.unwrap().is_some(),
        "prune keeps a live alias"
    );
}

pub async fn a_regenerate_that_finds_nothing_leaves_no_alias(s: Opened) {
    let store = &s.store;
    let (old, new) = (
        SessionId::generate().unwrap(),
        SessionId::generate().unwrap(),
    );
    let alias = Alias::new(&old, &new, now_ms() + 10_000).unwrap();
    let none = store
        .regenerate_aliased(
            &old.handle(),
            &new.handle(),
            &update(3_600_000, "ada"),
            Some(&alias),
        )
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(store.alias(&old.handle()).await.unwrap().is_none());
    assert!(store.load(&new.handle()).await.unwrap().is_none());
}

/// Of concurrent regenerates of one session, the alias (if the backend kept one: see
/// `SessionStore::regenerate_aliased` for memory and fs) names the one that won.
pub async fn concurrent_regenerates_alias_the_winner(s: Opened) {
    let store = &s.store;
    let old = SessionId::generate().unwrap();
    assert!(store.create(&old.handle(), &live()).await.unwrap());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        set.spawn(async move {
            let new = SessionId::generate().unwrap();
            let alias = Alias::new(&old, &new, now_ms() + 10_000).unwrap();
            let won = store
                .regenerate_aliased(
                    &old.handle(),
                    &new.handle(),
                    &update(3_600_000, "ada"),
                    Some(&alias),
                )
                .await
                .unwrap();
            won.map(|_| new)
        });
    }
    let winners: Vec<SessionId> = set.join_all().await.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1);
    if let Some(alias) = store.alias(&old.handle()).await.unwrap() {
        assert_eq!(alias.new, winners[0].handle());
        assert_eq!(alias.open(&old), Some(winners[0]));
    }
}

pub async fn an_alias_is_gone_with_its_expiry(s: Opened) {
    let store = &s.store;
    let (old, new) = (
        SessionId::generate().unwrap(),
        SessionId::generate().unwrap(),
    );
    assert!(store.create(&old.handle(), &live()).await.unwrap());
    let alias = Alias::new(&old, &new, now_ms() + 100).unwrap();
    store
        .regenerate_aliased(
            &old.handle(),
            &new.handle(),
            &update(1_000, "ada"),
            Some(&alias),
        )
        .await
        .unwrap()
        .expect("regenerated");
    assert!(store.alias(&old.handle()).await.unwrap().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    store.prune(now_ms()).await.unwrap();
    assert!(store.alias(&old.handle()).await.unwrap().is_none());
}

macro_rules! aliases {
    ($store:ident, $open:path) => {
        mod $store {
            aliases!(@tests $open;
                regenerate_leaves_an_alias_that_is_no_session,
                a_regenerate_that_finds_nothing_leaves_no_alias,
                concurrent_regenerates_alias_the_winner,
                an_alias_is_gone_with_its_expiry,
            );
        }
    };
    (@tests $open:path; $($test:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test($open().await).await;
            }
        )*
    };
}

aliases!(memory, crate::store_contract::memory);
aliases!(fs, crate::store_contract::fs);
aliases!(sqlite, crate::store_contract::sqlite);
#[cfg(feature = "redis")]
aliases!(redis, crate::store_contract::redis);
#[cfg(feature = "redis")]
aliases!(redis_cluster, crate::store_contract::redis_cluster);
#[cfg(feature = "postgres")]
aliases!(postgres, crate::store_contract::postgres);
#[cfg(feature = "postgres")]
aliases!(postgres_sealed, crate::store_contract::sealed::postgres);
aliases!(sqlite_sealed, crate::store_contract::sealed::sqlite);
