//! `{{ vars.NAME }}` substitution: applies a `Pack`'s `spec.vars` to its `spec.values` before they go to Helm.
//!
//! Rules (decisions marked as such are ours; the rest comes from the design):
//!
//! * Vars are scalars: string, number, bool or null. Arrays and objects are rejected, naming the var.
//!   Names match `[A-Za-z_][A-Za-z0-9_]*`; a var defined under another name is rejected too, since it
//!   could never be referenced.
//! * A reference is `{{ vars.NAME }}`; any whitespace may surround `vars.NAME` inside the braces, including
//!   none (`{{vars.NAME}}`). Anything else in double braces — `{{ .Values.x }}`, `{{ other }}`,
//!   `{{- vars.X }}`, `{{ Vars.X }}` — is not ours and is left untouched, as is an unterminated `{{`.
//!   A reference that starts with `vars.` but is not followed by a valid name (`{{ vars.a-b }}`,
//!   `{{ vars.X | quote }}`) is an error rather than silently left in place.
//! * A string value that is exactly one reference (nothing around it, not even spaces) is replaced by the
//!   var's value with its type kept: a number stays a number, a bool a bool, null stays null. This works
//!   at any depth of objects and arrays.
//! * Decision: references inside a longer string are substituted as text. Strings are inserted as they
//!   are, numbers as JSON writes them (`3`, `1.5`), bools as `true`/`false`. A null var inside a longer
//!   string is an error: rendering it as an empty string would silently produce values like `repo:`.
//! * Only values are substituted, never object keys.
//! * Substituted text is not scanned again, so a var whose value contains `{{ .Values.x }}` passes it
//!   through to the chart verbatim.
//! * A var's string value may reference other vars; they are resolved first, with the same type rule
//!   (`A: '{{ vars.B }}'` with `B: 3` makes `A` the number 3). Decision: all vars are resolved, used or
//!   not, so a cycle (`A -> B -> A`, `A -> A`) or an unknown reference inside `vars` is reported even when
//!   no value uses it. Chains deeper than [`MAX_REFERENCE_DEPTH`] are rejected.
//! * An unknown var is an error naming the var and where it was used, as a path such as
//!   `values.image.tag`, `values.containers[0].env`, `values["app.kubernetes.io/name"]` or `vars.A`.
//!
//! ## Size budget
//!
//! A small Pack can expand to a huge document (a 100 KB var referenced 2,000 times is 200 MB; vars that
//! reference vars several times grow exponentially), so [`substitute`] takes a `limit` in bytes and stops
//! *while* building the output, as soon as it exceeds the limit, with [`VarsError::TooLarge`]: memory
//! stays around the limit however large the expansion would have been.
//!
//! The size counted is that of the output serialized as compact JSON (`serde_json::to_vec`, which is what
//! the controller writes to the values file Helm reads), counted exactly and charged *before* the bytes
//! are copied: `{}`/`[]`, commas, each key with its quotes and colon, each scalar as JSON writes it
//! (strings with their quotes and escapes). Two budgets of `limit` bytes each: one for resolving all vars
//! (their expanded values together, used or not), one for the values.
//!
//! Pure functions over `serde_json::Value`; nothing here panics.

use std::{cell::Cell, collections::BTreeMap, rc::Rc};

use serde_json::{Map, Value};

/// The most var-to-var references in a row that are resolved (`A -> B -> C` is two).
pub const MAX_REFERENCE_DEPTH: usize = 32;

/// Why `vars` could not be applied to `values`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarsError {
    /// A var's value is an array or an object.
    #[error(
        "var `{name}` is {kind}, but vars must be a string, number, bool or null; \
         put structured data directly under `values`"
    )]
    NotScalar { name: String, kind: &'static str },
    /// A var is defined under a name that no reference could use.
    #[error(
        "var name `{name}` is invalid: a name starts with a letter or `_` and continues with letters, \
         digits or `_` (e.g. `DOCKER_TAG`)"
    )]
    InvalidName { name: String },
    /// A reference names a var that is not defined.
    #[error(
        "unknown var `{name}` referenced at {path}; define it under `spec.vars` or fix the reference ({defined})"
    )]
    UnknownVar {
        name: String,
        path: String,
        /// The defined var names, for spotting a typo.
        defined: String,
    },
    /// Vars reference each other in a loop.
    #[error("vars reference each other in a cycle: {cycle}; give one of them a literal value")]
    Cycle { cycle: String },
    /// Vars reference vars more than [`MAX_REFERENCE_DEPTH`] levels deep.
    #[error("vars reference each other more than {max} levels deep ({chain}); shorten the chain", max = MAX_REFERENCE_DEPTH)]
    TooDeep { chain: String },
    /// A null var is used inside a longer string.
    #[error(
        "var `{name}` is null and cannot be embedded in text at {path}; use `{{{{ vars.{name} }}}}` as the \
         whole value (it then stays null) or give the var a string value"
    )]
    NullInText { name: String, path: String },
    /// Something that starts like a var reference but is not one.
    #[error(
        "`{reference}` at {path} is not a valid var reference; write `{{{{ vars.NAME }}}}` where NAME has \
         letters, digits or `_` and does not start with a digit"
    )]
    MalformedReference { reference: String, path: String },
    /// The expansion exceeds the size limit (see the module documentation for how it is counted);
    /// expansion stopped there.
    #[error(
        "the expansion exceeds {limit} bytes (at least {size_at_least} bytes of JSON when reaching {path})"
    )]
    TooLarge {
        /// Bytes counted when the limit was crossed (more than `limit`; the full expansion is larger
        /// still, and was never built).
        size_at_least: usize,
        limit: usize,
        /// Where the limit was crossed: `values…` or `vars.NAME`.
        path: String,
    },
}

