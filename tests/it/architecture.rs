//! The module picture of DESIGN.md §1 as a rule and a test. Modules sit in layers along the data
//! flow; a module may use its own items, the leaf helpers, and modules of lower layers only.
//! Every source file is parsed with `syn`: `use` trees (grouped, nested, `self`/`super`
//! relative to the file's module) and every path written in code (`crate::x::f()` inside an
//! expression, a type, a macro-free attribute) count; comments and strings do not. Inside a
//! folder, files may not import each other in a circle. lib.rs declares the modules in layer
//! order. Fixtures below show each way around a line-based check failing here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Helpers every module may use.
const LEAVES: &[&str] = &["clock", "yaml", "shutdown", "crypto"];

/// The layers, lowest first: a module may import from lower layers (and the leaves).
const LAYERS: &[&[&str]] = &[
    &["catalog", "db"],
    &["snapshot", "plans"],
    &["sampler", "slowlog", "maintenance", "bouncer"],
    &["exposition"],
    &["http"],
    &["config"],
    &["fleet"],
    &["app"],
    &["demo"],
    &["cli"],
];

/// The layer of a top-level module: 0 for the leaves, `None` when it is in no layer.
fn layer(module: &str) -> Option<usize> {
    if LEAVES.contains(&module) {
        return Some(0);
    }
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .map(|i| i + 1)
}

/// Whether `from` may import `to` (both top-level modules).
fn allowed(from: &str, to: &str) -> bool {
    from == to
        || LEAVES.contains(&to)
        || matches!((layer(from), layer(to)), (Some(a), Some(b)) if b < a)
}

/// One path a file names, resolved to an absolute module path (`["db", "tls", "SslMode"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    line: usize,
    path: Vec<String>,
}

/// Collects every `use` tree and code path of a file that leads into the crate.
struct Collector {
    /// The module path of the item being visited (the file's, plus inline `mod`s).
    module: Vec<String>,
    refs: Vec<Reference>,
}

impl Collector {
    /// `segments` made absolute, if they start at `crate`, `self` or `super`.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut base = self.module.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn push(&mut self, line: usize, segments: &[String]) {
        if let Some(path) = self.resolve(segments) {
            self.refs.push(Reference { line, path });
        }
    }

    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let line = n.ident.span().start().line;
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.push(line, &full);
            }
            syn::UseTree::Rename(r) => {
                let line = r.ident.span().start().line;
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.push(line, &full);
            }
            syn::UseTree::Glob(g) => {
                let line = g.star_token.spans[0].start().line;
                self.push(line, prefix);
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(t, prefix);
                }
            }
        }
    }
}

impl Collector {
    /// Paths `crate::a::b`, `super::a` and `self::a` written in a token stream.
    fn tokens(&mut self, stream: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let tokens: Vec<TokenTree> = stream.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id)
                    if ["crate", "super", "self"].contains(&id.to_string().as_str()) =>
                {
                    let line = id.span().start().line;
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.push(line, &segments);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&u.tree, &mut Vec::new());
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // A macro's body is tokens, not syntax (`tokio::select!`, `format!`): read the paths
        // in it from the tokens.
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.push(first.ident.span().start().line, &segments);
        }
        syn::visit::visit_path(self, p);
    }
}

/// The references of one file's source, the file being module `module`.
fn references(source: &str, module: &[&str]) -> Vec<Reference> {
    let file = syn::parse_file(source).unwrap_or_else(|e| panic!("{module:?}: {e}"));
    let mut c = Collector {
        module: module.iter().map(|s| (*s).to_owned()).collect(),
        refs: Vec::new(),
    };
    c.visit_file(&file);
    c.refs
}

/// Every source file of `src/` and its module path (`src/db/tls.rs` → `["db", "tls"]`).
fn source_files() -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            (f, module)
        })
        .collect()
}

/// The layer violations of a file of module path `module`.
fn violations(file: &str, module: &[&str], source: &str) -> Vec<String> {
    let Some(top) = module.first() else {
        return Vec::new(); // lib.rs and main.rs wire everything.
    };
    if layer(top).is_none() {
        return vec![format!(
            "{file}: module `{top}` is in no layer of tests/it/architecture.rs"
        )];
    }
    references(source, module)
        .into_iter()
        .filter_map(|r| {
            let to = r.path.first()?;
            (!allowed(top, to)).then(|| {
                format!(
                    "{file}:{}: `{top}` (layer {}) uses `crate::{}` (layer {}): only lower layers and the leaves {LEAVES:?}",
                    r.line,
                    layer(top).unwrap_or(0),
                    r.path.join("::"),
                    layer(to).map_or("none".to_owned(), |l| l.to_string()),
                )
            })
        })
        .collect()
}

