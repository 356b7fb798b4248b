//! OpenAPI request validation: an operation's parameters (path, query, header) and JSON body
//! checked against the schemas of its API version's document, for versions whose policies
//! turn `validate_requests` on. The rules are compiled once per snapshot (one JSON Schema
//! validator per parameter and body, draft 2020-12 as OpenAPI 3.1 uses, formats asserted);
//! a call is checked without touching the document again.
//!
//! Parameter values arrive as text; each is read as the type its schema declares (`integer`,
//! `number`, `boolean`, else a string) before it is validated, and array parameters are split
//! the way OpenAPI's default styles write them (`form` exploded in the query, `simple` in the
//! path and headers). Object parameters and cookies are only checked for presence.

use serde_json::{Map, Value};
use std::fmt;

/// At most this many problems are reported for one call.
pub const MAX_VIOLATIONS: usize = 10;
/// A problem's text is cut to this many characters (a message may quote the value).
const MAX_DETAIL_CHARS: usize = 200;

/// Where a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
    Body,
}

impl In {
    pub fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
            In::Body => "body",
        }
    }
}

/// One way a call breaks its operation's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub location: In,
    /// The parameter's name; for the body, the JSON pointer of the offending value (`""` is
    /// the whole body).
    pub name: String,
    pub detail: String,
}

impl Violation {
    /// The operation requires a body and the call sent none.
    pub fn body_missing() -> Violation {
        Violation { location: In::Body, name: String::new(), detail: "is required by this operation".into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            In::Body if self.name.is_empty() => write!(f, "body: {}", self.detail),
            In::Body => write!(f, "body field `{}`: {}", self.name, self.detail),
            loc => write!(f, "{} parameter `{}`: {}", loc.as_str(), self.name, self.detail),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Number,
    Boolean,
    Null,
    Text,
}

/// How a parameter's text becomes a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Scalar(Vec<Kind>),
    Array(Vec<Kind>),
    /// Objects (and what cannot be told): only presence is checked.
    Opaque,
}

struct Param {
    name: String,
    location: In,
    required: bool,
    shape: Shape,
    explode: bool,
    schema: Option<jsonschema::Validator>,
}

/// What a call's body must be.
struct BodyRule {
    required: bool,
    /// Declared media types (lowercase, without parameters) and, for JSON ones with a
    /// schema, its validator.
    media: Vec<(String, Option<jsonschema::Validator>)>,
}

/// The checks of one operation.
pub struct RequestRules {
    params: Vec<Param>,
    body: Option<BodyRule>,
    /// The path template's parameter names, in order.
    path_names: Vec<String>,
}

impl fmt::Debug for RequestRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestRules")
            .field("params", &self.params.iter().map(|p| (p.location, &p.name)).collect::<Vec<_>>())
            .field("body", &self.body.as_ref().map(|b| b.media.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>()))
            .finish()
    }
}

/// What to do with a call's body.
pub enum BodyCheck<'a> {
    /// Nothing to check.
    Skip,
    /// The operation requires a body and the call has none.
    Missing,
    /// The call's `Content-Type` is not one the operation accepts: the accepted ones.
    Unsupported(String),
    /// Read the body and check it with [`RequestRules::check_json`].
    Json(&'a jsonschema::Validator),
}

/// Follows local `$ref`s (`#/components/…`) to what they name, at most 16 deep.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..16 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').ok_or_else(|| format!("`$ref: {r}` is not local to the document"))?;
                v = doc.pointer(pointer).ok_or_else(|| format!("`$ref: {r}` names nothing in the document"))?;
            }
            None => return Ok(v),
        }
    }
    Err("`$ref`s nested more than 16 deep".into())
}

fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$ref") || m.values().any(has_ref),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// A validator for one schema of the document. Its `$ref`s point into the document
/// (`#/components/schemas/…`), so the document's `components` go along at the root.
fn compile_schema(doc: &Value, schema: &Value) -> Result<jsonschema::Validator, String> {
    let mut s = schema.clone();
    if has_ref(&s) {
        let components = doc.get("components").cloned().unwrap_or(Value::Object(Map::new()));
        s = match s {
            Value::Object(mut m) if !m.contains_key("components") => {
                m.insert("components".into(), components);
                Value::Object(m)
            }
            other => serde_json::json!({"allOf": [other], "components": components}),
        };
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&s)
        .map_err(|e| e.to_string())
}

fn kinds(doc: &Value, schema: &Value) -> Vec<Kind> {
    let Ok(schema) = resolve(doc, schema) else { return vec![Kind::Text] };
    let names: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<Kind> = names
        .iter()
        .filter_map(|t| match *t {
            "integer" => Some(Kind::Integer),
            "number" => Some(Kind::Number),
            "boolean" => Some(Kind::Boolean),
            "null" => Some(Kind::Null),
            _ => None,
        })
        .collect();
    out.push(Kind::Text);
    out
}

fn shape(doc: &Value, schema: Option<&Value>) -> Shape {
    let Some(schema) = schema else { return Shape::Scalar(vec![Kind::Text]) };
    let Ok(resolved) = resolve(doc, schema) else { return Shape::Opaque };
    let types: Vec<&str> = match resolved.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"object") {
        Shape::Opaque
    } else if types.contains(&"array") {
        Shape::Array(resolved.get("items").map_or_else(|| vec![Kind::Text], |i| kinds(doc, i)))
    } else {
        Shape::Scalar(kinds(doc, resolved))
    }
}

/// The text of a parameter as the first of `kinds` it reads as.
fn coerce(text: &str, kinds: &[Kind]) -> Value {
    for k in kinds {
        match k {
            Kind::Integer => {
                if let Ok(n) = text.parse::<i64>() {
                    return Value::from(n);
                }
            }
            Kind::Number => {
                if let Ok(n) = text.parse::<f64>()
                    && n.is_finite()
                    && let Some(n) = serde_json::Number::from_f64(n)
                {
                    return Value::Number(n);
                }
            }
            Kind::Boolean => match text {
                "true" => return Value::Bool(true),
                "false" => return Value::Bool(false),
                _ => {}
            },
            Kind::Null => {
                if text.is_empty() {
                    return Value::Null;
                }
            }
            Kind::Text => return Value::String(text.to_owned()),
        }
    }
    Value::String(text.to_owned())
}

fn truncate(mut s: String) -> String {
    if s.chars().count() > MAX_DETAIL_CHARS {
        s = s.chars().take(MAX_DETAIL_CHARS).collect();
        s.push('…');
    }
    s
}