impl VarsError {
    /// The reason used in status conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            VarsError::TooLarge { .. } => "ValuesTooLarge",
            _ => "InvalidVars",
        }
    }
}

/// Returns `values` with every `{{ vars.NAME }}` replaced (see the module documentation for the rules),
/// or [`VarsError::TooLarge`] as soon as the vars or the values expand to more than `limit` bytes of JSON.
pub fn substitute(
    vars: &BTreeMap<String, Value>,
    values: &Value,
    limit: usize,
) -> Result<Value, VarsError> {
    substitute_counted(vars, values, limit).map(|(values, _)| values)
}

/// [`substitute`], also returning the output's size as compact JSON.
fn substitute_counted(
    vars: &BTreeMap<String, Value>,
    values: &Value,
    limit: usize,
) -> Result<(Value, usize), VarsError> {
    for (name, value) in vars {
        if !is_valid_name(name) {
            return Err(VarsError::InvalidName { name: name.clone() });
        }
        let kind = match value {
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
            _ => continue,
        };
        return Err(VarsError::NotScalar {
            name: name.clone(),
            kind,
        });
    }

    let vars_budget = Budget::new(limit);
    let mut resolver = Resolver {
        vars,
        resolved: BTreeMap::new(),
        stack: Vec::new(),
        budget: &vars_budget,
    };
    for name in vars.keys() {
        resolver.resolve(name)?;
    }
    let resolved = resolver.resolved;

    let budget = Budget::new(limit);
    let mut path = Vec::new();
    let values = substitute_value(values, &mut path, &budget, &mut |name, path| {
        resolved
            .get(name)
            .cloned()
            .ok_or_else(|| unknown_var(name, path.render(), vars))
    })?;
    Ok((values, budget.used.get()))
}

/// Bytes of JSON output produced so far, against a limit. Charged before the bytes are copied.
struct Budget {
    used: Cell<usize>,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Budget {
            used: Cell::new(0),
            limit,
        }
    }

    fn charge(&self, bytes: usize, path: &Path<'_, '_>) -> Result<(), VarsError> {
        let used = self.used.get().saturating_add(bytes);
        self.used.set(used);
        if used > self.limit {
            return Err(VarsError::TooLarge {
                size_at_least: used,
                limit: self.limit,
                path: path.render(),
            });
        }
        Ok(())
    }
}

/// A var's expanded value and its size as JSON; shared, so that a lookup copies nothing before the
/// budget is charged.
#[derive(Debug)]
struct Resolved {
    value: Value,
    json_len: usize,
}

/// The size of a string's contents as JSON, without the quotes: what `serde_json` escapes takes two
/// bytes (`\"`, `\\`, `\n`, …) or six (`\u0001`); everything else, UTF-8 included, is written as is.
fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum()
}

/// The size of a scalar as compact JSON (structures are counted by [`substitute_value`] as it walks them).
fn scalar_json_len(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => escaped_len(s) + 2,
        // Vars are checked to be scalars; count a structure exactly all the same.
        structured @ (Value::Array(_) | Value::Object(_)) => structured.to_string().len(),
    }
}

/// Resolves vars that reference vars, depth first, remembering results.
struct Resolver<'a> {
    vars: &'a BTreeMap<String, Value>,
    resolved: BTreeMap<&'a str, Rc<Resolved>>,
    /// The chain being resolved, for cycle detection and messages.
    stack: Vec<&'a str>,
    /// All vars' expanded values together.
    budget: &'a Budget,
}

impl<'a> Resolver<'a> {
    fn resolve(&mut self, name: &'a str) -> Result<Rc<Resolved>, VarsError> {
        if let Some(value) = self.resolved.get(name) {
            return Ok(value.clone());
        }
        if let Some(start) = self.stack.iter().position(|n| *n == name) {
            let mut cycle = self.stack[start..].to_vec();
            cycle.push(name);
            return Err(VarsError::Cycle {
                cycle: cycle.join(" -> "),
            });
        }
        if self.stack.len() > MAX_REFERENCE_DEPTH {
            let mut chain = self.stack.clone();
            chain.push(name);
            return Err(VarsError::TooDeep {
                chain: chain.join(" -> "),
            });
        }
        let (vars, budget) = (self.vars, self.budget);
        let path = Path::Var(name);
        let value = match vars.get(name) {
            Some(Value::String(text)) => {
                self.stack.push(name);
                let result = substitute_str(text, &path, budget, &mut |reference, path| match vars
                    .get_key_value(reference)
                {
                    Some((key, _)) => self.resolve(key),
                    None => Err(unknown_var(reference, path.render(), vars)),
                });
                self.stack.pop();
                result?
            }
            Some(other) => {
                budget.charge(scalar_json_len(other), &path)?;
                other.clone()
            }
            // Callers only pass defined names; answer like any unknown reference all the same.
            None => return Err(unknown_var(name, format!("vars.{name}"), vars)),
        };
        let resolved = Rc::new(Resolved {
            json_len: scalar_json_len(&value),
            value,
        });
        self.resolved.insert(name, resolved.clone());
        Ok(resolved)
    }
}

