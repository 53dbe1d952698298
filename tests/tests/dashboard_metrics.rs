//! The dashboards and alerts query only what the services export.
//!
//! `every_metric_the_dashboards_and_alerts_use_is_exported` runs the whole
//! pipeline in this process (collector, enricher, deduplicator, the three
//! dispatchers against a platform sandbox) on unique topics and groups of
//! the test broker, sends conversions through it that give every counter a
//! series (valid, invalid, a browser + server pair, a duplicate, refused
//! consent, bad identifiers, ingest records, undecodable records for each
//! stage, an output too large for the broker, and a collector whose broker
//! is gone), and reads every service's /metrics. Then it reads every PromQL
//! expression of deploy/grafana/dashboards/*.json (targets and variables)
//! and deploy/prometheus/alerts.yml with a small lexer and parser, and
//! fails naming each metric no service exports, each label a selector,
//! `by`/`without`, `on`/`ignoring`, `group_left`/`group_right`,
//! `label_replace` or `histogram_quantile` needs that its series lack, each
//! `rate`/`irate`/`increase` of something that is not a counter, and each
//! arithmetic between vectors whose labels cannot match. `up` comes from
//! Prometheus itself and is exempt; `job`, `instance` and the static target
//! labels of deploy/prometheus/prometheus.yml (`service`) are on every
//! series.
//!
//! The other tests need no broker: every alert has a severity, a summary, a
//! description and a runbook_url whose anchor is a heading of
//! docs/operations.md; every alert has a promtool case that fires and one
//! that stays quiet (deploy/prometheus/tests); the dashboards are
//! well-formed Grafana JSON on the provisioned data source.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postback_core::model::ConversionRaw;
use postback_core::{Codec, SchemaKind};
use postback_testkit::{repo_root, unique, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

mod support;
use support::pipeline::{example, start_pipeline, Names, Options};

/// How long the pipeline may take to give every queried metric a series.
const SERIES_DEADLINE: Duration = Duration::from_secs(240);
/// The demo keys of config/collector.local.toml.
const API_KEY: &str = "sk_local_demo_0123456789abcdef";
const SITE_KEY: &str = "pk_local_demo";
/// The demo read key of config/status.local.toml.
const STATUS_READ_KEY: &str = "rk_local_demo_0123456789abcdef";
const ORIGIN: &str = "https://shop.example";

// ------------------------------------------------------------------------
// What the services export: the Prometheus text format, parsed.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// A `_bucket`, `_sum` or `_count` series of a histogram.
    HistogramPart,
    Summary,
    Untyped,
}

#[derive(Debug, Clone)]
struct Family {
    kind: Kind,
    labels: BTreeSet<String>,
    services: BTreeSet<String>,
}

/// Every sample name seen on any service's /metrics, with its labels.
#[derive(Debug, Default)]
struct Exported {
    samples: BTreeMap<String, Family>,
    /// Labels every series has once scraped (job, instance, static ones).
    target_labels: BTreeSet<String>,
}

impl Exported {
    fn add(&mut self, service: &str, text: &str) {
        let mut types: BTreeMap<&str, Kind> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    let kind = match kind {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::HistogramPart,
                        "summary" => Kind::Summary,
                        _ => Kind::Untyped,
                    };
                    types.insert(name, kind);
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((name, labels)) = parse_sample(line) else {
                continue;
            };
            let kind = types.get(name).copied().unwrap_or_else(|| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        let base = name.strip_suffix(s)?;
                        match types.get(base) {
                            Some(Kind::HistogramPart) => Some(Kind::HistogramPart),
                            Some(Kind::Summary) => Some(Kind::Summary),
                            _ => None,
                        }
                    })
                    .unwrap_or(Kind::Untyped)
            });
            let family = self
                .samples
                .entry(name.to_string())
                .or_insert_with(|| Family {
                    kind,
                    labels: BTreeSet::new(),
                    services: BTreeSet::new(),
                });
            family.labels.extend(labels);
            family.services.insert(service.to_string());
        }
    }
}

/// Whether `text` has a series of `name` with `label="value"`.
fn has_series(text: &str, name: &str, label: &str, value: &str) -> bool {
    let want = format!("{label}=\"{value}\"");
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{'))
            && l.contains(&want)
    })
}

/// A sample line's name and label names (values may hold escaped quotes).
fn parse_sample(line: &str) -> Option<(&str, Vec<String>)> {
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    let mut labels = Vec::new();
    if line[end..].starts_with('{') {
        let bytes = line.as_bytes();
        let mut i = end + 1;
        loop {
            while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'}' {
                break;
            }
            let start = i;
            while i < bytes.len() && bytes[i] != b'=' {
                i += 1;
            }
            labels.push(line[start..i].trim().to_string());
            i += 1; // '='
            if bytes.get(i) != Some(&b'"') {
                return None;
            }
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1; // closing quote
        }
    }
    Some((name, labels))
}

// ------------------------------------------------------------------------
// PromQL, read just far enough: names, labels, and what each expression's
// result is labelled with.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Str(String),
    /// A Grafana variable ($__range, ${platform:pipe}).
    Var(String),
    Punct(char),
    Op(String),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c == '"' || c == '\'' || c == '`' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(format!("unterminated string in `{src}`"));
                };
                i += 1;
                if d == quote {
                    break;
                }
                if d == '\\' && quote != '`' {
                    if let Some(&e) = chars.get(i) {
                        s.push(e);
                        i += 1;
                    }
                } else {
                    s.push(d);
                }
            }
            out.push(Tok::Str(s));
        } else if c == '$' {
            let start = i;
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            out.push(Tok::Var(chars[start..i.min(chars.len())].iter().collect()));
        } else if "(){}[],:@".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["==", "!=", "<=", ">=", "=~", "!~"].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else if "+-*/%^<>=".contains(c) {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            } else {
                return Err(format!("unexpected `{c}` in `{src}`"));
            }
        }
    }
    Ok(out)
}

/// What an expression's result is labelled with.
#[derive(Debug, Clone, PartialEq)]
enum Labels {
    Scalar,
    /// Unknown (a metric no service exports): checks against it pass, the
    /// missing metric is reported once.
    Any,
    Set(BTreeSet<String>),
}