/// A media type without its parameters, lowercase.
fn essence(media: &str) -> String {
    media.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

/// Header parameters OpenAPI says are ignored (HTTP itself describes them).
fn ignored_header(name: &str) -> bool {
    ["accept", "content-type", "authorization"].iter().any(|h| name.eq_ignore_ascii_case(h))
}

impl RequestRules {
    /// The checks of `method` (lowercase, as a key of the path item) on `template`, from an
    /// OpenAPI 3.1 document (a 3.0 one upgraded first: [`crate::openapi::OpenApiDoc::upgraded`]).
    /// `None`: the operation declares nothing to check. An error names what cannot be compiled.
    pub fn compile(doc: &Value, template: &str, method: &str) -> Result<Option<RequestRules>, String> {
        let item = doc
            .get("paths")
            .and_then(|p| p.get(template))
            .ok_or_else(|| format!("the document has no path `{template}`"))?;
        let item = resolve(doc, item)?;
        let op = item.get(method).ok_or_else(|| format!("the document has no `{method} {template}`"))?;
        let mut declared: Vec<&Value> = Vec::new();
        for list in [item.get("parameters"), op.get("parameters")].into_iter().flatten() {
            for p in list.as_array().map(Vec::as_slice).unwrap_or_default() {
                declared.push(resolve(doc, p)?);
            }
        }
        let mut params: Vec<Param> = Vec::new();
        for p in declared {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let location = match p.get("in").and_then(Value::as_str) {
                Some("path") => In::Path,
                Some("query") => In::Query,
                Some("header") if !ignored_header(&name) => In::Header,
                _ => continue,
            };
            let schema = p.get("schema");
            let compiled = match schema {
                Some(s) => Some(compile_schema(doc, s).map_err(|e| {
                    format!("`{} {template}`, {} parameter `{name}`: {e}", method.to_uppercase(), location.as_str())
                })?),
                None => None,
            };
            let param = Param {
                required: location == In::Path || p.get("required").and_then(Value::as_bool).unwrap_or(false),
                shape: shape(doc, schema),
                explode: p.get("explode").and_then(Value::as_bool).unwrap_or(location == In::Query),
                schema: compiled,
                location,
                name,
            };
            // An operation's parameter replaces the path item's of the same name and place.
            match params.iter_mut().find(|q| q.name == param.name && q.location == param.location) {
                Some(q) => *q = param,
                None => params.push(param),
            }
        }
        let body = match op.get("requestBody") {
            None => None,
            Some(b) => {
                let b = resolve(doc, b)?;
                let mut media = Vec::new();
                if let Some(content) = b.get("content").and_then(Value::as_object) {
                    for (m, spec) in content {
                        let m = essence(m);
                        let validator = match spec.get("schema") {
                            Some(s) if is_json(&m) => Some(compile_schema(doc, s).map_err(|e| {
                                format!("`{} {template}`, request body `{m}`: {e}", method.to_uppercase())
                            })?),
                            _ => None,
                        };
                        media.push((m, validator));
                    }
                }
                Some(BodyRule { required: b.get("required").and_then(Value::as_bool).unwrap_or(false), media })
            }
        };
        if params.is_empty() && body.is_none() {
            return Ok(None);
        }
        let path_names =
            template.split('{').skip(1).filter_map(|s| s.split_once('}').map(|(name, _)| name.to_owned())).collect();
        Ok(Some(RequestRules { params, body, path_names }))
    }

    /// Checks the parameters: `path` holds the path template's values in order, still
    /// percent-encoded; `header` reads a request header by name.
    pub fn check_parameters<'h>(
        &self,
        path: &[&str],
        query: Option<&str>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        let query_pairs: Vec<(String, String)> = match query {
            Some(q) if self.params.iter().any(|p| p.location == In::Query) => {
                form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
            }
            _ => Vec::new(),
        };
        for p in &self.params {
            if out.len() >= MAX_VIOLATIONS {
                break;
            }
            let texts: Vec<String> = match p.location {
                In::Path => self
                    .path_names
                    .iter()
                    .position(|n| *n == p.name)
                    .and_then(|i| path.get(i))
                    .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
                    .into_iter()
                    .collect(),
                In::Query => query_pairs.iter().filter(|(k, _)| *k == p.name).map(|(_, v)| v.clone()).collect(),
                In::Header => header(&p.name).map(str::to_owned).into_iter().collect(),
                In::Body => Vec::new(),
            };
            if texts.is_empty() {
                if p.required {
                    out.push(Violation { location: p.location, name: p.name.clone(), detail: "is required".into() });
                }
                continue;
            }
            let Some(schema) = &p.schema else { continue };
            let value = match &p.shape {
                Shape::Opaque => continue,
                Shape::Scalar(kinds) => coerce(&texts[0], kinds),
                Shape::Array(kinds) => {
                    let items: Vec<&str> = if p.explode && p.location == In::Query {
                        texts.iter().map(String::as_str).collect()
                    } else {
                        texts[0].split(',').collect()
                    };
                    Value::Array(items.into_iter().map(|t| coerce(t, kinds)).collect())
                }
            };
            for e in schema.iter_errors(&value).take(MAX_VIOLATIONS - out.len()) {
                let at = e.instance_path().to_string();
                let detail = if at.is_empty() { e.to_string() } else { format!("item {}: {e}", &at[1..]) };
                out.push(Violation { location: p.location, name: p.name.clone(), detail: truncate(detail) });
            }
        }
        out
    }

    /// What to do with the body, given the call's `Content-Type` and whether it is known to
    /// have no body at all.
    pub fn body_check(&self, content_type: Option<&str>, empty: bool) -> BodyCheck<'_> {
        let Some(rule) = &self.body else { return BodyCheck::Skip };
        if empty {
            return if rule.required { BodyCheck::Missing } else { BodyCheck::Skip };
        }
        if rule.media.is_empty() {
            return BodyCheck::Skip;
        }
        let accepted = || rule.media.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>().join(", ");
        let Some(content_type) = content_type else { return BodyCheck::Unsupported(accepted()) };
        let sent = essence(content_type);
        let major = sent.split('/').next().unwrap_or_default();
        let found = rule
            .media
            .iter()
            .find(|(m, _)| *m == sent)
            .or_else(|| rule.media.iter().find(|(m, _)| m.strip_suffix("/*").is_some_and(|t| t == major)))
            .or_else(|| rule.media.iter().find(|(m, _)| m == "*/*"));
        match found {
            None => BodyCheck::Unsupported(accepted()),
            Some((_, Some(v))) if is_json(&sent) => BodyCheck::Json(v),
            Some(_) => BodyCheck::Skip,
        }
    }

    /// Whether an empty body is a problem (a body that turned out empty once read).
    pub fn body_required(&self) -> bool {
        self.body.as_ref().is_some_and(|b| b.required)
    }

    /// Checks a JSON body against `schema` (from [`RequestRules::body_check`]).
    pub fn check_json(schema: &jsonschema::Validator, body: &[u8]) -> Vec<Violation> {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return vec![Violation {
                    location: In::Body,
                    name: String::new(),
                    detail: format!("is not valid JSON ({e})"),
                }];
            }
        };
        schema
            .iter_errors(&value)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                location: In::Body,
                name: e.instance_path().to_string(),
                detail: truncate(e.to_string()),
            })
            .collect()
    }
}

