//! Matching a call to an operation of its API version's OpenAPI document: method + path
//! template in a radix tree (`matchit`), no regular expressions. Compiled once per snapshot.

use crate::openapi::Operation;
use crate::validation::RequestRules;
use std::sync::Arc;

/// The operations of one API version, ready to match.
#[derive(Debug, Clone)]
pub struct OperationRouter {
    router: matchit::Router<usize>,
    /// Per path template: its operations.
    paths: Vec<Vec<Leaf>>,
}

/// One operation of a path template: (method, operation name, request checks).
type Leaf = (String, Arc<str>, Option<Arc<RequestRules>>);

/// What a call matched.
#[derive(Debug, PartialEq, Eq)]
pub enum OperationMatch {
    /// The operation's name: its `operationId`, or `METHOD /template`.
    Found(Arc<str>),
    /// The path exists with other methods: the `Allow` header's value.
    MethodNotAllowed(String),
    NotFound,
}

/// `/things/{thing_id}/parts/{part}` → `/things/{p0}/parts/{p1}`: matchit refuses two
/// templates that differ only in parameter names, OpenAPI allows them.
fn normalise(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut n = 0;
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                out.push_str(&format!("{{p{n}}}"));
                n += 1;
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

impl OperationRouter {
    /// Compiles a document's operations; an error names the template that cannot be matched.
    pub fn compile(ops: &[Operation]) -> Result<Self, String> {
        Self::compile_checked(ops, None).map(|(router, _)| router)
    }

    /// As [`OperationRouter::compile`], with each operation's [`RequestRules`] from `doc` (the
    /// document as OpenAPI 3.1). An operation whose rules cannot be compiled is forwarded
    /// unchecked; the second value says which and why.
    pub fn compile_validated(ops: &[Operation], doc: &serde_json::Value) -> Result<(Self, Vec<String>), String> {
        Self::compile_checked(ops, Some(doc))
    }

    fn compile_checked(ops: &[Operation], doc: Option<&serde_json::Value>) -> Result<(Self, Vec<String>), String> {
        let mut router = matchit::Router::new();
        let mut templates: Vec<String> = Vec::new();
        let mut paths: Vec<Vec<Leaf>> = Vec::new();
        let mut problems = Vec::new();
        for op in ops {
            let t = normalise(&op.path);
            let idx = match templates.iter().position(|x| *x == t) {
                Some(i) => i,
                None => {
                    router.insert(t.clone(), templates.len()).map_err(|e| format!("path `{}`: {e}", op.path))?;
                    templates.push(t);
                    paths.push(Vec::new());
                    templates.len() - 1
                }
            };
            let name: Arc<str> = op.operation_id.clone().unwrap_or_else(|| format!("{} {}", op.method, op.path)).into();
            let rules = match doc.map(|d| RequestRules::compile(d, &op.path, &op.method.to_ascii_lowercase())) {
                None | Some(Ok(None)) => None,
                Some(Ok(Some(r))) => Some(Arc::new(r)),
                Some(Err(e)) => {
                    problems.push(e);
                    None
                }
            };
            paths[idx].push((op.method.to_ascii_uppercase(), name, rules));
        }
        Ok((OperationRouter { router, paths }, problems))
    }

    /// The request checks of the operation `method` on `path` matches, with the path
    /// template's values in order (as sent, percent-encoded).
    pub fn rules<'p>(&self, method: &str, path: &'p str) -> Option<(&Arc<RequestRules>, Vec<&'p str>)> {
        let path = if path.is_empty() { "/" } else { path };
        let m = self.router.at(path).ok()?;
        let methods = &self.paths[*m.value];
        let find = |want: &str| methods.iter().find(|(mth, _, _)| mth == want);
        let (_, _, rules) = find(method).or_else(|| if method == "HEAD" { find("GET") } else { None })?;
        Some((rules.as_ref()?, m.params.iter().map(|(_, v)| v).collect()))
    }

    /// Matches `method` on `path` (the part after `/v{major}`, `/` when empty).
    pub fn lookup(&self, method: &str, path: &str) -> OperationMatch {
        let path = if path.is_empty() { "/" } else { path };
        let Ok(m) = self.router.at(path) else {
            return OperationMatch::NotFound;
        };
        let methods = &self.paths[*m.value];
        let find = |want: &str| methods.iter().find(|(mth, _, _)| mth == want).map(|(_, n, _)| n.clone());
        if let Some(name) = find(method).or_else(|| if method == "HEAD" { find("GET") } else { None }) {
            return OperationMatch::Found(name);
        }
        let mut allow: Vec<&str> = methods.iter().map(|(m, _, _)| m.as_str()).collect();
        if allow.contains(&"GET") && !allow.contains(&"HEAD") {
            allow.push("HEAD");
        }
        OperationMatch::MethodNotAllowed(allow.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path: &str, id: Option<&str>) -> Operation {
        Operation { method: method.into(), path: path.into(), operation_id: id.map(Into::into), summary: None }
    }

    #[test]
    fn matches_templates_and_methods() {
        let r = OperationRouter::compile(&[
            op("GET", "/things", Some("listThings")),
            op("POST", "/things", None),
            op("GET", "/things/{id}", Some("getThing")),
            op("DELETE", "/things/{thing_id}", Some("deleteThing")),
            op("GET", "/", Some("root")),
        ])
        .unwrap();
        assert_eq!(r.lookup("GET", "/things"), OperationMatch::Found("listThings".into()));
        assert_eq!(r.lookup("POST", "/things"), OperationMatch::Found("POST /things".into()));
        assert_eq!(r.lookup("GET", "/things/42"), OperationMatch::Found("getThing".into()));
        assert_eq!(r.lookup("DELETE", "/things/42"), OperationMatch::Found("deleteThing".into()));
        assert_eq!(r.lookup("HEAD", "/things/42"), OperationMatch::Found("getThing".into()));
        assert_eq!(r.lookup("PUT", "/things/42"), OperationMatch::MethodNotAllowed("GET, DELETE, HEAD".into()));
        assert_eq!(r.lookup("GET", "/things/42/parts"), OperationMatch::NotFound);
        assert_eq!(r.lookup("GET", ""), OperationMatch::Found("root".into()));
        assert_eq!(r.lookup("GET", "/nothing"), OperationMatch::NotFound);
    }

    #[test]
    fn normalises_parameter_names() {
        assert_eq!(normalise("/a/{x}/b/{y}"), "/a/{p0}/b/{p1}");
        assert_eq!(normalise("/a/{x"), "/a/{x");
    }
}