impl Labels {
    fn has(&self, label: &str) -> bool {
        match self {
            Labels::Scalar => false,
            Labels::Any => true,
            Labels::Set(s) => s.contains(label),
        }
    }

    fn with(self, extra: &[String]) -> Labels {
        match self {
            Labels::Set(mut s) => {
                s.extend(extra.iter().cloned());
                Labels::Set(s)
            }
            Labels::Scalar => Labels::Set(extra.iter().cloned().collect()),
            Labels::Any => Labels::Any,
        }
    }

    fn without(self, drop: &[String]) -> Labels {
        match self {
            Labels::Set(mut s) => {
                for d in drop {
                    s.remove(d);
                }
                Labels::Set(s)
            }
            other => other,
        }
    }

    fn describe(&self) -> String {
        match self {
            Labels::Scalar => "a scalar".into(),
            Labels::Any => "anything".into(),
            Labels::Set(s) => format!("{{{}}}", s.iter().cloned().collect::<Vec<_>>().join(", ")),
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    labels: Labels,
    /// The metric names inside, for messages.
    metrics: BTreeSet<String>,
    /// The metric name when the node is exactly a selector (maybe a range).
    selector: Option<String>,
    /// A string literal's value.
    string: Option<String>,
}

impl Node {
    fn scalar() -> Node {
        Node {
            labels: Labels::Scalar,
            metrics: BTreeSet::new(),
            selector: None,
            string: None,
        }
    }

    fn of(labels: Labels, metrics: BTreeSet<String>) -> Node {
        Node {
            labels,
            metrics,
            selector: None,
            string: None,
        }
    }

    fn metrics_list(&self) -> String {
        if self.metrics.is_empty() {
            "(no metric)".into()
        } else {
            self.metrics.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// What reading the expressions found.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    /// Metric name -> where it is used.
    metrics: BTreeMap<String, BTreeSet<String>>,
    selectors: usize,
    matcher_labels: usize,
    grouping_labels: usize,
    matching_labels: usize,
    replace_labels: usize,
    counter_arguments: usize,
    expressions: usize,
}

const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Metrics Prometheus makes itself, with their labels besides the target's.
const PROMETHEUS_OWN: &[&str] = &["up"];

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    exported: &'a Exported,
    found: &'a mut Findings,
    /// Where the expression is, for messages.
    at: String,
}

type Parsed<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn is_ident(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == word)
    }

    fn expect(&mut self, c: char) -> Parsed<()> {
        match self.next() {
            Some(Tok::Punct(p)) if p == c => Ok(()),
            other => Err(format!("expected `{c}`, found {other:?}")),
        }
    }

    fn problem(&mut self, what: String) {
        let at = self.at.clone();
        self.found.problems.push(format!("{at}: {what}"));
    }

    fn expr(&mut self) -> Parsed<Node> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o))
                    if [
                        "+", "-", "*", "/", "%", "^", "==", "!=", "<=", ">=", "<", ">",
                    ]
                    .contains(&o.as_str()) =>
                {
                    o.clone()
                }
                Some(Tok::Ident(w)) if ["and", "or", "unless", "atan2"].contains(&w.as_str()) => {
                    w.clone()
                }
                _ => break,
            };
            self.pos += 1;
            if self.is_ident("bool") {
                self.pos += 1;
            }
            let mut on: Option<Vec<String>> = None;
            let mut ignoring: Option<Vec<String>> = None;
            if self.is_ident("on") {
                self.pos += 1;
                on = Some(self.label_list()?);
            } else if self.is_ident("ignoring") {
                self.pos += 1;
                ignoring = Some(self.label_list()?);
            }
            let mut group: Option<(bool, Vec<String>)> = None;
            if self.is_ident("group_left") || self.is_ident("group_right") {
                let left_side = self.is_ident("group_left");
                self.pos += 1;
                let labels = if matches!(self.peek(), Some(Tok::Punct('('))) {
                    self.label_list()?
                } else {
                    Vec::new()
                };
                group = Some((left_side, labels));
            }
            let right = self.unary()?;
            left = self.binary(&op, left, right, on, ignoring, group);
        }
        Ok(left)
    }

    fn binary(
        &mut self,
        op: &str,
        left: Node,
        right: Node,
        on: Option<Vec<String>>,
        ignoring: Option<Vec<String>>,
        group: Option<(bool, Vec<String>)>,
    ) -> Node {
        let mut metrics = left.metrics.clone();
        metrics.extend(right.metrics.iter().cloned());
        if let Some(on) = &on {
            for l in on {
                self.found.matching_labels += 1;
                for side in [&left, &right] {
                    if side.labels != Labels::Scalar && !side.labels.has(l) {
                        self.problem(format!(
                            "`{op} on ({})` needs label `{l}`, which {} does not have (its result has {})",
                            on.join(", "),
                            side.metrics_list(),
                            side.labels.describe()
                        ));
                    }
                }
            }
        }
        let set_op = ["and", "or", "unless"].contains(&op);
        let labels = if set_op {
            match (op, &left.labels, &right.labels) {
                ("or", Labels::Set(a), Labels::Set(b)) => {
                    Labels::Set(a.union(b).cloned().collect())
                }
                ("or", _, _) => Labels::Any,
                _ => left.labels.clone(),
            }
        } else {
            match (&left.labels, &right.labels) {
                (Labels::Scalar, other) | (other, Labels::Scalar) => other.clone(),
                (Labels::Any, _) | (_, Labels::Any) => Labels::Any,
                (Labels::Set(a), Labels::Set(b)) => {
                    if let Some((left_side, extra)) = &group {
                        let (many, one) = if *left_side { (a, b) } else { (b, a) };
                        for l in extra {
                            self.found.matching_labels += 1;
                            if !one.contains(l) {
                                self.problem(format!(
                                    "`{op} ... group_{}({l})` copies label `{l}`, which the other side ({}) does not have",
                                    if *left_side { "left" } else { "right" },
                                    if *left_side { right.metrics_list() } else { left.metrics_list() }
                                ));
                            }
                        }
                        let mut s = many.clone();
                        s.extend(extra.iter().cloned());
                        Labels::Set(s)
                    } else if let Some(on) = &on {
                        Labels::Set(on.iter().cloned().collect())
                    } else if let Some(ignoring) = &ignoring {
                        let ig: BTreeSet<String> = ignoring.iter().cloned().collect();
                        let (ka, kb): (BTreeSet<_>, BTreeSet<_>) = (
                            a.difference(&ig).cloned().collect(),
                            b.difference(&ig).cloned().collect(),
                        );
                        if ka != kb {
                            self.problem(format!(
                                "`{op} ignoring (...)` between {} and {}: their other labels differ, nothing matches",
                                left.labels.describe(),
                                right.labels.describe()
                            ));
                        }
                        Labels::Set(ka)
                    } else {
                        if a != b {
                            self.problem(format!(
                                "`{op}` between vectors labelled {} ({}) and {} ({}): nothing matches without on()/ignoring()",
                                left.labels.describe(),
                                left.metrics_list(),
                                right.labels.describe(),
                                right.metrics_list()
                            ));
                        }
                        Labels::Set(a.clone())
                    }
                }
            }
        };
        Node::of(labels, metrics)
    }

    fn unary(&mut self) -> Parsed<Node> {
        if matches!(self.peek(), Some(Tok::Op(o)) if o == "-" || o == "+") {
            self.pos += 1;
            return self.unary();
        }
        let node = self.primary()?;
        loop {
            match self.peek() {
                Some(Tok::Punct('[')) => {
                    // A range or a subquery: its content is durations only.
                    let mut depth = 0;
                    loop {
                        match self.next() {
                            Some(Tok::Punct('[')) => depth += 1,
                            Some(Tok::Punct(']')) => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            None => return Err("unclosed `[`".into()),
                            _ => {}
                        }
                    }
                }
                Some(Tok::Ident(w)) if w == "offset" => {
                    self.pos += 1;
                    if matches!(self.peek(), Some(Tok::Op(o)) if o == "-") {
                        self.pos += 1;
                    }
                    match self.next() {
                        Some(Tok::Num(_)) | Some(Tok::Var(_)) => {}
                        other => return Err(format!("offset without a duration: {other:?}")),
                    }
                }
                Some(Tok::Punct('@')) => {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Num(_)) | Some(Tok::Var(_)) => {}
                        Some(Tok::Ident(w)) if w == "start" || w == "end" => {
                            self.expect('(')?;
                            self.expect(')')?;
                        }
                        other => return Err(format!("`@` without a time: {other:?}")),
                    }
                }
                _ => break,
            }
        }
        Ok(node)
    }

    fn primary(&mut self) -> Parsed<Node> {
        match self.next() {
            Some(Tok::Punct('(')) => {
                let mut e = self.expr()?;
                self.expect(')')?;
                e.selector = None;
                Ok(e)
            }
            Some(Tok::Num(_)) | Some(Tok::Var(_)) => Ok(Node::scalar()),
            Some(Tok::Str(s)) => Ok(Node {
                string: Some(s),
                ..Node::scalar()
            }),
            Some(Tok::Ident(name)) => {
                let next = self.peek().cloned();
                let grouping_next =
                    matches!(&next, Some(Tok::Ident(w)) if w == "by" || w == "without");
                if AGGREGATORS.contains(&name.as_str())
                    && (matches!(next, Some(Tok::Punct('('))) || grouping_next)
                {
                    self.aggregation(&name)
                } else if matches!(next, Some(Tok::Punct('('))) {
                    self.function(&name)
                } else if ["Inf", "NaN", "inf", "nan"].contains(&name.as_str()) {
                    Ok(Node::scalar())
                } else {
                    self.selector(name)
                }
            }
            Some(Tok::Punct('{')) => Err("a selector without a metric name".into()),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn label_list(&mut self) -> Parsed<Vec<String>> {
        self.expect('(')?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                Some(Tok::Punct(')')) => break,
                Some(Tok::Punct(',')) => {}
                Some(Tok::Ident(l)) => out.push(l),
                other => return Err(format!("expected a label name, found {other:?}")),
            }
        }
        Ok(out)
    }

    fn grouping(&mut self) -> Parsed<Option<(bool, Vec<String>)>> {
        if self.is_ident("by") || self.is_ident("without") {
            let by = self.is_ident("by");
            self.pos += 1;
            Ok(Some((by, self.label_list()?)))
        } else {
            Ok(None)
        }
    }

    fn args(&mut self) -> Parsed<Vec<Node>> {
        self.expect('(')?;
        let mut args = Vec::new();
        if matches!(self.peek(), Some(Tok::Punct(')'))) {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            match self.next() {
                Some(Tok::Punct(',')) => {}
                Some(Tok::Punct(')')) => break,
                other => return Err(format!("expected `,` or `)`, found {other:?}")),
            }
        }
        Ok(args)
    }

    fn aggregation(&mut self, name: &str) -> Parsed<Node> {
        let mut grouping = self.grouping()?;
        let args = self.args()?;
        if grouping.is_none() {
            grouping = self.grouping()?;
        }
        let Some(arg) = args.last().cloned() else {
            return Err(format!("`{name}()` without an argument"));
        };
        let mut metrics = BTreeSet::new();
        for a in &args {
            metrics.extend(a.metrics.iter().cloned());
        }
        let labels = match &grouping {
            Some((by, list)) => {
                for l in list {
                    self.found.grouping_labels += 1;
                    if !arg.labels.has(l) {
                        self.problem(format!(
                            "`{name} {} ({})` needs label `{l}`, which {} does not have (it has {})",
                            if *by { "by" } else { "without" },
                            list.join(", "),
                            arg.metrics_list(),
                            arg.labels.describe()
                        ));
                    }
                }
                if *by {
                    Labels::Set(list.iter().cloned().collect())
                } else {
                    arg.labels.clone().without(list)
                }
            }
            None => Labels::Set(BTreeSet::new()),
        };
        let labels = if name == "count_values" {
            match args.first().and_then(|a| a.string.clone()) {
                Some(l) => labels.with(&[l]),
                None => labels,
            }
        } else {
            labels
        };
        Ok(Node::of(labels, metrics))
    }

    fn function(&mut self, name: &str) -> Parsed<Node> {
        if !FUNCTIONS.contains(&name) {
            self.problem(format!("`{name}()` is not a PromQL function"));
        }
        let args = self.args()?;
        let mut metrics = BTreeSet::new();
        for a in &args {
            metrics.extend(a.metrics.iter().cloned());
        }
        let first_vector = args.iter().find(|a| a.labels != Labels::Scalar).cloned();
        let labels = match name {
            "scalar" | "time" | "pi" => Labels::Scalar,
            "vector" => Labels::Set(BTreeSet::new()),
            "absent" | "absent_over_time" => Labels::Any,
            "rate" | "irate" | "increase" | "resets" => {
                self.found.counter_arguments += 1;
                if let Some(metric) = args.first().and_then(|a| a.selector.clone()) {
                    if let Some(f) = self.exported.samples.get(&metric) {
                        if !matches!(f.kind, Kind::Counter | Kind::HistogramPart | Kind::Summary) {
                            self.problem(format!(
                                "`{name}({metric}[...])`: {metric} is a {:?}, not a counter",
                                f.kind
                            ));
                        }
                    }
                }
                first_vector.map(|a| a.labels).unwrap_or(Labels::Any)
            }
            "histogram_quantile" | "histogram_fraction" => {
                let v = args.last().cloned().unwrap_or_else(Node::scalar);
                self.found.grouping_labels += 1;
                if !v.labels.has("le") {
                    self.problem(format!(
                        "`{name}()` needs the `le` label of histogram buckets, which {} does not keep (it has {})",
                        v.metrics_list(),
                        v.labels.describe()
                    ));
                }
                v.labels.without(&["le".to_string()])
            }
            "label_replace" | "label_join" => {
                let v = args.first().cloned().unwrap_or_else(Node::scalar);
                let strings: Vec<Option<String>> =
                    args.iter().skip(1).map(|a| a.string.clone()).collect();
                let dst = strings.first().cloned().flatten();
                let sources: Vec<String> = if name == "label_replace" {
                    strings.get(2).cloned().flatten().into_iter().collect()
                } else {
                    strings.iter().skip(2).flatten().cloned().collect()
                };
                for src in sources.iter().filter(|s| !s.is_empty()) {
                    self.found.replace_labels += 1;
                    if !v.labels.has(src) {
                        self.problem(format!(
                            "`{name}(..., \"{src}\", ...)` reads label `{src}`, which {} does not have (it has {})",
                            v.metrics_list(),
                            v.labels.describe()
                        ));
                    }
                }
                match dst {
                    Some(d) => v.labels.with(&[d]),
                    None => v.labels,
                }
            }
            "sort_by_label" | "sort_by_label_desc" => {
                let v = args.first().cloned().unwrap_or_else(Node::scalar);
                for l in args.iter().skip(1).filter_map(|a| a.string.clone()) {
                    self.found.grouping_labels += 1;
                    if !v.labels.has(&l) {
                        self.problem(format!(
                            "`{name}` sorts by `{l}`, which {} does not have",
                            v.metrics_list()
                        ));
                    }
                }
                v.labels
            }
            _ => first_vector.map(|a| a.labels).unwrap_or(Labels::Scalar),
        };
        Ok(Node::of(labels, metrics))
    }

    fn selector(&mut self, name: String) -> Parsed<Node> {
        let mut matchers = Vec::new();
        if matches!(self.peek(), Some(Tok::Punct('{'))) {
            self.pos += 1;
            loop {
                match self.next() {
                    Some(Tok::Punct('}')) => break,
                    Some(Tok::Punct(',')) => {}
                    Some(Tok::Ident(l)) => {
                        match self.next() {
                            Some(Tok::Op(o)) if ["=", "!=", "=~", "!~"].contains(&o.as_str()) => {}
                            other => {
                                return Err(format!(
                                    "expected a matcher after `{l}`, found {other:?}"
                                ))
                            }
                        }
                        match self.next() {
                            Some(Tok::Str(_)) => {}
                            other => {
                                return Err(format!(
                                    "expected a string after `{l}`, found {other:?}"
                                ))
                            }
                        }
                        matchers.push(l);
                    }
                    other => return Err(format!("bad selector of {name}: {other:?}")),
                }
            }
        }
        self.found.selectors += 1;
        self.found
            .metrics
            .entry(name.clone())
            .or_default()
            .insert(self.at.clone());
        let labels = if PROMETHEUS_OWN.contains(&name.as_str()) {
            Some(self.exported.target_labels.clone())
        } else {
            self.exported.samples.get(&name).map(|f| {
                let mut l = f.labels.clone();
                l.extend(self.exported.target_labels.iter().cloned());
                l
            })
        };
        let labels = match labels {
            Some(l) => {
                for m in &matchers {
                    self.found.matcher_labels += 1;
                    if m != "__name__" && !l.contains(m) {
                        let have: Vec<String> = l.iter().cloned().collect();
                        self.problem(format!(
                            "`{name}{{{m}...}}`: {name} has no label `{m}` (it has {})",
                            have.join(", ")
                        ));
                    }
                }
                Labels::Set(l)
            }
            None => Labels::Any,
        };
        Ok(Node {
            labels,
            metrics: BTreeSet::from([name.clone()]),
            selector: Some(name),
            string: None,
        })
    }
}

