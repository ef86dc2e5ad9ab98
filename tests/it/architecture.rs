//! The module picture of DESIGN.md §1 as a test: each module of `src/` may import only from
//! the modules upstream of it in the data flow (catalog → sampler → snapshot → exposition →
//! http, with `app` wiring them and `demo`/`cli` on top). It reads every `crate::` path of
//! every source file, so a new import against the flow fails here with the file and line.

use std::collections::BTreeMap;
use std::path::Path;

/// Each module and the modules it may import from (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("yaml", &[]),
    ("shutdown", &[]),
    ("crypto", &[]),
    ("catalog", &["yaml"]),
    ("db", &["crypto"]),
    ("plans", &["yaml", "catalog", "db"]),
    ("config", &["yaml", "catalog", "db", "plans"]),
    ("snapshot", &["catalog", "clock"]),
    ("sampler", &["catalog", "db", "snapshot", "clock"]),
    ("slowlog", &["db", "sampler", "clock"]),
    ("exposition", &["catalog", "snapshot"]),
    (
        "http",
        &[
            "catalog",
            "snapshot",
            "exposition",
            "clock",
            "crypto",
            "yaml",
        ],
    ),
    ("maintenance", &["db", "clock"]),
    (
        "app",
        &[
            "catalog",
            "config",
            "db",
            "snapshot",
            "sampler",
            "slowlog",
            "exposition",
            "http",
            "plans",
            "clock",
        ],
    ),
    (
        "demo",
        &[
            "app", "catalog", "config", "db", "shutdown", "clock", "yaml",
        ],
    ),
    (
        "cli",
        &[
            "app",
            "catalog",
            "config",
            "db",
            "demo",
            "maintenance",
            "plans",
            "http",
            "shutdown",
            "clock",
            "yaml",
        ],
    ),
];

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::<module>` referenced outside comments, with its line number.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.push((i + 1, name));
            }
            rest = after;
        }
    }
    refs
}

#[test]
fn no_module_imports_from_a_module_downstream_of_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let module = module_of(&src, &file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(ok) = allowed.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` is not in the architecture table (tests/it/architecture.rs)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, target) in crate_refs(&text) {
            checked += 1;
            if target != module && !ok.contains(&target.as_str()) {
                violations.push(format!(
                    "{}:{line}: `{module}` imports `crate::{target}`, which is not upstream of it",
                    file.display()
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} imports found; is src/ there?");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_architecture_check_catches_a_downstream_import() {
    let refs =
        crate_refs("use crate::exposition::Renderer; // crate::http\nlet x = crate::sampler::run;");
    assert_eq!(
        refs,
        vec![(1, "exposition".to_owned()), (2, "sampler".to_owned())]
    );
    let sampler_may: &[&str] = ALLOWED
        .iter()
        .find(|(m, _)| *m == "sampler")
        .map(|(_, a)| *a)
        .unwrap();
    assert!(!sampler_may.contains(&"exposition"));
    assert!(!sampler_may.contains(&"http"));
}
