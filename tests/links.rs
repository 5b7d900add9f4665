//! The documentation's links: every relative link in README.md and docs/ resolves to a file of
//! the repository, and its `#fragment`, when it points into a Markdown page, to a heading of that
//! page; every page of the book (docs/src) is in its SUMMARY.md; README.md stays short. Runs in
//! `cargo test` and so in .ci/run, next to `mdbook build docs`. Links to other sites are not
//! fetched (the tests send traffic to 127.0.0.1 only).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The most lines README.md may have: what it is, the quickstart, the protocol's two tables, a
/// minimal config and links (issue [docs]); everything else is a page of the book.
const README_MAX_LINES: usize = 250;

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

/// The anchors of a page's headings, as GitHub and mdBook make them: the heading's text without
/// its Markdown, lower case, spaces as `-`, every other character but letters, digits, `-` and
/// `_` dropped; a repeated one gets `-1`, `-2`, ….
fn anchors(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let heading = heading.trim_start_matches('#');
        if fenced || !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .chars()
            .filter_map(|c| match c {
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                c if c.is_whitespace() => Some('-'),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        found.push(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    found
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    let mut fragments = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for target in targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap_or(Path::new("")).join(file)
            };
            checked += 1;
            if !resolved.exists() {
                broken.push(format!("{}: ({target})", page.display()));
                continue;
            }
            if fragment.is_empty() || resolved.extension().is_none_or(|e| e != "md") {
                continue;
            }
            fragments += 1;
            let into = std::fs::read_to_string(&resolved).unwrap();
            if !anchors(&into).iter().any(|a| a == fragment) {
                broken.push(format!(
                    "{}: ({target}): no heading of {} has that anchor",
                    page.display(),
                    resolved.display()
                ));
            }
        }
    }
    assert!(fragments > 0, "no #fragment checked: the scan is broken");
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

#[test]
fn the_readme_is_short() {
    let lines = std::fs::read_to_string("README.md")
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to a page of \
         docs/src (and link it)"
    );
}

#[test]
fn anchors_are_made_as_github_and_mdbook_make_them() {
    let page = "# A title\n## Rotation (`session.regenerate_grace`)\n```toml\n# not = \"a heading\"\n```\n## Devices\n### Devices\n#hashtag\n";
    assert_eq!(
        anchors(page),
        [
            "a-title",
            "rotation-sessionregenerate_grace",
            "devices",
            "devices-1"
        ]
    );
}