/// Reads one PromQL expression; problems go to `found`.
fn check_expr(expr: &str, at: &str, exported: &Exported, found: &mut Findings) {
    found.expressions += 1;
    let toks = match lex(expr) {
        Ok(t) => t,
        Err(e) => {
            found.problems.push(format!("{at}: {e}"));
            return;
        }
    };
    let mut p = Parser {
        toks,
        pos: 0,
        exported,
        found,
        at: at.to_string(),
    };
    match p.expr() {
        Ok(_) if p.pos >= p.toks.len() => {}
        Ok(_) => {
            let rest = p.toks[p.pos..].to_vec();
            p.problem(format!("cannot read past {rest:?}"));
        }
        Err(e) => p.problem(format!("cannot read `{expr}`: {e}")),
    }
}

/// A Grafana variable query: `label_values(selector, label)` or PromQL.
fn check_variable(query: &str, at: &str, exported: &Exported, found: &mut Findings) {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (selector, label) = match inner.rfind(',') {
            Some(i) => (&inner[..i], inner[i + 1..].trim()),
            None => ("", inner.trim()),
        };
        if selector.trim().is_empty() {
            return;
        }
        check_expr(selector, at, exported, found);
        let toks = lex(selector).unwrap_or_default();
        if let Some(Tok::Ident(name)) = toks.first() {
            found.grouping_labels += 1;
            if let Some(f) = exported.samples.get(name) {
                if !f.labels.contains(label) && !exported.target_labels.contains(label) {
                    found
                        .problems
                        .push(format!("{at}: label_values: {name} has no label `{label}`"));
                }
            }
        }
    } else {
        check_expr(q, at, exported, found);
    }
}

