//! The shape of the code, checked like its behaviour: no import cycle between the files of
//! `src/` (the emulator aside), no function past its length limit, and the layout in
//! `docs/layout.md` and the map in `lib.rs` true to the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Longest function, in lines, in `src/pipeline/` and `src/sink/`, and anywhere else.
const MAX_LINES_CORE: usize = 60;
const MAX_LINES: usize = 80;
/// Functions allowed past the limit: one metric after another reads best as one list.
const LONG_ALLOWED: &[(&str, &str)] = &[];

/// One source file: its module path (`ccc::sign`; `lib.rs` is ``), its path under the root, and
/// its text without its unit tests and comment lines.
struct Source {
    module: String,
    path: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut out = vec![];
    let mut dirs = vec![Path::new(ROOT).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(ROOT)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let mut parts: Vec<String> = path
                .strip_prefix(Path::new(ROOT).join("src"))
                .unwrap()
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().to_string())
                .collect();
            if rel == "src/main.rs" {
                continue; // the binary: it uses the library by its name, not `crate::`
            }
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            let code: Vec<&str> = code
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("//") {
                        ""
                    } else {
                        l
                    }
                })
                .collect();
            out.push(Source {
                module: parts.join("::"),
                path: rel,
                code: code.join("\n"),
            });
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// The leaves of every `use` declaration: (re-exported, path).
fn uses(code: &str) -> Vec<(bool, String)> {
    static USE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]*);").unwrap()
    });
    let mut out = vec![];
    for c in USE.captures_iter(code) {
        let public = c.get(1).is_some_and(|p| p.as_str().trim() == "pub");
        let tree: String = c[2].split_whitespace().collect::<Vec<_>>().join(" ");
        let tree = tree
            .replace(" ::", "::")
            .replace(":: ", "::")
            .replace("{ ", "{")
            .replace(" }", "}")
            .replace(" ,", ",")
            .replace(", ", ",");
        let mut leaves = vec![];
        expand("", &tree, &mut leaves);
        out.extend(leaves.into_iter().map(|l| (public, l)));
    }
    out
}

fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(prefix, &inner[start..], out);
    } else if let Some(i) = tree.find("::{") {
        expand(&format!("{prefix}{}::", &tree[..i]), &tree[i + 2..], out);
    } else if !tree.is_empty() {
        let leaf = tree.split(" as ").next().unwrap();
        out.push(format!("{prefix}{leaf}"));
    }
}

/// A path as written in module `module`, from the crate root (`None`: another crate's).
fn absolute(module: &str, path: &str, modules: &BTreeSet<String>) -> Option<Vec<String>> {
    let segs: Vec<String> = path
        .split("::")
        .filter(|s| !s.is_empty() && *s != "*")
        .map(str::to_string)
        .collect();
    let mut base: Vec<String> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").map(str::to_string).collect()
    };
    match segs.first().map(String::as_str) {
        Some("crate") => Some(segs[1..].to_vec()),
        Some("self") => Some([base, segs[1..].to_vec()].concat()),
        Some("super") => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            base.truncate(base.len().saturating_sub(ups));
            Some([base, segs[ups..].to_vec()].concat())
        }
        Some(first) => {
            let child = [base.clone(), vec![first.to_string()]].concat().join("::");
            modules.contains(&child).then(|| [base, segs].concat())
        }
        None => None,
    }
}

/// The file a path lands in: the longest module prefix, following a `pub use` of the next name.
fn resolve(
    segs: &[String],
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
    depth: usize,
) -> Option<String> {
    for k in (0..=segs.len()).rev() {
        let m = segs[..k].join("::");
        if !modules.contains(&m) {
            continue;
        }
        if let Some(target) = segs
            .get(k)
            .and_then(|name| reexports.get(&m).and_then(|r| r.get(name)))
            && depth < 8
            && target[..] != segs[..=k]
        {
            return resolve(target, modules, reexports, depth + 1);
        }
        return Some(m);
    }
    None
}

