//! Label and field selectors, parsed with the apiserver's grammar and error texts.

use serde_json::Value;

use crate::status::Cause;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector; an empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<(String, Op)>);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    In,
    NotIn,
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => s.clone(),
        Tok::Not => "!".into(),
        Tok::Eq => "=".into(),
        Tok::DoubleEq => "==".into(),
        Tok::NotEq => "!=".into(),
        Tok::Open => "(".into(),
        Tok::Close => ")".into(),
        Tok::Comma => ",".into(),
        Tok::Gt => ">".into(),
        Tok::Lt => "<".into(),
        Tok::In => "in".into(),
        Tok::NotIn => "notin".into(),
        Tok::End => "".into(),
    }
}

fn lex(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        match (c, two.as_str()) {
            (_, "==") => {
                out.push(Tok::DoubleEq);
                i += 2;
            }
            (_, "!=") => {
                out.push(Tok::NotEq);
                i += 2;
            }
            ('!', _) => {
                out.push(Tok::Not);
                i += 1;
            }
            ('=', _) => {
                out.push(Tok::Eq);
                i += 1;
            }
            ('(', _) => {
                out.push(Tok::Open);
                i += 1;
            }
            (')', _) => {
                out.push(Tok::Close);
                i += 1;
            }
            (',', _) => {
                out.push(Tok::Comma);
                i += 1;
            }
            ('>', _) => {
                out.push(Tok::Gt);
                i += 1;
            }
            ('<', _) => {
                out.push(Tok::Lt);
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !"!=(),<>".contains(chars[i])
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(match word.as_str() {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    _ => Tok::Ident(word),
                });
            }
        }
    }
    out.push(Tok::End);
    out
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

impl LabelSelector {
    /// Parses `s`; the error is the apiserver's message for a 400.
    pub fn parse(s: &str) -> Result<Self, String> {
        let toks = lex(s);
        let mut p = 0;
        let mut reqs = Vec::new();
        if toks[0] == Tok::End {
            return Ok(LabelSelector(reqs));
        }
        loop {
            let (key, op) = if toks[p] == Tok::Not {
                p += 1;
                match &toks[p] {
                    Tok::Ident(k) => {
                        p += 1;
                        (k.clone(), Op::NotExists)
                    }
                    t => {
                        return Err(format!(
                            "unable to parse requirement: found '{}', expected: identifier",
                            describe(t)
                        ));
                    }
                }
            } else {
                let key = match &toks[p] {
                    Tok::Ident(k) => k.clone(),
                    t => {
                        return Err(format!(
                            "unable to parse requirement: found '{}', expected: identifier",
                            describe(t)
                        ));
                    }
                };
                p += 1;
                let op_tok = toks[p].clone();
                match op_tok {
                    Tok::Comma | Tok::End => (key, Op::Exists),
                    Tok::Eq | Tok::DoubleEq | Tok::NotEq | Tok::Gt | Tok::Lt => {
                        p += 1;
                        let val = match &toks[p] {
                            Tok::Ident(v) => {
                                p += 1;
                                v.clone()
                            }
                            Tok::Comma | Tok::End => String::new(),
                            t => {
                                return Err(format!(
                                    "unable to parse requirement: found '{}', expected: identifier",
                                    describe(t)
                                ));
                            }
                        };
                        let op = match op_tok {
                            Tok::Eq | Tok::DoubleEq => Op::Eq(val.clone()),
                            Tok::NotEq => Op::NotEq(val.clone()),
                            _ => {
                                let n: i64 = val.parse().map_err(|_| {
                                    format!(
                                        "unable to parse requirement: values[0]: Invalid value: \"{val}\": for 'Gt', 'Lt' operators, the value must be an integer"
                                    )
                                })?;
                                if op_tok == Tok::Gt {
                                    Op::Gt(n)
                                } else {
                                    Op::Lt(n)
                                }
                            }
                        };
                        if !valid_label_value(&val) {
                            return Err(format!(
                                "unable to parse requirement: values[0]: Invalid value: \"{val}\""
                            ));
                        }
                        (key, op)
                    }
                    Tok::In | Tok::NotIn => {
                        p += 1;
                        if toks[p] != Tok::Open {
                            return Err(format!(
                                "unable to parse requirement: found '{}', expected: '('",
                                describe(&toks[p])
                            ));
                        }
                        p += 1;
                        let mut vals = Vec::new();
                        loop {
                            match &toks[p] {
                                Tok::Ident(v) => {
                                    vals.push(v.clone());
                                    p += 1;
                                }
                                Tok::Close if vals.is_empty() => {}
                                t => {
                                    if !matches!(t, Tok::Comma) {
                                        return Err(format!(
                                            "unable to parse requirement: found '{}', expected: ',' or ')'",
                                            describe(t)
                                        ));
                                    }
                                    vals.push(String::new());
                                }
                            }
                            match &toks[p] {
                                Tok::Comma => p += 1,
                                Tok::Close => {
                                    p += 1;
                                    break;
                                }
                                t => {
                                    return Err(format!(
                                        "unable to parse requirement: found '{}', expected: ',' or ')'",
                                        describe(t)
                                    ));
                                }
                            }
                        }
                        (
                            key,
                            if op_tok == Tok::In {
                                Op::In(vals)
                            } else {
                                Op::NotIn(vals)
                            },
                        )
                    }
                    t => {
                        return Err(format!(
                            "unable to parse requirement: found '{}', expected: in, notin, =, ==, !=, gt, lt",
                            describe(&t)
                        ));
                    }
                }
            };
            reqs.push((key, op));
            match &toks[p] {
                Tok::End => break,
                Tok::Comma => p += 1,
                t => {
                    return Err(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        describe(t)
                    ));
                }
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Reads a structured `LabelSelector` (`matchLabels`, `matchExpressions`), as
    /// webhook configurations carry them; `field` names it in the cause of an error.
    pub fn from_json(v: &Value, field: &str) -> Result<Self, Cause> {
        let mut reqs = Vec::new();
        for (k, val) in v
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            reqs.push((k.clone(), Op::Eq(val.as_str().unwrap_or_default().into())));
        }
        let exprs = v.get("matchExpressions").and_then(Value::as_array);
        for (i, e) in exprs.into_iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            let operator = e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let op = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(Cause::new(
                        "FieldValueRequired",
                        format!("{at}.values"),
                        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(Cause::new(
                        "FieldValueForbidden",
                        format!("{at}.values"),
                        "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::NotExists,
                other => {
                    return Err(Cause::invalid(
                        format!("{at}.operator"),
                        format!("Invalid value: \"{other}\": not a valid selector operator"),
                    ));
                }
            };
            reqs.push((key.to_string(), op));
        }
        Ok(LabelSelector(reqs))
    }

    /// Does an object (with `metadata.labels`) match?
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|(k, op)| match op {
            Op::Eq(v) => get(k) == Some(v.as_str()),
            Op::NotEq(v) => get(k) != Some(v.as_str()),
            Op::In(vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::NotIn(vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Op::Exists => get(k).is_some(),
            Op::NotExists => get(k).is_none(),
            Op::Gt(n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Op::Lt(n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A parsed field selector: `(field, equal?, value)` terms.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `s` and checks each field against `supported`.
    pub fn parse(s: &str, supported: &dyn Fn(&str) -> bool) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            if !supported(field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), eq, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, obj: &Value, value_of: &dyn Fn(&Value, &str) -> String) -> bool {
        self.0
            .iter()
            .all(|(f, eq, v)| (value_of(obj, f) == *v) == *eq)
    }
}
