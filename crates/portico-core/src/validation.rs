//! OpenAPI request validation: an operation's parameters (path, query, header) and JSON body
//! checked against the schemas of its API version's document, for versions whose policies
//! turn `validate_requests` on. The rules are compiled once per snapshot (one JSON Schema
//! validator per parameter and body, draft 2020-12 as OpenAPI 3.1 uses, formats asserted);
//! a call is checked without touching the document again.
//!
//! Parameter values arrive as text; each is read as the first type its schema allows that the
//! text reads as and the schema accepts (`integer`, `number`, `boolean`, else a string; a schema
//! without `type` tries each), and array parameters are split the way OpenAPI's default styles
//! write them (`form` exploded in the query, `simple` in the path and headers, values of
//! repeated header lines joined). A scalar parameter given twice, a header value that is not
//! visible ASCII text and a JSON body with a key twice are violations. Object parameters are
//! only checked for presence.

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
    Cookie,
    Body,
}

impl In {
    pub fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
            In::Cookie => "cookie",
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

/// The readings of a parameter whose schema declares no type.
const UNTYPED: [Kind; 4] = [Kind::Integer, Kind::Number, Kind::Boolean, Kind::Text];

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
    /// Read the body and check it with [`RequestRules::check_json`], against this schema.
    Json(JsonSchema<'a>),
}

/// The schema a JSON body is checked against, chosen by [`RequestRules::body_check`].
#[derive(Clone, Copy)]
pub struct JsonSchema<'a>(&'a jsonschema::Validator);

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
    if names.is_empty() {
        // No type declared: whatever the text reads as, the schema's other keywords decide.
        return UNTYPED.to_vec();
    }
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

/// The text of a parameter as each of `kinds` it reads as, in order (a string last).
fn candidates(text: &str, kinds: &[Kind]) -> Vec<Value> {
    let mut out = Vec::with_capacity(2);
    for k in kinds {
        let v = match k {
            Kind::Integer => text
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| text.parse::<u64>().map(Value::from))
                .ok()
                .filter(|_| !text.starts_with('+')),
            Kind::Number => text
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && !text.starts_with('+'))
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            Kind::Boolean => match text {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            Kind::Null => text.is_empty().then_some(Value::Null),
            Kind::Text => Some(Value::String(text.to_owned())),
        };
        if let Some(v) = v
            && !out.contains(&v)
        {
            out.push(v);
        }
    }
    if out.is_empty() {
        out.push(Value::String(text.to_owned()));
    }
    out
}