/// Module -> the modules of `src/` it uses (a parent using its own children is not counted: it
/// declares them).
fn graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    let mut reexports: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for s in sources {
        for (public, path) in uses(&s.code) {
            if let Some(abs) = absolute(&s.module, &path, &modules).filter(|_| public)
                && let Some(name) = abs.last()
            {
                reexports
                    .entry(s.module.clone())
                    .or_default()
                    .insert(name.clone(), abs.clone());
            }
        }
    }
    let inline = Regex::new(r"\b(?:crate|super)::[A-Za-z_][\w:]*").unwrap();
    let mut edges = BTreeMap::new();
    for s in sources {
        let mut paths: Vec<String> = uses(&s.code).into_iter().map(|(_, p)| p).collect();
        paths.extend(inline.find_iter(&s.code).map(|m| m.as_str().to_string()));
        let targets: BTreeSet<String> = paths
            .iter()
            .filter_map(|p| absolute(&s.module, p.trim_end_matches(':'), &modules))
            .filter_map(|segs| resolve(&segs, &modules, &reexports, 0))
            .filter(|t| {
                *t != s.module
                    && !(s.module.is_empty() || t.starts_with(&format!("{}::", s.module)))
            })
            .collect();
        edges.insert(s.module.clone(), targets);
    }
    edges
}

fn is_emulator(module: &str) -> bool {
    module.split("::").any(|p| p == "emulator")
}