#[test]
fn no_module_imports_from_its_own_or_a_higher_layer() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (file, module) in source_files() {
        let source = std::fs::read_to_string(&file).unwrap();
        let module: Vec<&str> = module.iter().map(String::as_str).collect();
        checked += references(&source, &module).len();
        problems.extend(violations(&file.display().to_string(), &module, &source));
    }
    assert!(
        checked > 300,
        "only {checked} references found; is src/ there?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Within a folder, the file-level import graph has no circle.
#[test]
fn no_files_of_one_folder_import_each_other_in_a_circle() {
    let files = source_files();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (file, module) in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let m: Vec<&str> = module.iter().map(String::as_str).collect();
        for r in references(&source, &m) {
            // The longest prefix of the path that is a file of the same folder.
            let target = (1..=r.path.len())
                .rev()
                .map(|n| r.path[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(t) = target
                && t.len() == module.len()
                && t[..t.len() - 1] == module[..module.len() - 1]
                && &t != module
            {
                edges.entry(module.clone()).or_default().insert(t);
            }
        }
    }
    let circles = circles(&edges);
    assert!(
        circles.is_empty(),
        "import circles between files of one folder: {circles:?}"
    );
}

/// Each circle of the graph, once, as the list of its modules.
fn circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let mut found = Vec::new();
    for (from, tos) in edges {
        for to in tos {
            if from < to && edges.get(to).is_some_and(|back| back.contains(from)) {
                found.push(format!("{} <-> {}", from.join("::"), to.join("::")));
            }
        }
    }
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start && path.len() > 2 && start == path.iter().min().unwrap() {
                    let names: Vec<String> = path.iter().map(|p| p.join("::")).collect();
                    found.push(names.join(" -> "));
                } else if !path.contains(next) && path.len() < 8 {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    found
}

#[test]
fn lib_rs_declares_the_modules_in_layer_order() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let file = syn::parse_file(&lib).unwrap();
    let declared: Vec<String> = file
        .items
        .iter()
        .filter_map(|i| match i {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect();
    let layers: Vec<Option<usize>> = declared.iter().map(|m| layer(m)).collect();
    assert!(
        layers.iter().all(Option::is_some),
        "{declared:?}: a module in no layer"
    );
    assert!(
        layers.windows(2).all(|w| w[0] <= w[1]),
        "lib.rs declares {declared:?}; in layer order (leaves first) they are {:?}",
        {
            let mut sorted = declared.clone();
            sorted.sort_by_key(|m| layer(m));
            sorted
        }
    );
    let every: BTreeSet<&str> = LEAVES
        .iter()
        .chain(LAYERS.iter().copied().flatten())
        .copied()
        .collect();
    let have: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    assert_eq!(
        have, every,
        "the layer table and lib.rs name the same modules"
    );
}

// Fixtures: each way a line-based check was slipped past is caught here.

#[test]
fn a_grouped_use_of_a_higher_layer_is_caught() {
    let v = violations(
        "f.rs",
        &["sampler", "run"],
        "use crate::{exposition::Renderer, http::AppState};",
    );
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains("crate::exposition::Renderer") && v[1].contains("crate::http::AppState"));
}

#[test]
fn a_super_path_that_climbs_into_another_module_is_caught() {
    let v = violations("f.rs", &["db", "tls"], "use super::super::http::server;");
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("crate::http::server"), "{v:?}");
    // Inside the same module, super is fine.
    assert!(violations("f.rs", &["db", "tls"], "use super::outcome::classify;").is_empty());
    // An inline test module's `super` is the file's module.
    let nested = "mod tests { use super::super::super::app::App; }";
    assert_eq!(violations("f.rs", &["db", "tls"], nested).len(), 1);
}

#[test]
fn a_url_string_or_comment_before_the_import_does_not_hide_it() {
    let source = "fn f() { let u = \"http://x\"; let r = crate::http::router; } // crate::db";
    let v = violations("f.rs", &["sampler", "run"], source);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("crate::http::router"), "{v:?}");
}

#[test]
fn an_inline_path_in_an_expression_or_type_is_caught() {
    let source = "fn f(x: crate::app::App) { crate::cli::run(); }";
    let v = violations("f.rs", &["snapshot"], source);
    assert_eq!(v.len(), 2, "{v:?}");
}

#[test]
fn a_path_inside_a_macro_body_is_caught() {
    let source = "async fn f() { tokio::select! { _ = crate::http::serve() => {} } }";
    let v = violations("f.rs", &["sampler", "run"], source);
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn lower_layers_and_leaves_are_allowed_and_the_same_layer_is_not() {
    assert!(allowed("sampler", "db") && allowed("sampler", "clock") && allowed("db", "crypto"));
    assert!(!allowed("sampler", "slowlog"), "same layer");
    assert!(!allowed("db", "sampler"), "upward");
    let edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = [
        (
            vec!["a".to_owned(), "x".to_owned()],
            [vec!["a".to_owned(), "y".to_owned()]].into(),
        ),
        (
            vec!["a".to_owned(), "y".to_owned()],
            [vec!["a".to_owned(), "x".to_owned()]].into(),
        ),
    ]
    .into();
    assert_eq!(circles(&edges), vec!["a::x <-> a::y".to_owned()]);
}