/// For a version whose policies turn `validate_requests` on: every operation's checks compile,
/// or an error names the first that does not.
pub fn check_document(raw: &Value) -> crate::Result<()> {
    let doc = crate::openapi::OpenApiDoc::parse(raw.clone())?;
    let upgraded = doc.upgraded();
    for op in &doc.operations {
        RequestRules::compile(&upgraded, &op.path, &op.method.to_ascii_lowercase()).map_err(|e| {
            crate::Error::invalid("policies", format!("validate_requests: the document cannot be checked against: {e}"))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "Pets", "version": "1.0.0"},
            "paths": {
                "/pets": {
                    "parameters": [{"name": "X-Tenant", "in": "header", "schema": {"type": "string", "minLength": 3}}],
                    "get": {
                        "parameters": [
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                            {"name": "tag", "in": "query", "schema": {"type": "array", "items": {"type": "string", "enum": ["cat", "dog"]}}},
                            {"$ref": "#/components/parameters/Sort"}
                        ],
                        "responses": {"200": {"description": "ok"}}
                    },
                    "post": {
                        "requestBody": {"$ref": "#/components/requestBodies/NewPet"},
                        "responses": {"201": {"description": "made"}}
                    }
                },
                "/pets/{petId}": {
                    "get": {
                        "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer", "format": "int64"}}],
                        "responses": {"200": {"description": "ok"}}
                    }
                },
                "/plain": {"get": {"responses": {"200": {"description": "ok"}}}}
            },
            "components": {
                "parameters": {"Sort": {"name": "sort", "in": "query", "required": true, "schema": {"type": "string", "enum": ["name", "age"]}}},
                "requestBodies": {"NewPet": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}},
                "schemas": {
                    "Pet": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "owner": {"$ref": "#/components/schemas/Owner"}
                    }},
                    "Owner": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
                }
            }
        })
    }

    fn rules(path: &str, method: &str) -> RequestRules {
        RequestRules::compile(&doc(), path, method).unwrap().unwrap()
    }

    #[test]
    fn query_parameters_are_typed_and_checked() {
        let r = rules("/pets", "get");
        let none = |_: &str| None;
        assert_eq!(r.check_parameters(&[], Some("limit=10&tag=cat&tag=dog&sort=name"), none), vec![]);
        let v = r.check_parameters(&[], Some("limit=0&tag=cat&tag=bird"), none);
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["limit", "tag", "sort"], "{v:?}");
        assert!(v[0].detail.contains("minimum of 1"), "{}", v[0].detail);
        assert!(v[1].detail.starts_with("item 1:"), "{}", v[1].detail);
        assert_eq!(v[2].detail, "is required");
        assert_eq!(v[0].to_string(), format!("query parameter `limit`: {}", v[0].detail));
        let v = r.check_parameters(&[], Some("limit=ten&sort=name"), none);
        assert!(v[0].detail.contains("\"ten\" is not of type \"integer\""), "{}", v[0].detail);
    }

    #[test]
    fn header_and_path_parameters() {
        let r = rules("/pets", "get");
        let v = r.check_parameters(&[], Some("sort=age"), |h| (h == "X-Tenant").then_some("ab"));
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].location, v[0].name.as_str()), (In::Header, "X-Tenant"));
        let r = rules("/pets/{petId}", "get");
        assert!(r.check_parameters(&["42"], None, |_| None).is_empty());
        let v = r.check_parameters(&["4%32x"], None, |_| None);
        assert!(v[0].detail.contains("\"42x\""), "decoded before it is checked: {}", v[0].detail);
    }

    #[test]
    fn bodies_follow_refs_and_media_types() {
        let r = rules("/pets", "post");
        assert!(matches!(r.body_check(Some("application/json"), true), BodyCheck::Missing));
        assert!(
            matches!(r.body_check(Some("text/plain"), false), BodyCheck::Unsupported(ref a) if a == "application/json")
        );
        assert!(matches!(r.body_check(None, false), BodyCheck::Unsupported(_)));
        let BodyCheck::Json(schema) = r.body_check(Some("Application/JSON; charset=utf-8"), false) else {
            panic!("a JSON body is checked")
        };
        assert!(RequestRules::check_json(schema, br#"{"name": "Rex"}"#).is_empty());
        let v = RequestRules::check_json(schema, br#"{"owner": {"email": "not-an-address"}}"#);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().any(|v| v.name.is_empty() && v.detail.contains("\"name\" is a required property")), "{v:?}");
        assert!(v.iter().any(|v| v.name == "/owner/email"), "{v:?}");
        let v = RequestRules::check_json(schema, b"{not json");
        assert!(v[0].detail.starts_with("is not valid JSON"), "{v:?}");
    }

    #[test]
    fn operations_without_rules_and_broken_schemas() {
        assert!(RequestRules::compile(&doc(), "/plain", "get").unwrap().is_none());
        let mut d = doc();
        d["paths"]["/pets"]["get"]["parameters"][0]["schema"] = json!({"type": "integer", "minimum": "one"});
        let e = RequestRules::compile(&d, "/pets", "get").unwrap_err();
        assert!(e.contains("query parameter `limit`"), "{e}");
        d["paths"]["/pets"]["post"]["requestBody"] = json!({"$ref": "#/components/requestBodies/Nope"});
        assert!(RequestRules::compile(&d, "/pets", "post").unwrap_err().contains("names nothing"));
    }
}