// ------------------------------------------------------------------------
// The files.

fn alerts_file() -> PathBuf {
    repo_root().join("deploy/prometheus/alerts.yml")
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo_root().join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboard in {}", dir.display());
    files
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn yaml(path: &Path) -> serde_yaml::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug)]
struct Alert {
    name: String,
    expr: String,
    rule: serde_yaml::Value,
}

fn alerts() -> Vec<Alert> {
    let doc = yaml(&alerts_file());
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            out.push(Alert {
                name: name.to_string(),
                expr: rule["expr"].as_str().unwrap_or_default().to_string(),
                rule: rule.clone(),
            });
        }
    }
    assert!(!out.is_empty(), "no alert in alerts.yml");
    out
}

/// Every PromQL expression of a dashboard (panel targets, nested rows) and
/// its variables' queries, with where each is.
/// Where a query is (file, panel, refId) and its text.
type Located = Vec<(String, String)>;

fn dashboard_queries(path: &Path) -> (Located, Located) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", rel(path)));
    let mut exprs = Vec::new();
    fn panels(list: &Value, file: &str, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        format!(
                            "{file} panel \"{title}\" {}",
                            t["refId"].as_str().unwrap_or("?")
                        ),
                        e.to_string(),
                    ));
                }
            }
            panels(&p["panels"], file, out);
        }
    }
    let file = rel(path);
    panels(&doc["panels"], &file, &mut exprs);
    let mut variables = Vec::new();
    for v in doc["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        variables.push((
            format!("{file} variable ${}", v["name"].as_str().unwrap_or("?")),
            q.to_string(),
        ));
    }
    (exprs, variables)
}