/// The text of a parameter as the first of `kinds` it reads as.
fn coerce(text: &str, kinds: &[Kind]) -> Value {
    candidates(text, kinds).swap_remove(0)
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

/// Whether a media type (its essence, lowercase) is JSON: `application/json` or `…+json`.
pub fn is_json(essence: &str) -> bool {
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
        let path_names: Vec<String> =
            template.split('{').skip(1).filter_map(|s| s.split_once('}').map(|(name, _)| name.to_owned())).collect();
        let mut params: Vec<Param> = Vec::new();
        for p in declared {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let location = match p.get("in").and_then(Value::as_str) {
                Some("path") => In::Path,
                Some("query") => In::Query,
                Some("header") if ignored_header(&name) => continue,
                Some("header") => In::Header,
                Some("cookie") => In::Cookie,
                _ => continue,
            };
            let fault = |what: &str| {
                format!("`{} {template}`, {} parameter `{name}`: {what}", method.to_uppercase(), location.as_str())
            };
            if location == In::Path && !path_names.contains(&name) {
                return Err(fault("the path template has no such parameter"));
            }
            if matches!(location, In::Header | In::Cookie) && !is_token(&name) {
                return Err(fault("the name is not one an HTTP header or cookie can have"));
            }
            let schema = p.get("schema");
            let compiled = match schema {
                Some(s) => Some(compile_schema(doc, s).map_err(|e| fault(&e))?),
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
        Ok(Some(RequestRules { params, body, path_names }))
    }

    /// Checks the parameters: `path` holds the path template's values in order, still
    /// percent-encoded; `header` gives the values of a request header (each of its lines) by
    /// name, `None` for one that is not visible ASCII text.
    pub fn check_parameters<'h>(
        &self,
        path: &[&str],
        query: Option<&str>,
        header: impl Fn(&str) -> Vec<Option<&'h str>>,
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
                In::Header => {
                    let lines = header(&p.name);
                    if lines.iter().any(Option::is_none) {
                        out.push(violation(p, "has a value that is not visible ASCII text".into()));
                        continue;
                    }
                    let lines: Vec<&str> = lines.into_iter().flatten().collect();
                    match (&p.shape, lines.len()) {
                        // Repeated lines of a list header are one comma-separated value (RFC 9110 §5.3).
                        (Shape::Array(_), n) if n > 1 => vec![lines.join(",")],
                        _ => lines.into_iter().map(str::to_owned).collect(),
                    }
                }
                In::Cookie => header("cookie")
                    .into_iter()
                    .flatten()
                    .flat_map(|line| line.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(k, _)| *k == p.name)
                    .map(|(_, v)| v.trim_matches('"').to_owned())
                    .collect(),
                In::Body => Vec::new(),
            };
            if texts.is_empty() {
                if p.required {
                    out.push(violation(p, "is required".into()));
                }
                continue;
            }
            let exploded = p.explode && p.location == In::Query && matches!(p.shape, Shape::Array(_));
            if texts.len() > 1 && !exploded && p.shape != Shape::Opaque {
                out.push(violation(p, format!("is given {} times; it takes one value", texts.len())));
                continue;
            }
            let Some(schema) = &p.schema else { continue };
            let value = match &p.shape {
                Shape::Opaque => continue,
                Shape::Scalar(kinds) => {
                    // Declared types are alternatives: one reading the schema accepts will do.
                    // Without one, each keyword constrains its own type: every reading must pass.
                    let mut readings = candidates(&texts[0], kinds);
                    let failing = if *kinds == UNTYPED {
                        readings.iter().position(|v| !schema.is_valid(v))
                    } else {
                        (!readings.iter().any(|v| schema.is_valid(v))).then_some(0)
                    };
                    match failing {
                        Some(i) => readings.swap_remove(i),
                        None => continue,
                    }
                }
                Shape::Array(kinds) => {
                    let items: Vec<&str> = if exploded {
                        texts.iter().map(String::as_str).collect()
                    } else {
                        texts[0].split(',').map(|t| if p.location == In::Header { t.trim() } else { t }).collect()
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
            Some((_, Some(v))) if is_json(&sent) => BodyCheck::Json(JsonSchema(v)),
            Some(_) => BodyCheck::Skip,
        }
    }

    /// Whether an empty body is a problem (a body that turned out empty once read).
    pub fn body_required(&self) -> bool {
        self.body.as_ref().is_some_and(|b| b.required)
    }

    /// Checks a JSON body against `schema` (from [`RequestRules::body_check`]). A key given
    /// twice in one object is refused: readers keep either, so the schema would see one and the
    /// upstream perhaps the other.
    pub fn check_json(schema: JsonSchema<'_>, body: &[u8]) -> Vec<Violation> {
        let schema = schema.0;
        let value: Value = match strict_json(body) {
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

fn violation(p: &Param, detail: String) -> Violation {
    Violation { location: p.location, name: p.name.clone(), detail }
}

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2), as header and cookie names are.
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses JSON like `serde_json::from_slice`, refusing an object with a key twice.
fn strict_json(body: &[u8]) -> serde_json::Result<Value> {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict(Value);
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }
    struct StrictVisitor;
    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(Strict(v)) = seq.next_element()? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = map.next_key::<String>()? {
                let Strict(v) = map.next_value()?;
                if m.contains_key(&k) {
                    let shown: String = k.chars().take(40).collect();
                    return Err(A::Error::custom(format!("the key `{shown}` appears twice in one object")));
                }
                m.insert(k, v);
            }
            Ok(Value::Object(m))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    let Strict(v) = Strict::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
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
        let none = |_: &str| Vec::new();
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
        // A scalar given twice is refused (an upstream may read either); an exploded array is not.
        let v = r.check_parameters(&[], Some("limit=5&limit=500&sort=name&tag=cat&tag=dog"), none);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].name.as_str(), v[0].detail.as_str()), ("limit", "is given 2 times; it takes one value"));
        // Numbers past i64 are still numbers; a leading `+` is not JSON's way to write one.
        let v = r.check_parameters(&[], Some("limit=18446744073709551615&sort=name"), none);
        assert!(v[0].detail.contains("maximum of 100"), "{v:?}");
        let v = r.check_parameters(&[], Some("limit=%2B5&sort=name"), none);
        assert!(v[0].detail.contains("is not of type"), "{v:?}");
    }

    #[test]
    fn schemas_without_a_type_take_the_reading_they_accept() {
        let mut d = doc();
        d["paths"]["/pets"]["get"]["parameters"] = json!([
            {"name": "code", "in": "query", "schema": {"pattern": "^[0-9]{3}$"}},
            {"name": "n", "in": "query", "schema": {"minimum": 10}},
            {"name": "either", "in": "query", "schema": {"type": ["integer", "string"], "maxLength": 2}}
        ]);
        let r = RequestRules::compile(&d, "/pets", "get").unwrap().unwrap();
        let none = |_: &str| Vec::new();
        assert!(r.check_parameters(&[], Some("code=007&n=12&either=123456"), none).is_empty());
        let v = r.check_parameters(&[], Some("code=7&n=3&either=abc"), none);
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["code", "n", "either"], "{v:?}");
        assert!(v[1].detail.contains("minimum of 10"), "{v:?}");
    }

    #[test]
    fn header_and_path_parameters() {
        let r = rules("/pets", "get");
        let v = r.check_parameters(&[], Some("sort=age"), |h| if h == "X-Tenant" { vec![Some("ab")] } else { vec![] });
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].location, v[0].name.as_str()), (In::Header, "X-Tenant"));
        // Two lines of a scalar header, or a value that is not text, are violations too.
        let v = r.check_parameters(&[], Some("sort=age"), |h| {
            if h == "X-Tenant" { vec![Some("acme"), Some("evil")] } else { vec![] }
        });
        assert_eq!(v[0].detail, "is given 2 times; it takes one value", "{v:?}");
        let v = r.check_parameters(&[], Some("sort=age"), |h| if h == "X-Tenant" { vec![None] } else { vec![] });
        assert_eq!(v[0].detail, "has a value that is not visible ASCII text", "{v:?}");
        let r = rules("/pets/{petId}", "get");
        assert!(r.check_parameters(&["42"], None, |_| Vec::new()).is_empty());
        let v = r.check_parameters(&["4%32x"], None, |_| Vec::new());
        assert!(v[0].detail.contains("\"42x\""), "decoded before it is checked: {}", v[0].detail);
    }

    #[test]
    fn list_headers_and_cookies() {
        let mut d = doc();
        d["paths"]["/pets"]["get"]["parameters"] = json!([
            {"name": "X-Ids", "in": "header", "schema": {"type": "array", "items": {"type": "integer"}}},
            {"name": "session", "in": "cookie", "required": true, "schema": {"type": "string", "minLength": 4}}
        ]);
        let r = RequestRules::compile(&d, "/pets", "get").unwrap().unwrap();
        let sent = |ids: Vec<&'static str>, cookie: Vec<&'static str>| {
            move |h: &str| match h {
                "X-Ids" => ids.iter().map(|v| Some(*v)).collect(),
                "cookie" => cookie.iter().map(|v| Some(*v)).collect(),
                _ => Vec::new(),
            }
        };
        // Lines of a list header join; the items are trimmed of the space after each comma.
        assert!(r.check_parameters(&[], None, sent(vec!["1, 2", "3"], vec!["a=b; session=abcd"])).is_empty());
        let v = r.check_parameters(&[], None, sent(vec!["1, x"], vec!["a=b"]));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].detail.starts_with("item 1:"), "{v:?}");
        assert_eq!((v[1].location, v[1].name.as_str(), v[1].detail.as_str()), (In::Cookie, "session", "is required"));
        let v = r.check_parameters(&[], None, sent(vec![], vec!["session=ab"]));
        assert_eq!(v[0].location, In::Cookie, "{v:?}");
    }

    #[test]
    fn a_json_key_given_twice_is_refused() {
        let r = rules("/pets", "post");
        let BodyCheck::Json(schema) = r.body_check(Some("application/json"), false) else { panic!("checked") };
        let v = RequestRules::check_json(schema, br#"{"name": "Rex", "owner": {"email": "a@b.c"}, "name": ""}"#);
        assert!(v[0].detail.contains("the key `name` appears twice"), "{v:?}");
        let v = RequestRules::check_json(schema, br#"{"name": "Rex", "owner": {"email": "a@b.c", "email": 1}}"#);
        assert!(v[0].detail.contains("the key `email` appears twice"), "{v:?}");
        assert!(RequestRules::check_json(schema, br#"{"name": "Rex", "tags": [{"a": 1}, {"a": 2}]}"#).is_empty());
        let v = RequestRules::check_json(schema, br#"{"name": "Rex"} x"#);
        assert!(v[0].detail.starts_with("is not valid JSON"), "{v:?}");
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
        // A path parameter the template does not have, a header name HTTP cannot carry.
        let mut d = doc();
        d["paths"]["/pets/{petId}"]["get"]["parameters"][0]["name"] = json!("id");
        let e = RequestRules::compile(&d, "/pets/{petId}", "get").unwrap_err();
        assert!(e.contains("path parameter `id`: the path template has no such parameter"), "{e}");
        let mut d = doc();
        d["paths"]["/pets"]["parameters"][0]["name"] = json!("X Tenant");
        assert!(RequestRules::compile(&d, "/pets", "get").unwrap_err().contains("header parameter `X Tenant`"));
    }
}
