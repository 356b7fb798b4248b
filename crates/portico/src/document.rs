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
    doc.validate().map_err(|e| anyhow::anyhow!("{file}: at {}: {}", e.path, e.message))?;
    Ok(doc)
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
    fn the_demo_file_is_valid() {
        let text = include_str!("../../../examples/demo-marketplace.yaml");
        let text = expand_env(text, "demo", |_| Some("http://127.0.0.1:1".into())).unwrap();
        let doc = parse(&text, "demo").unwrap();
        assert_eq!(doc.providers.len(), 2);
        assert_eq!(doc.providers.iter().map(|p| p.apis.len()).sum::<usize>(), 3);
    }
}