/// Labels Prometheus puts on every series it scrapes: job, instance and the
/// static target labels of prometheus.yml.
fn target_labels() -> BTreeSet<String> {
    let doc = yaml(&repo_root().join("deploy/prometheus/prometheus.yml"));
    let mut labels: BTreeSet<String> = ["job", "instance"].map(String::from).into();
    for job in doc["scrape_configs"].as_sequence().into_iter().flatten() {
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for k in sc["labels"]
                .as_mapping()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if let Some(k) = k.as_str() {
                    labels.insert(k.to_string());
                }
            }
        }
    }
    labels
}

struct Checked {
    found: Findings,
    alerts: usize,
    dashboards: usize,
    panel_queries: usize,
    variables: usize,
}

fn check_all(exported: &Exported) -> Checked {
    let mut found = Findings::default();
    let alerts = alerts();
    for a in &alerts {
        check_expr(
            &a.expr,
            &format!("deploy/prometheus/alerts.yml {}", a.name),
            exported,
            &mut found,
        );
    }
    let files = dashboard_files();
    let (mut panel_queries, mut variables) = (0, 0);
    for f in &files {
        let (exprs, vars) = dashboard_queries(f);
        panel_queries += exprs.len();
        variables += vars.len();
        for (at, e) in exprs {
            check_expr(&e, &at, exported, &mut found);
        }
        for (at, q) in vars {
            check_variable(&q, &at, exported, &mut found);
        }
    }
    Checked {
        found,
        alerts: alerts.len(),
        dashboards: files.len(),
        panel_queries,
        variables,
    }
}

/// The metric names the files query (besides Prometheus's own).
fn queried_metrics() -> BTreeSet<String> {
    let empty = Exported::default();
    check_all(&empty)
        .found
        .metrics
        .into_keys()
        .filter(|m| !PROMETHEUS_OWN.contains(&m.as_str()))
        .collect()
}

// ------------------------------------------------------------------------
// Checks that need no broker.

