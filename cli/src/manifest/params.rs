//! Engine parameters in a manifest: each value typed by the field's default and checked
//! at its own line, the merged set validated with errors pointing where a value was set.

use std::collections::HashMap;

use marked_yaml::{Node, Span};
use serde_json::{Map, Value};
use stylefarm_core::params::{parse_layer_list, parse_scales};
use stylefarm_core::RenderParams;

use super::reader::Reader;
use super::ManifestError;

/// Parameter values in their JSON form, each with where it was set, so a range error
/// found once they are merged still points at the line that set the value.
#[derive(Debug, Clone, Default)]
pub(super) struct Params {
    values: Map<String, Value>,
    origin: HashMap<String, (Span, String)>,
}

impl Params {
    /// Sets every parameter of a `params`/`defaults` mapping.
    pub(super) fn apply(
        &mut self,
        reader: &Reader<'_>,
        node: &Node,
        field: &str,
    ) -> Result<(), ManifestError> {
        for (key, value) in reader.mapping(node, field)?.iter() {
            let name = key.as_str();
            self.set(reader, name, value, &format!("{field}.{name}"), key.span())?;
        }
        Ok(())
    }

    pub(super) fn set(
        &mut self,
        reader: &Reader<'_>,
        name: &str,
        node: &Node,
        field: &str,
        span: &Span,
    ) -> Result<(), ManifestError> {
        let value = param_value(reader, name, node, field)?;
        self.insert(name, value, span, field);
        Ok(())
    }

    /// Sets a value already checked by [`param_value`].
    pub(super) fn insert(&mut self, name: &str, value: Value, span: &Span, field: &str) {
        self.values.insert(name.to_owned(), value);
        self.origin
            .insert(name.to_owned(), (*span, field.to_owned()));
    }

    /// The full, validated parameter set.
    pub(super) fn resolve(
        &self,
        reader: &Reader<'_>,
        job_span: &Span,
        job_field: &str,
    ) -> Result<RenderParams, ManifestError> {
        let params: RenderParams = serde_json::from_value(Value::Object(self.values.clone()))
            .map_err(|e| reader.at(job_span, job_field, &e.to_string()))?;
        params.validate().map_err(|e| {
            let name = e.field.split(['.', '[']).next().unwrap_or_default();
            match self.origin.get(name) {
                Some((span, field)) => {
                    reader.at(span, &e.field.replacen(name, field, 1), &e.reason)
                }
                None => reader.at(
                    job_span,
                    &format!("{job_field}.params.{}", e.field),
                    &e.reason,
                ),
            }
        })?;
        Ok(params)
    }
}

/// The JSON form of one parameter's YAML value, typed by the field's default so that a
/// wrong type or an unknown name is reported at its own line.
pub(super) fn param_value(
    reader: &Reader<'_>,
    name: &str,
    node: &Node,
    field: &str,
) -> Result<Value, ManifestError> {
    let mut defaults = serde_json::to_value(RenderParams::default()).unwrap_or(Value::Null);
    // `tile` is not written at its default (0, whole images) but is a parameter too.
    if let Some(m) = defaults.as_object_mut() {
        m.insert("tile".into(), Value::from(0u32));
    }
    if name == "temporal_weight" {
        return Err(reader.at(
            node.span(),
            field,
            "is set on a sequence with `temporal: {weight: W}`, which also chains its frames",
        ));
    }
    let Some(default) = defaults.get(name) else {
        let known: Vec<&str> = defaults
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        return Err(reader.at(
            node.span(),
            field,
            &format!("unknown parameter; the parameters are {}", known.join(", ")),
        ));
    };
    let value = match default {
        Value::Array(_) if name == "scales" => scales_value(reader, node, field)?,
        Value::Array(_) => layers_value(reader, node, field)?,
        Value::Bool(_) => Value::Bool(
            reader
                .scalar(node, field)?
                .as_bool()
                .ok_or_else(|| reader.at(node.span(), field, "expected true or false"))?,
        ),
        Value::Number(n) if n.is_f64() => {
            let s = reader.scalar(node, field)?;
            let v: f64 = s.as_str().parse().map_err(|_| {
                reader.at(
                    node.span(),
                    field,
                    &format!("{:?} is not a number", s.as_str()),
                )
            })?;
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| {
                    reader.at(node.span(), field, &format!("{v} is not a finite number"))
                })?
        }
        Value::Number(_) => Value::from(reader.integer(node, field, 0, i64::MAX)?),
        _ => Value::String(reader.string(node, field)?),
    };
    // Type and enum checks for this field alone (ranges are checked on the merged set).
    let mut one = Map::new();
    one.insert(name.to_owned(), value.clone());
    serde_json::from_value::<RenderParams>(Value::Object(one)).map_err(|e| {
        let msg = e.to_string();
        reader.at(
            node.span(),
            field,
            msg.split(" at line").next().unwrap_or(&msg),
        )
    })?;
    Ok(value)
}

/// Scales as `auto`, `256,362,512` or a list of long sides.
fn scales_value(reader: &Reader<'_>, node: &Node, field: &str) -> Result<Value, ManifestError> {
    let sides = match node {
        Node::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                reader
                    .integer(item, &format!("{field}[{i}]"), 1, i64::from(u32::MAX))
                    .map(|v| v as u32)
            })
            .collect::<Result<Vec<u32>, _>>()?,
        _ => parse_scales(&reader.string(node, field)?)
            .map_err(|e| reader.at(node.span(), field, &e))?,
    };
    Ok(Value::from(sides))
}

/// Layers as `relu1_1,relu2_1:0.5`, a list of such names, or a list of
/// `{layer, weight}` mappings.
fn layers_value(reader: &Reader<'_>, node: &Node, field: &str) -> Result<Value, ManifestError> {
    let mut out = Vec::new();
    let mut add = |text: &str, n: &Node| -> Result<(), ManifestError> {
        for l in parse_layer_list(text).map_err(|e| reader.at(n.span(), field, &e))? {
            out.push(serde_json::json!({"layer": l.layer, "weight": l.weight}));
        }
        Ok(())
    };
    match node {
        Node::Scalar(s) => add(s.as_str(), node)?,
        Node::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let f = format!("{field}[{i}]");
                match item {
                    Node::Scalar(s) => add(s.as_str(), item)?,
                    Node::Mapping(m) => {
                        reader.known_keys(m, &f, &["layer", "weight"])?;
                        let layer = m
                            .get_node("layer")
                            .ok_or_else(|| reader.at(item.span(), &f, "needs `layer`"))?;
                        let weight = match m.get_node("weight") {
                            Some(w) => reader.float(w, &format!("{f}.weight"))?,
                            None => 1.0,
                        };
                        add(
                            &format!("{}:{weight}", reader.string(layer, &format!("{f}.layer"))?),
                            item,
                        )?;
                    }
                    Node::Sequence(_) => {
                        return Err(reader.at(
                            item.span(),
                            &f,
                            "expected a layer name or {layer, weight}",
                        ))
                    }
                }
            }
        }
        Node::Mapping(_) => {
            return Err(reader.at(
                node.span(),
                field,
                "expected a list of layers or \"relu1_1,relu2_1:0.5\"",
            ))
        }
    }
    Ok(Value::Array(out))
}
