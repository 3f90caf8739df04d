//! The repository carries everything its users and maintainers need: no shipped file points at
//! reference material outside it, every relative link in the Markdown documents leads to a
//! file that exists, and the `docs/` index names every document in `docs/`.
//!
//! Pure file checks, no servers.

use std::path::{Path, PathBuf};

/// What is shipped or read by people who clone the repository (tests/ is left out: it is
/// where this check spells the forbidden paths).
const SHIPPED: &[&str] = &[
    "README.md",
    "BENCHMARKS.md",
    "Cargo.toml",
    "cross.toml",
    ".ci",
    "benches",
    "config",
    "dashboards",
    "debian",
    "docs",
    "scripts",
    "sql",
    "src",
    "systemd",
    "tests/fixtures/schema",
];

/// The Markdown documents whose relative links must resolve.
const LINKED: &[&str] = &["README.md", "docs"];

/// Files of the reference folder that once lived beside the repository.
const OUTSIDE_FILES: &[&str] = &[
    "DESIGN.md",
    "STYLE.md",
    "README.md",
    "crates.md",
    "cross.md",
    "influx.md",
    "protocols.md",
    "schema/",
    "seed/",
    "hooks/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `rel` (a file or a directory), sorted.
fn files(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root().join(rel)];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            let entries = std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            todo.extend(entries.map(|e| e.expect("directory entry").path()));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn relative(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The lines of `text` that point at the old reference folder: `../shared` anywhere, or
/// `shared/` followed by one of its files.
fn outside_pointers(text: &str) -> Vec<String> {
    let names_a_file = |line: &str| {
        line.match_indices("shared/").any(|(i, m)| OUTSIDE_FILES.iter().any(|f| line[i + m.len()..].starts_with(f)))
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains("../shared") || names_a_file(line))
        .map(|(n, line)| format!("line {}: {}", n + 1, line.trim()))
        .collect()
}

#[test]
fn no_shipped_file_points_outside_the_repository() {
    let mut offenders = Vec::new();
    let mut read = 0;
    for rel in SHIPPED {
        for f in files(rel) {
            // Binary files cannot hold a path a reader would follow.
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            read += 1;
            for hit in outside_pointers(&text) {
                offenders.push(format!("{}: {hit}", relative(&f)));
            }
        }
    }
    assert!(read > 50, "only {read} files read: is the repository layout what this test expects?");
    assert!(offenders.is_empty(), "files that point outside the repository:\n{}", offenders.join("\n"));
}

#[test]
fn the_pointer_check_finds_what_it_must() {
    assert_eq!(outside_pointers("see ../shared/influx.md").len(), 1);
    assert_eq!(outside_pointers("see `shared/protocols.md` §1").len(), 1);
    assert_eq!(outside_pointers("(shared/schema/sample-data.sql)").len(), 1);
    assert_eq!(outside_pointers("the ../shared folder").len(), 1);
    assert!(outside_pointers("Arc<Shared> shared_buffers=16MB /usr/share/doc docs/protocols.md").is_empty());
    assert!(outside_pointers("a value shared/owned by two tasks").is_empty());
}

/// Relative link targets of a Markdown text, outside code blocks and code spans: inline
/// links `[text](target)` and reference definitions `[label]: target`.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: a `[x](y)` inside backticks is an example, not a link.
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        let mut targets = Vec::new();
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            targets.push(after[..end].to_owned());
            rest = &after[end..];
        }
        let trimmed = prose.trim_start();
        if trimmed.starts_with('[')
            && let Some(i) = trimmed.find("]: ")
        {
            targets.push(trimmed[i + 3..].to_owned());
        }
        for t in targets {
            let t = t.split_whitespace().next().unwrap_or("").trim_matches(['<', '>']).to_owned();
            let external = t.contains("://") || t.starts_with("mailto:");
            if !t.is_empty() && !external && !t.starts_with('#') {
                out.push(t);
            }
        }
    }
    out
}

#[test]
fn relative_markdown_links_lead_to_existing_files() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for rel in LINKED {
        for f in files(rel).into_iter().filter(|f| f.extension().is_some_and(|e| e == "md")) {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let dir = f.parent().expect("a file has a directory");
            for link in relative_links(&text) {
                checked += 1;
                let path = link.split('#').next().unwrap_or("");
                if !dir.join(path).exists() {
                    broken.push(format!("{}: ({link})", relative(&f)));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} links checked: do README.md and docs/ link to each other?");
    assert!(broken.is_empty(), "relative links to files that do not exist:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_reads_links_and_skips_examples() {
    let text = "See [design](design.md#data-path) and [x](https://example.org).\n\
                `[not](a-link.md)`\n\
                ```\n[nor](this.md)\n```\n\
                [ref]: ../README.md\n\
                [top](#top)";
    assert_eq!(relative_links(text), ["design.md#data-path", "../README.md"]);
}

#[test]
fn the_docs_index_names_every_document() {
    let index = std::fs::read_to_string(root().join("docs/README.md")).expect("docs/README.md");
    let linked = relative_links(&index);
    let mut missing = Vec::new();
    for f in files("docs") {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name != "README.md" && name.ends_with(".md") && !linked.iter().any(|l| l.split('#').next() == Some(&name)) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "documents in docs/ that docs/README.md does not link: {missing:?}");
}
