//! Reading a declarative YAML file: `${NAME}` expanded from the environment, parsed into the
//! validated `Document`, and every error reported with the file, the line (or the path inside
//! the document) and what to fix.

use anyhow::bail;
use portico_core::declarative::Document;
use std::path::Path;

/// Replaces `${NAME}` with the environment variable NAME; an unset one is an error with its line.
pub fn expand_env(text: &str, file: &str, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                bail!("{file}:{}: `${{` without a closing `}}`", i + 1);
            };
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("{file}:{}: `${{{name}}}` is not a variable name (use letters, digits and _)", i + 1);
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => bail!("{file}:{}: environment variable {name} is not set (the file uses ${{{name}}})", i + 1),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Parses and validates a document from YAML text.
pub fn parse(text: &str, file: &str) -> anyhow::Result<Document> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| match e.location() {
        Some(loc) => anyhow::anyhow!("{file}:{}:{}: {}", loc.line(), loc.column(), strip_location(&e.to_string())),
        None => anyhow::anyhow!("{file}: {e}"),
    })?;
    doc.validate().map_err(|e| match locate(text, &e.path) {
        Some(line) => anyhow::anyhow!("{file}:{line}: at {}: {}", e.path, e.message),
        None => anyhow::anyhow!("{file}: at {}: {}", e.path, e.message),
    })?;
    Ok(doc)
}

/// The line (1-based) where a document path such as `providers[0].apis[1].plans[0]` starts,
/// for block-style YAML; `None` when the file uses a style this cannot follow.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let meaningful = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    // The current block: lines [start, end) whose indentation is above `floor`.
    let (mut start, mut end, mut floor) = (0usize, lines.len(), None::<usize>);
    let mut found = None;
    for seg in path.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        // Find `key:` at the shallowest indentation of the block (a list item's first key may
        // follow its `- `).
        let mut at = None;
        for (i, l) in lines.iter().enumerate().take(end).skip(start) {
            if !meaningful(l) || floor.is_some_and(|f| indent(l) <= f && !l.trim_start().starts_with("- ")) {
                continue;
            }
            let t = l.trim_start().trim_start_matches("- ");
            if t.starts_with(&format!("{key}:")) {
                at = Some(i);
                break;
            }
        }
        let i = at?;
        let key_indent = indent(lines[i]) + if lines[i].trim_start().starts_with("- ") { 2 } else { 0 };
        let block_end = (i + 1..lines.len())
            .find(|&j| {
                meaningful(lines[j])
                    && indent(lines[j]) <= key_indent
                    && !(indent(lines[j]) == key_indent && lines[j].trim_start().starts_with("- "))
            })
            .unwrap_or(lines.len());
        found = Some(i + 1);
        (start, end, floor) = (i + 1, block_end, Some(key_indent));
        if let Some(n) = index {
            // The n-th `- ` item directly in this block.
            let items: Vec<usize> =
                (start..end).filter(|&j| meaningful(lines[j]) && lines[j].trim_start().starts_with("- ")).collect();
            let item_indent = items.first().map(|&j| indent(lines[j]))?;
            let items: Vec<usize> = items.into_iter().filter(|&j| indent(lines[j]) == item_indent).collect();
            let j = *items.get(n)?;
            let item_end = items.get(n + 1).copied().unwrap_or(end);
            found = Some(j + 1);
            (start, end, floor) = (j, item_end, Some(item_indent));
        }
    }
    found
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

pub fn read(path: &Path) -> anyhow::Result<Document> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?;
    let text = expand_env(&text, &name, |k| std::env::var(k).ok())?;
    parse(&text, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_and_names_missing_ones() {
        let env = |k: &str| (k == "UP").then(|| "http://127.0.0.1:9".to_string());
        assert_eq!(expand_env("a: ${UP}/x\n", "f.yaml", env).unwrap(), "a: http://127.0.0.1:9/x\n");
        let e = expand_env("a: 1\nb: ${NOPE}\n", "f.yaml", env).unwrap_err().to_string();
        assert_eq!(e, "f.yaml:2: environment variable NOPE is not set (the file uses ${NOPE})");
        assert!(expand_env("a: ${x y}", "f.yaml", env).is_err());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = parse("providers:\n  - slug: Bad Slug\n    name: X\n", "m.yaml").unwrap_err().to_string();
        assert!(e.starts_with("m.yaml:2:"), "{e}");
        assert!(e.contains("not a valid slug"), "{e}");
        let e = parse("providers: []\nextra: 1\n", "m.yaml").unwrap_err().to_string();
        assert!(e.contains("m.yaml:2") && e.contains("extra"), "{e}");
        let e = parse("- a\n", "m.yaml").unwrap_err().to_string();
        assert!(e.starts_with("m.yaml"), "{e}");
    }

    #[test]
    fn cross_field_errors_name_their_line() {
        let text = "providers:\n  - slug: acme\n    name: Acme\n    apis:\n      - slug: weather\n        name: W\n        plans:\n          - slug: free\n            name: Free\n            pricing: {type: free}\n          - slug: free\n            name: Again\n            pricing: {type: free}\n";
        let e = parse(text, "m.yaml").unwrap_err().to_string();
        assert!(e.starts_with("m.yaml:11: at providers[0].apis[0].plans[1]:"), "{e}");
        assert_eq!(locate(text, "providers[0].apis[0]"), Some(5));
        assert_eq!(locate(text, "providers[0].apis[0].plans[0]"), Some(8));
        assert_eq!(locate(text, "consumers[0]"), None);
        let demo = include_str!("../../../examples/demo-marketplace.yaml");
        let line = locate(demo, "consumers[0].apps[0].subscriptions[1]").unwrap();
        assert!(demo.lines().nth(line - 1).unwrap().contains("api: quotes"), "line {line}");
        let line = locate(demo, "providers[1].apis[1].versions[0].openapi").unwrap();
        assert!(demo.lines().nth(line - 1).unwrap().trim() == "openapi:", "line {line}");
    }

    #[test]
    fn the_demo_file_is_valid() {
        let text = include_str!("../../../examples/demo-marketplace.yaml");
        let text = expand_env(text, "demo", |_| Some("http://127.0.0.1:1".into())).unwrap();
        let doc = parse(&text, "demo").unwrap();
        assert_eq!(doc.providers.len(), 2);
        assert_eq!(doc.providers.iter().map(|p| p.apis.len()).sum::<usize>(), 3);
    }
}
