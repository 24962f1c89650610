//! Keeps the daemon's module dependencies pointing one way: reads every
//! `crate::` path in `daemon/src` and fails when a module imports one in a
//! layer above its own, or when modules import each other in a circle.
//! The layers are docs/ARCHITECTURE.md's ("Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module's layer, lowest first. A module imports only its own layer
/// or lower ones. Keys are module paths; a file not listed belongs to its
/// top-level module.
const LAYERS: &[(&str, &[&str])] = &[
    // Shared ground: no state, no domain.
    (
        "foundation",
        &[
            "crate", "datadir", "logging", "exit", "config", "cli", "sync", "reload",
        ],
    ),
    ("store", &["store"]),
    // What the hub is made of and owns.
    (
        "hub parts",
        &[
            "audit",
            "registry",
            "ca",
            "backup",
            "broker",
            "pairing",
            "admission",
            // The mailbox key: the mailbox's own file, but backup (a hub
            // part) copies the key file and hub/reports.rs opens messages
            // for a member's export, so it sits in this layer.
            "mailbox::seal",
            "metrics",
        ],
    ),
    ("hub", &["hub"]),
    (
        "adapters",
        &[
            "edge",
            "mailbox",
            "admin",
            "enroll",
            "discovery",
            "scrape",
            "bridge",
            "web",
        ],
    ),
    ("daemon", &["daemon"]),
];

/// The module a file defines: `edge/relay.rs` is `edge::relay`,
/// `edge/mod.rs` is `edge`, `lib.rs` is `crate`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The node a module path counts as: the longest listed prefix, else its
/// top-level module.
fn node_of(path: &[String]) -> String {
    if path.is_empty() {
        return "crate".into();
    }
    for len in (1..=path.len()).rev() {
        let candidate = path[..len].join("::");
        if LAYERS
            .iter()
            .any(|(_, mods)| mods.contains(&candidate.as_str()))
        {
            return candidate;
        }
    }
    path[0].clone()
}

fn layer_of(node: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&node))
}

/// The module paths a file names after `crate::` (in `use` lines, grouped
/// `crate::{a, b::c}` included, and inline), comments left out. A root
/// item (`crate::unix_now`) is the crate itself.
fn imports(text: &str, known: &BTreeSet<String>) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        paths.extend(expand(rest));
    }
    paths
        .into_iter()
        .map(|path| {
            // Only the segments that name modules; a root item is `crate`.
            let mut module: Vec<String> = Vec::new();
            for s in path.split("::").map(str::trim).filter(|s| !s.is_empty()) {
                let mut next = module.clone();
                next.push(s.to_owned());
                if known.contains(&next.join("::")) {
                    module = next;
                } else {
                    break;
                }
            }
            module
        })
        .collect()
}

/// The paths at the start of `text` (what follows `crate::`): one path, or
/// each path of a `{...}` group, nested groups expanded.
fn expand(text: &str) -> Vec<String> {
    let head: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let after = &text[head.len()..];
    if !after.starts_with('{') {
        return vec![head];
    }
    // The group's items, split at its top-level commas.
    let mut depth = 0;
    let mut items = Vec::new();
    let mut start = 1;
    for (i, c) in after.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&after[start..i]);
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(&after[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(str::trim_start)
        .filter(|item| !item.is_empty())
        .flat_map(|item| expand(item).into_iter().map(|tail| format!("{head}{tail}")))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // The binaries sit above every layer.
            if path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every violation in the tree at `src`, as lines a maintainer can act on.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let known: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(src, f).join("::"))
        .filter(|m| !m.is_empty())
        .collect();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = node_of(&module_of(src, file));
        let Some(from_layer) = layer_of(&from) else {
            problems.push(format!(
                "{}: module `{from}` is in no layer; add it to LAYERS in daemon/tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for path in imports(&text, &known) {
            let to = node_of(&path);
            if to == from || to == "crate" {
                continue;
            }
            graph.entry(from.clone()).or_default().insert(to.clone());
            match layer_of(&to) {
                Some(to_layer) if to_layer > from_layer => problems.push(format!(
                    "{}: `{from}` ({}) imports `crate::{}` ({}), a layer above it",
                    file.display(),
                    LAYERS[from_layer].0,
                    path.join("::"),
                    LAYERS[to_layer].0
                )),
                Some(_) => {}
                None => problems.push(format!(
                    "{}: imports `{to}`, which is in no layer",
                    file.display()
                )),
            }
        }
    }
    problems.extend(cycles(&graph));
    problems
}

/// Import circles among the nodes (within a layer, where the order check
/// cannot see them).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle = stack[at..].to_vec();
            circle.push(node.to_owned());
            found.push(format!("import cycle: {}", circle.join(" -> ")));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn modules_import_only_their_own_layer_or_lower_and_never_in_a_circle() {
    // HEARTH_LAYERS_SRC checks another tree (an older commit, say).
    let src = std::env::var_os("HEARTH_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "{} layering problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_an_import_upward_and_a_circle() {
    let dir = std::env::temp_dir().join(format!("hearth-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("edge")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod store;\n").unwrap();
    std::fs::write(dir.join("store.rs"), "use crate::hub::Hub;\n").unwrap();
    std::fs::write(dir.join("hub.rs"), "use crate::store::Store;\n").unwrap();
    std::fs::write(
        dir.join("admin.rs"),
        "use crate::{\n    audit::Event,\n    enroll::{x, y},\n};\n",
    )
    .unwrap();
    std::fs::write(dir.join("enroll.rs"), "fn f() { crate::admin::y(); }\n").unwrap();
    std::fs::write(dir.join("edge/mod.rs"), "// crate::daemon in a comment\n").unwrap();
    std::fs::write(
        dir.join("edge/relay.rs"),
        "use crate::hub::Hub;\nuse crate::unix_now;\n",
    )
    .unwrap();
    let problems = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let text = problems.join("\n");
    assert!(
        text.contains("`store` (store) imports `crate::hub` (hub)"),
        "{text}"
    );
    assert!(
        text.contains("import cycle: admin -> enroll -> admin"),
        "{text}"
    );
    assert!(!text.contains("daemon"), "{text}");
    assert!(!text.contains("edge::relay"), "{text}");
    assert_eq!(problems.len(), 3, "{text}");
}