/// Where a string sits, for error messages; rendered only when an error needs it.
enum Path<'p, 'v> {
    Values(&'p [Segment<'v>]),
    Var(&'p str),
}

#[derive(Debug, Clone, Copy)]
enum Segment<'v> {
    Key(&'v str),
    Index(usize),
}

impl Path<'_, '_> {
    fn render(&self) -> String {
        match self {
            Path::Var(name) => format!("vars.{name}"),
            Path::Values(segments) => {
                let mut out = String::from("values");
                for segment in *segments {
                    match segment {
                        Segment::Key(key) if is_plain_key(key) => {
                            out.push('.');
                            out.push_str(key);
                        }
                        Segment::Key(key) => {
                            out.push('[');
                            // Serializing a string cannot fail; the fallback keeps this total.
                            out.push_str(
                                &serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}")),
                            );
                            out.push(']');
                        }
                        Segment::Index(index) => {
                            out.push('[');
                            out.push_str(&index.to_string());
                            out.push(']');
                        }
                    }
                }
                out
            }
        }
    }
}

/// Looks a var up by name; gets the path of the string that references it for error messages.
type Lookup<'l> = dyn FnMut(&str, &Path<'_, '_>) -> Result<Rc<Resolved>, VarsError> + 'l;

fn substitute_value<'v>(
    value: &'v Value,
    path: &mut Vec<Segment<'v>>,
    budget: &Budget,
    lookup: &mut Lookup<'_>,
) -> Result<Value, VarsError> {
    Ok(match value {
        Value::String(text) => {
            substitute_str(text, &Path::Values(path.as_slice()), budget, lookup)?
        }
        Value::Array(items) => {
            // `[`, `]` and the commas between items.
            let structure = 2 + items.len().saturating_sub(1);
            budget.charge(structure, &Path::Values(path.as_slice()))?;
            let mut out = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                path.push(Segment::Index(index));
                let result = substitute_value(item, path, budget, lookup);
                path.pop();
                out.push(result?);
            }
            Value::Array(out)
        }
        Value::Object(object) => {
            // `{`, `}` and the commas between entries; each entry's key, quoted, and its colon.
            let structure = 2 + object.len().saturating_sub(1);
            budget.charge(structure, &Path::Values(path.as_slice()))?;
            let mut out = Map::new();
            for (key, item) in object {
                path.push(Segment::Key(key));
                let result = budget
                    .charge(escaped_len(key) + 3, &Path::Values(path.as_slice()))
                    .and_then(|()| substitute_value(item, path, budget, lookup));
                path.pop();
                out.insert(key.clone(), result?);
            }
            Value::Object(out)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            budget.charge(scalar_json_len(value), &Path::Values(path.as_slice()))?;
            value.clone()
        }
    })
}

/// A piece of a string: literal text or a reference to a var.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'s> {
    Text(&'s str),
    Var(&'s str),
}

fn substitute_str(
    text: &str,
    path: &Path<'_, '_>,
    budget: &Budget,
    lookup: &mut Lookup<'_>,
) -> Result<Value, VarsError> {
    let pieces = scan(text).map_err(|reference| VarsError::MalformedReference {
        reference: reference.to_string(),
        path: path.render(),
    })?;
    match pieces.as_slice() {
        [Piece::Var(name)] => {
            let resolved = lookup(name, path)?;
            budget.charge(resolved.json_len, path)?;
            return Ok(resolved.value.clone());
        }
        pieces if !pieces.iter().any(|p| matches!(p, Piece::Var(_))) => {
            budget.charge(escaped_len(text) + 2, path)?;
            return Ok(Value::String(text.to_string()));
        }
        _ => {}
    }
    // The quotes; then each piece as it is appended.
    budget.charge(2, path)?;
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(literal) => {
                budget.charge(escaped_len(literal), path)?;
                out.push_str(literal);
            }
            Piece::Var(name) => {
                let resolved = lookup(name, path)?;
                match &resolved.value {
                    Value::Null => {
                        return Err(VarsError::NullInText {
                            name: name.to_string(),
                            path: path.render(),
                        });
                    }
                    Value::String(s) => {
                        budget.charge(resolved.json_len - 2, path)?;
                        out.push_str(s);
                    }
                    // Numbers and bools as JSON writes them. Vars are checked to be scalars before any
                    // lookup; a structure would be written as JSON too.
                    other => {
                        let text = other.to_string();
                        budget.charge(escaped_len(&text), path)?;
                        out.push_str(&text);
                    }
                }
            }
        }
    }
    Ok(Value::String(out))
}

