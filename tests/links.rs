//! The documentation's links: every relative link in README.md and docs/ resolves to a file of
//! the repository, and every page of the book (docs/src) is in its SUMMARY.md. Runs in
//! `cargo test` and so in .ci/run, next to `mdbook build docs`. Links to other sites are not
//! fetched (the tests send traffic to 127.0.0.1 only); `#fragment`s are not checked.

use std::path::{Path, PathBuf};

/// Every Markdown file to check: README.md and everything under docs/ but the built book.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "book") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut pages = vec![PathBuf::from("README.md")];
    walk(Path::new("docs"), &mut pages);
    pages.sort();
    pages
}

/// The targets of a page's inline links and images, `[text](target)`, outside code.
fn targets(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans hold no links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for (at, _) in prose.match_indices("](") {
            let rest = &prose[at + 2..];
            if let Some(end) = rest.find(')') {
                let target = rest[..end].split_whitespace().next().unwrap_or_default();
                found.push(target.to_owned());
            }
        }
    }
    found
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in targets(&text) {
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let resolved = page.parent().unwrap_or(Path::new("")).join(file);
            checked += 1;
            if !resolved.exists() {
                broken.push(format!("{}: ({target})", page.display()));
            }
        }
    }
    assert!(checked > 0, "no relative link found: the scan is broken");
    assert!(
        broken.is_empty(),
        "links that resolve to nothing:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let summary = std::fs::read_to_string("docs/src/SUMMARY.md").unwrap();
    let listed = targets(&summary);
    for page in pages() {
        let Ok(inside) = page.strip_prefix("docs/src") else {
            continue;
        };
        if inside == Path::new("SUMMARY.md") {
            continue;
        }
        let name = inside.to_string_lossy();
        assert!(
            listed.iter().any(|t| *t == name),
            "docs/src/{name} is not in docs/src/SUMMARY.md"
        );
    }
}
