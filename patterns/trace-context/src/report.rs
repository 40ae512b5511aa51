//! Reading finished spans back: is this one trace and one tree, and what does it look like?
//!
//! Everything here works on the `SpanData` an exporter received, so what it prints is what a
//! tracing backend would have stored: the span ids, parent links and timings of the real run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// Why the spans are not one trace with one tree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TreeError {
    /// Nothing to check: no span was exported (yet).
    #[error("no spans were exported")]
    Empty,
    /// More than one trace id: a hop started a new trace instead of continuing.
    #[error("the spans belong to {0} traces, not one")]
    ManyTraces(usize),
    /// Not exactly one span lacks its parent among the spans (how many do, and their
    /// names). Two or more: a hop lost the context, or a parent is not exported yet.
    #[error("{0} spans have no parent among the spans: {1:?}")]
    Roots(usize, Vec<String>),
    /// Spans that parent links do not lead to from the root: their links go round in
    /// a loop.
    #[error("{0} spans are not reachable from the root")]
    Unreachable(usize),
    /// The expected span of this kind from this service was not exported.
    #[error("no {1:?} span from {0} yet")]
    Missing(String, SpanKind),
}

/// The attribute that says which service a span belongs to.
pub const SERVICE: &str = "shop.service";

/// Spans of one trace, checked to form one tree.
#[derive(Debug)]
pub struct Trace<'a> {
    /// The one trace id every span shares.
    pub trace_id: TraceId,
    spans: Vec<&'a SpanData>,
    root: usize,
    /// Children of each span, oldest first.
    children: HashMap<SpanId, Vec<usize>>,
}

// ANCHOR: one_tree
/// Checks that `spans` are one trace (one trace id) and one tree: exactly one span
/// without a parent among them, and every span reachable from it by parent links.
pub fn one_tree(spans: &[SpanData]) -> Result<Trace<'_>, TreeError> {
    let first = spans.first().ok_or(TreeError::Empty)?;
    let ids: HashSet<TraceId> =
        spans.iter().map(|s| s.span_context.trace_id()).collect();
    if ids.len() != 1 {
        return Err(TreeError::ManyTraces(ids.len()));
    }
    let own: HashSet<SpanId> =
        spans.iter().map(|s| s.span_context.span_id()).collect();
    let roots: Vec<usize> = (0..spans.len())
        .filter(|&i| !own.contains(&spans[i].parent_span_id))
        .collect();
    let [root] = roots[..] else {
        let names = roots.iter().map(|&i| spans[i].name.to_string()).collect();
        return Err(TreeError::Roots(roots.len(), names));
    };
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut by_start: Vec<usize> = (0..spans.len()).collect();
    by_start.sort_by_key(|&i| spans[i].start_time);
    for i in by_start.into_iter().filter(|&i| i != root) {
        children.entry(spans[i].parent_span_id).or_default().push(i);
    }
    let trace = Trace {
        trace_id: first.span_context.trace_id(),
        spans: spans.iter().collect(),
        root,
        children,
    };
    let reached = trace.preorder().len();
    if reached != spans.len() {
        return Err(TreeError::Unreachable(spans.len() - reached));
    }
    Ok(trace)
}
// ANCHOR_END: one_tree