/// GitHub's heading anchors: lower case, spaces to `-`, punctuation other
/// than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn headings(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            out.push(anchor(&line[hashes..]));
        }
    }
    out
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    let ops = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("read docs/operations.md");
    let anchors = headings(&ops);
    let mut problems = Vec::new();
    let alerts = alerts();
    let mut names = BTreeSet::new();
    for a in &alerts {
        if !names.insert(a.name.clone()) {
            problems.push(format!("{}: defined twice", a.name));
        }
        let severity = a.rule["labels"]["severity"].as_str().unwrap_or_default();
        if !["critical", "warning", "info"].contains(&severity) {
            problems.push(format!(
                "{}: severity `{severity}` (critical, warning or info)",
                a.name
            ));
        }
        for key in ["summary", "description"] {
            if a.rule["annotations"][key]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{}: no {key}", a.name));
            }
        }
        let url = a.rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let want = format!("docs/operations.md#{}", a.name.to_lowercase());
        if url != want {
            problems.push(format!(
                "{}: runbook_url is `{url}`, expected `{want}`",
                a.name
            ));
        }
        let section = a.name.to_lowercase();
        if !anchors.contains(&section) {
            problems.push(format!(
                "{}: docs/operations.md has no heading `### {}` (anchor #{section})",
                a.name, a.name
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "{} alerts, each with a severity, a summary, a description and a runbook heading in docs/operations.md",
        alerts.len()
    );
}

#[test]
fn every_alert_has_a_promtool_case_that_fires_and_one_that_stays_quiet() {
    let dir = repo_root().join("deploy/prometheus/tests");
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/prometheus/tests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    for f in &files {
        let doc = yaml(f);
        let rules: Vec<&str> = doc["rule_files"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        if !rules.contains(&"../alerts.yml") {
            problems.push(format!(
                "{}: rule_files does not name ../alerts.yml",
                rel(f)
            ));
        }
        for test in doc["tests"].as_sequence().into_iter().flatten() {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = case["alertname"].as_str().unwrap_or_default().to_string();
                let fires = case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|s| !s.is_empty());
                let e = cases.entry(name).or_default();
                if fires {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
    }
    let alerts = alerts();
    for a in &alerts {
        let (fire, quiet) = cases.get(&a.name).copied().unwrap_or_default();
        println!("{:40} {fire} firing case(s), {quiet} quiet case(s)", a.name);
        if fire == 0 || quiet == 0 {
            problems.push(format!(
                "{}: {fire} firing and {quiet} quiet promtool case(s); each alert needs both",
                a.name
            ));
        }
    }
    for name in cases.keys() {
        if !alerts.iter().any(|a| &a.name == name) {
            problems.push(format!(
                "promtool cases for `{name}`, which alerts.yml does not define"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dashboards_are_grafana_json_on_the_provisioned_data_source() {
    let ds = yaml(&repo_root().join("deploy/grafana/provisioning/datasources/prometheus.yml"));
    let uids: BTreeSet<String> = ds["datasources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|d| d["uid"].as_str().map(String::from))
        .collect();
    assert!(!uids.is_empty(), "the provisioned data source has no uid");
    let mut problems = Vec::new();
    let mut dashboard_uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let files = dashboard_files();
    let mut panels_seen = 0;
    for f in &files {
        let file = rel(f);
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(f).expect("read"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let uid = doc["uid"].as_str().unwrap_or_default();
        if uid.is_empty() || uid.len() > 40 || !dashboard_uids.insert(uid.to_string()) {
            problems.push(format!("{file}: uid `{uid}` empty, too long or not unique"));
        }
        let title = doc["title"].as_str().unwrap_or_default();
        if title.is_empty() || !titles.insert(title.to_string()) {
            problems.push(format!("{file}: title `{title}` empty or not unique"));
        }
        if !doc["schemaVersion"].is_u64() {
            problems.push(format!("{file}: no schemaVersion"));
        }
        let mut ids = BTreeSet::new();
        let mut stack: Vec<Value> = doc["panels"].as_array().cloned().unwrap_or_default();
        while let Some(p) = stack.pop() {
            panels_seen += 1;
            let t = p["title"].as_str().unwrap_or("?");
            let at = format!("{file} panel \"{t}\"");
            match p["id"].as_u64() {
                Some(id) if ids.insert(id) => {}
                other => problems.push(format!("{at}: id {other:?} missing or not unique")),
            }
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            if !(x.is_some() && w.is_some() && h.is_some() && g["y"].is_u64())
                || x.unwrap_or(0) + w.unwrap_or(0) > 24
            {
                problems.push(format!("{at}: gridPos {g} is not inside the 24 columns"));
            }
            let kind = p["type"].as_str().unwrap_or_default();
            if ![
                "row",
                "timeseries",
                "bargauge",
                "stat",
                "table",
                "text",
                "gauge",
            ]
            .contains(&kind)
            {
                problems.push(format!("{at}: panel type `{kind}`"));
            }
            if kind == "row" {
                stack.extend(p["panels"].as_array().cloned().unwrap_or_default());
                continue;
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() && kind != "text" {
                problems.push(format!("{at}: no query"));
            }
            let mut refs = BTreeSet::new();
            for d in
                std::iter::once(&p["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
            {
                let uid = d["uid"].as_str().unwrap_or_default();
                if d["type"] != "prometheus" || !uids.contains(uid) {
                    problems.push(format!(
                        "{at}: data source {d} is not the provisioned Prometheus ({uids:?})"
                    ));
                }
            }
            for t in &targets {
                let r = t["refId"].as_str().unwrap_or_default();
                if r.is_empty() || !refs.insert(r.to_string()) {
                    problems.push(format!("{at}: refId `{r}` empty or not unique"));
                }
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    problems.push(format!("{at} {r}: no expr"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "{} dashboards, {panels_seen} panels, data source uid(s) {uids:?}",
        files.len()
    );
}

/// A dashboard query with Grafana's variables replaced by values PromQL
/// takes (a duration for the interval ones, a word for the others).
fn without_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').map_or(inner.len(), |e| e + 1);
            (
                inner[..end.saturating_sub(1)]
                    .split(':')
                    .next()
                    .unwrap_or(""),
                end + 1,
            )
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        out.push_str(match name {
            "__range" | "__rate_interval" | "__interval" | "__range_s" => "5m",
            _ => "x",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// promtool (Prometheus's own parser) reads every dashboard query: they are
/// written to a rules file as recording rules and checked. scripts/test.sh
/// requires promtool; a `cargo test` without it says so and checks nothing.
#[test]
fn promtool_parses_every_dashboard_query() {
    let promtool = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    let Some(promtool) = promtool else {
        println!(
            "promtool not found: dashboard queries not checked with it (Debian's prometheus package; scripts/test.sh requires it)"
        );
        return;
    };
    let mut rules = Vec::new();
    let mut places = Vec::new();
    for f in dashboard_files() {
        let (exprs, _) = dashboard_queries(&f);
        for (at, e) in exprs {
            rules.push(json!({"record": format!("dashboard:query:{}", rules.len()), "expr": without_variables(&e)}));
            places.push(at);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yml");
    let doc = json!({"groups": [{"name": "dashboards", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).expect("write");
    let out = std::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool names a failing rule by its index in the group.
    let mut named = text.clone();
    for (i, at) in places.iter().enumerate().rev() {
        named = named.replace(&format!("dashboard:query:{i}"), at);
    }
    assert!(
        out.status.success(),
        "promtool check rules of the dashboards' queries:\n{named}"
    );
    println!("promtool parsed {} dashboard queries", places.len());
}

#[test]
fn the_promql_reader_finds_names_and_labels() {
    let mut exported = Exported {
        target_labels: ["job", "instance", "service"].map(String::from).into(),
        ..Default::default()
    };
    exported.add(
        "x",
        "# TYPE a_total counter\na_total{platform=\"meta\",outcome=\"ok \\\"q\\\"\"} 1\n\
         # TYPE g gauge\ng{topic=\"t\",partition=\"0\"} 3\n\
         # TYPE h_seconds histogram\nh_seconds_bucket{platform=\"meta\",le=\"0.1\"} 1\n\
         h_seconds_sum{platform=\"meta\"} 1\nh_seconds_count{platform=\"meta\"} 1\n",
    );
    let run = |e: &str| {
        let mut f = Findings::default();
        check_expr(e, "t", &exported, &mut f);
        f
    };
    let ok = [
        r#"sum by (platform) (rate(a_total{outcome=~"x|y"}[5m])) / sum by (platform) (rate(a_total[5m]))"#,
        r#"histogram_quantile(0.99, sum by (platform, le) (rate(h_seconds_bucket{platform=~"$platform"}[$__rate_interval])))"#,
        r#"label_replace(sum by (topic) (g) > 10 and deriv(sum by (topic) (g)[15m:1m]) > 0, "stage", "x", "", "")"#,
        r#"sum by (stage) (label_replace(g, "stage", "s", "topic", "(.*)")) or up{job="postback"} == 0"#,
        r#"(sum(rate(a_total[5m])) or 0 * sum(rate(a_total[5m]))) / scalar(sum(g)) unless on () vector(1)"#,
        r#"a_total unless a_total offset 30m"#,
        r#"sum by (instance) (g) * on (instance) group_left (platform) sum by (instance, platform) (a_total)"#,
    ];
    for e in ok {
        let f = run(e);
        assert!(f.problems.is_empty(), "{e}: {:?}", f.problems);
    }
    let bad = [
        (
            "sum by (reason) (rate(a_total[5m]))",
            "needs label `reason`",
        ),
        ("g{platform=\"meta\"}", "no label `platform`"),
        ("rate(g[5m])", "not a counter"),
        ("nope_total", ""),
        (
            "histogram_quantile(0.9, sum by (platform) (rate(h_seconds_bucket[5m])))",
            "`le`",
        ),
        (
            "sum by (platform) (a_total) / sum by (platform, outcome) (a_total)",
            "nothing matches",
        ),
        (
            "label_replace(g, \"x\", \"$1\", \"platform\", \"(.*)\")",
            "reads label `platform`",
        ),
        (
            "sum(a_total) and on (platform) sum by (platform) (a_total)",
            "needs label `platform`",
        ),
        ("rated(a_total[5m])", "not a PromQL function"),
    ];
    for (e, want) in bad {
        let f = run(e);
        if want.is_empty() {
            assert!(f.metrics.contains_key("nope_total"), "{e}");
            continue;
        }
        assert!(
            f.problems.iter().any(|p| p.contains(want)),
            "{e}: expected a problem with `{want}`, got {:?}",
            f.problems
        );
    }
    let f =
        run("sum by (platform) (rate(h_seconds_count[5m])) + sum by (platform) (h_seconds_sum)");
    assert_eq!(f.metrics.len(), 2);
    assert_eq!(f.selectors, 2);
    assert!(f.problems.is_empty(), "{:?}", f.problems);
}

// ------------------------------------------------------------------------
// The pipeline: support/pipeline.rs.

async fn post(
    http: &reqwest::Client,
    url: String,
    key: Option<&str>,
    origin: Option<&str>,
    body: &Value,
) -> u16 {
    let mut r = http.post(url).json(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(o) = origin {
        r = r.header("Origin", o);
    }
    r.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn events(http: &reqwest::Client, collector: SocketAddr, body: &Value) -> u16 {
    post(
        http,
        format!("http://{collector}/v1/events"),
        Some(API_KEY),
        None,
        body,
    )
    .await
}

/// The traffic: every kind of conversion and record the dashboards count.
async fn send_traffic(
    broker: &Broker,
    names: &Names,
    http: &reqwest::Client,
    addrs: &BTreeMap<String, SocketAddr>,
    run: &str,
) -> Vec<String> {
    let collector = addrs["collector.api"];
    let mut log = Vec::new();
    let mut expect = |what: &str, got: u16, want: u16| {
        log.push(format!("{what}: HTTP {got}"));
        assert_eq!(got, want, "{what}");
    };
    // Valid, for every platform.
    let valid = example("purchase.json", &format!("{run}-valid"));
    expect(
        "a valid server purchase",
        events(http, collector, &valid).await,
        202,
    );
    // A browser and a server report of one conversion: merged.
    let pair = format!("{run}-pair");
    let beacon = example("beacon.json", &pair);
    let got = post(
        http,
        format!("http://{collector}/v1/collect?site_key={SITE_KEY}"),
        None,
        Some(ORIGIN),
        &beacon,
    )
    .await;
    expect("the browser report of a pair", got, 202);
    expect(
        "the server report of the pair",
        events(http, collector, &example("purchase.json", &pair)).await,
        202,
    );
    // Invalid: no event_name.
    expect(
        "an invalid event",
        events(
            http,
            collector,
            &json!({"event_id": format!("{run}-invalid")}),
        )
        .await,
        400,
    );
    // No consent flags: the tenant's default for FR is denied.
    let mut no_consent = example("purchase.json", &format!("{run}-no-consent"));
    if let Some(o) = no_consent.as_object_mut() {
        o.remove("consent");
    }
    expect(
        "a purchase without consent",
        events(http, collector, &no_consent).await,
        202,
    );
    // A phone that does not parse and a gclid too short to be one.
    let mut bad_ids = example("purchase.json", &format!("{run}-bad-ids"));
    bad_ids["user"]["phone"] = json!("+33 12345");
    bad_ids["click_ids"]["gclid"] = json!("short");
    expect(
        "a purchase with unusable identifiers",
        events(http, collector, &bad_ids).await,
        202,
    );
    // The collector without a broker.
    let got = events(
        http,
        addrs["collector-without-broker.api"],
        &example("purchase.json", &format!("{run}-503")),
    )
    .await;
    expect("a purchase to the collector without a broker", got, 503);

    // Kafka ingest: a valid order and a record that is not JSON.
    let order = json!({"event_id": format!("{run}-ingest"), "event_name": "Purchase",
                       "order": {"value": "12.00", "currency": "EUR"}});
    broker
        .produce(&names.ingest, b"ingest-1", order.to_string().as_bytes())
        .await
        .expect("produce");
    broker
        .produce(&names.ingest, b"ingest-2", b"not json")
        .await
        .expect("produce");
    log.push("ingest: a valid order and a record that is not JSON".into());
    // A record no stage can decode, on each stage's input.
    for topic in [
        names.raw.clone(),
        names.enriched.clone(),
        format!("{}meta", names.dispatch_prefix),
        names.status.clone(),
    ] {
        broker
            .produce(&topic, b"garbage", b"\x00not avro")
            .await
            .expect("produce");
        log.push(format!("an undecodable record on {topic}"));
    }
    // A raw conversion whose enriched form is larger than the broker takes.
    let huge: ConversionRaw = serde_json::from_value(json!({
        "tenant": "demo", "event_id": format!("{run}-huge"), "event_name": "Purchase",
        "event_time": postback_core::model::now_millis(), "received_at": postback_core::model::now_millis(),
        "source": "server",
        // An order's items, not a page: data minimisation would drop a page
        // no platform may receive, and the output would fit.
        "order": {"order_id": format!("{run}-huge"), "items": [{"name": "a".repeat(1_000_000)}]}
    }))
    .expect("a raw conversion");
    let bytes = Codec::<ConversionRaw>::new(SchemaKind::ConversionRaw)
        .encode(&huge)
        .expect("encode");
    let producer: FutureProducer = broker
        .client_config()
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&names.raw)
                .key(&huge.key())
                .payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce the large raw record");
    log.push(format!(
        "a raw record of {} bytes (its output is too large)",
        bytes.len()
    ));
    log
}

async fn scrape(http: &reqwest::Client, addr: SocketAddr) -> Option<String> {
    let r = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_use_is_exported() {
    let wanted = queried_metrics();
    let broker = Broker::shared().await.expect("the test broker");
    let names = Names::new("dm");
    names.create(&broker).await;
    let http = reqwest::Client::new();
    let (pipeline, addrs) = start_pipeline(
        &broker,
        &names,
        &http,
        Options {
            ingest: true,
            broken_collector: true,
            ..Options::default()
        },
    )
    .await;
    println!(
        "pipeline on {} (topics {}, {}, {}, {}, {}*, ingest {})",
        addrs
            .iter()
            .map(|(n, a)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", "),
        names.raw,
        names.enriched,
        names.status,
        names.rejected,
        names.dispatch_prefix,
        names.ingest
    );
    let run = unique("dm").replace('.', "-");
    for line in send_traffic(&broker, &names, &http, &addrs, &run).await {
        println!("sent {line}");
    }

    // Scrape every service until every queried metric has a series (or the
    // deadline); the union of all scrapes is what the services export. A
    // duplicate goes in once the first conversion has been emitted.
    let mut exported = Exported {
        target_labels: target_labels(),
        ..Default::default()
    };
    let mut duplicate_sent = false;
    let mut scrapes = 0usize;
    let mut dispatcher_lag_seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + SERIES_DEADLINE;
    loop {
        scrapes += 1;
        // The status service's API counts and times what it answers.
        for path in ["/v1/conversions?limit=5", "/v1/summary"] {
            let _ = http
                .get(format!("http://{}{path}", pipeline.status_api))
                .bearer_auth(STATUS_READ_KEY)
                .send()
                .await;
        }
        // The collectors' APIs serve no /metrics (their ops ports do).
        for (name, addr) in addrs.iter().filter(|(n, _)| !n.ends_with(".api")) {
            let Some(text) = scrape(&http, *addr).await else {
                continue;
            };
            let service = name.split('-').next().unwrap_or(name);
            exported.add(service, &text);
            if let Some(p) = name.strip_prefix("dispatcher-") {
                let topic = format!("{}{p}", names.dispatch_prefix);
                if has_series(
                    &text,
                    "postback_dispatcher_consumer_lag_records",
                    "topic",
                    &topic,
                ) {
                    *dispatcher_lag_seen.entry(name.clone()).or_default() += 1;
                }
            }
        }
        if !duplicate_sent
            && exported
                .samples
                .contains_key("postback_deduplicator_emitted_total")
        {
            let again = example("purchase.json", &format!("{run}-valid"));
            let got = events(&http, addrs["collector.api"], &again).await;
            println!("sent the valid purchase again (a duplicate): HTTP {got}");
            duplicate_sent = got == 202;
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|m| !exported.samples.contains_key(*m))
            .collect();
        if missing.is_empty() && duplicate_sent {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            println!(
                "after {} s still without a series: {}",
                SERIES_DEADLINE.as_secs(),
                missing
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pipeline.stop().await;

    let services: BTreeSet<&str> = exported
        .samples
        .values()
        .flat_map(|f| f.services.iter().map(String::as_str))
        .collect();
    println!(
        "exported: {} sample names from {} services ({}) over {scrapes} scrapes",
        exported.samples.len(),
        services.len(),
        services.iter().copied().collect::<Vec<_>>().join(", ")
    );
    for (d, n) in &dispatcher_lag_seen {
        println!("{d}: lag of its dispatch topic in {n} of {scrapes} scrapes");
    }
    let checked = check_all(&exported);
    let f = &checked.found;
    println!(
        "checked {} expressions: {} alerts (deploy/prometheus/alerts.yml), {} panel queries and {} variable(s) in {} dashboards",
        f.expressions, checked.alerts, checked.panel_queries, checked.variables, checked.dashboards
    );
    println!(
        "  {} distinct metrics in {} selectors; labels: {} in matchers, {} in by/without/le, {} in on/ignoring/group_*, {} read by label_replace; {} rate/increase arguments",
        f.metrics.len(),
        f.selectors,
        f.matcher_labels,
        f.grouping_labels,
        f.matching_labels,
        f.replace_labels,
        f.counter_arguments
    );
    let mut problems = f.problems.clone();
    for (metric, places) in &f.metrics {
        if PROMETHEUS_OWN.contains(&metric.as_str()) {
            println!("  {metric}: Prometheus's own, exempt");
            continue;
        }
        match exported.samples.get(metric) {
            Some(family) => println!(
                "  {metric} ({:?}, {{{}}}; from {}): {} use(s)",
                family.kind,
                family.labels.iter().cloned().collect::<Vec<_>>().join(","),
                family
                    .services
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
                places.len()
            ),
            None => {
                let hint = if exported.samples.contains_key(&format!("{metric}_bucket")) {
                    " (a histogram: query its _bucket, _sum or _count)"
                } else {
                    ""
                };
                problems.push(format!(
                    "{metric} is not exported by any service{hint}; used by: {}",
                    places.iter().cloned().collect::<Vec<_>>().join("; ")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