/// Splits `text` into literal text and var references. `Err` carries a malformed `{{ vars.… }}`.
fn scan(text: &str) -> Result<Vec<Piece<'_>>, &str> {
    let mut pieces = Vec::new();
    let mut literal_start = 0;
    let mut cursor = 0;
    while let Some(offset) = text[cursor..].find("{{") {
        let open = cursor + offset;
        let inner_start = open + 2;
        let Some(close_offset) = text[inner_start..].find("}}") else {
            break;
        };
        let close = inner_start + close_offset;
        match text[inner_start..close].trim().strip_prefix("vars.") {
            Some(name) if is_valid_name(name) => {
                if literal_start < open {
                    pieces.push(Piece::Text(&text[literal_start..open]));
                }
                pieces.push(Piece::Var(name));
                cursor = close + 2;
                literal_start = cursor;
            }
            Some(_) => return Err(&text[open..close + 2]),
            // Not ours; look again one byte on, so `{{{ vars.X }}}` and `{{ {{ vars.X }} }}` still work.
            None => cursor = open + 1,
        }
    }
    if literal_start < text.len() {
        pieces.push(Piece::Text(&text[literal_start..]));
    }
    Ok(pieces)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Keys shown as `.key` in paths; others as `["key"]`.
fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn unknown_var(name: &str, path: String, vars: &BTreeMap<String, Value>) -> VarsError {
    const SHOWN: usize = 10;
    let defined = if vars.is_empty() {
        "no vars are defined".to_string()
    } else {
        let names: Vec<&str> = vars.keys().take(SHOWN).map(String::as_str).collect();
        let more = if vars.len() > SHOWN {
            format!(" and {} more", vars.len() - SHOWN)
        } else {
            String::new()
        };
        format!("defined vars: {}{more}", names.join(", "))
    };
    VarsError::UnknownVar {
        name: name.to_string(),
        path,
        defined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn vars(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    /// [`substitute`] without a size limit, checking on the way that the size counted is exactly that
    /// of the output serialized.
    fn substitute_unlimited(
        vars: &BTreeMap<String, Value>,
        values: &Value,
    ) -> Result<Value, VarsError> {
        let (values, counted) = substitute_counted(vars, values, usize::MAX)?;
        let serialized = serde_json::to_vec(&values).unwrap().len();
        assert_eq!(counted, serialized, "size counted for {values}");
        Ok(values)
    }

    /// (case, vars, values, expected values).
    fn ok_table() -> Vec<(&'static str, Value, Value, Value)> {
        let base = json!({"TAG": "1.4.2", "N": 3, "F": 1.5, "B": true, "Z": null, "E": ""});
        let with = |extra: Value| {
            let mut all = base.clone();
            if let (Some(target), Value::Object(extra)) = (all.as_object_mut(), extra) {
                target.extend(extra);
            }
            all
        };
        vec![
            (
                "string kept",
                base.clone(),
                json!({"image": {"tag": "{{ vars.TAG }}"}}),
                json!({"image": {"tag": "1.4.2"}}),
            ),
            (
                "no whitespace",
                base.clone(),
                json!({"t": "{{vars.TAG}}"}),
                json!({"t": "1.4.2"}),
            ),
            (
                "odd whitespace",
                base.clone(),
                json!({"t": "{{ \t vars.TAG\n }}"}),
                json!({"t": "1.4.2"}),
            ),
            (
                "integer kept",
                base.clone(),
                json!({"replicas": "{{ vars.N }}"}),
                json!({"replicas": 3}),
            ),
            (
                "float kept",
                base.clone(),
                json!({"ratio": "{{ vars.F }}"}),
                json!({"ratio": 1.5}),
            ),
            (
                "bool kept",
                base.clone(),
                json!({"enabled": "{{ vars.B }}"}),
                json!({"enabled": true}),
            ),
            (
                "null kept",
                base.clone(),
                json!({"resources": "{{ vars.Z }}"}),
                json!({"resources": null}),
            ),
            (
                "empty string kept",
                base.clone(),
                json!({"e": "{{ vars.E }}"}),
                json!({"e": ""}),
            ),
            (
                "any depth",
                base.clone(),
                json!({"a": [{"b": ["{{ vars.N }}", {"c": "{{ vars.B }}"}]}], "d": {"e": {"f": "{{ vars.TAG }}"}}}),
                json!({"a": [{"b": [3, {"c": true}]}], "d": {"e": {"f": "1.4.2"}}}),
            ),
            ("root string", base.clone(), json!("{{ vars.N }}"), json!(3)),
            (
                "root array",
                base.clone(),
                json!(["{{ vars.N }}", "x"]),
                json!([3, "x"]),
            ),
            (
                "text: string",
                base.clone(),
                json!({"i": "repo:{{ vars.TAG }}"}),
                json!({"i": "repo:1.4.2"}),
            ),
            (
                "text: integer",
                base.clone(),
                json!({"i": "r-{{ vars.N }}"}),
                json!({"i": "r-3"}),
            ),
            (
                "text: float",
                base.clone(),
                json!({"i": "{{ vars.F }}x"}),
                json!({"i": "1.5x"}),
            ),
            (
                "text: bool",
                base.clone(),
                json!({"i": "is {{ vars.B }}"}),
                json!({"i": "is true"}),
            ),
            (
                "text: empty string",
                base.clone(),
                json!({"i": "a{{ vars.E }}b"}),
                json!({"i": "ab"}),
            ),
            (
                "text: several",
                base.clone(),
                json!({"i": "{{ vars.TAG }}/{{vars.N}}/{{ vars.B }}"}),
                json!({"i": "1.4.2/3/true"}),
            ),
            (
                "text: two whole refs",
                base.clone(),
                json!({"i": "{{ vars.N }}{{ vars.N }}"}),
                json!({"i": "33"}),
            ),
            (
                "text: surrounding spaces",
                base.clone(),
                json!({"i": " {{ vars.N }}"}),
                json!({"i": " 3"}),
            ),
            (
                "text: extra braces",
                base.clone(),
                json!({"i": "{{{ vars.N }}}"}),
                json!({"i": "{3}"}),
            ),
            (
                "text: nested braces",
                base.clone(),
                json!({"i": "{{ {{ vars.N }} }}"}),
                json!({"i": "{{ 3 }}"}),
            ),
            (
                "not ours",
                base.clone(),
                json!({
                    "helm": "{{ .Values.x }}",
                    "other": "{{ other }}",
                    "bare": "{{ vars }}",
                    "bare2": "{{vars}}",
                    "case": "{{ Vars.TAG }}",
                    "trim": "{{- vars.TAG }}",
                    "unterminated": "{{ vars.TAG",
                    "single": "{ vars.TAG }",
                    "plain": "vars.TAG",
                    "empty": "{{}}",
                    "blank": "",
                }),
                json!({
                    "helm": "{{ .Values.x }}",
                    "other": "{{ other }}",
                    "bare": "{{ vars }}",
                    "bare2": "{{vars}}",
                    "case": "{{ Vars.TAG }}",
                    "trim": "{{- vars.TAG }}",
                    "unterminated": "{{ vars.TAG",
                    "single": "{ vars.TAG }",
                    "plain": "vars.TAG",
                    "empty": "{{}}",
                    "blank": "",
                }),
            ),
            (
                "mixed ours and theirs",
                base.clone(),
                json!({"i": "{{ .Release.Name }}-{{ vars.TAG }}"}),
                json!({"i": "{{ .Release.Name }}-1.4.2"}),
            ),
            (
                "keys untouched",
                base.clone(),
                json!({"{{ vars.TAG }}": "{{ vars.TAG }}"}),
                json!({"{{ vars.TAG }}": "1.4.2"}),
            ),
            (
                "non-strings untouched",
                base.clone(),
                json!({"n": 1, "f": 2.5, "b": false, "z": null, "a": [], "o": {}}),
                json!({"n": 1, "f": 2.5, "b": false, "z": null, "a": [], "o": {}}),
            ),
            (
                "no vars, no refs",
                json!({}),
                json!({"a": {"b": [1, "x"]}}),
                json!({"a": {"b": [1, "x"]}}),
            ),
            (
                "unused vars",
                base.clone(),
                json!({"a": 1}),
                json!({"a": 1}),
            ),
            (
                "var to var keeps type",
                with(json!({"A": "{{ vars.N }}"})),
                json!({"a": "{{ vars.A }}"}),
                json!({"a": 3}),
            ),
            (
                "var to var null",
                with(json!({"A": "{{ vars.Z }}"})),
                json!({"a": "{{ vars.A }}"}),
                json!({"a": null}),
            ),
            (
                "var to var text",
                with(json!({"A": "v{{ vars.TAG }}"})),
                json!({"a": "{{ vars.A }}"}),
                json!({"a": "v1.4.2"}),
            ),
            (
                "var chain",
                with(json!({"A": "{{ vars.C }}-a", "C": "{{ vars.D }}", "D": "{{ vars.N }}"})),
                json!({"a": "{{ vars.A }}", "c": "{{ vars.C }}"}),
                json!({"a": "3-a", "c": 3}),
            ),
            (
                "substituted text is not scanned again",
                with(json!({"A": "{{ .Values.x }}"})),
                json!({"a": "{{ vars.A }}", "b": "x {{ vars.A }}"}),
                json!({"a": "{{ .Values.x }}", "b": "x {{ .Values.x }}"}),
            ),
            (
                "underscore names",
                json!({"_x1": "y", "a_B_9": 1}),
                json!({"a": "{{ vars._x1 }}{{ vars.a_B_9 }}"}),
                json!({"a": "y1"}),
            ),
            (
                "unicode around",
                base.clone(),
                json!({"a": "é{{ vars.TAG }}ü"}),
                json!({"a": "é1.4.2ü"}),
            ),
        ]
    }

    #[test]
    fn substitutes() {
        for (case, vars_json, values, expected) in ok_table() {
            let got = substitute_unlimited(&vars(vars_json), &values);
            assert_eq!(got, Ok(expected), "{case}");
        }
    }

    fn chain(len: usize) -> Value {
        let mut object = Map::new();
        for i in 0..len {
            object.insert(format!("V{i}"), json!(format!("{{{{ vars.V{} }}}}", i + 1)));
        }
        object.insert(format!("V{len}"), json!("end"));
        Value::Object(object)
    }

    #[test]
    fn reference_chains_up_to_the_limit_resolve() {
        let got = substitute_unlimited(
            &vars(chain(MAX_REFERENCE_DEPTH)),
            &json!({"a": "{{ vars.V0 }}"}),
        );
        assert_eq!(got, Ok(json!({"a": "end"})));
    }

    #[test]
    fn errors() {
        // (case, vars, values, expected error)
        let table: Vec<(&str, Value, Value, VarsError)> = vec![
            (
                "unknown var",
                json!({"TAG": "1"}),
                json!({"image": {"tag": "{{ vars.NOPE }}"}}),
                VarsError::UnknownVar {
                    name: "NOPE".into(),
                    path: "values.image.tag".into(),
                    defined: "defined vars: TAG".into(),
                },
            ),
            (
                "unknown var in an array",
                json!({}),
                json!({"containers": [{"env": "x-{{ vars.NOPE }}"}]}),
                VarsError::UnknownVar {
                    name: "NOPE".into(),
                    path: "values.containers[0].env".into(),
                    defined: "no vars are defined".into(),
                },
            ),
            (
                "unknown var under an odd key",
                json!({}),
                json!({"labels": {"app.kubernetes.io/name": "{{ vars.NOPE }}"}}),
                VarsError::UnknownVar {
                    name: "NOPE".into(),
                    path: r#"values.labels["app.kubernetes.io/name"]"#.into(),
                    defined: "no vars are defined".into(),
                },
            ),
            (
                "unknown var at the root",
                json!({}),
                json!("{{ vars.NOPE }}"),
                VarsError::UnknownVar {
                    name: "NOPE".into(),
                    path: "values".into(),
                    defined: "no vars are defined".into(),
                },
            ),
            (
                "unknown var inside a var",
                json!({"A": "{{ vars.NOPE }}"}),
                json!({}),
                VarsError::UnknownVar {
                    name: "NOPE".into(),
                    path: "vars.A".into(),
                    defined: "defined vars: A".into(),
                },
            ),
            (
                "cycle",
                json!({"A": "{{ vars.B }}", "B": "{{ vars.A }}"}),
                json!({"a": "{{ vars.A }}"}),
                VarsError::Cycle {
                    cycle: "A -> B -> A".into(),
                },
            ),
            (
                "self cycle",
                json!({"A": "x{{ vars.A }}"}),
                json!({}),
                VarsError::Cycle {
                    cycle: "A -> A".into(),
                },
            ),
            (
                "longer cycle through text, unused",
                json!({"A": "1", "B": "{{ vars.C }}", "C": "c-{{ vars.D }}", "D": "{{ vars.B }}"}),
                json!({}),
                VarsError::Cycle {
                    cycle: "B -> C -> D -> B".into(),
                },
            ),
            (
                "array var",
                json!({"L": [1, 2]}),
                json!({}),
                VarsError::NotScalar {
                    name: "L".into(),
                    kind: "an array",
                },
            ),
            (
                "object var",
                json!({"O": {"a": 1}}),
                json!({}),
                VarsError::NotScalar {
                    name: "O".into(),
                    kind: "an object",
                },
            ),
            (
                "name starts with a digit",
                json!({"1X": "a"}),
                json!({}),
                VarsError::InvalidName { name: "1X".into() },
            ),
            (
                "name with a dash",
                json!({"a-b": "a"}),
                json!({}),
                VarsError::InvalidName { name: "a-b".into() },
            ),
            (
                "name with a dot",
                json!({"a.b": "a"}),
                json!({}),
                VarsError::InvalidName { name: "a.b".into() },
            ),
            (
                "empty name",
                json!({"": "a"}),
                json!({}),
                VarsError::InvalidName { name: "".into() },
            ),
            (
                "malformed name",
                json!({}),
                json!({"a": ["{{ vars.a-b }}"]}),
                VarsError::MalformedReference {
                    reference: "{{ vars.a-b }}".into(),
                    path: "values.a[0]".into(),
                },
            ),
            (
                "empty name in a reference",
                json!({}),
                json!({"a": "x{{vars.}}"}),
                VarsError::MalformedReference {
                    reference: "{{vars.}}".into(),
                    path: "values.a".into(),
                },
            ),
            (
                "pipeline",
                json!({"X": "1"}),
                json!({"a": "{{ vars.X | quote }}"}),
                VarsError::MalformedReference {
                    reference: "{{ vars.X | quote }}".into(),
                    path: "values.a".into(),
                },
            ),
            (
                "malformed inside a var",
                json!({"A": "{{ vars.B.C }}"}),
                json!({}),
                VarsError::MalformedReference {
                    reference: "{{ vars.B.C }}".into(),
                    path: "vars.A".into(),
                },
            ),
            (
                "null in text",
                json!({"Z": null}),
                json!({"image": "repo:{{ vars.Z }}"}),
                VarsError::NullInText {
                    name: "Z".into(),
                    path: "values.image".into(),
                },
            ),
            (
                "null in text inside a var",
                json!({"Z": null, "A": "x{{ vars.Z }}"}),
                json!({}),
                VarsError::NullInText {
                    name: "Z".into(),
                    path: "vars.A".into(),
                },
            ),
        ];
        for (case, vars_json, values, expected) in table {
            let err = substitute_unlimited(&vars(vars_json), &values).expect_err(case);
            assert_eq!(err, expected, "{case}");
            assert_eq!(err.reason(), "InvalidVars", "{case}");
        }
    }

    #[test]
    fn too_deep() {
        let err =
            substitute_unlimited(&vars(chain(MAX_REFERENCE_DEPTH + 1)), &json!({})).unwrap_err();
        assert!(matches!(err, VarsError::TooDeep { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("V0 -> V1 -> V2"), "{message}");
        assert!(
            message.contains(&format!("more than {MAX_REFERENCE_DEPTH} levels")),
            "{message}"
        );
    }

    #[test]
    fn messages_are_actionable() {
        let cases: Vec<(VarsError, &str)> = vec![
            (
                VarsError::UnknownVar {
                    name: "NOPE".into(),
                    path: "values.image.tag".into(),
                    defined: "defined vars: TAG".into(),
                },
                "unknown var `NOPE` referenced at values.image.tag; define it under `spec.vars` or fix the \
                 reference (defined vars: TAG)",
            ),
            (
                VarsError::NullInText {
                    name: "Z".into(),
                    path: "values.image".into(),
                },
                "var `Z` is null and cannot be embedded in text at values.image; use `{{ vars.Z }}` as the whole \
                 value (it then stays null) or give the var a string value",
            ),
            (
                VarsError::Cycle {
                    cycle: "A -> B -> A".into(),
                },
                "vars reference each other in a cycle: A -> B -> A; give one of them a literal value",
            ),
            (
                VarsError::NotScalar {
                    name: "L".into(),
                    kind: "an array",
                },
                "var `L` is an array, but vars must be a string, number, bool or null; put structured data \
                 directly under `values`",
            ),
            (
                VarsError::MalformedReference {
                    reference: "{{ vars.a-b }}".into(),
                    path: "values.a".into(),
                },
                "`{{ vars.a-b }}` at values.a is not a valid var reference; write `{{ vars.NAME }}` where NAME \
                 has letters, digits or `_` and does not start with a digit",
            ),
        ];
        for (err, message) in cases {
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn unknown_var_lists_at_most_ten_names() {
        let mut object = Map::new();
        for i in 0..12 {
            object.insert(format!("V{i:02}"), json!(i));
        }
        let err =
            substitute_unlimited(&vars(Value::Object(object)), &json!("{{ vars.X }}")).unwrap_err();
        let VarsError::UnknownVar { defined, .. } = err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(
            defined,
            "defined vars: V00, V01, V02, V03, V04, V05, V06, V07, V08, V09 and 2 more"
        );
    }

    const MIB: usize = 1 << 20;

    fn too_large(result: Result<Value, VarsError>) -> (usize, usize, String) {
        match result {
            Err(VarsError::TooLarge {
                size_at_least,
                limit,
                path,
            }) => (size_at_least, limit, path),
            other => panic!(
                "expected TooLarge, got {:?}",
                other.map(|v| v.to_string().len())
            ),
        }
    }

    #[test]
    fn a_var_referenced_thousands_of_times_is_refused_early() {
        // The reported attack: a 100 KB var referenced 2,000 times is 200 MB expanded.
        let big = "x".repeat(100_000);
        let defined = BTreeMap::from([("BIG".to_string(), json!(big))]);
        let whole = json!({"items": vec!["{{ vars.BIG }}"; 2000]});
        let embedded = json!({"text": "-{{ vars.BIG }}".repeat(2000)});
        for (case, values) in [("whole values", whole), ("embedded in text", embedded)] {
            let (size, limit, path) = too_large(substitute(&defined, &values, MIB));
            assert_eq!(limit, MIB, "{case}");
            // Stopped at the first var that crossed the limit: the work done, and the memory held, is
            // the limit plus at most one var.
            assert!(size > MIB && size <= MIB + 100_010, "{case}: {size}");
            assert!(path.starts_with("values."), "{case}: {path}");
        }
    }

    #[test]
    fn vars_that_multiply_each_other_are_refused_while_resolving() {
        // Each level repeats the previous one 100 times: V3 would be 100 GB. Refused even unused.
        let mut defined = BTreeMap::from([("V0".to_string(), json!("x".repeat(1000)))]);
        for level in 1..=3 {
            let text = format!("{{{{ vars.V{} }}}}", level - 1).repeat(100);
            defined.insert(format!("V{level}"), json!(text));
        }
        let (size, limit, path) = too_large(substitute(&defined, &json!({}), MIB));
        assert_eq!((limit, path.as_str()), (MIB, "vars.V2"));
        assert!(size > MIB && size <= MIB + 100_010, "{size}");
    }

    #[test]
    fn nested_vars_count_their_expanded_size() {
        // B is 300 KB; A twice that; the values use A twice: 1.2 MB, though the Pack holds 300 KB.
        let defined = BTreeMap::from([
            ("A".to_string(), json!("{{ vars.B }}{{ vars.B }}")),
            ("B".to_string(), json!("y".repeat(300_000))),
        ]);
        let values = json!({"a": "{{ vars.A }}", "b": "{{ vars.A }}"});
        let (size, _, path) = too_large(substitute(&defined, &values, MIB));
        assert_eq!(path, "values.b");
        assert!(size >= 1_200_000, "{size}");
        // Once only, it fits.
        let once = json!({"a": "{{ vars.A }}"});
        assert!(substitute(&defined, &once, MIB).is_ok());
    }

    #[test]
    fn the_limit_is_the_serialized_size() {
        // `{"a":"` and `"}` around the text: 8 bytes.
        let limit = 1000;
        // (case, vars, values, the size counted when refused; None: accepted at exactly the limit)
        type Case = (&'static str, BTreeMap<String, Value>, Value, Option<usize>);
        let cases: Vec<Case> = vec![
            (
                "literal at the limit",
                BTreeMap::new(),
                json!({"a": "x".repeat(992)}),
                None,
            ),
            (
                "literal one over",
                BTreeMap::new(),
                json!({"a": "x".repeat(993)}),
                Some(1001),
            ),
            (
                "var at the limit",
                BTreeMap::from([("V".into(), json!("x".repeat(992)))]),
                json!({"a": "{{ vars.V }}"}),
                None,
            ),
            (
                "var one over",
                BTreeMap::from([("V".into(), json!("x".repeat(993)))]),
                json!({"a": "{{ vars.V }}"}),
                Some(1001),
            ),
            (
                // Each `"` is written `\"`: 496 of them are 992 bytes.
                "escapes count",
                BTreeMap::from([("V".into(), json!("\"".repeat(496)))]),
                json!({"a": "{{ vars.V }}"}),
                None,
            ),
            (
                "escapes one over",
                BTreeMap::from([("V".into(), json!("\"".repeat(496)))]),
                json!({"a": "x{{ vars.V }}"}),
                Some(1001),
            ),
        ];
        for (case, defined, values, refused_at) in cases {
            let result = substitute(&defined, &values, limit);
            match refused_at {
                None => {
                    let got = result.unwrap_or_else(|e| panic!("{case}: {e}"));
                    assert_eq!(serde_json::to_vec(&got).unwrap().len(), limit, "{case}");
                }
                Some(size) => {
                    let (got, _, path) = too_large(result);
                    assert_eq!((got, path.as_str()), (size, "values.a"), "{case}");
                }
            }
        }
    }

    #[test]
    fn too_large_reason_and_message() {
        let err = VarsError::TooLarge {
            size_at_least: 1_100_000,
            limit: MIB,
            path: "values.items[10]".into(),
        };
        assert_eq!(err.reason(), "ValuesTooLarge");
        assert_eq!(
            err.to_string(),
            "the expansion exceeds 1048576 bytes (at least 1100000 bytes of JSON when reaching values.items[10])"
        );
    }

    /// Free-form JSON whose strings may hold braces but never `{{`.
    fn values_without_refs() -> impl Strategy<Value = Value> {
        let text = "[a-z{} .$|-]{0,12}".prop_filter("no `{{`", |s: &String| !s.contains("{{"));
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            text.prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z{}]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn values_without_refs_are_unchanged(
            values in values_without_refs(),
            defined in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,4}", "[a-z0-9.]{0,6}", 0..4),
        ) {
            let defined: BTreeMap<String, Value> =
                defined.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            prop_assert_eq!(substitute_unlimited(&defined, &values), Ok(values));
        }

        #[test]
        fn whole_references_keep_the_value(value in scalar(), name in "[A-Za-z_][A-Za-z0-9_]{0,8}", spaces in " {0,3}") {
            // A string var whose text holds references would itself be substituted.
            prop_assume!(!value.as_str().is_some_and(|s| s.contains("{{")));
            let defined = BTreeMap::from([(name.clone(), value.clone())]);
            let reference = format!("{{{{{spaces}vars.{name}{spaces}}}}}");
            prop_assert_eq!(substitute_unlimited(&defined, &json!({"a": [reference]})), Ok(json!({"a": [value]})));
        }

        #[test]
        fn refused_exactly_when_the_serialized_values_exceed_the_limit(
            values in values_without_refs(),
            limit in 0usize..400,
        ) {
            let size = serde_json::to_vec(&values).unwrap().len();
            match substitute(&BTreeMap::new(), &values, limit) {
                Ok(got) => prop_assert!(size <= limit && got == values),
                Err(VarsError::TooLarge { size_at_least, .. }) => {
                    prop_assert!(size > limit && size_at_least > limit && size_at_least <= size);
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        #[test]
        fn never_panics(
            text in any::<String>(),
            templated in "([a-z ]|\\{\\{ ?vars\\.[A-Za-z_.-]{0,3} ?\\}\\}|[{}])*",
            var_text in "([a-z ]|\\{\\{ ?vars\\.[A-C]{1} ?\\}\\}|[{}])*",
        ) {
            let defined = BTreeMap::from([
                ("A".to_string(), Value::String(var_text.clone())),
                ("B".to_string(), Value::String(var_text)),
                ("C".to_string(), Value::Null),
            ]);
            let _ = substitute_unlimited(&defined, &json!({"t": text, "u": [templated]}));
        }
    }
}
