//! The reference against what it describes: `KEYS`, the committed page, proxy.toml, `--help`.

use clap::CommandFactory as _;

use super::{ENTRIES, entry, render, undocumented};
use crate::config::cli::Cli;
use crate::config::raw::KEYS;

const PAGE: &str = "docs/src/configuration.md";

/// A key the parser knows and the reference does not fails here, by name: add its entry to
/// src/config/reference/entries.rs.
#[test]
fn every_key_has_an_entry() {
    let missing = undocumented();
    assert!(
        missing.is_empty(),
        "config keys without an entry in src/config/reference/entries.rs (add one: type, \
         default, flag, meaning; then regenerate {PAGE}): {missing:?}"
    );
    for e in ENTRIES {
        assert!(
            KEYS.contains(&e.key),
            "entry `{}` is no key of raw.rs's KEYS",
            e.key
        );
        let count = ENTRIES.iter().filter(|other| other.key == e.key).count();
        assert_eq!(count, 1, "entry `{}` is given {count} times", e.key);
        assert!(
            !e.meaning.is_empty() && !e.ty.is_empty(),
            "entry `{}` says nothing",
            e.key
        );
        for text in [e.ty, e.meaning, &e.default.text()] {
            assert!(
                !text.contains('|') && !text.contains('\n'),
                "`{}`: one line, no `|`",
                e.key
            );
        }
    }
}

/// The committed page is what `session-proxy config reference` prints. `UPDATE_REFERENCE=1`
/// rewrites it.
#[test]
fn the_committed_page_is_generated() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PAGE);
    let page = render();
    if std::env::var_os("UPDATE_REFERENCE").is_some() {
        std::fs::write(&path, &page).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == page,
        "{PAGE} differs from the reference: run `cargo run -- config reference > {PAGE}` (or \
         UPDATE_REFERENCE=1 cargo test --lib config::reference)"
    );
}

/// One `key = value` line of proxy.toml, set or commented out, with its dotted key.
struct Shown {
    key: String,
    value: toml::Value,
    commented: bool,
}

/// The key lines of proxy.toml: `key = value` and `# key = value` (a comment that is not a key
/// line, such as prose, is skipped).
fn shown_in_proxy_toml() -> Vec<Shown> {
    let mut section = String::new();
    let mut shown = Vec::new();
    for line in include_str!("../../../proxy.toml").lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (commented, line) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, rest)) = line.split_once(" = ") else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {rest}"));
        let Ok(mut table) = parsed else {
            assert!(commented, "proxy.toml: `{line}` does not parse");
            continue;
        };
        let key = if section.is_empty() {
            name.to_owned()
        } else {
            format!("{section}.{name}")
        };
        let value = table.remove("v").unwrap();
        shown.push(Shown {
            key,
            value,
            commented,
        });
    }
    shown
}

/// Every key proxy.toml shows is a key; one it sets has the reference's default, and one it
/// shows commented out is either unset by default or shown at its default. Every key but the
/// removed one and the admin token (proxy.toml points to `token_file`) is shown.
#[test]
fn proxy_toml_shows_every_key_at_the_references_default() {
    let shown = shown_in_proxy_toml();
    for s in &shown {
        let e =
            entry(&s.key).unwrap_or_else(|| panic!("proxy.toml shows `{}`: no such key", s.key));
        match e.default.toml() {
            Some(default) => {
                let want: toml::Table = toml::from_str(&format!("v = {default}")).unwrap();
                assert_eq!(
                    Some(&s.value),
                    want.get("v"),
                    "proxy.toml shows `{}` as {}, the reference's default is {default}",
                    s.key,
                    s.value
                );
            }
            None => assert!(
                s.commented,
                "proxy.toml sets `{}`, which the reference says is unset by default",
                s.key
            ),
        }
    }
    for key in KEYS {
        if ["trust_forwarded_headers", "admin.token"].contains(&key) {
            continue;
        }
        assert!(
            shown.iter().any(|s| s.key == key),
            "proxy.toml does not show `{key}`"
        );
    }
}

/// Every flag of `--help` that sets a key is the flag of its entry, and an entry's flag is one
/// `--help` shows; a flag's "(default ...)" is the reference's default of its key.
#[test]
fn help_flags_agree_with_the_reference() {
    let command = Cli::command();
    let mut flags = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["config", "help", "version"].contains(&long) {
            continue;
        }
        let flag = format!("--{long}");
        let keys: Vec<_> = ENTRIES
            .iter()
            .filter(|e| e.flag == Some(flag.as_str()))
            .collect();
        assert!(
            !keys.is_empty(),
            "`{flag}` sets no key of the reference (give its entry `flag`)"
        );
        let help = format!(
            "{} {}",
            arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
            arg.get_long_help()
                .map(|h| h.to_string())
                .unwrap_or_default()
        );
        if let Some((_, rest)) = help.split_once("(default")
            && let Some((said, _)) = rest.split_once(')')
        {
            let said = said.trim_start_matches(':').trim();
            let agrees = keys.iter().any(|e| match e.default {
                super::Default::Value(v) => v.trim_matches('"') == said,
                super::Default::Noted(v, note) => v.trim_matches('"') == said || note == said,
                super::Default::Unset(what) => what == said,
            });
            assert!(
                agrees,
                "`{flag}` says its default is `{said}`, the reference: {:?}",
                keys[0].default
            );
        }
        flags.push(flag);
    }
    for e in ENTRIES {
        if let Some(flag) = e.flag {
            assert!(
                flags.iter().any(|f| f == flag),
                "`{}`: no flag `{flag}` in --help",
                e.key
            );
        }
    }
}