impl<'a> Trace<'a> {
    /// The root span: where the trace started.
    pub fn root(&self) -> &'a SpanData {
        self.spans[self.root]
    }

    /// Number of spans in the trace.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the trace has no spans (never true for a checked trace).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The span's parent in the trace, if it has one.
    pub fn parent(&self, span: &SpanData) -> Option<&'a SpanData> {
        let id = span.parent_span_id;
        self.spans.iter().copied().find(|s| s.span_context.span_id() == id)
    }

    /// Spans in tree order (a parent before its children, siblings oldest first),
    /// each with its depth. Guards against cycles by visiting each span once.
    fn preorder(&self) -> Vec<(usize, usize)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![(self.root, 0)];
        while let Some((i, depth)) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            out.push((i, depth));
            let id = self.spans[i].span_context.span_id();
            for &child in self.children.get(&id).into_iter().flatten().rev() {
                stack.push((child, depth + 1));
            }
        }
        out
    }

    /// Spans in tree order.
    pub fn in_order(&self) -> Vec<&'a SpanData> {
        self.preorder().into_iter().map(|(i, _)| self.spans[i]).collect()
    }

    /// The service a span belongs to: its own `shop.service`, else its parent's.
    pub fn service(&self, span: &SpanData) -> String {
        let mut current = Some(span);
        while let Some(span) = current {
            if let Some(name) = attribute(span, SERVICE) {
                return name;
            }
            current = self.parent(span);
        }
        "unknown".to_owned()
    }

    /// The trace as an indented tree: service, span name, kind and duration.
    pub fn tree(&self) -> String {
        let plural = if self.len() == 1 { "" } else { "s" };
        let mut out =
            format!("trace {} ({} span{plural})\n", self.trace_id, self.len());
        self.branch(self.root, "", "", &mut out);
        out
    }

    fn branch(&self, i: usize, lead: &str, rest: &str, out: &mut String) {
        let span = self.spans[i];
        let took = span.end_time.duration_since(span.start_time).unwrap_or_default();
        let (service, name, kind) =
            (self.service(span), &span.name, kind(&span.span_kind));
        let took = millis(took);
        out.push_str(&format!("{lead}{service}: {name} [{kind}] {took}\n"));
        let id = span.span_context.span_id();
        let children = self.children.get(&id).map(Vec::as_slice).unwrap_or_default();
        for (n, &child) in children.iter().enumerate() {
            let last = n + 1 == children.len();
            let (lead, more) =
                if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
            self.branch(
                child,
                &format!("{rest}{lead}"),
                &format!("{rest}{more}"),
                out,
            );
        }
    }

    // ANCHOR: mermaid
    /// The trace as a mermaid sequence diagram: a call for every span whose parent
    /// is in another service (`->>` and a reply for calls, `-)` for messages, drawn
    /// after the calls that were waiting), from the spans' own parent links.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("sequenceDiagram\n");
        let order = self.in_order();
        let mut participants: Vec<String> = Vec::new();
        for span in &order {
            let service = self.service(span);
            if !participants.contains(&service) {
                out.push_str(&format!(
                    "    participant {} as {service}\n",
                    id(&service)
                ));
                participants.push(service);
            }
        }
        if let (Some(first), Some(last)) =
            (participants.first(), participants.last())
        {
            let (first, last, trace) = (id(first), id(last), self.trace_id);
            out.push_str(&format!("    Note over {first},{last}: trace {trace}\n"));
        }
        let mut messages = std::collections::VecDeque::from([self.root]);
        while let Some(start) = messages.pop_front() {
            if let Some(parent) = self.parent(self.spans[start]) {
                let arrow =
                    format!("{}-){}", id(&self.service(parent)), self.id_of(start));
                out.push_str(&format!("    {arrow}: {}\n", self.label(start)));
            }
            self.calls(start, &mut out, &mut messages);
        }
        out
    }
    // ANCHOR_END: mermaid

    fn id_of(&self, i: usize) -> String {
        id(&self.service(self.spans[i]))
    }

    fn label(&self, i: usize) -> String {
        let span = self.spans[i];
        let system = attribute(span, "messaging.system")
            .or_else(|| attribute(span, "rpc.system"))
            .unwrap_or_else(|| "http".to_owned());
        format!("{system} {}", span.name)
    }

    /// Draws the calls under span `i`; messages it sent wait in `messages`.
    fn calls(
        &self,
        i: usize,
        out: &mut String,
        messages: &mut std::collections::VecDeque<usize>,
    ) {
        let id_i = self.spans[i].span_context.span_id();
        for &child in self.children.get(&id_i).into_iter().flatten() {
            let (from, to) = (self.id_of(i), self.id_of(child));
            if from == to {
                self.calls(child, out, messages);
            } else if self.spans[child].span_kind == SpanKind::Consumer {
                messages.push_back(child);
            } else {
                out.push_str(&format!("    {from}->>{to}: {}\n", self.label(child)));
                self.calls(child, out, messages);
                let took = self.spans[child]
                    .end_time
                    .duration_since(self.spans[child].start_time)
                    .unwrap_or_default();
                let took = millis(took);
                out.push_str(&format!("    {to}-->>{from}: reply after {took}\n"));
            }
        }
    }
}

/// A string attribute of a span.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn kind(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

/// A mermaid participant id: letters, digits and underscores only.
fn id(service: &str) -> String {
    service.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

fn millis(took: Duration) -> String {
    format!("{:.1} ms", took.as_secs_f64() * 1000.0)
}

/// The spans grouped by trace, the trace that started first first.
pub fn by_trace(spans: &[SpanData]) -> Vec<Vec<SpanData>> {
    let mut groups: Vec<Vec<SpanData>> = Vec::new();
    let mut sorted: Vec<&SpanData> = spans.iter().collect();
    sorted.sort_by_key(|s| s.start_time);
    for span in sorted {
        let id = span.span_context.trace_id();
        match groups.iter_mut().find(|g| g[0].span_context.trace_id() == id) {
            Some(group) => group.push(span.clone()),
            None => groups.push(vec![span.clone()]),
        }
    }
    groups
}

/// Waits (at most `limit`, looking every 10 ms) until the finished spans hold every
/// hop in `hops` and each trace among them is one complete tree, and returns them.
/// A span that has not ended is not exported yet, which leaves its children
/// without their parent: a complete tree means every span in it has ended.
pub async fn wait_for_traces(
    limit: Duration,
    hops: &[(&str, SpanKind)],
    mut finished: impl FnMut() -> Vec<SpanData>,
) -> Result<Vec<SpanData>, TreeError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let spans = finished();
        let verdict = by_trace(&spans)
            .iter()
            .try_for_each(|group| one_tree(group).map(drop))
            .and_then(|()| hops_present(&spans, hops));
        match verdict {
            Ok(()) if !spans.is_empty() => return Ok(spans),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(error);
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn hops_present(
    spans: &[SpanData],
    hops: &[(&str, SpanKind)],
) -> Result<(), TreeError> {
    for (service, kind) in hops {
        let found = spans.iter().any(|s| {
            &s.span_kind == kind
                && attribute(s, SERVICE).as_deref() == Some(*service)
        });
        if !found {
            return Err(TreeError::Missing((*service).to_owned(), kind.clone()));
        }
    }
    Ok(())
}
