//! The house rules of `src/`, read from the source text (rust-analyzer's tidy tests are the
//! model): a room (a top-level file or folder of `src/`) imports only rooms on a lower floor, and
//! no file holds more than `MAX_LINES` production lines. Production code is the text outside
//! `#[cfg(test)]` items and comments; an import is any `crate::ROOM` path in it (a `use` line, a
//! grouped `use crate::{..}`, or a path written inline). This is a scanner for the few forms the
//! code uses, not a parser of the language; ARCHITECTURE.md states the rule it keeps.
//!
//! A test binary of its own: it reads files and needs nothing of the library, so it builds and
//! runs in a moment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every room and its floor, bottom (1) to top. A room imports only rooms with a smaller
/// number; two rooms on one floor do not import each other. The words several rooms share live
/// on the ground floor. A new room is added here, on the floor its imports allow.
const FLOORS: &[(&str, u32)] = &[
    ("session", 1),
    ("tls", 1),
    ("outcome", 1),
    ("listen", 1),
    ("metrics", 2),
    ("protocol", 2),
    ("config", 3),
    ("secrets", 4),
    ("store", 4),
    ("audit", 4),
    ("logging", 4),
    ("assertion", 4),
    ("telemetry", 4),
    ("cookie", 5),
    ("admin", 5),
    ("error", 5),
    ("http", 6),
    ("forwarding", 7),
    ("upstream", 8),
    ("proxy", 9),
    ("downstream", 10),
    ("reload", 11),
    ("lib", 12),
    ("main", 13),
    // Test-only (`#[cfg(test)] mod robustness` in lib.rs): it exercises every parser.
    ("robustness", 13),
];

/// The most production lines (comments and blank lines included, tests not) one file may hold.
const MAX_LINES: usize = 700;

#[test]
fn src_imports_only_downwards_and_no_file_is_too_big() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, text)
        })
        .collect();
    let problems = check(&files);
    assert!(
        problems.is_empty(),
        "the house rules of src/ (tests/tidy.rs, ARCHITECTURE.md):\n{}",
        problems.join("\n")
    );
}