/// An import cycle, as the modules along it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if is_emulator(next) {
                continue;
            }
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys().filter(|m| !is_emulator(m)) {
        if !state.contains_key(m.as_str())
            && let Some(c) = visit(m, edges, &mut state, &mut vec![])
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_file_of_src_imports_a_file_that_imports_it_back() {
    let sources = sources();
    let edges = graph(&sources);
    // The check sees the edges it must: a sample of known imports.
    for (from, to) in [
        ("ccc::client", "ccc::sign"),
        ("credentials::fetch", "ccc::sign"),
        ("sink::postgres", "ledger"),
        ("commands::status", "commands::open"),
        ("sink::parquet::merge", "sink::parquet::file"),
    ] {
        assert!(
            edges[from].contains(to),
            "{from} -> {to} not seen: {:?}",
            edges[from]
        );
    }
    assert_eq!(find_cycle(&edges), None, "an import cycle");
}

#[test]
fn the_cycle_check_finds_a_cycle_and_follows_re_exports() {
    let source = |module: &str, code: &str| Source {
        module: module.into(),
        path: String::new(),
        code: code.into(),
    };
    let sources = [
        source("", "pub mod a;\npub mod b;\npub mod c;"),
        source("a", "pub use crate::c::Thing;\nmod inner;"),
        source("a::inner", "use super::super::b::{self, Other as O};"),
        source("b", "fn f() { crate::a::Thing::new(); }"),
        source("c", "pub struct Thing;\nuse crate::b;"),
    ];
    let edges = graph(&sources);
    assert!(edges["a::inner"].contains("b"));
    assert!(
        edges["b"].contains("c"),
        "through a's re-export: {:?}",
        edges["b"]
    );
    let cycle = find_cycle(&edges).expect("b -> c -> b");
    assert!(
        cycle.contains(&"b".to_string()) && cycle.contains(&"c".to_string()),
        "{cycle:?}"
    );
}

/// Every function of `code` with its first line and its length in lines (declarations without
/// a body are not functions here).
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let start =
        Regex::new(r"^(\s*)(?:pub(?:\([^)]*\))? )?(?:const )?(?:async )?(?:unsafe )?fn (\w+)")
            .unwrap();
    let lines: Vec<&str> = code.lines().collect();
    let mut out = vec![];
    for (i, line) in lines.iter().enumerate() {
        let Some(c) = start.captures(line) else {
            continue;
        };
        let (indent, name) = (&c[1], &c[2]);
        let close = format!("{indent}}}");
        let mut body = false;
        for (j, l) in lines.iter().enumerate().skip(i) {
            if !body {
                if l.contains('{') {
                    body = true;
                } else if l.trim_end().ends_with(';') {
                    break;
                }
            }
            if body && (l.trim_end() == close || (j == i && l.trim_end().ends_with('}'))) {
                out.push((name.to_string(), i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_its_limit() {
    let mut long = vec![];
    for s in sources().iter().filter(|s| !is_emulator(&s.module)) {
        let limit = if s.path.starts_with("src/pipeline/") || s.path.starts_with("src/sink/") {
            MAX_LINES_CORE
        } else {
            MAX_LINES
        };
        for (name, line, len) in functions(&s.code) {
            let allowed = LONG_ALLOWED.contains(&(s.module.as_str(), name.as_str()));
            if len > limit && !allowed {
                long.push(format!(
                    "{}:{line} {name}: {len} lines (limit {limit})",
                    s.path
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions past their limit:\n{}",
        long.join("\n")
    );
    // The measure itself: a function of 3 lines, one of 1, a declaration that is none.
    let sample = "fn a() {\n    x();\n}\nfn b() {}\ntrait T {\n    fn c(&self);\n}\n";
    assert_eq!(
        functions(sample),
        vec![("a".to_string(), 1, 3), ("b".to_string(), 4, 1)]
    );
}

/// The files a document names, under `dir` (paths in backquotes).
fn named_files(doc: &str, dir: &str) -> BTreeSet<String> {
    let re = Regex::new(&format!(r"`({}/[\w/.-]+\.rs)`", regex::escape(dir))).unwrap();
    re.captures_iter(doc).map(|c| c[1].to_string()).collect()
}

fn files_under(dir: &str) -> BTreeSet<String> {
    texts_under(dir, &["rs"])
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn the_layout_document_names_every_source_and_test_file_and_no_other() {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/layout.md")).unwrap();
    for dir in ["src", "tests/it", "benches"] {
        let named = named_files(&doc, dir);
        let on_disk = files_under(dir);
        let missing: Vec<_> = on_disk.difference(&named).collect();
        let stale: Vec<_> = named.difference(&on_disk).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/layout.md and {dir}/ differ: not described {missing:?}, gone {stale:?}"
        );
    }
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    assert!(
        readme.contains("docs/layout.md"),
        "the README links the layout"
    );
}

#[test]
fn the_library_map_names_every_top_level_module() {
    let lib = std::fs::read_to_string(Path::new(ROOT).join("src/lib.rs")).unwrap();
    let map: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let declared = Regex::new(r"(?m)^pub mod (\w+);").unwrap();
    let missing: Vec<String> = declared
        .captures_iter(&lib)
        .map(|c| c[1].to_string())
        .filter(|m| !map.contains(&format!("[`{m}`]")) && !map.contains(&format!("[`{m}::")))
        .collect();
    assert!(missing.is_empty(), "lib.rs's map leaves out {missing:?}");
}

/// A lease's state is named in SQL only by the coordinator's statements, and each name is one
/// of `LeaseState`'s: the state machine lives in one place.
#[test]
fn lease_states_are_named_only_by_the_coordinator() {
    let literal = Regex::new(r"state\s*(?:=|<>|IN\s*\()\s*'(\w+)'|SET state = '(\w+)'").unwrap();
    let mut outside = vec![];
    let mut named = BTreeSet::new();
    for (path, text) in texts_under("src", &["rs"]) {
        for c in literal.captures_iter(&text) {
            let state = c.get(1).or(c.get(2)).unwrap().as_str();
            if path == "src/coord/lease.rs" {
                named.insert(state.to_string());
            } else if state != "active" {
                // `pg_stat_activity.state = 'active'` is PostgreSQL's, not a lease's.
                outside.push(format!("{path}: {}", &c[0]));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "lease states named outside src/coord/lease.rs: {outside:?}"
    );
    let known: BTreeSet<String> = ccc_etl::coord::LeaseState::ALL
        .iter()
        .map(|s| s.as_sql().to_string())
        .collect();
    assert!(
        named.len() >= 3 && named.is_subset(&known),
        "{named:?} vs {known:?}"
    );
}

/// Nothing decides by reading an error's text: what a failure means comes from its type or its
/// kind (`Failure`, `ErrorKind`, object_store's variants), never from matching its message.
#[test]
fn no_decision_reads_an_errors_text() {
    let reads_text = Regex::new(
        r#"(?:\.to_string\(\)|\bmessage|\berror|\be)\s*(?:==|!=)\s*"|(?:\.to_string\(\)|\bmessage|\berror|\be|\bmsg)\.(?:contains|starts_with|ends_with)\("|"os error"#,
    )
    .unwrap();
    let mut found = vec![];
    for s in sources() {
        if is_emulator(&s.module) {
            continue;
        }
        for line in s.code.lines() {
            if reads_text.is_match(line) {
                found.push(format!("{}: {}", s.path, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "decisions made on an error's text: {found:#?}"
    );
    // The check finds what it is for.
    assert!(reads_text.is_match(r#"if e.contains("os error 28") {"#));
    assert!(reads_text.is_match(r#"e.message == "fenced""#));
}

/// "Now" is one value: `main` pins the process's clock and hands `commands::run` the one clock
/// every command reads (the emulator, which stands in for the API's own clock, aside). No other
/// code reads the clock for data time.
#[test]
fn only_main_reads_the_clock_for_data_time() {
    let reads =
        Regex::new(r"\bsystem_now\(|\bclock::now(?:_ms)?\(|crate::clock::now(?:_ms)?\b").unwrap();
    let mut found = vec![];
    for s in sources() {
        let allowed = is_emulator(&s.module)
            || ["src/main.rs", "src/clock.rs"].contains(&s.path.as_str())
            || s.module == "pipeline";
        for line in s.code.lines().filter(|l| reads.is_match(l)) {
            if !allowed
                || (s.module == "pipeline"
                    && !line.contains("Arc::new(crate::clock::now_ms)")
                    && !line.contains("pub fn system_now()"))
            {
                found.push(format!("{}: {}", s.path, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "the clock read outside main: {found:#?}");
    // The check finds what it is for.
    assert!(reads.is_match("let now = crate::clock::now_ms();"));
    assert!(reads.is_match("status_report(config, days, system_now()())"));
}

/// Every file under `tests/it/`, with its path under the root.
fn test_files() -> Vec<(String, String)> {
    let mut files = texts_under("tests/it", &["rs"]);
    files.sort();
    files
}

/// The suite means the same on every day and at every hour: no test reads the system's date,
/// and every `ccc-etl` it runs starts through the harness, which pins the process's clock to the
/// tests' (`common::TEST_NOW`, passed as `CCC_ETL_NOW`). Dates written in a test are written as
/// of that instant; nothing rewrites them. A test that clears a child's environment gives it
/// the clock back (`common::clock_env`).
#[test]
fn the_tests_read_the_date_only_from_the_harness_clock() {
    let clock = Regex::new(r"\b(Utc|Local)::now\(|SystemTime::now\(|\bshifted\(").unwrap();
    let binary = Regex::new(r"CARGO_BIN_EXE_").unwrap();
    let mut offenders = vec![];
    for (path, text) in test_files() {
        if path == "tests/it/common/mod.rs" || path == "tests/it/codebase.rs" {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            // deploy.rs hands the binary to `setup.sh`, whose job reads CCC_ETL_NOW from the
            // env file the test writes.
            let installs = path == "tests/it/deploy.rs" && line.contains("\"--binary\"");
            let clears = line.contains(".env_clear()") && !text.contains("clock_env()");
            if clock.is_match(line) || (binary.is_match(line) && !installs) || clears {
                offenders.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "read the tests' clock (common::now) and start ccc-etl through common::ccc_etl_*: {offenders:#?}"
    );
}

/// Every text file under `dir` (recursively) with one of `exts`.
fn texts_under(dir: &str, exts: &[&str]) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut dirs = vec![Path::new(ROOT).join(dir)];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| exts.iter().any(|x| e == *x))
            {
                let rel = path
                    .strip_prefix(ROOT)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out
}

/// A key the docs or an alert tell the operator to change exists in that section of the
/// configuration (following `Lower [source] requests_per_second` made the next run exit 2).
#[test]
fn every_configuration_key_the_docs_and_alerts_name_exists() {
    let named = Regex::new(r"`\[(source|pipeline|postgres|parquet|alerts)\] ([a-z_]+)").unwrap();
    let mut texts = texts_under("docs", &["md"]);
    texts.extend(texts_under("deploy", &["yml", "yaml", "md", "sh", "toml"]));
    texts.push((
        "README.md".into(),
        std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap(),
    ));
    let mut checked = 0;
    let mut unknown = vec![];
    for (path, text) in &texts {
        for c in named.captures_iter(text) {
            let (section, key) = (&c[1], &c[2]);
            let source =
                std::fs::read_to_string(Path::new(ROOT).join(format!("src/config/{section}.rs")))
                    .unwrap();
            checked += 1;
            if !source.contains(&format!("pub {key}:")) {
                unknown.push(format!("{path}: [{section}] {key}"));
            }
        }
    }
    assert!(checked >= 5, "the docs name {checked} keys");
    assert!(unknown.is_empty(), "keys that do not exist: {unknown:?}");
}
