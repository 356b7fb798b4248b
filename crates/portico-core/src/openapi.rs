//! OpenAPI documents that providers upload: validated on upload, 3.0 upgraded to 3.1 for
//! parsing (the original is kept as uploaded), and summarised into the operations the portal
//! lists and the gateway will match.

use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;

/// One operation of a document: method, path template and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub method: String,
    pub path: String,
    pub operation_id: Option<String>,
    pub summary: Option<String>,
}

/// A document that parsed as OpenAPI 3.0 or 3.1 and has at least one operation.
#[derive(Debug, Clone)]
pub struct OpenApiDoc {
    /// The document as uploaded.
    pub raw: Value,
    pub openapi_version: String,
    pub title: String,
    pub version: String,
    pub operations: Vec<Operation>,
}

impl OpenApiDoc {
    pub fn parse(raw: Value) -> Result<Self> {
        let bad = |m: String| Error::invalid("openapi", m);
        let obj = raw.as_object().ok_or_else(|| bad("the OpenAPI document must be a JSON/YAML object".into()))?;
        let declared = obj
            .get("openapi")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the document has no `openapi` field: Portico accepts OpenAPI 3.0 and 3.1 (Swagger 2.0 must be converted first)".into()))?
            .to_owned();
        let upgraded = if declared.starts_with("3.0.") {
            upgrade_30_to_31(raw.clone())
        } else if declared.starts_with("3.1.") {
            raw.clone()
        } else {
            return Err(bad(format!("`openapi: {declared}` is not supported: use 3.0.x or 3.1.x")));
        };
        let spec: oas3::Spec =
            serde_json::from_value(upgraded).map_err(|e| bad(format!("the document is not valid OpenAPI: {e}")))?;
        spec.validate_version().map_err(|e| bad(format!("the document's version is not usable: {e}")))?;
        let mut operations: Vec<Operation> = spec
            .operations()
            .map(|(path, method, op)| Operation {
                method: method.as_str().to_owned(),
                path,
                operation_id: op.operation_id.clone(),
                summary: op.summary.clone(),
            })
            .collect();
        if operations.is_empty() {
            return Err(bad("the document defines no operations under `paths`: add at least one".into()));
        }
        for op in &operations {
            if !op.path.starts_with('/') {
                return Err(bad(format!("path `{}` must start with `/`", op.path)));
            }
        }
        operations.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
        Ok(OpenApiDoc {
            openapi_version: declared,
            title: spec.info.title.clone(),
            version: spec.info.version.clone(),
            operations,
            raw,
        })
    }
}

impl OpenApiDoc {
    /// The document as OpenAPI 3.1 (a 3.0 one upgraded), for reading its schemas.
    pub fn upgraded(&self) -> Value {
        if self.openapi_version.starts_with("3.0.") { upgrade_30_to_31(self.raw.clone()) } else { self.raw.clone() }
    }
}

/// Rewrites the 3.0 constructs that 3.1 dropped: `nullable: true` becomes a type list with
/// `"null"`, boolean `exclusiveMinimum`/`exclusiveMaximum` become numbers.
fn upgrade_30_to_31(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.get("nullable").and_then(Value::as_bool) == Some(true) {
                    map.remove("nullable");
                    if let Some(Value::String(t)) = map.get("type").cloned() {
                        map.insert("type".into(), Value::Array(vec![Value::String(t), "null".into()]));
                    }
                } else if map.get("nullable").is_some_and(Value::is_boolean) {
                    map.remove("nullable");
                }
                for (flag, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
                    if let Some(Value::Bool(b)) = map.get(flag).cloned() {
                        map.remove(flag);
                        if b && let Some(n) = map.remove(bound) {
                            map.insert(flag.into(), n);
                        }
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("openapi".into(), "3.1.0".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(version: &str) -> Value {
        let schema = if version.starts_with("3.0") {
            json!({"type": "integer", "nullable": true, "minimum": 0, "exclusiveMinimum": true})
        } else {
            json!({"type": ["integer", "null"], "exclusiveMinimum": 0})
        };
        json!({
            "openapi": version,
            "info": {"title": "Weather", "version": "1.0.0"},
            "paths": {"/forecast": {"get": {"operationId": "forecast", "summary": "Forecast",
                "parameters": [{"name": "days", "in": "query", "schema": schema}],
                "responses": {"200": {"description": "ok"}}}}}
        })
    }

    #[test]
    fn accepts_31_and_upgrades_30() {
        for v in ["3.1.0", "3.0.3"] {
            let d = OpenApiDoc::parse(doc(v)).unwrap();
            assert_eq!(d.title, "Weather");
            assert_eq!(d.operations.len(), 1);
            assert_eq!(d.operations[0].method, "GET");
            assert_eq!(d.raw["openapi"], v, "the original is kept");
        }
    }

    #[test]
    fn refuses_what_is_not_openapi() {
        for bad in [
            json!([]),
            json!({"swagger": "2.0"}),
            json!({"openapi": "4.0.0"}),
            json!({"openapi": "3.1.0", "info": {"title": "x", "version": "1"}, "paths": {}}),
            json!({"openapi": "3.1.0", "paths": {}}),
        ] {
            assert!(OpenApiDoc::parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