/// The checker itself fails on what it is for: an upward import (the tie issue [shape-2]
/// removed, `metrics.rs` naming the proxy's `StoreWrite`), in each form it is written in.
#[test]
fn an_upward_import_is_refused_in_every_form() {
    let ok = "use crate::outcome::StoreWrite;\n";
    assert!(check(&[("metrics.rs".into(), ok.into())]).is_empty());
    for text in [
        "use crate::proxy::StoreWrite;\n",
        "use crate::{outcome::SessionState, proxy::StoreWrite};\n",
        "use crate::{\n    outcome::SessionState,\n    proxy::{StoreWrite},\n};\n",
        "fn f(w: crate::proxy::StoreWrite) {}\n",
        "pub(crate) fn f() {}\n#[cfg(test)]\nfn g() {}\nfn h(_: &crate::proxy::StoreWrite) {}\n",
    ] {
        let problems = check(&[("metrics.rs".into(), text.into())]);
        assert_eq!(problems.len(), 1, "{text:?} gave {problems:?}");
        assert!(
            problems[0].contains("metrics (floor 2) imports proxy (floor 9)"),
            "{problems:?}"
        );
    }
    // Same floor is refused too; tests, comments and strings are not production code.
    let same = "use crate::admin::Api;\n";
    assert_eq!(check(&[("cookie.rs".into(), same.into())]).len(), 1);
    let not_code = "// use crate::proxy::X;\n/// [`crate::proxy`]\nconst S: &str = \"crate::proxy\";\n\
                    #[cfg(test)]\nmod tests {\n    use crate::proxy::StoreWrite;\n}\n";
    assert_eq!(
        check(&[("metrics.rs".into(), not_code.into())]),
        Vec::<String>::new()
    );
    // An unknown room must be placed on a floor first.
    assert_eq!(check(&[("attic.rs".into(), String::new())]).len(), 1);
    // A file over the limit.
    let big = "fn f() {}\n".repeat(MAX_LINES + 1);
    assert_eq!(check(&[("session.rs".into(), big)]).len(), 1);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The problems in `files` (path under `src/`, text), one line each.
fn check(files: &[(String, String)]) -> Vec<String> {
    let floors: BTreeMap<&str, u32> = FLOORS.iter().copied().collect();
    let mut problems = Vec::new();
    for (path, text) in files {
        let room = room_of(path);
        let Some(&floor) = floors.get(room) else {
            problems.push(format!(
                "src/{path}: room {room} is on no floor (tests/tidy.rs FLOORS)"
            ));
            continue;
        };
        let production = production_lines(text);
        let count = production.iter().filter(|l| l.is_some()).count();
        if count > MAX_LINES {
            problems.push(format!(
                "src/{path}: {count} production lines (at most {MAX_LINES})"
            ));
        }
        let code: String = production
            .iter()
            .map(|l| l.as_deref().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for (line, target) in imports(&code) {
            if target == room {
                continue;
            }
            match floors.get(target.as_str()) {
                Some(&to) if to < floor => {}
                Some(&to) => problems.push(format!(
                    "src/{path}:{line}: {room} (floor {floor}) imports {target} (floor {to}): \
                     a room imports only what stands below it"
                )),
                None => problems.push(format!(
                    "src/{path}:{line}: imports crate::{target}, which is no room"
                )),
            }
        }
    }
    problems
}

/// `proxy/mod.rs` → `proxy`, `audit.rs` → `audit`.
fn room_of(path: &str) -> &str {
    let first = path.split(['/', '\\']).next().unwrap_or(path);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Each line of `text` with comments and string literals blanked, or `None` inside a
/// `#[cfg(test)]` item (the attribute line included).
fn production_lines(text: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    // Set by `#[cfg(test)]`: skipping until the next item ends (`;` at its depth or its block
    // closed). `entered` once the item's block opened.
    let mut skip: Option<(usize, bool)> = None;
    let mut in_block_comment = false;
    let mut in_string = false;
    for raw in text.lines() {
        let code = strip(raw, &mut in_block_comment, &mut in_string);
        if skip.is_none() && code.trim() == "#[cfg(test)]" {
            skip = Some((depth, false));
            out.push(None);
            continue;
        }
        let mut ended = false;
        for c in code.chars() {
            match c {
                '{' => {
                    depth += 1;
                    if let Some((_, entered)) = skip.as_mut() {
                        *entered = true;
                    }
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    if let Some((at, true)) = skip
                        && depth == at
                    {
                        ended = true;
                    }
                }
                ';' => {
                    if let Some((at, false)) = skip
                        && depth == at
                    {
                        ended = true;
                    }
                }
                _ => {}
            }
        }
        if skip.is_some() {
            out.push(None);
            if ended {
                skip = None;
            }
        } else {
            out.push(Some(code));
        }
    }
    out
}

/// One line with `//` comments, `/* */` comments and the insides of string and char literals
/// blanked (a string may span lines; raw strings are read as plain ones, enough for `src/`).
fn strip(line: &str, in_block_comment: &mut bool, in_string: &mut bool) -> String {
    let mut out = String::with_capacity(line.len());
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if *in_block_comment {
            if c == '*' && next == Some('/') {
                *in_block_comment = false;
                i += 1;
            }
        } else if *in_string {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                *in_string = false;
                out.push('"');
            }
        } else if c == '/' && next == Some('/') {
            break;
        } else if c == '/' && next == Some('*') {
            *in_block_comment = true;
            i += 1;
        } else if c == '"' {
            *in_string = true;
            out.push('"');
        } else if c == '\'' {
            // A char literal ('x', '\n', '{'), or a lifetime ('a), which has no closing quote.
            if chars.get(i + 2) == Some(&'\'') {
                i += 2;
            } else if next == Some('\\') {
                while i + 1 < chars.len() && chars[i + 1] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// Every room `code` names through `crate::`, with the 1-based line it is named on.
fn imports(code: &str) -> Vec<(usize, String)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b == b'$' || b == b'_' || b.is_ascii_alphanumeric()) {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first name of each top-level entry.
            let mut depth = 0usize;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && (c.is_alphanumeric() || c == '_') => {
                        entry_start = false;
                        let name = ident(&group[i..]);
                        let name_line = line + group[..i].matches('\n').count();
                        found.push((name_line, name.to_string()));
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push((line, name.to_string()));
            }
        }
    }
    found
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}
